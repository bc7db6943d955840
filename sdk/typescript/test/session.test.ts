/**
 * `ChatSession` against an in-memory server on Connect's real runtime: reconnect and resume,
 * de-duplication across reconnects, URL rotation, the outbox, acks, heartbeats, and the
 * end on UNAUTHENTICATED. Every wait is on an event, with a deadline.
 */
import { afterEach, describe, expect, it, vi } from "vitest";

import {
  ChatClient,
  ChatError,
  Code,
  Cursors,
  KEEP_ALIVE_MARGIN_MS,
  MAX_EXHAUSTED_SEND_ATTEMPTS,
  type ChatSession,
  type ConnectionState,
  type SessionOptions,
} from "../src/index.js";
import { EventLog } from "./event-log.js";
import {
  FakeServer,
  TOKEN,
  caughtUp,
  keepAliveFrame,
  messageFrame,
  presenceFrame,
  receiptFrame,
  settle,
  typingFrame,
  welcome,
  within,
} from "./fake-server.js";

const FAST: SessionOptions = { reconnect: { initialMs: 8, maxMs: 40 }, sendRetry: { initialMs: 4, maxMs: 20 } };

/** The longest reconnection delay a session ever waits (the default maximum backoff). */
const MAX_BACKOFF_MS = 30_000;

const sessions: ChatSession[] = [];
afterEach(() => {
  for (const s of sessions.splice(0)) {
    s.close();
  }
  vi.useRealTimers();
});

/**
 * Fakes the timers the session uses (backoff, heartbeats, acks), so a test can step past
 * any delay and count what is left; test deadlines (`within`) keep running on real time.
 */
function fakeTimers(): void {
  vi.useFakeTimers({ toFake: ["setTimeout", "clearTimeout", "setInterval", "clearInterval"] });
}

/** Advances fake time by `ms`, then lets whatever that started finish. */
async function pass(ms: number): Promise<void> {
  await vi.advanceTimersByTimeAsync(ms);
  await settle();
}

function open(
  server: FakeServer,
  options: SessionOptions = {},
  baseUrls: string[] = ["https://a.example"],
  transport = server.transport,
): { session: ChatSession; log: EventLog; client: ChatClient } {
  const client = new ChatClient({ baseUrls, token: TOKEN, transport, random: () => 0.5 });
  const session = client.openSession({ ...FAST, ...options });
  sessions.push(session);
  return { session, log: new EventLog(session), client };
}

