/**
 * `ChatSession`: the live side of the chat for a browser. It keeps one `Subscribe` stream open
 * and turns it into one ordered stream of typed events, the way the Rust SDK's `Session`
 * does for `Connect`, and adds what a browser needs on top:
 *
 * - reconnects with full-jitter exponential backoff, moving to the next base URL after each
 *   failure, and resumes from the cursors it holds once they are complete (after a
 *   `caught_up`), so nothing is missed or shown twice;
 * - drops messages it already holds, by (conversation, seq), across reconnects;
 * - reports receipts only when they move forward;
 * - sends through an outbox: a message sent while disconnected, or whose Send failed with a
 *   transient code, is sent again with the same `client_msg_id` once the stream is back
 *   (see `send` for which codes are retried, and for how long);
 * - acknowledges delivery, coalesced into one Ack per conversation per burst;
 * - heartbeats at the interval the server's `welcome` asks for;
 * - takes a stream that has been silent for two of those intervals for dead and reconnects:
 *   the server sends a `keep_alive` frame whenever it has been quiet for one, and over
 *   grpc-web on HTTP/1.1 nothing else shows that a half-open stream is gone (there are no
 *   transport pings, and heartbeats travel on other connections);
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
import { ChildAbort, sleep } from "./sleep.js";

/** How a session behaves. */
export interface SessionOptions {
  /**
   * Where a previous session of this device stopped (`session.cursors()`, or saved with
   * `toJSON` and read back with `Cursors.fromJSON`). Messages they hold are dropped as
   * duplicates either way, but they are sent to the server only if they are complete
   * (`Cursors.complete`: the previous session had caught up); then the stream resumes
   * after them. Otherwise, as without cursors, the server resumes after the user's
   * delivered watermarks, and older messages come from history.
   */
  cursors?: Cursors;
  /** Acknowledge delivery of every message as it arrives (what a messaging app does). On by default. */
  autoAck?: boolean;
  /**
   * Heartbeat at this interval instead of the one the server's `welcome` asks for; 0 turns
   * heartbeats off (the device then shows offline after the presence timeout). The stream
   * is still taken for dead after two of the server's intervals without a frame (the server
   * keeps a quiet stream busy at its own interval, whatever this says).
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
  /** Attempts that failed with UNKNOWN while the connection worked. */
  unknownFailures: number;
  /** Attempts that failed with RESOURCE_EXHAUSTED. */
  exhaustedFailures: number;
}

/**
 * A `Subscribe` stream, and why the session aborted it (a failed heartbeat, or silence), if
 * it did.
 */
interface OpenStream {
  abort: ChildAbort;
  reason?: ChatError;
  /**
   * How long the stream may go without a frame before it counts as dead; set by the
   * `welcome` (undefined until then, or when the server names no heartbeat interval).
   */
  silenceLimitMs?: number;
}

const DEFAULT_HEARTBEAT_MS = 15_000;
/**
 * The server sends a frame (a `keep_alive` if nothing else) at least once per heartbeat
 * interval, so a stream silent for two intervals and this much more is taken for dead. The
 * margin covers network jitter and a busy event loop.
 */
export const KEEP_ALIVE_MARGIN_MS = 2_000;
/** A heartbeat that takes longer than this counts as failed: the connection is suspect. */
const HEARTBEAT_TIMEOUT_MS = 10_000;
/**
 * How many times the outbox tries a send that fails with UNKNOWN while the connection
 * works: a status that may be transient, but may as well be a gateway refusing this one
 * request (an HTTP error maps to UNKNOWN), which retrying forever would let block every
 * later send.
 */
export const MAX_UNKNOWN_SEND_ATTEMPTS = 3;
/**
 * How many times the outbox tries a send that fails with RESOURCE_EXHAUSTED. Mostly that
 * is the server's rate limit, which passes (a queue drained after a long time offline runs
 * into it): with the default delays the attempts span about 14 s on average, far longer
 * than the limit takes to let one more message through. But the gateway also answers a
 * body over its size limit with RESOURCE_EXHAUSTED, which no retry fixes, so the attempts
 * are bounded.
 */
