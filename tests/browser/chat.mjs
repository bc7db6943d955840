// The web client in real Chromium, through chat-gateway, against real chat-server
// processes: what a person sees. Screenshots land in target/browser-artifacts/.

import assert from "node:assert/strict";
import { createDecipheriv, createECDH, createHmac, createPublicKey, verify } from "node:crypto";

import {
  DEADLINE_MS,
  browser,
  cli,
  pushReceiver,
  screenshot,
  sessionsOn,
  sqliteDatabase,
  startGateway,
  startReplicas,
  startServer,
  test,
  withDeadline,
} from "./harness.mjs";

const PASSWORD = "correct horse battery";

/**
 * A fresh browser context (its own storage) signed up as `name`; `prepare` gets the
 * context before the page opens (permissions, init scripts).
 */
async function signUp(chromium, gateway, name, prepare = async () => {}) {
  const context = await chromium.newContext({ viewport: { width: 1100, height: 720 } });
  await prepare(context);
  const page = await context.newPage();
  page.setDefaultTimeout(DEADLINE_MS);
  await page.goto(gateway.url);
  await page.getByTestId("login-name").fill(name);
  await page.getByTestId("login-password").fill(PASSWORD);
  await page.getByTestId("register-submit").click();
  await page.getByTestId("chat-app").waitFor();
  assert.equal(await page.getByTestId("current-user").textContent(), name);
  return { context, page };
}

/** Opens (or starts) the chat with `peer`. */
async function openChat(page, peer) {
  await page.getByTestId("new-chat-input").fill(peer);
  await page.getByTestId("new-chat-button").click();
  await page.locator(`[data-testid=chat-pane][data-peer="${peer}"]`).waitFor();
}

async function send(page, text) {
  await page.getByTestId("composer-input").fill(text);
  await page.getByTestId("composer-input").press("Enter");
}

/** Own message with `text` once it has `status`. */
function ownMessage(page, text, status) {
  return page
    .locator(`[data-testid=message][data-own=true][data-status=${status}]`)
    .filter({ has: page.getByTestId("message-text").getByText(text, { exact: true }) });
}

/** The texts of the messages shown, in order. */
async function shownTexts(page) {
  return page.getByTestId("message-text").allTextContents();
}

/**
 * Until the two pages' streams are on different replicas: the gateway balances by
 * open calls, and a page's other calls can tie the count when its stream is placed.
 */
async function spreadOverReplicas(replicas, page) {
  for (let attempt = 0; attempt < 5; attempt++) {
    const counts = await Promise.all(replicas.map(sessionsOn));
    if (counts.every((n) => n === 1)) return;
    await page.reload();
    await page.getByTestId("chat-app").waitFor();
    await withDeadline(
      (async () => {
        while ((await Promise.all(replicas.map(sessionsOn))).reduce((a, b) => a + b) !== 2) {
          await new Promise((ok) => setTimeout(ok, 50));
        }
      })(),
      "both pages' streams",
    );
  }
  assert.fail("the two pages never landed on different replicas");
}

test("two people chat: ticks turn delivered then read, typing shows, last seen follows", async () => {
  const server = await startServer(sqliteDatabase());
  const gateway = await startGateway([server]);
  await twoPeopleChat(gateway, "", async () => {});
});

test("two people on two replicas behind one gateway chat as if on one server", async () => {
  const replicas = await startReplicas(2);
  const gateway = await startGateway(replicas);
  await twoPeopleChat(gateway, "replicas-", (riya) => spreadOverReplicas(replicas, riya.page));
});

