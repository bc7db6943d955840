/**
 * `ChatSession`: the live side of the chat for a browser. It keeps one `Subscribe` stream open
 * and turns it into one ordered stream of typed events, the way the Rust SDK's `Session`
 * does for `Connect`, and adds what a browser needs on top:
 *
 * - reconnects with full-jitter exponential backoff, moving to the next base URL after each
 *   failure, and resumes from the cursors it holds, so nothing is missed or shown twice;
 * - drops messages it already holds, by (conversation, seq), across reconnects;
 * - reports receipts only when they move forward;
 * - sends through an outbox: a message sent while disconnected, or whose Send failed with a
 *   retryable code, is sent again with the same `client_msg_id` once the stream is back;
 * - acknowledges delivery, coalesced into one Ack per conversation per burst;
 * - heartbeats at the interval the server's `welcome` asks for;
 * - stops for good on UNAUTHENTICATED: the token is gone and retrying cannot help.
 *
 * Browsers cannot stream upward (grpc-web), so everything the native stream carries upward is
 * a unary call here: Send, Ack, MarkRead, SetTyping, Heartbeat.
 */
import { durationMs } from "@bufbuild/protobuf/wkt";

import type { SubscribeResponse } from "./gen/chat/v1/chat_pb.js";
import type {
  Cursor,
  Message,
  Presence,
  Receipt,
  SendAck,
  SendMessage,
  ServerFrame,
  Typing,
  User,
} from "./gen/chat/v1/types_pb.js";
import { AckBatch } from "./acks.js";
import { Backoff, type BackoffOptions, type Random } from "./backoff.js";
import type { ChatClient } from "./client.js";
import { newClientMsgId, sendMessage, type Target } from "./messages.js";
import { Cursors } from "./cursors.js";
import { ChatError, Code, codeFromName } from "./errors.js";
import { ReceiptBook } from "./receipts.js";
import { sleep } from "./sleep.js";

/** How a session behaves. */
export interface SessionOptions {
  /**
   * Where a previous session of this device stopped (`session.cursors()`); the stream resumes
   * after them. Without them the server resumes after the user's delivered watermarks and
   * older messages come from history.
   */
  cursors?: Cursors;
  /** Acknowledge delivery of every message as it arrives (what a messaging app does). On by default. */
  autoAck?: boolean;
  /**
   * Heartbeat at this interval instead of the one the server's `welcome` asks for; 0 turns
   * heartbeats off (the device then shows offline after the presence timeout).
   */
  heartbeatIntervalMs?: number;
  /** Delays between reconnection attempts; 500 ms doubling up to 30 s by default. */
  reconnect?: Partial<BackoffOptions>;
  /** Delays between attempts of one send while connected; 250 ms doubling up to 5 s by default. */
  sendRetry?: Partial<BackoffOptions>;
}

/** Where the session's stream stands. */
export type ConnectionState =
  /** A stream is being opened; `attempt` counts from 1 since the last healthy stream. */
  | { status: "connecting"; attempt: number; baseUrl: string }
  /** The server accepted the stream (`welcome`); calls and sends flow. */
  | { status: "online"; baseUrl: string; user: User; sessionId: string }
  /** The stream failed; attempt number `attempt` starts after `delayMs`. */
  | { status: "reconnecting"; attempt: number; delayMs: number; error: ChatError }
  /**
   * The session is over. `reason` is "auth" when the server refused the token (log in again),
   * "closed" when the app closed it.
   */
  | { status: "closed"; reason: "closed" | "auth"; error?: ChatError };

/** Something that happened, in the order the server sent it. */
export type SessionEvent =
  /** A message, seen for the first time by this session. */
  | { type: "message"; message: Message }
  /** A member's delivered / read watermarks moved forward (never reported backwards). */
  | { type: "receipt"; receipt: Receipt }
  /** A contact came online or went offline. */
  | { type: "presence"; presence: Presence }
  /** A member started or stopped typing. */
  | { type: "typing"; typing: Typing }
  /** Everything stored before this stream started has been replayed; where it ended, per conversation. */
  | { type: "caughtUp"; cursors: Cursors }
  /** A request failed in the background, or the server sent an `error` frame. */
  | { type: "error"; error: ChatError; requestId?: bigint; clientMsgId?: string }
  /** The connection changed state. */
  | { type: "state"; state: ConnectionState };

export type SessionEventType = SessionEvent["type"];
export type SessionEventOf<K extends SessionEventType> = Extract<SessionEvent, { type: K }>;

/** A send the session still owes the server. */
export interface PendingSend {
  clientMsgId: string;
  target: Target;
  text: string;
}

