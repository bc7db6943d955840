/** `ChatClient`'s unary calls: login adopting the token, sends retried with one client_msg_id, history anchors. */
import { describe, expect, it } from "vitest";

import { ChatClient, Code } from "../src/index.js";
import { FakeServer, TOKEN, within } from "./fake-server.js";

function client(server: FakeServer, token?: string): ChatClient {
  return new ChatClient({
    baseUrls: ["https://a.example", "https://b.example"],
    token,
    transport: server.transport,
    sendRetry: { initialMs: 2, maxMs: 8 },
    random: () => 0.5,
  });
}

describe("ChatClient", () => {
  it("adopts the token of login and register, and forgets it on logout", async () => {
    const server = new FakeServer();
    const c = client(server);
    await expect(c.listConversations()).rejects.toMatchObject({ kind: "notLoggedIn", code: Code.Unauthenticated });
    await expect(c.login("me", "wrong")).rejects.toMatchObject({ code: Code.Unauthenticated });
    const credentials = await c.login("me", "secret");
    expect([credentials.token, credentials.user.name, c.token]).toEqual([TOKEN, "me", TOKEN]);
    expect(await c.listConversations()).toEqual([]);
    await c.logout();
    expect(c.token).toBeUndefined();

    const registered = await c.register("newbie", "pw");
    expect(registered.expiresAt?.getTime()).toBe(1e12);
    expect(c.token).toBe(TOKEN);
  });

  it("retries a send on retryable codes with the same client_msg_id, rotating gateways", async () => {
    const server = new FakeServer();
    server.failSends = [Code.Unavailable, Code.DeadlineExceeded, Code.Aborted, Code.Unknown];
    const ack = await within(client(server, TOKEN).send({ user: "riya" }, "hello"), 5_000, "the send");
    const ids = new Set(server.sends.items.map((s) => s.message.clientMsgId));
    expect(server.sends.items.length).toBe(5);
    expect(ids.size).toBe(1);
    expect([ack.seq, ack.duplicate, ack.clientMsgId]).toEqual([1n, true, [...ids][0]]);
    expect(server.sends.items.map((s) => s.url)).toEqual([
      "https://a.example",
      "https://b.example",
      "https://a.example",
      "https://b.example",
      "https://a.example",
    ]);
  });

  it("does not retry what retrying cannot fix, and gives up after its attempts", async () => {
    const server = new FakeServer();
    const c = client(server, TOKEN);
    server.failSends = [Code.InvalidArgument];
    await expect(c.send({ user: "riya" }, "x")).rejects.toMatchObject({ code: Code.InvalidArgument });
    expect(server.sends.items.length).toBe(1);

    server.failSends = Array.from({ length: 10 }, () => Code.Unavailable);
    await expect(c.send({ user: "riya" }, "y", { clientMsgId: "fixed" })).rejects.toMatchObject({ code: Code.Unavailable });
    expect(server.sends.items.slice(1).map((s) => s.message.clientMsgId)).toEqual(Array(6).fill("fixed"));
  });

  it("pages history latest, before and after", async () => {
    const server = new FakeServer();
    const c = client(server, TOKEN);
    const text = async (page: Parameters<ChatClient["history"]>[1]): Promise<[string, boolean]> => {
      const r = await c.history("c1", page);
      return [r.messages[0]?.text ?? "", r.hasMore];
    };
    expect(await text("latest")).toEqual(["latest", false]);
    expect(await text({ before: 40n })).toEqual(["beforeSeq=40", true]);
    expect(await text({ after: 7n })).toEqual(["afterSeq=7", false]);
  });

  it("opens direct conversations, marks read, types and reads presence", async () => {
    const server = new FakeServer();
    const c = client(server, TOKEN);
    expect((await c.openDirect("riya")).peer?.name).toBe("riya");
    expect((await c.markRead("c1", 4n)).readSeq).toBe(4n);
    await c.setTyping("c1", true);
    await c.heartbeat();
    expect((await c.getPresence(["riya"])).map((p) => [p.user?.name, p.online])).toEqual([["riya", true]]);
  });
});