export const MAX_EXHAUSTED_SEND_ATTEMPTS = 10;

/** Longer timeouts fire at once in browsers (a signed 32-bit count of milliseconds). */
const MAX_TIMEOUT_MS = 2 ** 31 - 1;

/**
 * How long a stream may go without a frame, from the heartbeat interval the server's
 * `welcome` names (not the app's override: it is the server that keeps the stream busy).
 * Undefined, so no watchdog, when it names none or one too long to time.
 */
function silenceLimitMs(serverHeartbeatMs: number | undefined): number | undefined {
  if (serverHeartbeatMs === undefined || !(serverHeartbeatMs > 0)) {
    return undefined;
  }
  const limitMs = 2 * serverHeartbeatMs + KEEP_ALIVE_MARGIN_MS;
  return limitMs <= MAX_TIMEOUT_MS ? limitMs : undefined;
}

export class ChatSession {
  /** The client this session was opened from; use it for history, conversations, presence. */
  readonly client: ChatClient;

  readonly #backend: SessionBackend;
  readonly #autoAck: boolean;
  readonly #heartbeatOverrideMs: number | undefined;
  /**
   * Sent when a stream starts only once complete (`Cursors.complete`). A stream that carries
   * cursors replays a conversation without one from its start (the device "never saw it"),
   * so partial cursors (a stream that failed before `caught_up`) are not sent; resuming from
   * the delivered watermarks instead only replays duplicates, which are dropped.
   */
  readonly #cursors: Cursors;
  readonly #receipts = new ReceiptBook();
  readonly #acks = new AckBatch();
  readonly #reconnectBackoff: Backoff;
  readonly #sendBackoff: Backoff;
  readonly #ackBackoff: Backoff;

  #state: ConnectionState;
  #user: User | undefined;
  readonly #listeners = new Set<(event: SessionEvent) => void>();

  /**
   * Aborted when the session ends: cuts short every wait and in-flight call (the stream's
   * and the backoff's controllers abort with it).
   */
  readonly #stop = new AbortController();
  /** The open stream. */
  #stream: OpenStream | undefined;
  /** Cuts short the wait before the next reconnection attempt. */
  #wake: ChildAbort | undefined;
  #onlineWaiters: Array<() => void> = [];

  #heartbeatTimer: ReturnType<typeof setInterval> | undefined;
  #heartbeatBusy = false;
  /** Restarts the open stream if no frame arrives in time (see `#expectFrame`). */
  #silenceTimer: ReturnType<typeof setTimeout> | undefined;
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