/** The calls a session makes; `ChatClient` provides them with its token and base URLs. */
export interface SessionBackend {
  baseUrl(): string;
  rotate(): void;
  subscribe(cursors: Cursor[], signal: AbortSignal): AsyncIterable<SubscribeResponse>;
  sendOnce(message: SendMessage, signal?: AbortSignal): Promise<SendAck>;
  ack(conversationId: string, seq: bigint): Promise<Receipt>;
  heartbeat(timeoutMs?: number): Promise<void>;
}

interface OutboxEntry extends PendingSend {
  message: SendMessage;
  promise: Promise<SendAck>;
  resolve: (ack: SendAck) => void;
  reject: (error: ChatError) => void;
}

const DEFAULT_HEARTBEAT_MS = 15_000;
/** A heartbeat that takes longer than this counts as failed: the connection is suspect. */
const HEARTBEAT_TIMEOUT_MS = 10_000;

export class ChatSession {
  /** The client this session was opened from; use it for history, conversations, presence. */
  readonly client: ChatClient;

  readonly #backend: SessionBackend;
  readonly #autoAck: boolean;
  readonly #heartbeatOverrideMs: number | undefined;
  readonly #cursors: Cursors;
  /**
   * Whether the cursors cover every conversation of the user. A stream that carries cursors
   * replays a conversation without one from its start (the device "never saw it"), so
   * partial cursors — a stream that failed before `caught_up` — are not sent; resuming from
   * the delivered watermarks instead only replays duplicates, which are dropped.
   */
  #cursorsComplete: boolean;
  readonly #receipts = new ReceiptBook();
  readonly #acks = new AckBatch();
  readonly #reconnectBackoff: Backoff;
  readonly #sendBackoff: Backoff;
  readonly #ackBackoff: Backoff;

  #state: ConnectionState;
  #user: User | undefined;
  readonly #listeners = new Set<(event: SessionEvent) => void>();

  /** Aborted when the session ends: cuts short every wait and in-flight call. */
  readonly #stop = new AbortController();
  /** The open stream, and why the session aborted it (heartbeat failure), if it did. */
  #stream: { abort: AbortController; reason?: ChatError } | undefined;
  /** Cuts short the wait before the next reconnection attempt. */
  #wake: AbortController | undefined;
  #onlineWaiters: Array<() => void> = [];

  #heartbeatTimer: ReturnType<typeof setInterval> | undefined;
  #heartbeatBusy = false;
  #ackTimer: ReturnType<typeof setTimeout> | undefined;
  #ackFlushing = false;
  #outbox: OutboxEntry[] = [];
  #pumping = false;

  readonly #closed: Promise<ConnectionState & { status: "closed" }>;
  #resolveClosed!: (state: ConnectionState & { status: "closed" }) => void;

