/**
 * Push notifications: base64url, the browser subscription → `WebPushTarget` mapping, the
 * client's push calls against the fake server, and `subscribeWebPush` / `unsubscribeWebPush`
 * driven through a fake `PushManager`.
 */
import { create } from "@bufbuild/protobuf";
import { describe, expect, it } from "vitest";

import {
  ChatClient,
  ChatError,
  Code,
  PushMode,
  base64UrlToBytes,
  bytesToBase64Url,
  subscribeWebPush,
  unsubscribeWebPush,
  webPushFields,
  type PushClient,
  type PushRegistrationLike,
  type PushSettings,
  type PushSubscriptionLike,
  type PushTarget,
  type WebPushSubscriptionLike,
} from "../src/index.js";
import { PushTargetSchema } from "../src/gen/chat/v1/push_pb.js";
import { FakeServer, TOKEN, VAPID_KEY } from "./fake-server.js";

/** Reference encoders, from the platform's `btoa`: standard base64 with padding, and base64url without. */
const b64 = (bytes: readonly number[]): string => btoa(String.fromCharCode(...bytes));
const b64url = (bytes: readonly number[]): string => b64(bytes).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");

const P256DH = Array.from({ length: 65 }, (_, i) => (i * 7 + 4) & 0xff);
const AUTH = Array.from({ length: 16 }, (_, i) => 200 - i);

function client(server: FakeServer, transport: "router" | "grpc-web" = "router"): ChatClient {
  return new ChatClient({
    baseUrls: "https://a.example",
    token: TOKEN,
    transport: transport === "router" ? server.transport : server.grpcWebTransport,
  });
}

/** What the browser's `PushSubscription.toJSON()` gives: keys base64url without padding. */
function subscriptionJson(endpoint: string) {
  return { endpoint, expirationTime: null, keys: { p256dh: b64url(P256DH), auth: b64url(AUTH) } };
}

describe("base64url", () => {
  it("decodes what btoa encodes, every length, with or without padding, url-safe or standard", () => {
    for (let n = 0; n <= 40; n++) {
      const bytes = Array.from({ length: n }, (_, i) => (i * 97 + n * 13 + 250) & 0xff);
      expect([...base64UrlToBytes(b64url(bytes))]).toEqual(bytes);
      expect([...base64UrlToBytes(b64(bytes))]).toEqual(bytes);
      expect(bytesToBase64Url(new Uint8Array(bytes))).toBe(b64url(bytes));
    }
    expect(base64UrlToBytes(VAPID_KEY)).toEqual(new Uint8Array([4, ...Array.from({ length: 64 }, (_, i) => i + 1)]));
  });

  it("refuses what is not base64url", () => {
    for (const bad of ["a", "abcde", "ab$d", "ab cd"]) {
      expect(() => base64UrlToBytes(bad)).toThrow(ChatError);
      try {
        base64UrlToBytes(bad);
      } catch (e) {
        expect((e as ChatError).code).toBe(Code.InvalidArgument);
      }
    }
  });
});

describe("webPushFields", () => {
  it("takes a PushSubscription (through toJSON), its JSON, or the fields by hand", () => {
    const expected = {
      endpoint: "https://push.example/send/abc",
      p256dh: b64url(P256DH),
      auth: b64url(AUTH),
    };
    const json = subscriptionJson(expected.endpoint);
    const live = { endpoint: json.endpoint, toJSON: () => json, getKey: () => null };
    expect(webPushFields(live)).toEqual(expected);
    expect(webPushFields(json)).toEqual(expected);
    // Standard base64 with padding (some tools write it) comes out as the server wants it.
    const standard = { endpoint: expected.endpoint, keys: { p256dh: b64(P256DH), auth: b64(AUTH) } };
    expect(webPushFields(standard)).toEqual(expected);
  });

  it("refuses a subscription without an endpoint or a key", () => {
    const cases: WebPushSubscriptionLike[] = [
      { keys: subscriptionJson("x").keys },
      { endpoint: "", keys: subscriptionJson("x").keys },
      { endpoint: "https://push.example/1" },
      { endpoint: "https://push.example/1", keys: { p256dh: b64url(P256DH) } },
      { toJSON: () => ({ endpoint: "https://push.example/1", keys: {} }) },
    ];
    for (const subscription of cases) {
      expect(() => webPushFields(subscription)).toThrow(/endpoint|key/);
    }
  });
});

