/**
 * Building a send: where it goes (`Target`) and its idempotency key. Shared by the client's
 * one-shot `send` and the session's outbox, so both put the same request on the wire.
 */
import { create } from "@bufbuild/protobuf";
import { SendMessageSchema, type SendMessage } from "./gen/chat/v1/types_pb.js";

/** Where a message goes. */
export type Target =
  /** The direct conversation with this user name (created on first use). */
  | { user: string }
  /** A conversation by id. */
  | { conversationId: string };

/** A new idempotency key for a send: a random UUID. */
export function newClientMsgId(): string {
  return crypto.randomUUID();
}

/** The SendMessage for a target. */
export function sendMessage(target: Target, clientMsgId: string, text: string): SendMessage {
  return create(SendMessageSchema, {
    clientMsgId,
    target:
      "user" in target
        ? { case: "recipient", value: target.user }
        : { case: "conversationId", value: target.conversationId },
    text,
  });
}