  /** Use `ChatClient.openSession`. */
  constructor(client: ChatClient, backend: SessionBackend, options: SessionOptions, random: Random) {
    this.client = client;
    this.#backend = backend;
    this.#autoAck = options.autoAck ?? true;
    this.#heartbeatOverrideMs = options.heartbeatIntervalMs;
    this.#cursors = options.cursors?.clone() ?? new Cursors();
    this.#cursorsComplete = this.#cursors.size > 0;
    this.#reconnectBackoff = new Backoff({ initialMs: 500, maxMs: 30_000, ...options.reconnect }, random);
    this.#sendBackoff = new Backoff({ initialMs: 250, maxMs: 5_000, ...options.sendRetry }, random);
    this.#ackBackoff = new Backoff({ initialMs: 250, maxMs: 5_000, ...options.sendRetry }, random);
    this.#state = { status: "connecting", attempt: 1, baseUrl: backend.baseUrl() };
    this.#closed = new Promise((resolve) => {
      this.#resolveClosed = resolve;
    });
    // Start on the next microtask, so listeners attached right after `openSession` see
    // every event, the first "connecting" included.
    queueMicrotask(() => void this.#run());
  }

  // --- what the app reads ---

  /** Where the stream stands now. */
  get state(): ConnectionState {
    return this.#state;
  }

  /** The logged-in user, once the server has welcomed the session. */
  get user(): User | undefined {
    return this.#user;
  }

  /** The cursors a later session should resume from (a copy). */
  cursors(): Cursors {
    return this.#cursors.clone();
  }

  /** Sends not yet acknowledged by the server, oldest first. */
  pendingSends(): PendingSend[] {
    return this.#outbox.map(({ clientMsgId, target, text }) => ({ clientMsgId, target, text }));
  }

  /** Resolves once the session is over, with the final state. */
  get closed(): Promise<ConnectionState & { status: "closed" }> {
    return this.#closed;
  }

  /** Calls `listener` for every event of this type; returns a function that stops it. */
  on<K extends SessionEventType>(type: K, listener: (event: SessionEventOf<K>) => void): () => void {
    return this.onEvent((event) => {
      if (event.type === type) {
        listener(event as SessionEventOf<K>);
      }
    });
  }

  /** Calls `listener` for every event; returns a function that stops it. */
  onEvent(listener: (event: SessionEvent) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /**
   * Every event from now on, as an async iterator that ends after the "closed" state. Events
   * queue up while the consumer is busy (nothing is dropped, so keep consuming).
   */
  events(): AsyncIterableIterator<SessionEvent> {
    const queue: SessionEvent[] = [];
    let ended = this.#state.status === "closed";
    let wake: (() => void) | undefined;
    // Registered now, not on the first `next()`, so nothing between the two is missed.
    const off = this.onEvent((event) => {
      queue.push(event);
      if (event.type === "state" && event.state.status === "closed") {
        ended = true;
      }
      wake?.();
    });
    const finish = (): IteratorReturnResult<undefined> => {
      off();
      ended = true;
      queue.length = 0;
      return { done: true, value: undefined };
    };
    const iterator: AsyncIterableIterator<SessionEvent> = {
      [Symbol.asyncIterator]: () => iterator,
      next: async (): Promise<IteratorResult<SessionEvent, undefined>> => {
        for (;;) {
          const event = queue.shift();
          if (event !== undefined) {
            return { done: false, value: event };
          }
          if (ended) {
            return finish();
          }
          await new Promise<void>((resolve) => {
            wake = resolve;
          });
          wake = undefined;
        }
      },
      return: async (): Promise<IteratorReturnResult<undefined>> => finish(),
    };
    return iterator;
  }

  // --- what the app does ---

  /**
   * Sends `text`; resolves with the server's ack. The message waits in the outbox while the
   * session is disconnected, and a retryable failure is retried with the same
   * `client_msg_id`, so it is stored exactly once. Sends go out one at a time, in order.
   * Rejects on a non-retryable status, or with a "sessionClosed" error if the session ends
   * first (send again with the same `clientMsgId` to be safe from duplicates).
   */
  send(target: Target, text: string, options: { clientMsgId?: string } = {}): Promise<SendAck> {
    const clientMsgId = options.clientMsgId ?? newClientMsgId();
    const queued = this.#outbox.find((e) => e.clientMsgId === clientMsgId);
    if (queued !== undefined) {
      return queued.promise;
    }
    if (this.#stop.signal.aborted) {
      return Promise.reject(ChatError.sessionClosed());
    }
    let resolve!: (ack: SendAck) => void;
    let reject!: (error: ChatError) => void;
    const promise = new Promise<SendAck>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    this.#outbox.push({ clientMsgId, target, text, message: sendMessage(target, clientMsgId, text), promise, resolve, reject });
    void this.#pump();
    return promise;
  }

  /** Acknowledges delivery up to `seq` (done automatically with `autoAck`). */
  async ack(conversationId: string, seq: bigint): Promise<Receipt> {
    const receipt = await this.client.ack(conversationId, seq);
    this.#emitReceipt(receipt);
    return receipt;
  }

  /** Marks the conversation read up to `seq` (0: everything so far). */
  async markRead(conversationId: string, seq: bigint = 0n): Promise<Receipt> {
    const receipt = await this.client.markRead(conversationId, seq);
    this.#emitReceipt(receipt);
    return receipt;
  }

  /** Tells the other members the user is typing (or stopped). */
  async setTyping(conversationId: string, typing: boolean): Promise<void> {
    await this.client.setTyping(conversationId, typing);
  }

  /** Skips the wait before the next reconnection attempt (e.g. when the browser comes back online). */
  reconnectNow(): void {
    this.#wake?.abort();
  }

  /** Ends the session: the stream closes and unsent messages are rejected. */
  close(): void {
    this.#finish("closed");
  }

  // --- the connection loop ---

  async #run(): Promise<void> {
    while (!this.#stop.signal.aborted) {
      const baseUrl = this.#backend.baseUrl();
      this.#setState({ status: "connecting", attempt: this.#reconnectBackoff.failures + 1, baseUrl });
      const stream: { abort: AbortController; reason?: ChatError } = { abort: new AbortController() };
      this.#stream = stream;
      let failure: ChatError;
      try {
        const cursors = this.#cursorsComplete ? this.#cursors.toProto() : [];
        for await (const response of this.#backend.subscribe(cursors, stream.abort.signal)) {
          this.#onFrame(response.frame, baseUrl);
        }
        failure = new ChatError("status", Code.Unavailable, "the server ended the stream");
      } catch (e) {
        failure = stream.reason ?? ChatError.from(e);
      } finally {
        this.#stream = undefined;
        this.#offline();
      }
      if (this.#stop.signal.aborted) {
        return;
      }
      if (failure.isAuth) {
        this.#finish("auth", failure);
        return;
      }
      // Another gateway may be up when this one is not.
      this.#backend.rotate();
      const delayMs = this.#reconnectBackoff.next();
      this.#setState({ status: "reconnecting", attempt: this.#reconnectBackoff.failures + 1, delayMs, error: failure });
      const wake = new AbortController();
      this.#wake = wake;
      await sleep(delayMs, wake.signal);
      this.#wake = undefined;
    }
  }

  #onFrame(frame: ServerFrame | undefined, baseUrl: string): void {
    const kind = frame?.kind;
    switch (kind?.case) {
      case "welcome": {
        const welcome = kind.value;
        if (welcome.user === undefined) {
          throw ChatError.protocol("welcome without a user");
        }
        this.#user = welcome.user;
        const serverMs = welcome.heartbeatInterval === undefined ? undefined : durationMs(welcome.heartbeatInterval);
        this.#online(this.#heartbeatOverrideMs ?? serverMs ?? DEFAULT_HEARTBEAT_MS);
        this.#setState({ status: "online", baseUrl, user: welcome.user, sessionId: welcome.sessionId });
        return;
      }
      case "message": {
        const message = kind.value;
        if (!this.#cursors.advance(message.conversationId, message.seq)) {
          return; // Already held: a replay after a reconnect, or a doorbell rung twice.
        }
        if (this.#autoAck) {
          this.#acks.record(message.conversationId, message.seq);
          this.#scheduleAckFlush(0);
        }
        this.#emit({ type: "message", message });
        return;
      }
      case "caughtUp": {
        for (const c of kind.value.cursors) {
          this.#cursors.advance(c.conversationId, c.seq);
        }
        this.#cursorsComplete = true;
        // A stream that got this far is healthy: the next failure starts the backoff over.
        this.#reconnectBackoff.reset();
        this.#emit({ type: "caughtUp", cursors: Cursors.fromProto(kind.value.cursors) });
        return;
      }
      case "receipt":
        this.#emitReceipt(kind.value);
        return;
      case "presence":
        this.#emit({ type: "presence", presence: kind.value });
        return;
      case "typing":
        this.#emit({ type: "typing", typing: kind.value });
        return;
      case "error": {
        const e = kind.value;
        const error = new ChatError("status", codeFromName(e.code), e.message);
        this.#emit({ type: "error", error, requestId: e.requestId, clientMsgId: e.clientMsgId || undefined });
        return;
      }
      case "sendAck": // Sends are unary calls here; their acks come back as answers.
      case undefined:
        return;
    }
  }

  #online(heartbeatMs: number): void {
    if (heartbeatMs > 0) {
      this.#heartbeatTimer = setInterval(() => this.#heartbeat(heartbeatMs), heartbeatMs);
    }
    const waiters = this.#onlineWaiters;
    this.#onlineWaiters = [];
    for (const wake of waiters) {
      wake();
    }
    this.#scheduleAckFlush(0);
  }

  #offline(): void {
    clearInterval(this.#heartbeatTimer);
    this.#heartbeatTimer = undefined;
    clearTimeout(this.#ackTimer);
    this.#ackTimer = undefined;
  }

  /** Resolves when the session is next online (or over). */
  #untilOnline(): Promise<void> {
    if (this.#state.status === "online" || this.#stop.signal.aborted) {
      return Promise.resolve();
    }
    return new Promise((resolve) => this.#onlineWaiters.push(resolve));
  }

  /**
   * One heartbeat. It is also the liveness probe: a fetch stream on a dead network can hang
   * without an error, so a heartbeat that fails with a retryable code restarts the stream.
   */
  #heartbeat(intervalMs: number): void {
    if (this.#heartbeatBusy) {
      return;
    }
    this.#heartbeatBusy = true;
    // Only the stream this heartbeat vouched for is restarted, never a newer one.
    const stream = this.#stream;
    this.#backend
      .heartbeat(Math.min(intervalMs, HEARTBEAT_TIMEOUT_MS))
      .catch((e: unknown) => {
        const error = ChatError.from(e);
        if (this.#stop.signal.aborted) {
          return;
        }
        if (error.isAuth) {
          this.#finish("auth", error);
        } else if (error.retryable) {
          if (stream !== undefined && stream === this.#stream && !stream.abort.signal.aborted) {
            stream.reason = error;
            stream.abort.abort(error);
          }
        } else {
          this.#emit({ type: "error", error });
        }
      })
      .finally(() => {
        this.#heartbeatBusy = false;
      });
  }

  // --- delivery acks ---

  #scheduleAckFlush(delayMs: number): void {
    if (this.#ackTimer !== undefined || this.#ackFlushing || this.#acks.size === 0) {
      return;
    }
    if (this.#state.status !== "online") {
      return; // Flushed when the session is next online.
    }
    // A timer, not a microtask: the frames of one burst are all handled before it fires.
    this.#ackTimer = setTimeout(() => {
      this.#ackTimer = undefined;
      void this.#flushAcks();
    }, delayMs);
  }

  async #flushAcks(): Promise<void> {
    const batch = this.#acks.take();
    if (batch.length === 0) {
      return;
    }
    this.#ackFlushing = true;
    const results = await Promise.allSettled(batch.map(([c, seq]) => this.#backend.ack(c, seq)));
    this.#ackFlushing = false;
    if (this.#stop.signal.aborted) {
      return;
    }
    let failed = false;
    results.forEach((result, i) => {
      if (result.status === "fulfilled") {
        this.#emitReceipt(result.value);
        return;
      }
      const error = ChatError.from(result.reason);
      const entry = batch[i];
      if (error.isAuth) {
        this.#finish("auth", error);
      } else if (error.retryable && entry !== undefined) {
        // A watermark: acking the highest seq later covers this one too.
        this.#acks.record(entry[0], entry[1]);
        failed = true;
      } else {
        this.#emit({ type: "error", error });
      }
    });
    if (failed) {
      this.#scheduleAckFlush(this.#ackBackoff.next());
    } else {
      this.#ackBackoff.reset();
      this.#scheduleAckFlush(0);
    }
  }

  // --- the outbox ---

  async #pump(): Promise<void> {
    if (this.#pumping) {
      return;
    }
    this.#pumping = true;
    try {
      for (;;) {
        const head = this.#outbox[0];
        if (head === undefined || this.#stop.signal.aborted) {
          return;
        }
        if (this.#state.status !== "online") {
          await this.#untilOnline();
          continue;
        }
        try {
          const ack = await this.#backend.sendOnce(head.message, this.#stop.signal);
          this.#sendBackoff.reset();
          this.#settle(head, () => head.resolve(ack));
        } catch (e) {
          if (this.#stop.signal.aborted) {
            return;
          }
          const error = ChatError.from(e);
          if (error.isAuth) {
            this.#finish("auth", error);
            return;
          }
          if (!error.retryable) {
            this.#settle(head, () => head.reject(error));
            continue;
          }
          // Kept at the head: the next attempt (after this delay, or after the reconnect
          // if the stream has gone) reuses its client_msg_id, and later sends wait their turn.
          await sleep(this.#sendBackoff.next(), this.#stop.signal);
        }
      }
    } finally {
      this.#pumping = false;
    }
  }

  #settle(entry: OutboxEntry, settle: () => void): void {
    const i = this.#outbox.indexOf(entry);
    if (i >= 0) {
      this.#outbox.splice(i, 1);
      settle();
    }
  }

  // --- events and the end ---

  #emitReceipt(receipt: Receipt): void {
    const merged = this.#receipts.merge(receipt);
    if (merged !== undefined) {
      this.#emit({ type: "receipt", receipt: merged });
    }
  }

  #setState(state: ConnectionState): void {
    this.#state = state;
    this.#emit({ type: "state", state });
  }

  #emit(event: SessionEvent): void {
    for (const listener of [...this.#listeners]) {
      try {
        listener(event);
      } catch (e) {
        // An app bug must not break the session; rethrown outside so it still shows up.
        queueMicrotask(() => {
          throw e;
        });
      }
    }
  }

  #finish(reason: "closed" | "auth", error?: ChatError): void {
    if (this.#stop.signal.aborted) {
      return;
    }
    this.#stop.abort();
    this.#stream?.abort.abort();
    this.#wake?.abort();
    this.#offline();
    const unsent = this.#outbox;
    this.#outbox = [];
    for (const entry of unsent) {
      entry.reject(error ?? ChatError.sessionClosed());
    }
    for (const wake of this.#onlineWaiters) {
      wake();
    }
    this.#onlineWaiters = [];
    const state: ConnectionState & { status: "closed" } =
      error === undefined ? { status: "closed", reason } : { status: "closed", reason, error };
    this.#setState(state);
    this.#resolveClosed(state);
  }
}
