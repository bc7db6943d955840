/**
 * What the service worker does with a push: reading the payload, dropping a repeated
 * delivery, the notification it shows (content and content-free), and the messages and
 * URLs a click uses to open the conversation.
 */
import { describe, expect, it } from "vitest";

import {
  RecentIds,
  conversationFromHash,
  conversationToOpen,
  notificationFor,
  openConversationHash,
  openConversationMessage,
  parsePushPayload,
  superseded,
  type PushPayload,
} from "../src/push-payload.js";

const CONTENT = {
  delivery_id: "d-1",
  user: "riya",
  conversation_id: "c-1",
  seq: 7,
  unread: 2,
  badge: 5,
  title: "alex",
  body: "lunch?",
  sender: "alex",
  sent_at_ms: 1_700_000_000_000,
};
const CONTENT_FREE = { ...CONTENT, title: "New message", body: undefined, sender: undefined };

function payload(json: unknown): PushPayload {
  const p = parsePushPayload(json);
  if (p === undefined) {
    throw new Error("not a payload");
  }
  return p;
}

describe("parsePushPayload", () => {
  it("reads the server's JSON, body and sender only when present", () => {
    expect(payload(JSON.parse(JSON.stringify(CONTENT)))).toEqual(CONTENT);
    const free = payload(JSON.parse(JSON.stringify(CONTENT_FREE)));
    expect("body" in free || "sender" in free).toBe(false);
    expect(free.title).toBe("New message");
  });

  it("refuses what has no delivery or conversation id", () => {
    for (const bad of [null, "text", 3, {}, { ...CONTENT, delivery_id: "" }, { ...CONTENT, conversation_id: 5 }]) {
      expect(parsePushPayload(bad)).toBeUndefined();
    }
    // Numbers it does not understand count as 0 rather than failing the notification.
    expect(payload({ delivery_id: "d", conversation_id: "c", seq: "7" }).seq).toBe(0);
  });
});

describe("RecentIds", () => {
  it("drops a repeat, and forgets the oldest beyond its capacity", () => {
    const recent = new RecentIds(3);
    expect(["a", "b", "a", "c"].map((id) => recent.seen(id))).toEqual([false, false, true, false]);
    expect(recent.seen("d")).toBe(false); // "a" is forgotten
    expect(recent.seen("a")).toBe(false);
    expect(recent.seen("d")).toBe(true);
  });
});

describe("notificationFor", () => {
  it("shows sender and text, tagged by conversation so a newer push replaces the older", () => {
    const { title, options } = notificationFor(payload(CONTENT));
    expect(title).toBe("alex");
    expect(options).toEqual({
      body: "lunch?",
      tag: "c-1",
      renotify: true,
      timestamp: CONTENT.sent_at_ms,
      data: { conversation_id: "c-1", delivery_id: "d-1", seq: 7, unread: 2, badge: 5 },
    });
  });

  it("content-free: no text, only how many are waiting", () => {
    const { title, options } = notificationFor(payload(CONTENT_FREE));
    expect(title).toBe("New message");
    expect(options.body).toBe("2 unread messages");
    expect(JSON.stringify(options)).not.toContain("lunch");
    expect(notificationFor(payload({ ...CONTENT_FREE, unread: 1 })).options.body).toBeUndefined();
    expect(notificationFor(payload({ ...CONTENT_FREE, title: "" })).title).toBe("New message");
  });

  it("is superseded by the same delivery or a newer message already shown", () => {
    const p = payload(CONTENT);
    const shown = notificationFor(p).options.data;
    expect(superseded(p, [shown])).toBe(true);
    expect(superseded(payload({ ...CONTENT, delivery_id: "d-2", seq: 8 }), [shown])).toBe(false);
    expect(superseded(payload({ ...CONTENT, delivery_id: "d-0", seq: 6 }), [shown])).toBe(true);
    expect(superseded(p, [null, "x", {}])).toBe(false);
  });
});

describe("opening a conversation from a click", () => {
  it("round-trips through the window message and the URL hash", () => {
    expect(conversationToOpen(openConversationMessage("c/1 x"))).toBe("c/1 x");
    expect(conversationToOpen({ type: "other", conversationId: "c" })).toBeUndefined();
    expect(conversationToOpen(null)).toBeUndefined();
    expect(conversationFromHash(openConversationHash("c/1 x"))).toBe("c/1 x");
    expect(conversationFromHash("")).toBeUndefined();
    expect(conversationFromHash("#open=%E0%A4%A")).toBeUndefined();
  });
});
