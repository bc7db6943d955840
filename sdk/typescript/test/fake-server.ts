/**
 * An in-memory chat server for the SDK's tests, served through Connect's real runtime
 * (`createRouterTransport`, or grpc-web over an in-memory `fetch`). Tests drive each
 * `Subscribe` stream by hand (push frames, end, fail) and read what the client called, so
 * reconnects, resumes and retries can be checked without a real server or any sleeping.
 */
import { clone, create, type MessageInitShape } from "@bufbuild/protobuf";
import { durationFromMs, timestampFromMs } from "@bufbuild/protobuf/wkt";
import {
  Code,
  ConnectError,
  createConnectRouter,
  createRouterTransport,
  type ConnectRouter,
  type HandlerContext,
  type Transport,
} from "@connectrpc/connect";
import { createFetchHandler } from "@connectrpc/connect/protocol";
import { createGrpcWebTransport } from "@connectrpc/connect-web";

import { AuthService } from "../src/gen/chat/v1/auth_pb.js";
import { ChatService, type SubscribeRequest } from "../src/gen/chat/v1/chat_pb.js";
import { PushMode, PushService, PushTargetSchema, type PushTarget } from "../src/gen/chat/v1/push_pb.js";
import {
  MessageSchema,
  ReceiptSchema,
  SendAckSchema,
  ServerFrameSchema,
  type SendAck,
  type SendMessage,
  type ServerFrame,
} from "../src/gen/chat/v1/types_pb.js";

export const ME = { id: "u-me", name: "me" };
export const RIYA = { id: "u-riya", name: "riya" };
export const TOKEN = "ct_test";
/** The fake server's VAPID public key: 65 bytes (0x04, then 1..64), base64url. */
export const VAPID_KEY = "BAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4vMDEyMzQ1Njc4OTo7PD0-P0A";

// Captured when this module loads, so deadlines run on real time even in a test that fakes
// the timers (and do not count among the fake timers it inspects).
const realSetTimeout = globalThis.setTimeout;
const realClearTimeout = globalThis.clearTimeout;

/** Rejects with a clear message if `promise` does not settle within `ms` (real time). */
export function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = realSetTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, deadline]).finally(() => realClearTimeout(timer));
}

/**
 * Lets in-flight work finish: a few turns of the real event loop, enough for the in-memory
 * transport to deliver a call that has been started. For checking that something does *not*
 * happen; waiting for something that does is `Inbox.next` / `EventLog.next`.
 */
export async function settle(turns = 10): Promise<void> {
  for (let i = 0; i < turns; i++) {
    await new Promise<void>((resolve) => realSetTimeout(resolve, 0));
  }
}

/** A queue of items that tests fill and code under test awaits, with a deadline. */
export class Inbox<T> {
  readonly items: T[] = [];
  #taken = 0;
  #waiters: Array<() => void> = [];

  push(item: T): void {
    this.items.push(item);
    for (const wake of this.#waiters.splice(0)) {
      wake();
    }
  }