/** The two-people scenario; `placed` runs once both are signed up. */
async function twoPeopleChat(gateway, tag, placed) {
  const chromium = await browser();
  const alex = await signUp(chromium, gateway, "alex");
  const riya = await signUp(chromium, gateway, "riya");
  await placed(riya);

  await openChat(alex.page, "riya");
  await send(alex.page, "lunch?");
  // Riya is online but has not opened the chat: her device received it, she has not read it.
  await ownMessage(alex.page, "lunch?", "delivered").waitFor();
  const item = riya.page.locator('[data-testid=conversation-item][data-peer="alex"]');
  await item.waitFor();
  await item.getByTestId("unread-badge").getByText("1", { exact: true }).waitFor();
  assert.equal(await ownMessage(alex.page, "lunch?", "read").count(), 0, "not read before Riya opens it");
  await screenshot(alex.page, `${tag}alex-delivered`);

  await item.click();
  await riya.page.getByTestId("message-text").getByText("lunch?", { exact: true }).waitFor();
  await ownMessage(alex.page, "lunch?", "read").waitFor();
  await riya.page.locator('[data-testid=conversation-item][data-peer="alex"] [data-testid=unread-badge]').waitFor({ state: "detached" });
  await screenshot(alex.page, `${tag}alex-read`);

  // Riya types: Alex sees it while she does.
  await riya.page.getByTestId("composer-input").pressSequentially("sure, where", { delay: 30 });
  await alex.page.getByTestId("typing-indicator").getByText("riya is typing").waitFor();
  await screenshot(alex.page, `${tag}alex-sees-typing`);
  await riya.page.getByTestId("composer-input").press("Enter");
  await alex.page.getByTestId("message-text").getByText("sure, where", { exact: true }).waitFor();
  await alex.page.getByTestId("typing-indicator").waitFor({ state: "hidden" });
  await screenshot(riya.page, `${tag}riya-chat`);

  // Riya closes her page: Alex sees her go, with a last-seen time.
  await alex.page.getByTestId("chat-presence").getByText("online").waitFor();
  await riya.context.close();
  await alex.page.getByTestId("chat-presence").getByText(/last seen/).waitFor();
  await alex.page
    .locator('[data-testid=conversation-item][data-peer="riya"] [data-testid=presence-text]')
    .getByText(/last seen/)
    .waitFor();
  await screenshot(alex.page, `${tag}alex-sees-last-seen`);
  assert.deepEqual(await shownTexts(alex.page), ["lunch?", "sure, where"]);
}

test("a replica dies while both browsers are connected: the pages recover, nothing is missing", async () => {
  const replicas = await startReplicas(2);
  const gateway = await startGateway(replicas);
  const chromium = await browser();
  const alex = await signUp(chromium, gateway, "alex");
  const riya = await signUp(chromium, gateway, "riya");
  await spreadOverReplicas(replicas, riya.page);
  await openChat(alex.page, "riya");
  await send(alex.page, "before the crash");
  await riya.page.locator('[data-testid=conversation-item][data-peer="alex"]').click();
  await ownMessage(alex.page, "before the crash", "read").waitFor();

  // One of the two pages is on the replica that dies; the other replica takes it over.
  await replicas[0].kill();
  const pages = [alex.page, riya.page];
  await Promise.any(
    pages.map((page) => page.locator("[data-testid=connection-banner][data-state=reconnecting]").waitFor()),
  );
  await send(alex.page, "during the failover");
  await send(riya.page, "still here");
  await ownMessage(alex.page, "during the failover", "read").waitFor();
  await ownMessage(riya.page, "still here", "read").waitFor();
  for (const page of pages) {
    await page.getByTestId("connection-banner").waitFor({ state: "hidden" });
  }
  await send(alex.page, "after the failover");
  await riya.page.getByTestId("message-text").getByText("after the failover", { exact: true }).waitFor();
  await screenshot(riya.page, "replica-failover");
  const expected = ["before the crash", "during the failover", "still here", "after the failover"];
  for (const page of pages) {
    const shown = await shownTexts(page);
    assert.deepEqual([...shown].sort(), [...expected].sort(), "each message once");
    assert.equal(new Set(shown).size, shown.length, "no message twice");
  }
  assert.equal(await sessionsOn(replicas[1]), 2, "both pages now on the surviving replica");
});

