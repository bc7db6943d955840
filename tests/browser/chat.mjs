// The web client in real Chromium, through chat-gateway, against real chat-server
// processes: what a person sees. Screenshots land in target/browser-artifacts/.

import assert from "node:assert/strict";

import {
  DEADLINE_MS,
  browser,
  cli,
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

/** A fresh browser context (its own storage) signed up as `name`. */
async function signUp(chromium, gateway, name) {
  const context = await chromium.newContext({ viewport: { width: 1100, height: 720 } });
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
