/**
 * `ChatClient`: authenticated unary calls to the chat API over grpc-web, the transport
 * browsers can use (unary and server-streaming calls only). It holds the bearer token and the
 * list of gateway URLs, and opens live sessions (`openSession`) that share both.
 */
import type { MessageInitShape } from "@bufbuild/protobuf";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { createClient, type CallOptions, type Client, type Transport } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";

import { AuthService, type DeviceSession } from "./gen/chat/v1/auth_pb.js";
import {
  ChatService,
  type Conversation,
  type GetHistoryRequestSchema,
  type SubscribeResponse,
} from "./gen/chat/v1/chat_pb.js";
import { PushService, type AddPushTargetRequestSchema, type PushTarget } from "./gen/chat/v1/push_pb.js";
import type {
  Cursor,
  Message,
  Presence,
  Receipt,
  SendAck,
  SendMessage,
  User,
} from "./gen/chat/v1/types_pb.js";
import { Backoff, type Random } from "./backoff.js";
import { ChatError, Code } from "./errors.js";
import { ChatSession, type SessionBackend, type SessionOptions } from "./session.js";
import { newClientMsgId, sendMessage, type Target } from "./messages.js";
import {
  pushModeName,
  pushModeValue,
  webPushFields,
  type PushModeName,
  type PushSettings,
  type WebPushSubscriptionLike,
} from "./push.js";
import { sleep } from "./sleep.js";

/** A logged-in device session. */
export interface Credentials {
  /** The bearer token; keep it secret. */
  token: string;
  /** Who is logged in. */
  user: User;
  /** When the token stops working. */
  expiresAt: Date | undefined;
}

/** Which page of history to fetch. */
export type Page =
  /** The newest messages. */
  | "latest"
  /** Messages with a seq below this one (scrolling back). */
  | { before: bigint }
  /** Messages with a seq above this one (scrolling forward). */
  | { after: bigint };

/** One page of a conversation's messages, in ascending seq order. */
export interface HistoryPage {
  messages: Message[];
  /** More messages exist beyond this page in the direction asked. */
  hasMore: boolean;
  /** Every member's watermarks. */
  receipts: Receipt[];
}

export interface RetryOptions {
  /** Attempts in all, the first included. */
  attempts: number;
  /** Cap of the first delay; it doubles per failure up to `maxMs`. */
  initialMs: number;
  maxMs: number;
}

export interface ChatClientOptions {
  /**
   * Gateway base URLs (e.g. `location.origin`). Calls go to the current one; a session moves
   * to the next when its stream fails, and a send when it retries, so several gateways act
   * as fallbacks for each other.
   */
  baseUrls: string | readonly string[];
  /** A token from an earlier `register` / `login`. */
  token?: string | undefined;
  /** The device label sent on register / login when the call does not name one. */
  deviceName?: string;
  /** Deadline of each unary call; 10 s by default. Streams have none. */
  timeoutMs?: number;
  /** Retries of `send` on retryable codes; 6 attempts, 100 ms doubling to 5 s by default. */
  sendRetry?: Partial<RetryOptions>;
  /** Builds the transport for one base URL; grpc-web (binary) by default. */
  transport?: (baseUrl: string) => Transport;
  /** The random source of backoff jitter (sends and sessions); tests make it predictable. */
  random?: Random;
}

const DEFAULT_SEND_RETRY: RetryOptions = { attempts: 6, initialMs: 100, maxMs: 5_000 };

/** The default transport: grpc-web with the binary protobuf format. */
export function grpcWebTransport(baseUrl: string): Transport {
  return createGrpcWebTransport({ baseUrl, useBinaryFormat: true });
}

export class ChatClient {
  readonly #baseUrls: readonly string[];
  #current = 0;
  readonly #transports = new Map<string, Transport>();
  readonly #makeTransport: (baseUrl: string) => Transport;
  #token: string | undefined;
  readonly #deviceName: string;
  readonly #timeoutMs: number;
  readonly #sendRetry: RetryOptions;
  readonly #random: Random;

