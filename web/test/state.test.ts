/**
 * The web client's model: a message seen by several paths (send answer, live stream,
 * history) appears once, ticks follow the peer's watermarks, unread counts follow the own
 * read mark, and typing expires; and what a failed send says.
 */
import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { describe, expect, it } from "vitest";

import { ChatError, Code } from "chat-sdk";
import { ConversationSchema } from "chat-sdk/gen/chat_pb";
import { MessageSchema, ReceiptSchema, SendAckSchema } from "chat-sdk/gen/types_pb";
import { describeSendError } from "../src/format.js";
import { ChatState, TYPING_TTL_MS } from "../src/state.js";

const ME = { $typeName: "chat.v1.User" as const, id: "u-me", name: "me" };
const RIYA = { $typeName: "chat.v1.User" as const, id: "u-riya", name: "riya" };

const message = (seq: bigint, sender = RIYA, clientMsgId = `c${seq}`) =>
  create(MessageSchema, { conversationId: "c", seq, sender, clientMsgId, text: `m${seq}`, sentAt: timestampFromMs(1_000 * Number(seq)) });
const receipt = (user: typeof ME, deliveredSeq: bigint, readSeq: bigint) =>
  create(ReceiptSchema, { conversationId: "c", user, deliveredSeq, readSeq });

describe("ChatState", () => {
  it("shows an own message once, whichever of the answer and the stream comes first", () => {
    for (const order of ["answer first", "stream first"]) {
      const state = new ChatState(ME);
      state.conversation("c", RIYA);
      state.addPending("c", "id-1", "hello");
      const c = state.conversations.get("c")!;
      expect(state.statusOf(c, state.messagesOf(c)[0]!)).toBe("pending");
      const ack = create(SendAckSchema, { clientMsgId: "id-1", conversationId: "c", seq: 1n });
      const echo = message(1n, ME, "id-1");
      if (order === "answer first") {
        state.confirm("c", "id-1", ack);
        state.applyMessage(echo);
      } else {
        state.applyMessage(echo);
        state.confirm("c", "id-1", ack);
      }
      const shown = state.messagesOf(c);
      expect(shown.map((m) => [m.seq, m.key])).toEqual([[1n, "u-me/id-1"]]);
      expect(state.statusOf(c, shown[0]!)).toBe("sent");
    }
  });

  it("keeps pending messages after stored ones, and history merges by seq", () => {
    const state = new ChatState(ME);
    state.applyMessage(message(3n));
    state.addPending("c", "p", "on its way");
    state.applyMessage(message(1n));
    state.applyMessage(message(3n));
    state.applyMessage(message(2n));
    const c = state.conversations.get("c")!;
    expect(state.messagesOf(c).map((m) => m.seq ?? "pending")).toEqual([1n, 2n, 3n, "pending"]);
    expect(state.oldestSeq(c)).toBe(1n);
  });

  it("derives ticks from the peer's watermarks, never backwards", () => {
    const state = new ChatState(ME);
    state.applyMessage(message(1n, ME));
    state.applyMessage(message(2n, ME));
    const c = state.conversations.get("c")!;
    const ticks = () => state.messagesOf(c).map((m) => state.statusOf(c, m));
    expect(ticks()).toEqual(["sent", "sent"]);
    state.applyReceipt(receipt(RIYA, 2n, 1n));
    expect(ticks()).toEqual(["read", "delivered"]);
    state.applyReceipt(receipt(RIYA, 1n, 0n));
    expect(ticks()).toEqual(["read", "delivered"]);
    state.applyReceipt(receipt(RIYA, 2n, 2n));
    expect(ticks()).toEqual(["read", "read"]);
  });

  it("counts unread from the own read mark", () => {
    const state = new ChatState(ME);
    for (const seq of [1n, 2n, 3n]) {
      state.applyMessage(message(seq));
    }
    const c = state.conversations.get("c")!;
    expect(state.unread(c)).toBe(3n);
    state.applyReceipt(receipt(ME, 3n, 2n));
    expect(state.unread(c)).toBe(1n);
    state.markReadLocally(c, 3n);
    expect(state.unread(c)).toBe(0n);
  });

  it("shows typing until stopped, a message arrives, or it expires", () => {
    const state = new ChatState(ME);
    const c = state.conversation("c", RIYA);
    state.applyTyping("c", RIYA, true, 0);
    expect(state.typingIn(c, 1)).toBe("riya");
    expect(state.typingIn(c, TYPING_TTL_MS + 1)).toBeUndefined();
    state.applyTyping("c", RIYA, true, 0);
    state.applyMessage(message(1n));
    expect(state.typingIn(c, 1)).toBeUndefined();
    state.applyTyping("c", ME, true, 0);
    expect(state.typingIn(c, 1)).toBeUndefined();
  });

  it("lists only conversations it can name, most recent first", () => {
    const state = new ChatState(ME);
    state.applyReceipt(receipt(ME, 1n, 1n));
    expect(state.sortedConversations()).toEqual([]);
    state.applyMessage(message(5n));
    state.conversation("d", { ...RIYA, id: "u-sam", name: "sam" }).lastActivity = 1;
    expect(state.sortedConversations().map((c) => c.id)).toEqual(["c", "d"]);
  });

  it("takes muted from the conversation list, either way", () => {
    const state = new ChatState(ME);
    const c = state.conversation("c", RIYA);
    expect(c.muted).toBe(false);
    state.applyConversation(create(ConversationSchema, { id: "c", peer: RIYA, muted: true }));
    expect(c.muted).toBe(true);
    state.applyConversation(create(ConversationSchema, { id: "c", peer: RIYA, muted: false }));
    expect(c.muted).toBe(false);
  });
});

describe("describeSendError", () => {
  const status = (code: Code, message: string) => new ChatError("status", code, message);

  it("tells a message over the gateway's body limit from the rate limit (both RESOURCE_EXHAUSTED)", () => {
    expect(describeSendError(status(Code.ResourceExhausted, "request body too large"))).toBe(
      "the message is too long to send; shorten it or split it into several messages",
    );
    expect(describeSendError(status(Code.ResourceExhausted, "too many messages; slow down and retry"))).toBe(
      "you are sending too fast; wait a moment, then retry",
    );
  });

  it("passes the server's reason for a refused message on", () => {
    expect(describeSendError(status(Code.InvalidArgument, "message text is 5000 bytes, over the limit of 4096"))).toBe(
      "message text is 5000 bytes, over the limit of 4096",
    );
    expect(describeSendError(status(Code.NotFound, "no such conversation"))).toBe("this conversation is no longer available");
  });
});