  /** The next item not yet taken, waiting up to `ms` for it. */
  async next(what: string, ms = 5_000): Promise<T> {
    return within(this.#next(), ms, what);
  }

  async #next(): Promise<T> {
    while (this.#taken >= this.items.length) {
      await new Promise<void>((resolve) => this.#waiters.push(resolve));
    }
    const item = this.items[this.#taken] as T;
    this.#taken += 1;
    return item;
  }

  /** Waits until at least `count` items have arrived. */
  async atLeast(count: number, what: string, ms = 5_000): Promise<T[]> {
    const wait = async (): Promise<T[]> => {
      while (this.items.length < count) {
        await new Promise<void>((resolve) => this.#waiters.push(resolve));
      }
      return this.items;
    };
    return within(wait(), ms, what);
  }
}

/** One `Subscribe` call, driven by the test. */
export class StreamCall {
  readonly url: string;
  readonly cursors: Array<[string, bigint]>;
  readonly authorization: string | null;
  readonly signal: AbortSignal;
  readonly #frames: Array<ServerFrame | { fail: ConnectError } | "end"> = [];
  #wake: (() => void) | undefined;

  constructor(url: string, request: SubscribeRequest, context: HandlerContext) {
    this.url = url;
    this.cursors = request.cursors.map((c) => [c.conversationId, c.seq]);
    this.authorization = context.requestHeader.get("authorization");
    this.signal = context.signal;
  }

  /** Resolves once the client has cancelled this stream. */
  cancelled(): Promise<void> {
    return new Promise((resolve) => {
      if (this.signal.aborted) {
        resolve();
      } else {
        this.signal.addEventListener("abort", () => resolve(), { once: true });
      }
    });
  }

  push(...frames: ServerFrame[]): this {
    this.#frames.push(...frames);
    this.#wake?.();
    return this;
  }

  /** Ends the stream with an error status. */
  fail(code: Code, message = "injected failure"): void {
    this.#frames.push({ fail: new ConnectError(message, code) });
    this.#wake?.();
  }

  /** Ends the stream normally (status OK). */
  end(): void {
    this.#frames.push("end");
    this.#wake?.();
  }

  async *serve(): AsyncGenerator<{ frame: ServerFrame }> {
    const aborted = this.cancelled();
    for (;;) {
      const next = this.#frames.shift();
      if (next === undefined) {
        const more = new Promise<void>((resolve) => {
          this.#wake = resolve;
        });
        await Promise.race([more, aborted]);
        if (this.signal.aborted) {
          return;
        }
        continue;
      }
      if (next === "end") {
        return;
      }
      if ("fail" in next) {
        throw next.fail;
      }
      yield { frame: next };
    }
  }
}

export interface SendCall {
  url: string;
  message: SendMessage;
  authorization: string | null;
}

/**
 * The fake server. Sends are stored idempotently by client_msg_id, like the real one; a
 * test can make the next sends fail (`failSends`) or make a whole base URL unreachable.
 */
export class FakeServer {
  readonly subscribes = new Inbox<StreamCall>();
  readonly sends = new Inbox<SendCall>();
  readonly acks = new Inbox<{ conversationId: string; seq: bigint }>();
  readonly heartbeats = new Inbox<{ url: string; authorization: string | null }>();
  readonly unaryUrls: string[] = [];
  /** Codes the next Send calls fail with, in order (after the message is stored, if `storeFirst`). */
  failSends: Code[] = [];
  /** Codes the next Heartbeat calls fail with, in order. */
  failHeartbeats: Code[] = [];
  /** Base URLs whose every call fails with UNAVAILABLE. */
  readonly down = new Set<string>();
  /** Push targets by id, in the order registered. */
  readonly pushTargets = new Map<string, PushTarget>();
  pushMode = PushMode.CONTENT;
  /** The VAPID key GetPushSettings answers ("" when the server offers no Web Push). */
  vapidPublicKey = VAPID_KEY;
  readonly muted = new Set<string>();
  #nextTarget = 1;
  readonly #stored = new Map<string, SendAck>();
  #lastSeq = new Map<string, bigint>();

  /** The routes of one base URL. */
  routes(url: string): (router: ConnectRouter) => void {
    const up = (): void => {
      if (this.down.has(url)) {
        throw new ConnectError(`${url} is down`, Code.Unavailable);
      }
    };
    const authed = (context: HandlerContext): string | null => {
      const authorization = context.requestHeader.get("authorization");
      if (authorization !== `Bearer ${TOKEN}`) {
        throw new ConnectError("missing or wrong token", Code.Unauthenticated);
      }
      return authorization;
    };
    return (router) => {
      router.service(AuthService, {
        register: (request) => {
          up();
          return { session: { token: TOKEN, user: { id: ME.id, name: request.name }, expiresAt: timestampFromMs(1e12) } };
        },
        login: (request) => {
          up();
          if (request.password !== "secret") {
            throw new ConnectError("wrong name or password", Code.Unauthenticated);
          }
          return { session: { token: TOKEN, user: { id: ME.id, name: request.name } } };
        },
        logout: (_request, context) => {
          up();
          authed(context);
          return {};
        },
      });
      router.service(ChatService, {
        connect: () => {
          throw new ConnectError("browsers use Subscribe", Code.Unimplemented);
        },
        subscribe: (request, context) => {
          up();
          authed(context);
          const call = new StreamCall(url, request, context);
          this.subscribes.push(call);
          return call.serve();
        },
        send: (request, context) => {
          up();
          this.unaryUrls.push(url);
          const authorization = authed(context);
          const message = request.message;
          if (message === undefined) {
            throw new ConnectError("message is required", Code.InvalidArgument);
          }
          this.sends.push({ url, message, authorization });
          const ack = this.#store(message);
          const fail = this.failSends.shift();
          if (fail !== undefined) {
            // The message is stored but the answer is lost: the retry must get the original.
            throw new ConnectError("injected send failure", fail);
          }
          return { ack };
        },
        ack: (request, context) => {
          up();
          authed(context);
          const ack = request.ack ?? { conversationId: "", seq: 0n };
          this.acks.push({ conversationId: ack.conversationId, seq: ack.seq });
          return { receipt: receipt(ack.conversationId, ME, ack.seq, 0n) };
        },
        markRead: (request, context) => {
          up();
          authed(context);
          const mark = request.mark ?? { conversationId: "", seq: 0n };
          return { receipt: receipt(mark.conversationId, ME, mark.seq, mark.seq) };
        },
        setTyping: (_request, context) => {
          up();
          authed(context);
          return {};
        },
        heartbeat: (_request, context) => {
          up();
          const authorization = authed(context);
          this.heartbeats.push({ url, authorization });
          const fail = this.failHeartbeats.shift();
          if (fail !== undefined) {
            throw new ConnectError("injected heartbeat failure", fail);
          }
          return {};
        },
        openDirect: (request, context) => {
          up();
          authed(context);
          return { conversation: { id: `d:${request.peer}`, peer: { id: `u-${request.peer}`, name: request.peer } } };
        },
        getHistory: (request, context) => {
          up();
          authed(context);
          const anchor = request.anchor;
          const note = anchor.case === undefined ? "latest" : `${anchor.case}=${anchor.value}`;
          return { messages: [message(request.conversationId, 1n, note)], hasMore: anchor.case === "beforeSeq" };
        },
        listConversations: (_request, context) => {
          up();
          authed(context);
          return { conversations: [] };
        },
        getPresence: (request, context) => {
          up();
          authed(context);
          return { presences: request.names.map((name) => ({ user: { id: `u-${name}`, name }, online: true })) };
        },
      });
      router.service(PushService, {
        addPushTarget: (request, context) => {
          up();
          authed(context);
          const kind = request.kind;
          const url = kind.case === "webhook" ? kind.value.url : kind.case === "webPush" ? kind.value.endpoint : "";
          if (url === "") {
            throw new ConnectError("a webhook or web_push target is required", Code.InvalidArgument);
          }
          const same = [...this.pushTargets.values()].find((t) =>
            t.kind.case === "webhook" ? t.kind.value.url === url : t.kind.value?.endpoint === url,
          );
          const id = same?.id ?? `t-${this.#nextTarget++}`;
          const target = create(PushTargetSchema, { id, kind, deviceName: "web" });
          this.pushTargets.set(id, target);
          // Secrets are never returned.
          const answer = clone(PushTargetSchema, target);
          if (answer.kind.case === "webhook") {
            answer.kind.value = { ...answer.kind.value, secret: "" };
          }
          return { target: answer };
        },
        listPushTargets: (_request, context) => {
          up();
          authed(context);
          return { targets: [...this.pushTargets.values()].reverse() };
        },
        removePushTarget: (request, context) => {
          up();
          authed(context);
          if (!this.pushTargets.delete(request.id)) {
            throw new ConnectError("no such push target", Code.NotFound);
          }
          return {};
        },
        getPushSettings: (_request, context) => {
          up();
          authed(context);
          return { mode: this.pushMode, vapidPublicKey: this.vapidPublicKey };
        },
        setPushMode: (request, context) => {
          up();
          authed(context);
          if (request.mode === PushMode.UNSPECIFIED) {
            throw new ConnectError("a push mode is required", Code.InvalidArgument);
          }
          this.pushMode = request.mode;
          return { mode: this.pushMode };
        },
        setMuted: (request, context) => {
          up();
          authed(context);
          if (request.muted) {
            this.muted.add(request.conversationId);
          } else {
            this.muted.delete(request.conversationId);
          }
          return {};
        },
      });
    };
  }

  /** A transport factory for `ChatClient`: Connect's router transport, one per base URL. */
  readonly transport = (url: string): Transport => createRouterTransport(this.routes(url));

  /**
   * The browser's real transport (grpc-web, binary) over an in-memory fetch that hands each
   * request to this server's grpc-web handlers.
   */
  readonly grpcWebTransport = (url: string): Transport => {
    const router = createConnectRouter({ connect: false, grpc: false, grpcWeb: true });
    this.routes(url)(router);
    const byPath = new Map(router.handlers.map((h) => [h.requestPath, createFetchHandler(h)]));
    const fetch = async (input: RequestInfo | URL, init?: RequestInit): Promise<Response> => {
      const request = new Request(input, init);
      const handler = byPath.get(new URL(request.url).pathname);
      return handler === undefined ? new Response(null, { status: 404 }) : handler(request);
    };
    return createGrpcWebTransport({ baseUrl: url, useBinaryFormat: true, fetch });
  };

  #store(m: SendMessage): SendAck {
    const conversationId = m.target.case === "recipient" ? `d:${m.target.value}` : (m.target.value ?? "");
    const key = `${conversationId}/${m.clientMsgId}`;
    const known = this.#stored.get(key);
    if (known !== undefined) {
      return create(SendAckSchema, { ...known, duplicate: true });
    }
    const seq = (this.#lastSeq.get(conversationId) ?? 0n) + 1n;
    this.#lastSeq.set(conversationId, seq);
    const ack = create(SendAckSchema, {
      clientMsgId: m.clientMsgId,
      conversationId,
      seq,
      messageId: `m-${conversationId}-${seq}`,
      sentAt: timestampFromMs(Date.now()),
    });
    this.#stored.set(key, ack);
    return ack;
  }
}

// --- frames ---

type FrameKind = MessageInitShape<typeof ServerFrameSchema>["kind"];

const frame = (kind: FrameKind): ServerFrame => create(ServerFrameSchema, { kind });

export function welcome(heartbeatMs = 60_000): ServerFrame {
  return frame({
    case: "welcome",
    value: { sessionId: "s-1", user: ME, heartbeatInterval: durationFromMs(heartbeatMs) },
  });
}

export function message(conversationId: string, seq: bigint, text = `m${seq}`) {
  return create(MessageSchema, {
    conversationId,
    seq,
    id: `m-${conversationId}-${seq}`,
    sender: RIYA,
    clientMsgId: `c-${conversationId}-${seq}`,
    text,
    sentAt: timestampFromMs(1_700_000_000_000 + Number(seq)),
  });
}

export function messageFrame(conversationId: string, seq: bigint): ServerFrame {
  return frame({ case: "message", value: message(conversationId, seq) });
}

export function caughtUp(...cursors: Array<[string, bigint]>): ServerFrame {
  return frame({
    case: "caughtUp",
    value: { cursors: cursors.map(([conversationId, seq]) => ({ conversationId, seq })) },
  });
}

export function receipt(conversationId: string, user: { id: string; name: string }, deliveredSeq: bigint, readSeq: bigint) {
  return create(ReceiptSchema, { conversationId, user, deliveredSeq, readSeq });
}

export function receiptFrame(deliveredSeq: bigint, readSeq: bigint): ServerFrame {
  return frame({ case: "receipt", value: receipt("c1", RIYA, deliveredSeq, readSeq) });
}

export function typingFrame(typing: boolean): ServerFrame {
  return frame({ case: "typing", value: { conversationId: "c1", user: RIYA, typing } });
}

export function presenceFrame(online: boolean): ServerFrame {
  return frame({ case: "presence", value: { user: RIYA, online } });
}

/** What the server sends on a stream that has been quiet for a heartbeat interval. */
export function keepAliveFrame(): ServerFrame {
  return frame({ case: "keepAlive", value: {} });
}