describe("ChatClient push calls", () => {
  for (const transport of ["router", "grpc-web"] as const) {
    it(`registers, lists and removes targets, and sets the mode and mutes (${transport})`, async () => {
      const server = new FakeServer();
      const c = client(server, transport);

      const hook = await c.addWebhook("https://hooks.example/chat", "0123456789abcdef");
      expect(hook.kind).toMatchObject({ case: "webhook", value: { url: "https://hooks.example/chat", secret: "" } });
      expect(server.pushTargets.get(hook.id)?.kind.value).toMatchObject({ secret: "0123456789abcdef" });

      const web = await c.addWebPush(subscriptionJson("https://push.example/send/abc"));
      expect(web.kind).toMatchObject({
        case: "webPush",
        value: { endpoint: "https://push.example/send/abc", p256dh: b64url(P256DH), auth: b64url(AUTH) },
      });
      // The same endpoint again replaces the target and keeps its id.
      expect((await c.addWebPush(subscriptionJson("https://push.example/send/abc"))).id).toBe(web.id);
      expect((await c.listPushTargets()).map((t) => t.id)).toEqual([web.id, hook.id]);

      await c.removePushTarget(hook.id);
      await expect(c.removePushTarget(hook.id)).rejects.toMatchObject({ code: Code.NotFound });
      expect((await c.listPushTargets()).map((t) => t.id)).toEqual([web.id]);

      expect(await c.pushSettings()).toEqual({ mode: "content", vapidPublicKey: VAPID_KEY });
      expect(await c.setPushMode("content-free")).toBe("content-free");
      expect(server.pushMode).toBe(PushMode.CONTENT_FREE);
      expect((await c.pushSettings()).mode).toBe("content-free");
      expect(await c.setPushMode("content")).toBe("content");

      await c.setMuted("c1", true);
      expect([...server.muted]).toEqual(["c1"]);
      await c.setMuted("c1", false);
      expect([...server.muted]).toEqual([]);
    });
  }

  it("refuses a bad subscription before calling, and needs a token", async () => {
    const server = new FakeServer();
    await expect(client(server).addWebPush({ endpoint: "https://push.example/1" })).rejects.toMatchObject({ code: Code.InvalidArgument });
    expect(server.pushTargets.size).toBe(0);
    const anonymous = new ChatClient({ baseUrls: "https://a.example", transport: server.transport });
    await expect(anonymous.pushSettings()).rejects.toMatchObject({ kind: "notLoggedIn" });
    await expect(anonymous.setMuted("c1", true)).rejects.toMatchObject({ kind: "notLoggedIn" });
  });
});

// --- a fake browser ---

class FakeSubscription implements PushSubscriptionLike {
  readonly endpoint: string;
  readonly options: { applicationServerKey: ArrayBuffer | null };
  readonly #manager: FakePushManager;
  unsubscribed = false;

  constructor(manager: FakePushManager, endpoint: string, key: Uint8Array) {
    this.#manager = manager;
    this.endpoint = endpoint;
    this.options = { applicationServerKey: key.slice().buffer };
  }

  toJSON() {
    return subscriptionJson(this.endpoint);
  }

  async unsubscribe(): Promise<boolean> {
    this.unsubscribed = true;
    if (this.#manager.current === this) {
      this.#manager.current = null;
    }
    return true;
  }
}

class FakePushManager {
  current: FakeSubscription | null = null;
  readonly subscribeCalls: Array<{ userVisibleOnly: boolean; applicationServerKey: Uint8Array }> = [];
  #next = 1;

  async getSubscription(): Promise<FakeSubscription | null> {
    return this.current;
  }

  async subscribe(options: { userVisibleOnly: boolean; applicationServerKey: Uint8Array<ArrayBuffer> }): Promise<FakeSubscription> {
    this.subscribeCalls.push(options);
    if (this.current !== null) {
      throw new Error("InvalidStateError: subscribed with another key");
    }
    this.current = new FakeSubscription(this, `https://push.example/send/${this.#next++}`, options.applicationServerKey);
    return this.current;
  }
}

function registration(): PushRegistrationLike & { pushManager: FakePushManager } {
  return { pushManager: new FakePushManager() };
}

/** A client object with only the push calls, recording them. */
class FakePushClient implements PushClient {
  readonly calls: string[] = [];
  readonly targets: PushTarget[] = [];
  settings: PushSettings = { mode: "content", vapidPublicKey: VAPID_KEY };
  #next = 1;

  async pushSettings(): Promise<PushSettings> {
    this.calls.push("pushSettings");
    return this.settings;
  }

  async addWebPush(subscription: WebPushSubscriptionLike): Promise<PushTarget> {
    const fields = webPushFields(subscription);
    this.calls.push(`addWebPush ${fields.endpoint}`);
    const target = create(PushTargetSchema, { id: `t-${this.#next++}`, kind: { case: "webPush", value: fields } });
    this.targets.unshift(target);
    return target;
  }

  async listPushTargets(): Promise<PushTarget[]> {
    this.calls.push("listPushTargets");
    return [...this.targets];
  }