  /**
   * The cursors a later session should resume from (a copy; save it with `toJSON`). They are
   * complete (`Cursors.complete`) only once this session has received a `caught_up`; a later
   * session given incomplete ones uses them only to drop duplicates, not to resume.
   */
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
   * session is disconnected, and a failed attempt is retried with the same `client_msg_id`
   * (with backoff), so it is stored exactly once. Sends go out one at a time, in order.
   *
   * - UNAVAILABLE, DEADLINE_EXCEEDED and ABORTED are transient: retried for as long as the
   *   session is open.
   * - RESOURCE_EXHAUSTED (the rate limit, mostly) is retried up to
   *   `MAX_EXHAUSTED_SEND_ATTEMPTS` attempts in all, and UNKNOWN up to
   *   `MAX_UNKNOWN_SEND_ATTEMPTS`; then the send is rejected, an "error" event carries its
   *   `clientMsgId`, and the next send goes. An UNKNOWN while the connection itself is down
   *   (checked with a heartbeat, which restarts the stream if it fails) does not count.
   * - Any other status rejects at once; UNAUTHENTICATED also ends the session.
   *
   * Rejects with a "sessionClosed" error if the session ends first (send again with the
   * same `clientMsgId` to be safe from duplicates).
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
    const message = sendMessage(target, clientMsgId, text);
    this.#outbox.push({
      clientMsgId,
      target,
      text,
      message,
      promise,
      resolve,
      reject,
      unknownFailures: 0,
      exhaustedFailures: 0,
    });
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

  /**
   * Ends the session: the stream closes, waits end, no further call is made, and unsent
   * messages are rejected. Safe to call at any time, from an event listener too.
   */
  close(): void {
    this.#finish("closed");
  }

  // --- the connection loop ---

  // Listeners run inside `#setState` and `#emit`, and may close the session there: every
  // step after one checks `#stop` before it opens a call or starts a timer.

  async #run(): Promise<void> {
    const stopped = this.#stop.signal;
    while (!stopped.aborted) {
      const baseUrl = this.#backend.baseUrl();
      this.#setState({ status: "connecting", attempt: this.#reconnectBackoff.failures + 1, baseUrl });
      if (stopped.aborted) {
        return;
      }
      const failure = await this.#subscribe(baseUrl);
      if (stopped.aborted) {
        return;
      }
      if (failure.isAuth) {
        this.#finish("auth", failure);
        return;
      }
      // Another gateway may be up when this one is not.
      this.#backend.rotate();
      const delayMs = this.#reconnectBackoff.next();
      const wake = new ChildAbort(stopped);
      this.#wake = wake;
      try {
        this.#setState({ status: "reconnecting", attempt: this.#reconnectBackoff.failures + 1, delayMs, error: failure });
        if (!stopped.aborted) {
          await sleep(delayMs, wake.signal);
        }
      } finally {
        wake.release();
        this.#wake = undefined;
      }
    }
  }

  /** Runs one `Subscribe` stream to its end; returns why it ended. */
  async #subscribe(baseUrl: string): Promise<ChatError> {
    const stopped = this.#stop.signal;
    const stream: OpenStream = { abort: new ChildAbort(stopped) };
    this.#stream = stream;
    try {
      const cursors = this.#cursors.complete ? this.#cursors.toProto() : [];
      for await (const response of this.#backend.subscribe(cursors, stream.abort.signal)) {
        if (stopped.aborted) {
          break;
        }
        this.#onFrame(response.frame, stream, baseUrl);
        // Any frame, a keep-alive included, shows the stream is alive.
        this.#expectFrame(stream);
      }
      return new ChatError("status", Code.Unavailable, "the server ended the stream");
    } catch (e) {
      return stream.reason ?? ChatError.from(e);
    } finally {
      stream.abort.release();
      if (this.#stream === stream) {
        this.#stream = undefined;
      }
      this.#offline();
    }
  }

  #onFrame(frame: ServerFrame | undefined, stream: OpenStream, baseUrl: string): void {
    const kind = frame?.kind;
    switch (kind?.case) {
      case "welcome": {
        const welcome = kind.value;
        if (welcome.user === undefined) {
          throw ChatError.protocol("welcome without a user");
        }
        this.#user = welcome.user;
        const serverMs = welcome.heartbeatInterval === undefined ? undefined : durationMs(welcome.heartbeatInterval);
        stream.silenceLimitMs = silenceLimitMs(serverMs);
        // The state first: the outbox and the ack flush go only when the session is online.
        this.#setState({ status: "online", baseUrl, user: welcome.user, sessionId: welcome.sessionId });
        this.#online(this.#heartbeatOverrideMs ?? serverMs ?? DEFAULT_HEARTBEAT_MS);
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
        // They cover every conversation now, and every later message moves them on.
        this.#cursors.markComplete();
        // A stream that got this far is healthy: the next failure starts the backoff over.
        this.#reconnectBackoff.reset();
        const listed = Cursors.fromProto(kind.value.cursors);
        listed.markComplete();
        this.#emit({ type: "caughtUp", cursors: listed });
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
      case "keepAlive": // Only proof of life, which any frame is (see `#expectFrame`); never an event.
      case "sendAck": // Sends are unary calls here; their acks come back as answers.
      case undefined:
        return;
    }
  }

  #online(heartbeatMs: number): void {
    // Closed (or the stream restarted) by a listener of the "online" state: nothing to start.
    if (this.#stop.signal.aborted || this.#state.status !== "online") {
      return;
    }
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

  /**
   * (Re)arms the silence watchdog of `stream` after a frame: if no further frame arrives
   * within its limit, the stream is aborted with a retryable error and `#run` reconnects
   * (with backoff, resuming from the cursors), as after a failed heartbeat.
   */
  #expectFrame(stream: OpenStream): void {
    clearTimeout(this.#silenceTimer);
    this.#silenceTimer = undefined;
    const limitMs = stream.silenceLimitMs;
    // Not when the session or this stream has ended meanwhile (e.g. closed from a listener).
    if (limitMs === undefined || this.#stop.signal.aborted || stream !== this.#stream || stream.abort.signal.aborted) {
      return;
    }
    this.#silenceTimer = setTimeout(() => {
      this.#silenceTimer = undefined;
      const error = new ChatError("status", Code.Unavailable, `no frame from the server for ${limitMs} ms: the stream is presumed dead`);
      this.#restartStream(stream, error);
    }, limitMs);
  }

  #offline(): void {
    clearTimeout(this.#silenceTimer);
    this.#silenceTimer = undefined;
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
    if (this.#heartbeatBusy || this.#stop.signal.aborted) {
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
          this.#restartStream(stream, error);
        } else {
          this.#emit({ type: "error", error });
        }
      })
      .finally(() => {
        this.#heartbeatBusy = false;
      });
  }

  /** Aborts `stream` so that `#run` opens a new one, unless a newer one has replaced it. */
  #restartStream(stream: OpenStream | undefined, error: ChatError): void {
    if (stream !== undefined && stream === this.#stream && !stream.abort.signal.aborted) {
      stream.reason = error;
      stream.abort.abort(error);
    }
  }

  /**
   * Whether the connection works, checked with a heartbeat. A send that failed with UNKNOWN
   * may have met a dead network (a fetch that fails is UNKNOWN too) rather than a gateway
   * that refuses this request. A check that fails with a retryable code restarts the
   * stream, as a failed heartbeat does.
   */
  async #connectionWorks(): Promise<boolean> {
    const stream = this.#stream;
    try {
      await this.#backend.heartbeat(HEARTBEAT_TIMEOUT_MS);
      return true;
    } catch (e) {
      const error = ChatError.from(e);
      if (this.#stop.signal.aborted) {
        return false;
      }
      if (error.isAuth) {
        this.#finish("auth", error);
        return false;
      }
      if (error.retryable) {
        this.#restartStream(stream, error);
        return false;
      }
      return true; // The gateway answered.
    }
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
          const next = await this.#afterFailure(head, error);
          if (next !== "retry") {
            this.#sendBackoff.reset();
            this.#settle(head, () => head.reject(error));
            if (next === "giveUp") {
              // Dropped after retries in the background: say so even if nobody awaits the send.
              this.#emit({ type: "error", error, clientMsgId: head.clientMsgId });
            }
            continue;
          }
          if (this.#stop.signal.aborted) {
            return;
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

  /**
   * What the outbox does with `entry` after an attempt failed with `error` (see `send`):
   * try again, give up after retrying, or fail it at once.
   */
  async #afterFailure(entry: OutboxEntry, error: ChatError): Promise<"retry" | "giveUp" | "fail"> {
    switch (error.code) {
      case Code.Unavailable:
      case Code.DeadlineExceeded:
      case Code.Aborted:
        return "retry";
      case Code.ResourceExhausted:
        entry.exhaustedFailures += 1;
        return entry.exhaustedFailures < MAX_EXHAUSTED_SEND_ATTEMPTS ? "retry" : "giveUp";
      case Code.Unknown:
        if (!(await this.#connectionWorks())) {
          return "retry"; // Sent again once the stream is back; this attempt does not count.
        }
        entry.unknownFailures += 1;
        return entry.unknownFailures < MAX_UNKNOWN_SEND_ATTEMPTS ? "retry" : "giveUp";
      default:
        return "fail";
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
    // Also aborts the open stream and the backoff wait: their controllers are its children.
    this.#stop.abort();
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