test("a browser chats with a CLI user through the same gateway", async () => {
  const server = await startServer(sqliteDatabase());
  const gateway = await startGateway([server]);
  const bob = cli(gateway);
  await bob("register", "bob", "--password", PASSWORD);
  const chromium = await browser();
  const alex = await signUp(chromium, gateway, "alex");

  await openChat(alex.page, "bob");
  await send(alex.page, "hi bob, from a browser");
  await ownMessage(alex.page, "hi bob, from a browser", "sent").or(ownMessage(alex.page, "hi bob, from a browser", "delivered")).waitFor();
  // The CLI connects natively (gRPC over HTTP/2) to the same port, prints and acks it.
  const seen = await bob("watch", "--count", "1", "--timeout", "15");
  const message = seen.find((e) => e.type === "message");
  assert.ok(message, `bob's watch printed ${JSON.stringify(seen)}`);
  assert.equal(message.text, "hi bob, from a browser");
  await ownMessage(alex.page, "hi bob, from a browser", "delivered").waitFor();

  await bob("send", "alex", "hello from the terminal");
  await alex.page.getByTestId("message-text").getByText("hello from the terminal", { exact: true }).waitFor();
  await bob("read", "alex");
  await ownMessage(alex.page, "hi bob, from a browser", "read").waitFor();
  await screenshot(alex.page, "browser-and-cli");
});

test("the server dies and comes back: the pages say so, recover, and nothing is missing", async () => {
  const database = sqliteDatabase();
  let server = await startServer(database);
  const gateway = await startGateway([server]);
  const chromium = await browser();
  const alex = await signUp(chromium, gateway, "alex");
  const riya = await signUp(chromium, gateway, "riya");
  await openChat(alex.page, "riya");
  await send(alex.page, "before the crash");
  await ownMessage(alex.page, "before the crash", "delivered").waitFor();
  await riya.page.locator('[data-testid=conversation-item][data-peer="alex"]').click();
  await ownMessage(alex.page, "before the crash", "read").waitFor();

  const port = server.addr.split(":").pop();
  await server.kill();
  await alex.page.locator("[data-testid=connection-banner][data-state=reconnecting]").waitFor();
  await riya.page.locator("[data-testid=connection-banner][data-state=reconnecting]").waitFor();
  await screenshot(alex.page, "alex-reconnecting");
  // Typed while the server is down: held, and sent when it is back.
  await send(alex.page, "while you were down");
  await ownMessage(alex.page, "while you were down", "pending").waitFor();

  server = await startServer(database, ["--listen", `127.0.0.1:${port}`]);
  // The pending message goes out once Alex's page is back, and Riya (in the chat) reads it.
  await ownMessage(alex.page, "while you were down", "read").waitFor();
  await alex.page.getByTestId("connection-banner").waitFor({ state: "hidden" });
  await send(alex.page, "after the restart");
  await riya.page.getByTestId("message-text").getByText("after the restart", { exact: true }).waitFor();
  await screenshot(riya.page, "riya-recovered");
  const expected = ["before the crash", "while you were down", "after the restart"];
  assert.deepEqual(await shownTexts(riya.page), expected, "each message once, in order");
  assert.deepEqual(await shownTexts(alex.page), expected);
});

