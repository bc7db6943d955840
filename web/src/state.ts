/**
 * The web client's model: conversations, their messages, members' watermarks, presence and
 * typing, as plain data with no DOM. Everything the server says (session events, history
 * pages, the conversation list) is merged in here, idempotently, so the same message or
 * receipt arriving twice by different paths changes nothing; views read it and re-render
 * when `onChange` fires.
 */
import { timestampDate } from "@bufbuild/protobuf/wkt";
import {
  deriveStatus,
  type Conversation,
  type Message,
  type Presence,
  type Receipt,
  type SendAck,
  type User,
  type Watermarks,
} from "chat-sdk";

/** What the sender's ticks show; "pending" until the server has stored it, "failed" if it refused. */
export type OwnStatus = "pending" | "failed" | "sent" | "delivered" | "read";

export interface ChatMessage {
  /** Stable for the message's life, pending or stored: the sender and its client_msg_id. */
  key: string;
  conversationId: string;
  /** Undefined until the server has stored it. */
  seq: bigint | undefined;
  clientMsgId: string;
  sender: User;
  text: string;
  sentAt: Date;
  own: boolean;
  /** Why the server refused it, when it did. */
  error?: string;
}

export interface PresenceInfo {
  online: boolean;
  lastSeen: Date | undefined;
}

export interface ConversationModel {
  id: string;
  peer: User | undefined;
  lastSeq: bigint;
  /** The own user's read watermark: unread = lastSeq - readSeq. */
  readSeq: bigint;
  /** Watermarks of the other members, by user id: the ticks of own messages. */
  receipts: Map<string, Watermarks>;
  /** Stored messages by seq. */
  stored: Map<bigint, ChatMessage>;
  /** Own messages not yet stored, in the order they were sent. */
  pending: Map<string, ChatMessage>;
  /** The newest message known, for the list's preview even before history is loaded. */
  preview: ChatMessage | undefined;
  lastActivity: number;
  history: { loaded: boolean; loading: boolean; hasMoreBefore: boolean };
  typing: { name: string; until: number } | undefined;
  /** The user muted it: no push notifications for it. */
  muted: boolean;
}

/** How long a "typing" signal shows without a refresh: covers a lost "stopped". */
export const TYPING_TTL_MS = 6_000;

const maxOf = (a: bigint, b: bigint): bigint => (a > b ? a : b);

export class ChatState {
  readonly me: User;
  readonly conversations = new Map<string, ConversationModel>();
  readonly presence = new Map<string, PresenceInfo>();
  activeId: string | undefined;
  readonly #listeners = new Set<() => void>();

  constructor(me: User) {
    this.me = me;
  }

