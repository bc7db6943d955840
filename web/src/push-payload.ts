/**
 * What a Web Push notification says and how it shows, shared by the service worker
 * (sw.ts) and the app: the decrypted payload's JSON, dropping repeats of a delivery, the
 * `showNotification` arguments, and how a click asks the app to open a conversation.
 * No DOM here, so the tests run it in Node.
 */

/** The JSON the server pushes (see server/src/push/notification.rs). */
export interface PushPayload {
  /** The same on every retry of one notification: repeats are dropped by it. */
  delivery_id: string;
  /** The recipient's user name. */
  user: string;
  conversation_id: string;
  /** The newest message the notification covers. */
  seq: number;
  /** Unread messages in this conversation. */
  unread: number;
  /** Unread messages in all the recipient's conversations. */
  badge: number;
  /** The sender's name, or "New message" when content-free. */
  title: string;
  /** The newest message's text; absent when content-free. */
  body?: string;
  /** The newest message's sender; absent when content-free. */
  sender?: string;
  sent_at_ms: number;
}

/** What a shown notification carries in `data`. */
export interface NotificationData {
  conversation_id: string;
  delivery_id: string;
  seq: number;
  unread: number;
  badge: number;
}

export interface NotificationSpec {
  title: string;
  options: {
    body?: string;
    /** One notification per conversation: a newer push replaces the older. */
    tag: string;
    /** Alert again when replacing. */
    renotify: boolean;
    timestamp: number;
    data: NotificationData;
  };
}

/** The payload, or undefined if it is not one (missing ids or title). */
export function parsePushPayload(value: unknown): PushPayload | undefined {
  if (typeof value !== "object" || value === null) {
    return undefined;
  }
  const v = value as Record<string, unknown>;
  const text = (key: string): string | undefined => (typeof v[key] === "string" ? v[key] : undefined);
  const count = (key: string): number => (typeof v[key] === "number" && Number.isFinite(v[key]) ? v[key] : 0);
  const deliveryId = text("delivery_id");
  const conversationId = text("conversation_id");
  if (deliveryId === undefined || deliveryId === "" || conversationId === undefined || conversationId === "") {
    return undefined;
  }
  const payload: PushPayload = {
    delivery_id: deliveryId,
    user: text("user") ?? "",
    conversation_id: conversationId,
    seq: count("seq"),
    unread: count("unread"),
    badge: count("badge"),
    title: text("title") ?? "",
    sent_at_ms: count("sent_at_ms"),
  };
  const body = text("body");
  const sender = text("sender");
  if (body !== undefined) {
    payload.body = body;
  }
  if (sender !== undefined) {
    payload.sender = sender;
  }
  return payload;
}

/** The last few delivery ids seen (a service worker may be stopped between pushes: best effort). */
export class RecentIds {
  readonly #capacity: number;
  readonly #ids = new Set<string>();

  constructor(capacity = 64) {
    this.#capacity = capacity;
  }

  /** True if `id` was seen already; otherwise remembers it (forgetting the oldest beyond capacity). */
  seen(id: string): boolean {
    if (this.#ids.has(id)) {
      return true;
    }
    this.#ids.add(id);
    if (this.#ids.size > this.#capacity) {
      const oldest = this.#ids.values().next().value;
      if (oldest !== undefined) {
        this.#ids.delete(oldest);
      }
    }
    return false;
  }
}

/**
 * Whether a notification already shown for the conversation (its `data`) makes this push
 * redundant: the same delivery (a retry, after the worker restarted), or a newer message.
 */
export function superseded(payload: PushPayload, shown: readonly unknown[]): boolean {
  return shown.some((data) => {
    if (typeof data !== "object" || data === null) {
      return false;
    }
    const d = data as Partial<NotificationData>;
    return d.delivery_id === payload.delivery_id || (typeof d.seq === "number" && d.seq > payload.seq);
  });
}

/** The `showNotification` arguments: the title and body as pushed, tagged by conversation. */
export function notificationFor(payload: PushPayload): NotificationSpec {
  const spec: NotificationSpec = {
    title: payload.title === "" ? "New message" : payload.title,
    options: {
      tag: payload.conversation_id,
      renotify: true,
      timestamp: payload.sent_at_ms > 0 ? payload.sent_at_ms : Date.now(),
      data: {
        conversation_id: payload.conversation_id,
        delivery_id: payload.delivery_id,
        seq: payload.seq,
        unread: payload.unread,
        badge: payload.badge,
      },
    },
  };
  // Content-free pushes say only how many are waiting.
  const body = payload.body ?? (payload.unread > 1 ? `${payload.unread} unread messages` : undefined);
  if (body !== undefined) {
    spec.options.body = body;
  }
  return spec;
}

/** The message a notification click posts to an open app window. */
export interface OpenConversationMessage {
  type: "chat.open-conversation";
  conversationId: string;
}

export function openConversationMessage(conversationId: string): OpenConversationMessage {
  return { type: "chat.open-conversation", conversationId };
}

/** The conversation an app window is asked to open, if `data` is such a message. */
export function conversationToOpen(data: unknown): string | undefined {
  if (typeof data !== "object" || data === null) {
    return undefined;
  }
  const m = data as Partial<OpenConversationMessage>;
  return m.type === "chat.open-conversation" && typeof m.conversationId === "string" && m.conversationId !== ""
    ? m.conversationId
    : undefined;
}

/** The URL hash that opens a conversation when a click has to open a new window. */
export function openConversationHash(conversationId: string): string {
  return `#open=${encodeURIComponent(conversationId)}`;
}

/** The conversation named by such a hash. */
export function conversationFromHash(hash: string): string | undefined {
  const match = /^#open=(.+)$/.exec(hash);
  if (match?.[1] === undefined) {
    return undefined;
  }
  try {
    return decodeURIComponent(match[1]);
  } catch {
    return undefined;
  }
}