describe("ChatSession", () => {
  it("starts with no cursors, goes online on welcome, and authenticates the stream", async () => {
    const server = new FakeServer();
    const { session, log } = open(server);
    expect((await log.state("connecting")).attempt).toBe(1);
    const stream = await server.subscribes.next("subscribe");
    expect(stream.cursors).toEqual([]);
    expect(stream.authorization).toBe(`Bearer ${TOKEN}`);
    stream.push(welcome());
    const online = await log.state("online");
    expect(online.user.name).toBe("me");
    expect(session.user?.id).toBe("u-me");
  });

  it("resumes a failed stream from its cursors and shows every message once", async () => {
    const server = new FakeServer();
    const { session, log } = open(server);
    const first = await server.subscribes.next("first subscribe");
    first.push(welcome(), messageFrame("c1", 1n), messageFrame("c1", 2n), caughtUp(["c1", 2n], ["c2", 5n]));
    first.push(messageFrame("c1", 3n));
    await log.next("message", (e) => e.message.seq === 3n);
    first.fail(Code.Unavailable, "replica went away");

    const reconnecting = await log.state("reconnecting");
    expect(reconnecting.error.code).toBe(Code.Unavailable);
    expect(reconnecting.attempt).toBe(2);
    expect(reconnecting.delayMs).toBeLessThan(8);

    const second = await server.subscribes.next("resumed subscribe");
    // The cursors held: c1 from the live message, c2 from caught_up.
    expect(second.cursors).toEqual([
      ["c1", 3n],
      ["c2", 5n],
    ]);
    // A replay that overlaps what the client already has, and a doorbell rung twice.
    second.push(welcome(), messageFrame("c1", 2n), messageFrame("c1", 3n), messageFrame("c1", 4n));
    second.push(messageFrame("c2", 6n), caughtUp(["c1", 4n], ["c2", 6n]), messageFrame("c2", 6n), messageFrame("c1", 5n));
    await log.next("message", (e) => e.message.conversationId === "c1" && e.message.seq === 5n);

    expect(log.messages()).toEqual(["c1:1", "c1:2", "c1:3", "c1:4", "c2:6", "c1:5"]);
    expect(session.cursors().toJSON()).toEqual({ complete: true, seqs: { c1: "5", c2: "6" } });
  });

  it("does not send partial cursors when the stream failed before caught_up", async () => {
    const server = new FakeServer();
    const { log } = open(server);
    const first = await server.subscribes.next("first subscribe");
    first.push(welcome(), messageFrame("c1", 1n));
    await log.next("message");
    first.fail(Code.Unavailable);

    // With some cursors the server would replay every other conversation from its start;
    // without any it resumes after the delivered watermarks, and the duplicate is dropped.
    const second = await server.subscribes.next("resumed subscribe");
    expect(second.cursors).toEqual([]);
    second.push(welcome(), messageFrame("c1", 1n), messageFrame("c1", 2n), caughtUp(["c1", 2n]));
    await log.next("caughtUp");
    expect(log.messages()).toEqual(["c1:1", "c1:2"]);
  });

  it("resumes from the cursors of an earlier session", async () => {
    const server = new FakeServer();
    const cursors = Cursors.fromJSON({ complete: true, seqs: { c1: "10" } });
    const { log } = open(server, { cursors });
    const stream = await server.subscribes.next("subscribe");
    expect(stream.cursors).toEqual([["c1", 10n]]);
    stream.push(welcome(), messageFrame("c1", 10n), messageFrame("c1", 11n), caughtUp(["c1", 11n]));
    await log.next("caughtUp");
    expect(log.messages()).toEqual(["c1:11"]);
  });

  it("exports cursors as incomplete before caught_up, and a later session does not send them", async () => {
    const server = new FakeServer();
    const { session: first, log: firstLog } = open(server);
    const stream = await server.subscribes.next("first session's subscribe");
    stream.push(welcome(), messageFrame("c1", 1n));
    await firstLog.next("message");
    const partial = first.cursors();
    expect(partial.complete).toBe(false);
    expect(JSON.parse(JSON.stringify(partial))).toEqual({ complete: false, seqs: { c1: "1" } });
    first.close();

    // Sending {c1: 1} would make the server replay every other conversation from seq 1.
    const { session, log } = open(server, { cursors: partial });
    const second = await server.subscribes.next("second session's subscribe");
    expect(second.cursors).toEqual([]);
    // Resumed after the delivered watermarks: what the saved cursors hold is still dropped.
    second.push(welcome(), messageFrame("c1", 1n), messageFrame("c1", 2n), messageFrame("c2", 1n));
    second.push(caughtUp(["c1", 2n], ["c2", 1n]));
    const caught = await log.next("caughtUp");
    expect(log.messages()).toEqual(["c1:2", "c2:1"]);
    expect(caught.cursors.complete).toBe(true);
    expect(session.cursors().toJSON()).toEqual({ complete: true, seqs: { c1: "2", c2: "1" } });

    // Complete now: a third session resumes from them.
    const { session: third } = open(server, { cursors: Cursors.fromJSON(JSON.parse(JSON.stringify(session.cursors()))) });
    expect((await server.subscribes.next("third session's subscribe")).cursors).toEqual([
      ["c1", 2n],
      ["c2", 1n],
    ]);
    third.close();
  });

  it("treats cursors saved in the old bare-map form as incomplete, but still drops what they hold", async () => {
    const server = new FakeServer();
    const { log } = open(server, { cursors: Cursors.fromJSON({ c1: "3" }) });
    const stream = await server.subscribes.next("subscribe");
    expect(stream.cursors).toEqual([]);
    stream.push(welcome(), messageFrame("c1", 3n), messageFrame("c1", 4n), caughtUp(["c1", 4n]));
    await log.next("caughtUp");
    expect(log.messages()).toEqual(["c1:4"]);
  });

  it("reconnects after a stream the server ended normally", async () => {
    const server = new FakeServer();
    const { log } = open(server);
    (await server.subscribes.next("first subscribe")).push(welcome()).end();
    const reconnecting = await log.state("reconnecting");
    expect(reconnecting.error.code).toBe(Code.Unavailable);
    (await server.subscribes.next("second subscribe")).push(welcome());
    await log.state("online");
  });

  it("backs off with jittered, growing, bounded delays, and starts over after caught_up", async () => {
    const server = new FakeServer();
    const { log } = open(server, { reconnect: { initialMs: 4, maxMs: 16 } });
    const delays: number[] = [];
    const attempts: number[] = [];
    for (let i = 0; i < 5; i++) {
      (await server.subscribes.next(`subscribe ${i + 1}`)).fail(Code.Unavailable);
      const r = await log.state("reconnecting");
      delays.push(r.delayMs);
      attempts.push(r.attempt);
    }
    // random() = 0.5: half of each cap (4, 8, 16, 16, 16).
    expect(delays).toEqual([2, 4, 8, 8, 8]);
    expect(attempts).toEqual([2, 3, 4, 5, 6]);

    (await server.subscribes.next("healthy subscribe")).push(welcome(), caughtUp()).fail(Code.Unavailable);
    const after = await log.state("reconnecting");
    expect([after.attempt, after.delayMs]).toEqual([2, 2]);
  });

  it("rotates through the base URLs on failure and uses the one that works", async () => {
    const server = new FakeServer();
    server.down.add("https://a.example");
    server.down.add("https://b.example");
    const urls = ["https://a.example", "https://b.example", "https://c.example"];
    const { session, log, client } = open(server, {}, urls);

    const tried: string[] = [];
    for (let i = 0; i < 3; i++) {
      tried.push((await log.state("connecting")).baseUrl);
    }
    expect(tried).toEqual(urls);
    const stream = await server.subscribes.next("subscribe on c");
    expect(stream.url).toBe("https://c.example");
    stream.push(welcome());
    expect((await log.state("online")).baseUrl).toBe("https://c.example");

    // Unary calls follow the session to the gateway that works.
    await session.send({ user: "riya" }, "hi");
    expect(server.unaryUrls).toEqual(["https://c.example"]);
    expect(client.baseUrl).toBe("https://c.example");

    // And it wraps around.
    server.down.delete("https://a.example");
    stream.fail(Code.Unavailable);
    expect((await log.state("connecting")).baseUrl).toBe("https://a.example");
  });

  it("re-sends unacknowledged messages with the same client_msg_id once back online", async () => {
    const server = new FakeServer();
    const { session, log } = open(server);
    const first = await server.subscribes.next("first subscribe");
    first.push(welcome());
    await log.state("online");
    first.fail(Code.Unavailable);
    await log.state("reconnecting");
    const second = await server.subscribes.next("second subscribe");
    await log.state("connecting");

    // Sent while disconnected: queued, in order, nothing on the wire yet.
    const a = session.send({ user: "riya" }, "first", { clientMsgId: "id-a" });
    const b = session.send({ conversationId: "d:riya" }, "second", { clientMsgId: "id-b" });
    expect(session.pendingSends().map((p) => p.clientMsgId)).toEqual(["id-a", "id-b"]);
    expect(server.sends.items).toEqual([]);

    // Back online; the first attempt is stored but its answer lost, the next one times out.
    server.failSends = [Code.Unavailable, Code.DeadlineExceeded];
    second.push(welcome());
    const [ackA, ackB] = await within(Promise.all([a, b]), 5_000, "both sends");

    const ids = server.sends.items.map((s) => s.message.clientMsgId);
    expect(ids).toEqual(["id-a", "id-a", "id-a", "id-b"]);
    expect([ackA.seq, ackA.duplicate, ackB.seq, ackB.duplicate]).toEqual([1n, true, 2n, false]);
    expect(server.sends.items.every((s) => s.authorization === `Bearer ${TOKEN}`)).toBe(true);
    expect(session.pendingSends()).toEqual([]);
  });

  it("gives up on a send the server refuses, and keeps going with the next", async () => {
    const server = new FakeServer();
    const { session } = open(server);
    (await server.subscribes.next("subscribe")).push(welcome());
    server.failSends = [Code.InvalidArgument];
    const refused = session.send({ user: "riya" }, "refused");
    const next = session.send({ user: "riya" }, "later");
    await expect(refused).rejects.toMatchObject({ code: Code.InvalidArgument });
    expect((await next).seq).toBe(2n);
    expect(server.sends.items.length).toBe(2);
  });

  it("retries rate-limited sends with backoff: a queue drained after a long offline period loses nothing", async () => {
    const server = new FakeServer();
    const { session } = open(server);
    const stream = await server.subscribes.next("subscribe");
    // Queued while connecting, then sent into the server's rate limit.
    const sends = ["a", "b", "c"].map((id) => session.send({ user: "riya" }, `text ${id}`, { clientMsgId: id }));
    server.failSends = [Code.ResourceExhausted, Code.ResourceExhausted, Code.ResourceExhausted, Code.ResourceExhausted];
    stream.push(welcome());
    const acks = await within(Promise.all(sends), 5_000, "every queued send");
    expect(acks.map((a) => [a.clientMsgId, a.seq])).toEqual([
      ["a", 1n],
      ["b", 2n],
      ["c", 3n],
    ]);
    expect(server.sends.items.map((s) => s.message.clientMsgId)).toEqual(["a", "a", "a", "a", "a", "b", "c"]);
    expect(session.pendingSends()).toEqual([]);
  });

  it("gives up on a send after 10 RESOURCE_EXHAUSTED failures (e.g. a body over the gateway's limit), reports it, and goes on", async () => {
    const server = new FakeServer();
    const { session, log } = open(server);
    (await server.subscribes.next("subscribe")).push(welcome());
    server.failSends = Array.from({ length: MAX_EXHAUSTED_SEND_ATTEMPTS }, () => Code.ResourceExhausted);
    const tooBig = session.send({ user: "riya" }, "too big", { clientMsgId: "big" });
    const next = session.send({ user: "riya" }, "next", { clientMsgId: "next" });
    await expect(within(tooBig, 5_000, "the oversized send")).rejects.toMatchObject({ code: Code.ResourceExhausted });
    const reported = await log.next("error");
    expect([reported.clientMsgId, reported.error.code]).toEqual(["big", Code.ResourceExhausted]);
    expect((await within(next, 5_000, "the next send")).clientMsgId).toBe("next");
    expect(server.sends.items.map((s) => s.message.clientMsgId)).toEqual([...Array(10).fill("big"), "next"]);
  });

  it("gives up on a send after 3 UNKNOWN failures, reports it, and goes on with the next", async () => {
    const server = new FakeServer();
    const { session, log } = open(server);
    (await server.subscribes.next("subscribe")).push(welcome());
    await log.state("online");
    // E.g. a gateway answering HTTP 500 to this request: retrying it forever would block every later send.
    server.failSends = [Code.Unknown, Code.Unknown, Code.Unknown];
    const stuck = session.send({ user: "riya" }, "stuck", { clientMsgId: "stuck" });
    const next = session.send({ user: "riya" }, "next", { clientMsgId: "next" });
    await expect(within(stuck, 5_000, "the stuck send")).rejects.toMatchObject({ code: Code.Unknown });
    const reported = await log.next("error");
    expect([reported.clientMsgId, reported.error.code]).toEqual(["stuck", Code.Unknown]);
    expect((await within(next, 5_000, "the next send")).clientMsgId).toBe("next");
    expect(server.sends.items.map((s) => s.message.clientMsgId)).toEqual(["stuck", "stuck", "stuck", "next"]);
    // The connection was checked before each UNKNOWN counted, and found healthy.
    expect(server.heartbeats.items.length).toBe(3);
    expect(server.subscribes.items.length).toBe(1);
  });

  it("does not count an UNKNOWN against a send when the connection itself is down", async () => {
    const server = new FakeServer();
    const { session, log } = open(server);
    const first = await server.subscribes.next("subscribe");
    first.push(welcome());
    await log.state("online");
    // A fetch on a dead network fails with UNKNOWN too, and so does the check that follows.
    server.failSends = [Code.Unknown, Code.Unknown, Code.Unknown];
    server.failHeartbeats = [Code.Unknown];
    const sent = session.send({ user: "riya" }, "through a blip", { clientMsgId: "blip" });
    await log.state("reconnecting");
    (await server.subscribes.next("a new subscribe")).push(welcome());
    const ack = await within(sent, 5_000, "the send");
    expect([ack.seq, ack.duplicate]).toEqual([1n, true]);
    expect(server.sends.items.map((s) => s.message.clientMsgId)).toEqual(["blip", "blip", "blip", "blip"]);
    expect(log.events.some((e) => e.type === "error")).toBe(false);
  });

  it("acknowledges delivery, coalesced per conversation", async () => {
    fakeTimers();
    const server = new FakeServer();
    const { log } = open(server);
    const stream = await server.subscribes.next("subscribe");
    const burst = [1n, 2n, 3n, 4n, 5n].map((s) => messageFrame("c1", s));
    stream.push(welcome(), ...burst, messageFrame("c2", 1n), messageFrame("c2", 2n), caughtUp(["c1", 5n], ["c2", 2n]));
    await log.next("caughtUp");
    // The flush waits for a timer, so the whole burst is in before anything is acknowledged...
    expect(server.acks.items).toEqual([]);
    await pass(0);
    // ...and then it costs exactly one Ack per conversation, at the highest seq.
    expect(server.acks.items).toEqual([
      { conversationId: "c1", seq: 5n },
      { conversationId: "c2", seq: 2n },
    ]);
    // The session reports its own delivered watermark from the answers.
    await log.next("receipt", (e) => e.receipt.conversationId === "c1" && e.receipt.deliveredSeq === 5n);
    await pass(MAX_BACKOFF_MS);
    expect(server.acks.items.length).toBe(2);
  });

  it("does not acknowledge when auto-ack is off", async () => {
    const server = new FakeServer();
    const { session, log } = open(server, { autoAck: false });
    (await server.subscribes.next("subscribe")).push(welcome(), messageFrame("c1", 1n), caughtUp(["c1", 1n]));
    await log.next("caughtUp");
    await session.ack("c1", 1n);
    expect(server.acks.items).toEqual([{ conversationId: "c1", seq: 1n }]);
  });

  it("heartbeats at the interval the welcome asks for", async () => {
    const server = new FakeServer();
    open(server);
    (await server.subscribes.next("subscribe")).push(welcome(5));
    const beats = await server.heartbeats.atLeast(3, "three heartbeats");
    expect(beats.every((b) => b.authorization === `Bearer ${TOKEN}`)).toBe(true);
  });

  it("restarts the stream when a heartbeat fails: the connection is suspect", async () => {
    const server = new FakeServer();
    const { log } = open(server);
    const first = await server.subscribes.next("subscribe");
    server.failHeartbeats = [Code.Unavailable];
    first.push(welcome(5));
    const reconnecting = await log.state("reconnecting");
    expect(reconnecting.error.message).toContain("injected heartbeat failure");
    await within(first.cancelled(), 5_000, "the old stream to be cancelled");
    await server.subscribes.next("a new subscribe");
  });

  describe("keep-alive watchdog (grpc-web on HTTP/1.1: no transport pings)", () => {
    /** The heartbeat interval the welcome names in these tests. */
    const INTERVAL_MS = 1_000;
    /** How long a stream may be silent: two intervals and the margin. */
    const LIMIT_MS = 2 * INTERVAL_MS + KEEP_ALIVE_MARGIN_MS;

    it("restarts a stream that goes silent after two heartbeat intervals, and resumes from its cursors", async () => {
      fakeTimers();
      const server = new FakeServer();
      const { log } = open(server);
      const first = await server.subscribes.next("first subscribe");
      first.push(welcome(INTERVAL_MS), messageFrame("c1", 1n), caughtUp(["c1", 1n], ["c2", 4n]), messageFrame("c1", 2n));
      await log.next("message", (e) => e.message.seq === 2n);

      // Half-open: the stream neither ends nor sends, while heartbeats (on other
      // connections) still succeed. Not given up on a moment too early...
      await pass(LIMIT_MS - 1);
      expect(first.signal.aborted).toBe(false);
      expect(server.heartbeats.items.length).toBeGreaterThanOrEqual(2);
      expect(log.events.some((e) => e.type === "state" && e.state.status === "reconnecting")).toBe(false);
      // ...but once the limit has passed.
      await pass(1);
      const reconnecting = await log.state("reconnecting");
      expect(reconnecting.error.code).toBe(Code.Unavailable);
      expect(reconnecting.error.retryable).toBe(true);
      expect(reconnecting.error.message).toContain("no frame from the server");
      await within(first.cancelled(), 5_000, "the silent stream to be cancelled");
      // Through the normal backoff (started over at caught_up: attempt 2, a short delay).
      expect([reconnecting.attempt, reconnecting.delayMs]).toEqual([2, 4]);
      await pass(reconnecting.delayMs);

      const second = await server.subscribes.next("resumed subscribe");
      expect(second.cursors).toEqual([
        ["c1", 2n],
        ["c2", 4n],
      ]);
      // The old stream's watchdog went with it: nothing is timed until the new welcome.
      expect(vi.getTimerCount()).toBe(0);
      second.push(welcome(INTERVAL_MS), messageFrame("c1", 2n), messageFrame("c1", 3n), caughtUp(["c1", 3n], ["c2", 4n]));
      await log.next("caughtUp");
      expect(log.messages()).toEqual(["c1:1", "c1:2", "c1:3"]);
    });

    it("keeps a stream that only sends keep-alives, and shows no event for them", async () => {
      fakeTimers();
      const server = new FakeServer();
      const { session, log } = open(server);
      const stream = await server.subscribes.next("subscribe");
      stream.push(welcome(INTERVAL_MS), caughtUp());
      await log.next("caughtUp");
      // Ten intervals, far past the limit, with nothing but a keep-alive per interval.
      for (let i = 0; i < 10; i++) {
        await pass(INTERVAL_MS);
        stream.push(keepAliveFrame());
        await settle();
      }
      expect(10 * INTERVAL_MS).toBeGreaterThan(2 * LIMIT_MS);
      expect(stream.signal.aborted).toBe(false);
      expect(server.subscribes.items.length).toBe(1);
      expect(log.events.map((e) => (e.type === "state" ? e.state.status : e.type))).toEqual(["connecting", "online", "caughtUp"]);

      // Closing leaves no watchdog behind.
      session.close();
      await within(stream.cancelled(), 5_000, "the stream to be cancelled");
      await settle();
      expect(vi.getTimerCount()).toBe(0);
    });
  });

  it("reports receipts only when they move forward, and passes typing and presence on", async () => {
    const server = new FakeServer();
    const { log } = open(server, { autoAck: false });
    const stream = await server.subscribes.next("subscribe");
    stream.push(welcome(), receiptFrame(5n, 2n), receiptFrame(4n, 1n), receiptFrame(4n, 3n));
    stream.push(typingFrame(true), presenceFrame(false), caughtUp());
    await log.next("caughtUp");
    const receipts = log.events.flatMap((e) => (e.type === "receipt" ? [[e.receipt.deliveredSeq, e.receipt.readSeq]] : []));
    expect(receipts).toEqual([
      [5n, 2n],
      [5n, 3n],
    ]);
    expect(log.events.some((e) => e.type === "typing" && e.typing.typing && e.typing.user?.name === "riya")).toBe(true);
    expect(log.events.some((e) => e.type === "presence" && !e.presence.online)).toBe(true);
  });

  it("stops for good on UNAUTHENTICATED and rejects what it still owed", async () => {
    fakeTimers();
    const server = new FakeServer();
    const { session, log } = open(server);
    const stream = await server.subscribes.next("subscribe");
    const unsent = session.send({ user: "riya" }, "never sent");
    stream.fail(Code.Unauthenticated, "token expired");
    const closed = await log.state("closed");
    expect(closed.reason).toBe("auth");
    expect(closed.error?.isAuth).toBe(true);
    await expect(unsent).rejects.toMatchObject({ code: Code.Unauthenticated });
    expect(await session.closed).toBe(closed);
    // The loop has returned: nothing reconnects, even once any backoff would have run out,
    // and nothing more is sent.
    await pass(MAX_BACKOFF_MS + 1_000);
    expect(server.subscribes.items.length).toBe(1);
    expect(vi.getTimerCount()).toBe(0);
    expect(log.events.some((e) => e.type === "state" && e.state.status === "reconnecting")).toBe(false);
    await expect(session.send({ user: "riya" }, "after")).rejects.toBeInstanceOf(ChatError);
  });

  it("stops when a stream is refused for a bad token", async () => {
    const server = new FakeServer();
    const client = new ChatClient({ baseUrls: "https://a.example", token: "wrong", transport: server.transport });
    const session = client.openSession(FAST);
    sessions.push(session);
    const closed = await within(session.closed, 5_000, "the session to close");
    expect([closed.reason, closed.error?.code]).toEqual(["auth", Code.Unauthenticated]);
  });

  it("closes on request: the stream is cancelled and pending sends are rejected", async () => {
    fakeTimers();
    const server = new FakeServer();
    const { session, log } = open(server);
    const stream = await server.subscribes.next("subscribe");
    const unsent = session.send({ user: "riya" }, "queued");
    session.close();
    expect((await log.state("closed")).reason).toBe("closed");
    await expect(unsent).rejects.toMatchObject({ kind: "sessionClosed" });
    await within(stream.cancelled(), 5_000, "the stream to be cancelled");
    await pass(MAX_BACKOFF_MS + 1_000);
    expect(server.subscribes.items.length).toBe(1);
    expect(log.events.some((e) => e.type === "state" && e.state.status === "reconnecting")).toBe(false);
    expect(vi.getTimerCount()).toBe(0);
  });

  describe("closed from a state listener", () => {
    /** Opens a session that closes itself from a listener on the first state matching `when`. */
    function closingOn(server: FakeServer, when: (state: ConnectionState) => boolean, options: SessionOptions = {}) {
      const opened = open(server, options);
      const off = opened.session.on("state", (e) => {
        if (when(e.state)) {
          off();
          opened.session.close();
        }
      });
      return opened;
    }

    /** Nothing is left running: no call is made and no timer fires, however long we wait. */
    async function expectNothingLeft(server: FakeServer, subscribes: number): Promise<void> {
      await settle();
      expect(vi.getTimerCount()).toBe(0);
      await pass(MAX_BACKOFF_MS + 1_000);
      expect(server.subscribes.items.length).toBe(subscribes);
      expect(server.heartbeats.items).toEqual([]);
      expect(vi.getTimerCount()).toBe(0);
    }

    it("while connecting: no Subscribe is opened", async () => {
      fakeTimers();
      const server = new FakeServer();
      const { log } = closingOn(server, (s) => s.status === "connecting");
      expect((await log.state("closed")).reason).toBe("closed");
      await expectNothingLeft(server, 0);
      expect(log.events.map((e) => (e.type === "state" ? e.state.status : e.type))).toEqual(["connecting", "closed"]);
    });

    it("while connecting again after a failure: no further Subscribe is opened", async () => {
      fakeTimers();
      const server = new FakeServer();
      const { log } = closingOn(server, (s) => s.status === "connecting" && s.attempt === 2);
      (await server.subscribes.next("first subscribe")).fail(Code.Unavailable);
      await log.state("reconnecting");
      await pass(MAX_BACKOFF_MS);
      expect((await log.state("closed")).reason).toBe("closed");
      await expectNothingLeft(server, 1);
    });

    it("while reconnecting: the backoff wait ends at once and nothing reconnects", async () => {
      fakeTimers();
      const server = new FakeServer();
      // The longest wait there is: 15 s with random() = 0.5.
      const reconnect = { initialMs: MAX_BACKOFF_MS, maxMs: MAX_BACKOFF_MS };
      const { log } = closingOn(server, (s) => s.status === "reconnecting", { reconnect });
      (await server.subscribes.next("first subscribe")).push(welcome(5)).fail(Code.Unavailable);
      expect((await log.state("reconnecting")).delayMs).toBe(MAX_BACKOFF_MS / 2);
      expect((await log.state("closed")).reason).toBe("closed");
      await expectNothingLeft(server, 1);
    });

    it("when online: no heartbeat timer is left behind", async () => {
      fakeTimers();
      const server = new FakeServer();
      const { log } = closingOn(server, (s) => s.status === "online");
      const stream = await server.subscribes.next("subscribe");
      stream.push(welcome(5));
      expect((await log.state("closed")).reason).toBe("closed");
      await within(stream.cancelled(), 5_000, "the stream to be cancelled");
      await expectNothingLeft(server, 1);
    });
  });

  it("can be consumed as an async iterator that ends with the session", async () => {
    const server = new FakeServer();
    const { session } = open(server);
    const events = session.events();
    (await server.subscribes.next("subscribe")).push(welcome(), messageFrame("c1", 1n), caughtUp(["c1", 1n]));
    const seen: string[] = [];
    const consume = (async () => {
      for await (const e of events) {
        seen.push(e.type === "state" ? e.state.status : e.type);
        if (e.type === "caughtUp") {
          session.close();
        }
      }
    })();
    await within(consume, 5_000, "the iterator to end");
    expect(seen).toEqual(["connecting", "online", "message", "caughtUp", "closed"]);
  });

  it("works over the browser's grpc-web transport", async () => {
    const server = new FakeServer();
    const { session, log } = open(server, {}, ["https://gw.example"], server.grpcWebTransport);
    const stream = await server.subscribes.next("subscribe");
    stream.push(welcome(), messageFrame("c1", 1n), caughtUp(["c1", 1n]));
    await log.next("caughtUp");
    const ack = await session.send({ user: "riya" }, "over grpc-web");
    expect(ack.seq).toBe(1n);
    stream.fail(Code.Unavailable);
    const second = await server.subscribes.next("resumed subscribe");
    expect(second.cursors).toEqual([["c1", 1n]]);
    second.push(welcome(), messageFrame("c1", 1n), messageFrame("c1", 2n));
    await log.next("message", (e) => e.message.seq === 2n);
    expect(log.messages()).toEqual(["c1:1", "c1:2"]);
  });
});