test("history loads on scroll-back, each message once and in order", async () => {
  const server = await startServer(sqliteDatabase());
  const gateway = await startGateway([server]);
  const bob = cli(gateway);
  await bob("register", "bob", "--password", PASSWORD);
  const chromium = await browser();
  const laptop = await signUp(chromium, gateway, "alex");
  // More than two pages of history. Alex's laptop receives and reads them all...
  const total = 130;
  for (let i = 1; i <= total; i++) {
    await bob("send", "alex", `message ${i}`);
  }
  await laptop.page.locator('[data-testid=conversation-item][data-peer="bob"]').click();
  await laptop.page.getByTestId("message-text").getByText(`message ${total}`, { exact: true }).waitFor();
  await withDeadline(
    (async () => {
      for (;;) {
        const [last] = (await bob("history", "alex", "--limit", "1")).filter((e) => e.type === "message");
        if (last?.status === "read") return;
      }
    })(),
    "bob to see his last message read",
  );
  await laptop.context.close();

  // ...so a new browser starts after them, shows the latest page, and pages back.
  const context = await chromium.newContext({ viewport: { width: 1100, height: 720 } });
  const page = await context.newPage();
  page.setDefaultTimeout(DEADLINE_MS);
  await page.goto(gateway.url);
  await page.getByTestId("login-name").fill("alex");
  await page.getByTestId("login-password").fill(PASSWORD);
  await page.getByTestId("login-submit").click();
  await page.locator('[data-testid=conversation-item][data-peer="bob"]').click();
  await page.getByTestId("message-text").getByText(`message ${total}`, { exact: true }).waitFor();
  const firstPage = (await shownTexts(page)).length;
  assert.ok(firstPage < total, `the first page is not everything (${firstPage} shown)`);

  const list = page.getByTestId("message-list");
  const start = page.getByTestId("history-start");
  while (!(await start.isVisible())) {
    const before = (await shownTexts(page)).length;
    await list.evaluate((el) => {
      el.scrollTop = 0;
    });
    await page.waitForFunction(
      (n) =>
        document.querySelectorAll("[data-testid=message-text]").length > n ||
        !document.querySelector("[data-testid=history-start]")?.hidden,
      before,
      { timeout: DEADLINE_MS },
    );
  }
  await screenshot(page, "history-start");
  const expected = Array.from({ length: total }, (_, i) => `message ${i + 1}`);
  assert.deepEqual(await shownTexts(page), expected, "every message once, oldest first");
});

/**
 * Runs in the page before the app (an init script, so self-contained): the browser's push
 * service is the one thing faked, as real Web Push needs Google's or Mozilla's servers.
 * `PushManager.subscribe` makes a subscription as a browser would (a fresh P-256 ECDH key
 * pair and a 16-byte auth secret) whose endpoint is the test's receiver, and leaves its
 * private key on `window.__fakePush` so the test can decrypt what the server sends.
 */
function fakePushService(endpoint) {
  const b64url = (buffer) =>
    btoa(String.fromCharCode(...new Uint8Array(buffer))).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  const copy = (source) =>
    ArrayBuffer.isView(source)
      ? new Uint8Array(source.buffer, source.byteOffset, source.byteLength).slice().buffer
      : source.slice(0);
  let current = null;
  PushManager.prototype.getSubscription = async function () {
    return current;
  };
  PushManager.prototype.subscribe = async function (options) {
    if (current !== null) return current;
    if (!options?.userVisibleOnly || !(ArrayBuffer.isView(options.applicationServerKey) || options.applicationServerKey instanceof ArrayBuffer)) {
      throw new DOMException("subscribe needs userVisibleOnly and an applicationServerKey", "NotAllowedError");
    }
    const pair = await crypto.subtle.generateKey({ name: "ECDH", namedCurve: "P-256" }, true, ["deriveBits"]);
    const p256dh = await crypto.subtle.exportKey("raw", pair.publicKey);
    const auth = crypto.getRandomValues(new Uint8Array(16)).buffer;
    const applicationServerKey = copy(options.applicationServerKey);
    window.__fakePush = {
      endpoint,
      applicationServerKey: b64url(applicationServerKey),
      p256dh: b64url(p256dh),
      auth: b64url(auth),
      privateJwk: await crypto.subtle.exportKey("jwk", pair.privateKey),
      subscribed: (window.__fakePush?.subscribed ?? 0) + 1,
    };
    current = {
      endpoint,
      expirationTime: null,
      options: { userVisibleOnly: true, applicationServerKey },
      getKey: (name) => (name === "p256dh" ? p256dh.slice(0) : name === "auth" ? auth.slice(0) : null),
      toJSON: () => ({ endpoint, expirationTime: null, keys: { p256dh: b64url(p256dh), auth: b64url(auth) } }),
      unsubscribe: async () => {
        current = null;
        return true;
      },
    };
    return current;
  };
}