  async removePushTarget(id: string): Promise<void> {
    this.calls.push(`removePushTarget ${id}`);
    const index = this.targets.findIndex((t) => t.id === id);
    if (index < 0) {
      throw new ChatError("status", Code.NotFound, "no such push target");
    }
    this.targets.splice(index, 1);
  }
}

describe("subscribeWebPush", () => {
  it("subscribes with the server's key, user-visible only, and registers the subscription", async () => {
    const c = new FakePushClient();
    const reg = registration();
    const target = await subscribeWebPush(c, reg);
    expect(reg.pushManager.subscribeCalls).toHaveLength(1);
    const call = reg.pushManager.subscribeCalls[0]!;
    expect(call.userVisibleOnly).toBe(true);
    expect([...call.applicationServerKey]).toEqual([...base64UrlToBytes(VAPID_KEY)]);
    expect(c.calls).toEqual(["pushSettings", "addWebPush https://push.example/send/1"]);
    expect(target.kind).toMatchObject({
      case: "webPush",
      value: { endpoint: "https://push.example/send/1", p256dh: b64url(P256DH), auth: b64url(AUTH) },
    });
  });

  it("reuses a subscription made with the same key: only registers it again", async () => {
    const c = new FakePushClient();
    const reg = registration();
    await subscribeWebPush(c, reg);
    const first = reg.pushManager.current;
    c.calls.length = 0;
    await subscribeWebPush(c, reg);
    expect(reg.pushManager.subscribeCalls).toHaveLength(1);
    expect(reg.pushManager.current).toBe(first);
    expect(first?.unsubscribed).toBe(false);
    expect(c.calls).toEqual(["pushSettings", "addWebPush https://push.example/send/1"]);
  });

  it("replaces a subscription made with another key, here and on the server", async () => {
    const c = new FakePushClient();
    const reg = registration();
    const old = await subscribeWebPush(c, reg);
    const oldSubscription = reg.pushManager.current;
    c.settings = { mode: "content", vapidPublicKey: bytesToBase64Url(new Uint8Array(65).fill(9)) };
    c.calls.length = 0;
    const target = await subscribeWebPush(c, reg);
    expect(oldSubscription?.unsubscribed).toBe(true);
    expect(c.calls).toEqual([
      "pushSettings",
      "listPushTargets",
      `removePushTarget ${old.id}`,
      "addWebPush https://push.example/send/2",
    ]);
    expect(c.targets.map((t) => t.id)).toEqual([target.id]);
    expect([...(reg.pushManager.subscribeCalls[1]?.applicationServerKey ?? [])]).toEqual(Array(65).fill(9));
  });

  it("fails with FAILED_PRECONDITION when the server offers no Web Push, subscribing nothing", async () => {
    const c = new FakePushClient();
    c.settings = { mode: "content", vapidPublicKey: "" };
    const reg = registration();
    await expect(subscribeWebPush(c, reg)).rejects.toMatchObject({ code: Code.FailedPrecondition });
    expect(reg.pushManager.subscribeCalls).toHaveLength(0);
  });

  it("works end to end with ChatClient against the server", async () => {
    const server = new FakeServer();
    const reg = registration();
    const target = await subscribeWebPush(client(server, "grpc-web"), reg);
    expect(server.pushTargets.get(target.id)?.kind).toMatchObject({
      case: "webPush",
      value: { endpoint: reg.pushManager.current?.endpoint, p256dh: b64url(P256DH) },
    });
    expect(await unsubscribeWebPush(client(server), reg)).toBe(true);
    expect(server.pushTargets.size).toBe(0);
  });
});

describe("unsubscribeWebPush", () => {
  it("removes the server's target for this endpoint, then the browser's subscription", async () => {
    const c = new FakePushClient();
    const reg = registration();
    const mine = await subscribeWebPush(c, reg);
    // Another device's target stays.
    c.targets.push(create(PushTargetSchema, { id: "other", kind: { case: "webPush", value: { endpoint: "https://push.example/other" } } }));
    const subscription = reg.pushManager.current;
    c.calls.length = 0;
    expect(await unsubscribeWebPush(c, reg)).toBe(true);
    expect(c.calls).toEqual(["listPushTargets", `removePushTarget ${mine.id}`]);
    expect(subscription?.unsubscribed).toBe(true);
    expect(c.targets.map((t) => t.id)).toEqual(["other"]);
    expect(await unsubscribeWebPush(c, reg)).toBe(false);
  });

  it("keeps the subscription when the server cannot be reached", async () => {
    const c = new FakePushClient();
    const reg = registration();
    await subscribeWebPush(c, reg);
    c.listPushTargets = async () => {
      throw new ChatError("status", Code.Unavailable, "down");
    };
    await expect(unsubscribeWebPush(c, reg)).rejects.toMatchObject({ code: Code.Unavailable });
    expect(reg.pushManager.current?.unsubscribed).toBe(false);
  });
});
