/**
 * `ChatSession` against an in-memory server on Connect's real runtime: reconnect and resume,
 * de-duplication across reconnects, URL rotation, the outbox, acks, heartbeats, and the
 * end on UNAUTHENTICATED. Every wait is on an event, with a deadline.
 */
import { afterEach, describe, expect, it } from "vitest";

import { ChatClient, ChatError, Code, Cursors, type ChatSession, type SessionOptions } from "../src/index.js";
import { EventLog } from "./event-log.js";
import {
  FakeServer,
  TOKEN,
  caughtUp,
  messageFrame,
  presenceFrame,
  receiptFrame,
  typingFrame,
  welcome,
  within,
} from "./fake-server.js";

const FAST: SessionOptions = { reconnect: { initialMs: 8, maxMs: 40 }, sendRetry: { initialMs: 4, maxMs: 20 } };

const sessions: ChatSession[] = [];
afterEach(() => {
  for (const s of sessions.splice(0)) {
    s.close();
  }
});

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
    expect(session.cursors().toJSON()).toEqual({ c1: "5", c2: "6" });
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
    const cursors = Cursors.fromJSON({ c1: "10" });
    const { log } = open(server, { cursors });
    const stream = await server.subscribes.next("subscribe");
    expect(stream.cursors).toEqual([["c1", 10n]]);
    stream.push(welcome(), messageFrame("c1", 10n), messageFrame("c1", 11n), caughtUp(["c1", 11n]));
    await log.next("caughtUp");
    expect(log.messages()).toEqual(["c1:11"]);
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
    server.failSends = [Code.ResourceExhausted];
    const refused = session.send({ user: "riya" }, "too fast");
    const next = session.send({ user: "riya" }, "later");
    await expect(refused).rejects.toMatchObject({ code: Code.ResourceExhausted });
    expect((await next).seq).toBe(2n);
  });

  it("acknowledges delivery, coalesced per conversation", async () => {
    const server = new FakeServer();
    const { log } = open(server);
    const stream = await server.subscribes.next("subscribe");
    const burst = [1n, 2n, 3n, 4n, 5n].map((s) => messageFrame("c1", s));
    stream.push(welcome(), ...burst, messageFrame("c2", 1n), messageFrame("c2", 2n), caughtUp(["c1", 5n], ["c2", 2n]));
    await log.next("caughtUp");

    const acked = new Map<string, bigint>();
    while ((acked.get("c1") ?? 0n) < 5n || (acked.get("c2") ?? 0n) < 2n) {
      const ack = await server.acks.next("acks up to c1:5 and c2:2");
      expect(ack.seq).toBeGreaterThan(acked.get(ack.conversationId) ?? 0n);
      acked.set(ack.conversationId, ack.seq);
    }
    expect(server.acks.items.length).toBeLessThan(7);
    // The session reports its own delivered watermark from the answers.
    await log.next("receipt", (e) => e.receipt.conversationId === "c1" && e.receipt.deliveredSeq === 5n);
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
    // The loop has returned: nothing reconnects and nothing more is sent.
    expect(server.subscribes.items.length).toBe(1);
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
    const server = new FakeServer();
    const { session, log } = open(server);
    const stream = await server.subscribes.next("subscribe");
    const unsent = session.send({ user: "riya" }, "queued");
    session.close();
    expect((await log.state("closed")).reason).toBe("closed");
    await expect(unsent).rejects.toMatchObject({ kind: "sessionClosed" });
    await within(stream.cancelled(), 5_000, "the stream to be cancelled");
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