  constructor(options: ChatClientOptions) {
    const urls = typeof options.baseUrls === "string" ? [options.baseUrls] : [...options.baseUrls];
    if (urls.length === 0) {
      throw new ChatError("status", Code.InvalidArgument, "at least one base URL is needed");
    }
    this.#baseUrls = urls;
    this.#makeTransport = options.transport ?? grpcWebTransport;
    this.#token = options.token;
    this.#deviceName = options.deviceName ?? "web";
    this.#timeoutMs = options.timeoutMs ?? 10_000;
    this.#sendRetry = { ...DEFAULT_SEND_RETRY, ...options.sendRetry };
    this.#random = options.random ?? Math.random;
  }

  /** The bearer token in use, if logged in. */
  get token(): string | undefined {
    return this.#token;
  }

  /** Uses `token` for the calls that follow (undefined: logged out). */
  setToken(token: string | undefined): void {
    this.#token = token;
  }

  /** The base URL calls go to now. */
  get baseUrl(): string {
    return this.#baseUrls[this.#current] ?? this.#baseUrls[0] ?? "";
  }

  /** Moves to the next base URL (after a failure on the current one). */
  rotate(): void {
    this.#current = (this.#current + 1) % this.#baseUrls.length;
  }

  // --- accounts ---

  /** Creates an account; the client then uses its token. */
  async register(name: string, password: string, deviceName = this.#deviceName): Promise<Credentials> {
    const r = await this.#call(() =>
      this.#auth().register({ name, password, deviceName }, this.#options(false)),
    );
    return this.#adopt(r.session);
  }

  /** Opens a new device session for an existing account; the client then uses its token. */
  async login(name: string, password: string, deviceName = this.#deviceName): Promise<Credentials> {
    const r = await this.#call(() => this.#auth().login({ name, password, deviceName }, this.#options(false)));
    return this.#adopt(r.session);
  }

  /** Ends this device session on the server (its open streams end too) and forgets the token. */
  async logout(): Promise<void> {
    await this.#call(() => this.#auth().logout({}, this.#options()));
    this.#token = undefined;
  }

  // --- messages ---

  /**
   * Sends `text` with the idempotency key `clientMsgId` (a fresh UUID by default). Retryable
   * failures are retried with the same key and full-jitter backoff, so the message is stored
   * at most once; a retry of a stored message returns the original ack.
   */
  async send(
    target: Target,
    text: string,
    options: { clientMsgId?: string; signal?: AbortSignal } = {},
  ): Promise<SendAck> {
    const message = sendMessage(target, options.clientMsgId ?? newClientMsgId(), text);
    const backoff = new Backoff({ initialMs: this.#sendRetry.initialMs, maxMs: this.#sendRetry.maxMs }, this.#random);
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.sendOnce(message, options.signal);
      } catch (e) {
        const error = ChatError.from(e);
        if (!error.retryable || attempt >= this.#sendRetry.attempts || options.signal?.aborted === true) {
          throw error;
        }
        if (this.#baseUrls.length > 1) {
          this.rotate();
        }
        await sleep(backoff.next(), options.signal);
      }
    }
  }

  /** One Send call, no retry: sessions retry on their own schedule. */
  async sendOnce(message: SendMessage, signal?: AbortSignal): Promise<SendAck> {
    const r = await this.#call(() => this.#chat().send({ message }, this.#options(true, signal)));
    if (r.ack === undefined) {
      throw ChatError.protocol("send answered without an ack");
    }
    return r.ack;
  }

  /** A page of a conversation's history (limit 0: the server's default of 50; at most 200). */
  async history(conversationId: string, page: Page = "latest", limit = 0): Promise<HistoryPage> {
    let anchor: MessageInitShape<typeof GetHistoryRequestSchema>["anchor"];
    if (page === "latest") {
      anchor = { case: undefined };
    } else if ("before" in page) {
      anchor = { case: "beforeSeq", value: page.before };
    } else {
      anchor = { case: "afterSeq", value: page.after };
    }
    const r = await this.#call(() => this.#chat().getHistory({ conversationId, anchor, limit }, this.#options()));
    return { messages: r.messages, hasMore: r.hasMore, receipts: r.receipts };
  }

  // --- receipts, typing, presence upkeep ---

  /** Records that this device has received everything up to `seq`. */
  async ack(conversationId: string, seq: bigint): Promise<Receipt> {
    const r = await this.#call(() => this.#chat().ack({ ack: { conversationId, seq } }, this.#options()));
    if (r.receipt === undefined) {
      throw ChatError.protocol("ack answered without a receipt");
    }
    return r.receipt;
  }

  /** Marks everything up to `seq` read (0: everything so far). */
  async markRead(conversationId: string, seq: bigint = 0n): Promise<Receipt> {
    const r = await this.#call(() => this.#chat().markRead({ mark: { conversationId, seq } }, this.#options()));
    if (r.receipt === undefined) {
      throw ChatError.protocol("mark_read answered without a receipt");
    }
    return r.receipt;
  }

  /** Tells the other members that the user is (or stopped) typing. */
  async setTyping(conversationId: string, typing: boolean): Promise<void> {
    await this.#call(() => this.#chat().setTyping({ signal: { conversationId, typing } }, this.#options()));
  }

  /** Keeps this device online while it holds a `Subscribe` stream (sessions do this). */
  async heartbeat(timeoutMs?: number): Promise<void> {
    await this.#call(() => this.#chat().heartbeat({}, this.#options(true, undefined, timeoutMs)));
  }

  // --- conversations and presence ---

  /** The direct conversation with `peer`, created if needed. */
  async openDirect(peer: string): Promise<Conversation> {
    const r = await this.#call(() => this.#chat().openDirect({ peer }, this.#options()));
    if (r.conversation === undefined) {
      throw ChatError.protocol("open_direct answered without a conversation");
    }
    return r.conversation;
  }

  /** The user's conversations with at least one message, most recently active first. */
  async listConversations(): Promise<Conversation[]> {
    const r = await this.#call(() => this.#chat().listConversations({}, this.#options()));
    return r.conversations;
  }

  /** Online / last seen of the caller and of users who share a conversation with them. */
  async getPresence(names: readonly string[]): Promise<Presence[]> {
    const r = await this.#call(() => this.#chat().getPresence({ names: [...names] }, this.#options()));
    return r.presences;
  }

  // --- push notifications (for when no session is live) ---

  /**
   * Registers a webhook for this device: the server POSTs each notification as JSON,
   * signed with HMAC-SHA256 under `secret` (16 to 256 bytes). Registering a URL again
   * replaces the earlier target and keeps its id.
   */
  async addWebhook(url: string, secret: string): Promise<PushTarget> {
    return this.#addPushTarget({ case: "webhook", value: { url, secret } });
  }

  /**
   * Registers a browser's Web Push subscription (a `PushSubscription` or its `toJSON()`)
   * for this device; `subscribeWebPush` does the browser side too. Registering an endpoint
   * again replaces the earlier target and keeps its id.
   */
  async addWebPush(subscription: WebPushSubscriptionLike): Promise<PushTarget> {
    return this.#addPushTarget({ case: "webPush", value: webPushFields(subscription) });
  }

  /** The user's push targets on every device, newest first (webhook secrets are never returned). */
  async listPushTargets(): Promise<PushTarget[]> {
    const r = await this.#call(() => this.#push().listPushTargets({}, this.#options()));
    return r.targets;
  }

  /** Removes one of the user's push targets (NOT_FOUND if there is no such target). */
  async removePushTarget(id: string): Promise<void> {
    await this.#call(() => this.#push().removePushTarget({ id }, this.#options()));
  }

  /** The user's push mode, and the server's VAPID key for Web Push subscriptions. */
  async pushSettings(): Promise<PushSettings> {
    const r = await this.#call(() => this.#push().getPushSettings({}, this.#options()));
    return { mode: pushModeName(r.mode), vapidPublicKey: r.vapidPublicKey };
  }

  /** Whether pushes carry the sender and text (`content`) or only the count (`content-free`). */
  async setPushMode(mode: PushModeName): Promise<PushModeName> {
    const r = await this.#call(() => this.#push().setPushMode({ mode: pushModeValue(mode) }, this.#options()));
    return pushModeName(r.mode);
  }

  /** Mutes (or unmutes) a conversation: no pushes for it; messages still arrive live. */
  async setMuted(conversationId: string, muted: boolean): Promise<void> {
    await this.#call(() => this.#push().setMuted({ conversationId, muted }, this.#options()));
  }

  async #addPushTarget(kind: MessageInitShape<typeof AddPushTargetRequestSchema>["kind"]): Promise<PushTarget> {
    const r = await this.#call(() => this.#push().addPushTarget({ kind }, this.#options()));
    if (r.target === undefined) {
      throw ChatError.protocol("add_push_target answered without a target");
    }
    return r.target;
  }

  // --- the live session ---

  /**
   * Starts a live session: a `Subscribe` stream that reconnects, resumes from its cursors,
   * drops duplicates, acknowledges delivery and heartbeats. See `ChatSession`.
   */
  openSession(options: SessionOptions = {}): ChatSession {
    if (this.#token === undefined) {
      throw ChatError.notLoggedIn();
    }
    return new ChatSession(this, this.#sessionBackend(), options, this.#random);
  }

  #sessionBackend(): SessionBackend {
    return {
      baseUrl: () => this.baseUrl,
      rotate: () => this.rotate(),
      subscribe: (cursors: Cursor[], signal: AbortSignal): AsyncIterable<SubscribeResponse> => {
        const token = this.#token;
        if (token === undefined) {
          throw ChatError.notLoggedIn();
        }
        // No deadline: the stream lives as long as the session.
        return this.#chat().subscribe({ cursors }, { headers: bearer(token), signal, timeoutMs: 0 });
      },
      sendOnce: (message, signal) => this.sendOnce(message, signal),
      ack: (conversationId, seq) => this.ack(conversationId, seq),
      heartbeat: (timeoutMs) => this.heartbeat(timeoutMs),
    };
  }

  // --- plumbing ---

  #transport(): Transport {
    const url = this.baseUrl;
    let transport = this.#transports.get(url);
    if (transport === undefined) {
      transport = this.#makeTransport(url);
      this.#transports.set(url, transport);
    }
    return transport;
  }

  #chat(): Client<typeof ChatService> {
    return createClient(ChatService, this.#transport());
  }

  #auth(): Client<typeof AuthService> {
    return createClient(AuthService, this.#transport());
  }

  #push(): Client<typeof PushService> {
    return createClient(PushService, this.#transport());
  }

  #options(authenticated = true, signal?: AbortSignal, timeoutMs: number = this.#timeoutMs): CallOptions {
    if (!authenticated) {
      return { timeoutMs, signal };
    }
    if (this.#token === undefined) {
      throw ChatError.notLoggedIn();
    }
    return { headers: bearer(this.#token), timeoutMs, signal };
  }

  /** Runs one call, turning whatever it throws into a ChatError. */
  async #call<T>(call: () => Promise<T>): Promise<T> {
    try {
      return await call();
    } catch (e) {
      throw ChatError.from(e);
    }
  }

  #adopt(session: DeviceSession | undefined): Credentials {
    if (session === undefined) {
      throw ChatError.protocol("no session in the answer");
    }
    if (session.user === undefined) {
      throw ChatError.protocol("no user in the session");
    }
    this.#token = session.token;
    return {
      token: session.token,
      user: session.user,
      expiresAt: session.expiresAt === undefined ? undefined : timestampDate(session.expiresAt),
    };
  }
}

function bearer(token: string): Record<string, string> {
  return { authorization: `Bearer ${token}` };
}