/** Until `server` holds `n` sessions (streams). */
async function sessionsBecome(server, n, what) {
  let waiting = true;
  try {
    await withDeadline(
      (async () => {
        while (waiting && (await sessionsOn(server)) !== n) {
          await new Promise((ok) => setTimeout(ok, 50));
        }
      })(),
      what,
    );
  } finally {
    waiting = false;
  }
}

/** HKDF-SHA-256 (RFC 5869) Extract, and Expand to at most one block, as RFC 8291 uses them. */
function hkdfExtract(salt, ikm) {
  return createHmac("sha256", salt).update(ikm).digest();
}

function hkdfExpand(prk, info, length) {
  assert.ok(length <= 32);
  return createHmac("sha256", prk).update(Buffer.concat([Buffer.from(info, "latin1"), Buffer.of(1)])).digest().subarray(0, length);
}

/**
 * Decrypts an aes128gcm Web Push body (RFC 8291 over RFC 8188) with the subscription's
 * private key and auth secret; returns the plaintext without its delimiter and padding.
 */
function decryptWebPush(body, privateJwk, authSecret) {
  const salt = body.subarray(0, 16);
  const recordSize = body.readUInt32BE(16);
  const idLength = body[20];
  assert.equal(idLength, 65, "the key id is the server's ephemeral P-256 key");
  const asPublic = body.subarray(21, 21 + idLength);
  assert.equal(asPublic[0], 0x04, "uncompressed point");
  const record = body.subarray(21 + idLength);
  assert.ok(record.length > 16 && record.length <= recordSize, `one record of ${record.length} bytes (rs ${recordSize})`);

  const ecdh = createECDH("prime256v1");
  ecdh.setPrivateKey(Buffer.from(privateJwk.d, "base64url"));
  const uaPublic = ecdh.getPublicKey();
  assert.deepEqual(uaPublic, Buffer.concat([Buffer.of(4), Buffer.from(privateJwk.x, "base64url"), Buffer.from(privateJwk.y, "base64url")]));
  const ecdhSecret = ecdh.computeSecret(asPublic);

  const prkKey = hkdfExtract(authSecret, ecdhSecret);
  const ikm = hkdfExpand(prkKey, Buffer.concat([Buffer.from("WebPush: info\0", "latin1"), uaPublic, asPublic]), 32);
  const prk = hkdfExtract(salt, ikm);
  const cek = hkdfExpand(prk, "Content-Encoding: aes128gcm\0", 16);
  const nonce = hkdfExpand(prk, "Content-Encoding: nonce\0", 12);

  const decipher = createDecipheriv("aes-128-gcm", cek, nonce);
  decipher.setAuthTag(record.subarray(record.length - 16));
  const padded = Buffer.concat([decipher.update(record.subarray(0, record.length - 16)), decipher.final()]);
  let end = padded.length;
  while (end > 0 && padded[end - 1] === 0) end -= 1;
  assert.equal(padded[end - 1], 0x02, "the last (only) record's delimiter");
  return padded.subarray(0, end - 1);
}

/** Checks `authorization: vapid t=JWT, k=KEY` (RFC 8292); returns the JWT's claims and k. */
function verifyVapid(authorization) {
  const found = /^vapid t=([\w-]+\.[\w-]+\.[\w-]+),\s*k=([\w-]+)$/.exec(authorization ?? "");
  assert.ok(found, `a VAPID authorization header, not ${JSON.stringify(authorization)}`);
  const [, jwt, k] = found;
  const [header, claims, signature] = jwt.split(".");
  assert.equal(JSON.parse(Buffer.from(header, "base64url")).alg, "ES256");
  const point = Buffer.from(k, "base64url");
  assert.equal(point.length, 65);
  assert.equal(point[0], 0x04);
  const key = createPublicKey({
    key: { kty: "EC", crv: "P-256", x: point.subarray(1, 33).toString("base64url"), y: point.subarray(33).toString("base64url") },
    format: "jwk",
  });
  const signed = Buffer.from(`${header}.${claims}`);
  assert.ok(
    verify("sha256", signed, { key, dsaEncoding: "ieee-p1363" }, Buffer.from(signature, "base64url")),
    "the JWT's ES256 signature verifies under k",
  );
  return { claims: JSON.parse(Buffer.from(claims, "base64url")), k };
}