  onChange(listener: () => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  changed(): void {
    for (const listener of this.#listeners) {
      listener();
    }
  }

  // --- reading ---

  /**
   * Most recently active first, as the server lists them. A conversation known only from a
   * receipt (no peer, nothing to show) waits for the conversation list to name it.
   */
  sortedConversations(): ConversationModel[] {
    return [...this.conversations.values()]
      .filter((c) => c.peer !== undefined || c.preview !== undefined)
      .sort((a, b) => b.lastActivity - a.lastActivity);
  }

  /** Stored messages by seq, then pending ones in the order they were sent. */
  messagesOf(c: ConversationModel): ChatMessage[] {
    const stored = [...c.stored.values()].sort((a, b) => ((a.seq ?? 0n) < (b.seq ?? 0n) ? -1 : 1));
    return [...stored, ...c.pending.values()];
  }

  unread(c: ConversationModel): bigint {
    return c.lastSeq > c.readSeq ? c.lastSeq - c.readSeq : 0n;
  }

  /** The ticks of an own message, from the other members' watermarks. */
  statusOf(c: ConversationModel, m: ChatMessage): OwnStatus {
    if (m.error !== undefined) {
      return "failed";
    }
    if (m.seq === undefined) {
      return "pending";
    }
    return deriveStatus(m.seq, c.receipts.values());
  }

  oldestSeq(c: ConversationModel): bigint | undefined {
    let oldest: bigint | undefined;
    for (const seq of c.stored.keys()) {
      if (oldest === undefined || seq < oldest) {
        oldest = seq;
      }
    }
    return oldest;
  }

  presenceOf(user: User | undefined): PresenceInfo | undefined {
    return user === undefined ? undefined : this.presence.get(user.id);
  }

  typingIn(c: ConversationModel, now = Date.now()): string | undefined {
    return c.typing !== undefined && c.typing.until > now ? c.typing.name : undefined;
  }

  // --- merging what the server says ---

  /** A conversation, created empty the first time it is named. */
  conversation(id: string, peer?: User): ConversationModel {
    let c = this.conversations.get(id);
    if (c === undefined) {
      c = {
        id,
        peer,
        lastSeq: 0n,
        readSeq: 0n,
        receipts: new Map(),
        stored: new Map(),
        pending: new Map(),
        preview: undefined,
        lastActivity: 0,
        history: { loaded: false, loading: false, hasMoreBefore: true },
        typing: undefined,
        muted: false,
      };
      this.conversations.set(id, c);
    } else if (c.peer === undefined && peer !== undefined) {
      c.peer = peer;
    }
    return c;
  }

  /** A row of ListConversations / OpenDirect. */
  applyConversation(view: Conversation): ConversationModel {
    const c = this.conversation(view.id, view.peer);
    c.muted = view.muted;
    c.lastSeq = maxOf(c.lastSeq, view.lastSeq);
    c.readSeq = maxOf(c.readSeq, view.readSeq);
    if (view.peerReceipt !== undefined) {
      this.applyReceipt(view.peerReceipt);
    }
    if (view.peerPresence !== undefined) {
      this.applyPresence(view.peerPresence);
    }
    if (view.lastMessage !== undefined) {
      this.applyMessage(view.lastMessage, { preview: true });
    }
    return c;
  }

  /**
   * A stored message, from the live stream or a history page. With `preview`, it only
   * updates the list's preview (the conversation list's last message), not the chat.
   */
  applyMessage(m: Message, options: { preview?: boolean } = {}): ChatMessage {
    const sender = m.sender ?? { $typeName: "chat.v1.User", id: "", name: "?" };
    const own = sender.id === this.me.id;
    const c = this.conversation(m.conversationId, own ? undefined : sender);
    const message: ChatMessage = {
      key: `${sender.id}/${m.clientMsgId}`,
      conversationId: m.conversationId,
      seq: m.seq,
      clientMsgId: m.clientMsgId,
      sender,
      text: m.text,
      sentAt: m.sentAt === undefined ? new Date() : timestampDate(m.sentAt),
      own,
    };
    if (!options.preview) {
      c.stored.set(m.seq, message);
      if (own) {
        c.pending.delete(m.clientMsgId);
      }
    }
    if (c.preview === undefined || (c.preview.seq ?? 0n) <= m.seq) {
      c.preview = message;
    }
    c.lastSeq = maxOf(c.lastSeq, m.seq);
    c.lastActivity = Math.max(c.lastActivity, message.sentAt.getTime());
    // A message ends its sender's typing.
    if (!own && c.typing?.name === sender.name) {
      c.typing = undefined;
    }
    return message;
  }

  /** An own message on its way: shown at once, with a clock until the server stores it. */
  addPending(conversationId: string, clientMsgId: string, text: string): ChatMessage {
    const c = this.conversation(conversationId);
    const message: ChatMessage = {
      key: `${this.me.id}/${clientMsgId}`,
      conversationId,
      seq: undefined,
      clientMsgId,
      sender: this.me,
      text,
      sentAt: new Date(),
      own: true,
    };
    c.pending.set(clientMsgId, message);
    c.preview = message;
    c.lastActivity = Date.now();
    return message;
  }

  /** The server stored an own message (the answer to Send). */
  confirm(conversationId: string, clientMsgId: string, ack: SendAck): void {
    const c = this.conversation(conversationId);
    const pending = c.pending.get(clientMsgId);
    c.pending.delete(clientMsgId);
    if (pending !== undefined && !c.stored.has(ack.seq)) {
      const stored: ChatMessage = {
        ...pending,
        seq: ack.seq,
        sentAt: ack.sentAt === undefined ? pending.sentAt : timestampDate(ack.sentAt),
      };
      c.stored.set(ack.seq, stored);
      if (c.preview?.key === stored.key) {
        c.preview = stored;
      }
    }
    c.lastSeq = maxOf(c.lastSeq, ack.seq);
    // Sending while caught up marks the conversation read for the sender, as the server does.
    if (c.readSeq + 1n >= ack.seq) {
      c.readSeq = maxOf(c.readSeq, ack.seq);
    }
  }

  /** The server refused an own message for good. */
  fail(conversationId: string, clientMsgId: string, reason: string): void {
    const pending = this.conversations.get(conversationId)?.pending.get(clientMsgId);
    if (pending !== undefined) {
      pending.error = reason;
    }
  }

  /** Clears a refusal before the same message is sent again. */
  retrying(conversationId: string, clientMsgId: string): ChatMessage | undefined {
    const pending = this.conversations.get(conversationId)?.pending.get(clientMsgId);
    if (pending !== undefined) {
      delete pending.error;
    }
    return pending;
  }

  /** A member's watermarks: the own read mark (unread count) or another member's (ticks). */
  applyReceipt(r: Receipt): void {
    const userId = r.user?.id;
    if (userId === undefined) {
      return;
    }
    const c = this.conversation(r.conversationId);
    if (userId === this.me.id) {
      c.readSeq = maxOf(c.readSeq, r.readSeq);
      return;
    }
    const known = c.receipts.get(userId);
    c.receipts.set(userId, {
      deliveredSeq: maxOf(known?.deliveredSeq ?? 0n, maxOf(r.deliveredSeq, r.readSeq)),
      readSeq: maxOf(known?.readSeq ?? 0n, r.readSeq),
    });
  }

  applyPresence(p: Presence): void {
    if (p.user === undefined) {
      return;
    }
    this.presence.set(p.user.id, {
      online: p.online,
      lastSeen: p.lastSeen === undefined ? undefined : timestampDate(p.lastSeen),
    });
  }

  applyTyping(conversationId: string, user: User | undefined, typing: boolean, now = Date.now()): void {
    if (user === undefined || user.id === this.me.id) {
      return;
    }
    const c = this.conversation(conversationId);
    c.typing = typing ? { name: user.name, until: now + TYPING_TTL_MS } : undefined;
  }

  /** Marks read locally ahead of the server's answer, so the badge clears at once. */
  markReadLocally(c: ConversationModel, seq: bigint): void {
    c.readSeq = maxOf(c.readSeq, seq);
  }
}