test("notifications on in the browser: the server's Web Push to its subscription is VAPID-signed and decrypts to the message", async () => {
  const receiver = await pushReceiver();
  const server = await startServer(sqliteDatabase(), ["--push-grace", "300ms", "--metrics-listen", "127.0.0.1:0"]);
  const gateway = await startGateway([server]);
  const chromium = await browser();
  const endpoint = `${receiver.url}/push/riya-laptop`;
  const riya = await signUp(chromium, gateway, "riya", async (context) => {
    await context.grantPermissions(["notifications"], { origin: gateway.url });
    await context.addInitScript(fakePushService, endpoint);
  });

  // Riya turns notifications on: the page registers /sw.js, subscribes, and registers the
  // subscription through the SDK; the settings say "on" once AddPushTarget answered.
  const settings = riya.page.getByTestId("push-settings");
  await settings.waitFor();
  const toggle = riya.page.getByTestId("push-toggle");
  assert.equal(await toggle.textContent(), "Enable notifications");
  await toggle.click();
  await riya.page.locator("[data-testid=push-settings][data-on=true]").waitFor();
  assert.equal(await riya.page.getByTestId("push-status").textContent(), "Notifications are on.");
  assert.equal(await riya.page.getByTestId("push-error").isHidden(), true);
  await screenshot(riya.page, "riya-notifications-on");
  const subscription = await riya.page.evaluate(() => window.__fakePush);
  assert.equal(subscription?.subscribed, 1, "subscribed once");
  assert.equal(subscription.endpoint, endpoint);
  const worker = await riya.page.evaluate(async () => {
    const registration = await navigator.serviceWorker.getRegistration();
    const worker = registration?.active ?? registration?.waiting ?? registration?.installing;
    return { scope: registration?.scope, scriptURL: worker?.scriptURL };
  });
  assert.ok(worker.scriptURL?.endsWith("/sw.js"), `the page registered /sw.js: ${JSON.stringify(worker)}`);
  assert.equal(worker.scope, `${gateway.url}/`);

  // Riya closes her page: once the server holds no session of hers (she has no
  // conversation yet, so nobody is shown her presence), Alex writes from the terminal.
  const alex = cli(gateway);
  await alex("register", "alex", "--password", PASSWORD);
  await sessionsBecome(server, 1, "Riya's page's stream");
  await riya.context.close();
  await sessionsBecome(server, 0, "the server to drop Riya's session");
  await alex("send", "riya", "lunch?");

  // After the grace period the server pushes to the subscription's endpoint.
  const push = await receiver.next();
  assert.equal(push.path, "/push/riya-laptop");
  assert.equal(push.headers["content-encoding"], "aes128gcm");
  assert.match(push.headers.ttl ?? "", /^\d+$/, "RFC 8030 requires a TTL");
  assert.match(push.headers.topic ?? "", /^[\w-]{1,32}$/, "a topic is at most 32 base64url characters");
  const { claims, k } = verifyVapid(push.headers.authorization);
  assert.equal(k, subscription.applicationServerKey, "signed with the key the page subscribed with");
  assert.equal(claims.aud, receiver.url, "the audience is the push service's origin");
  const now = Date.now() / 1000;
  assert.ok(claims.exp > now && claims.exp <= now + 24 * 60 * 60, `exp ${claims.exp} is within the next 24 hours`);
  assert.match(claims.sub ?? "", /^(mailto:|https:)/);

  const plaintext = decryptWebPush(push.body, subscription.privateJwk, Buffer.from(subscription.auth, "base64url"));
  const payload = JSON.parse(plaintext.toString("utf8"));
  assert.equal(payload.title, "alex");
  assert.equal(payload.body, "lunch?");
  assert.equal(payload.sender, "alex");
  assert.equal(payload.user, "riya");
  assert.equal(payload.unread, 1);
  assert.equal(payload.badge, 1);
  assert.equal(typeof payload.delivery_id, "string");
});
