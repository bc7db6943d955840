// The browser tests' harness: real processes (chat-server replicas, chat-gateway, the
// `chat` CLI) built by cargo, each on port 0, and a real Chromium driven by
// playwright-core. Everything a test starts is stopped by `cleanup()`, and every wait
// has a deadline.

import { spawn, execFile } from "node:child_process";
import { randomUUID } from "node:crypto";
import { createServer as createHttpServer } from "node:http";
import { createServer } from "node:net";
import { mkdtempSync, mkdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { promisify } from "node:util";

export const ROOT = resolve(import.meta.dirname, "../..");
export const DEADLINE_MS = 20_000;
export const ARTIFACTS = join(ROOT, "target", "browser-artifacts");
const BIN = join(ROOT, "target", process.env.CHAT_PROFILE ?? "debug");
const run = promisify(execFile);

/** Things to stop when the test ends, last started first. */
const cleanups = [];

/** The scenarios of this run, in the order they were declared. */
const scenarios = [];

/** Declares a scenario; `main.mjs` runs them one after another, each with a clean slate. */
export function test(name, body) {
  scenarios.push({ name, body });
}

/**
 * Runs every declared scenario whose name contains `filter`, cleaning up after each;
 * returns how many failed. A plain loop instead of node:test, whose top-level hooks ran
 * while a scenario was still waiting on the browser.
 */
export async function runScenarios(filter = "") {
  let failed = 0;
  for (const { name, body } of scenarios) {
    if (!name.includes(filter)) continue;
    const started = Date.now();
    try {
      await withDeadline(body(), `scenario "${name}"`, 6 * DEADLINE_MS);
      console.log(`ok - ${name} (${Date.now() - started} ms)`);
    } catch (e) {
      failed += 1;
      console.log(`not ok - ${name}\n${e?.stack ?? e}`);
    } finally {
      await cleanup();
    }
  }
  return failed;
}

export async function cleanup() {
  while (cleanups.length) {
    const undo = cleanups.pop();
    try {
      await undo();
    } catch (e) {
      console.error("cleanup:", e);
    }
  }
}

/** A child process that prints `listening on ADDR` once it serves. */
class Service {
  constructor(name, args) {
    this.name = name;
    this.args = args;
    this.child = null;
    this.addr = null;
  }

  async start() {
    this.child = spawn(join(BIN, this.name), this.args, {
      stdio: ["ignore", "pipe", "inherit"],
      env: { ...process.env, RUST_LOG: "warn", DATABASE_URL: "" },
    });
    const child = this.child;
    this.addr = await withDeadline(
      new Promise((ok, fail) => {
        let buffered = "";
        child.stdout.on("data", (chunk) => {
          buffered += chunk;
          const found = /listening on (\S+)/.exec(buffered);
          // Printed right after "listening on" when --metrics-listen is given.
          const metrics = /metrics on (\S+)/.exec(buffered);
          if (metrics) this.metricsUrl = metrics[1];
          if (found && (metrics || !this.args.includes("--metrics-listen"))) ok(found[1]);
        });
        child.on("exit", (code) => fail(new Error(`${this.name} exited (${code}) before listening`)));
      }),
      `${this.name} to listen`,
    );
    return this;
  }

  get url() {
    return `http://${this.addr}`;
  }

  /** SIGKILL: nothing of the shutdown path runs. */
  async kill() {
    // A process that ended by a signal has no exit code, only a signal code.
    if (!this.child || this.child.exitCode !== null || this.child.signalCode !== null) return;
    const exited = new Promise((ok) => this.child.once("exit", ok));
    this.child.kill("SIGKILL");
    await exited;
  }
}

/** Waits for `promise`, failing with `what` after the deadline. */
export async function withDeadline(promise, what, ms = DEADLINE_MS) {
  let timer;
  const timeout = new Promise((_, fail) => {
    timer = setTimeout(() => fail(new Error(`timed out waiting for ${what}`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** A private SQLite file in a temporary directory. */
export function sqliteDatabase() {
  const dir = mkdtempSync(join(tmpdir(), "chat-browser-"));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  return `sqlite://${join(dir, "chat.db")}`;
}

/**
 * A fresh Postgres database of this scenario's own, dropped at cleanup, on the server
 * of DATABASE_URL (scripts/test sets it; else the local server, as postgres).
 */
export async function postgresDatabase() {
  const admin = process.env.DATABASE_URL || "postgres://postgres@127.0.0.1:5432/postgres";
  const name = `chat_browser_${randomUUID().replaceAll("-", "")}`;
  await run("psql", [admin, "-v", "ON_ERROR_STOP=1", "-qc", `CREATE DATABASE ${name}`]);
  cleanups.push(() => run("psql", [admin, "-qc", `DROP DATABASE IF EXISTS ${name} WITH (FORCE)`]));
  const url = new URL(admin);
  url.pathname = `/${name}`;
  return url.toString();
}

/** A port nobody listens on right now. */
async function freePort() {
  return new Promise((ok, fail) => {
    const probe = createServer();
    probe.once("error", fail);
    probe.listen(0, "127.0.0.1", () => {
      const { port } = probe.address();
      probe.close(() => ok(port));
    });
  });
}

/** A redis-server of this scenario's own, without persistence; returns its URL. */
export async function startRedis() {
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), "chat-redis-"));
  const child = spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  cleanups.push(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((ok) => child.once("exit", ok));
      child.kill("SIGKILL");
      await exited;
    }
    rmSync(dir, { recursive: true, force: true });
  });
  await withDeadline(
    new Promise((ok, fail) => {
      let buffered = "";
      child.stdout.on("data", (chunk) => {
        buffered += chunk;
        if (/Ready to accept connections/.test(buffered)) ok();
      });
      child.on("exit", (code) => fail(new Error(`redis-server exited (${code}) before it was ready`)));
    }),
    "redis-server to start",
  );
  return `redis://127.0.0.1:${port}`;
}

/** Two chat-server replicas on one new Postgres database and one new Redis. */
export async function startReplicas(n = 2) {
  const database = await postgresDatabase();
  const redis = await startRedis();
  const replicas = [];
  for (let i = 0; i < n; i++) {
    replicas.push(
      await startServer(database, ["--redis-url", redis, "--redis-grace", "1s", "--metrics-listen", "127.0.0.1:0"]),
    );
  }
  return replicas;
}

/** How many sessions (streams) `server` holds, from its Prometheus endpoint. */
export async function sessionsOn(server) {
  const text = await (await fetch(server.metricsUrl)).text();
  const found = /^chat_sessions (\d+)/m.exec(text);
  return found ? Number(found[1]) : 0;
}

/** A chat-server replica on `databaseUrl`, with rate limits out of a test's way. */
export async function startServer(databaseUrl, extra = []) {
  const listen = extra.includes("--listen") ? [] : ["--listen", "127.0.0.1:0"];
  const server = new Service("chat-server", [
    ...listen,
    "--database-url", databaseUrl,
    "--database-pool-size", "4",
    "--send-rate", "1000", "--send-burst", "1000",
    "--presence-timeout", "3s", "--heartbeat-interval", "1s",
    ...extra,
  ]);
  await server.start();
  cleanups.push(() => server.kill());
  return server;
}

/** chat-gateway in front of `servers`, serving the built web client. */
export async function startGateway(servers, extra = []) {
  const gateway = new Service("chat-gateway", [
    "--listen", "127.0.0.1:0",
    ...servers.flatMap((s) => ["--upstream", s.url]),
    "--web-root", join(ROOT, "web", "dist"),
    "--health-interval", "200ms",
    ...extra,
  ]);
  await gateway.start();
  cleanups.push(() => gateway.kill());
  return gateway;
}

/**
 * A local HTTP server playing a push service (or any receiver of the server's POSTs):
 * records each POST's headers and raw body and answers 201 Created. `next()` resolves with
 * the next POST not yet taken, failing after the deadline.
 */
export async function pushReceiver() {
  const received = [];
  const waiting = [];
  const server = createHttpServer((req, res) => {
    const chunks = [];
    req.on("data", (chunk) => chunks.push(chunk));
    req.on("end", () => {
      res.writeHead(req.method === "POST" ? 201 : 405).end();
      if (req.method !== "POST") return;
      const post = { path: req.url, headers: req.headers, body: Buffer.concat(chunks) };
      const wake = waiting.shift();
      if (wake) wake(post);
      else received.push(post);
    });
  });
  await new Promise((ok, fail) => {
    server.once("error", fail);
    server.listen(0, "127.0.0.1", ok);
  });
  cleanups.push(
    () =>
      new Promise((ok) => {
        server.closeAllConnections();
        server.close(() => ok());
      }),
  );
  const { port } = server.address();
  return {
    url: `http://127.0.0.1:${port}`,
    next: () =>
      withDeadline(
        received.length ? Promise.resolve(received.shift()) : new Promise((ok) => waiting.push(ok)),
        "a POST to the push receiver",
      ),
  };
}

/** The `chat` CLI as a given user, with its own config directory. */
export function cli(gateway) {
  const dir = mkdtempSync(join(tmpdir(), "chat-cli-"));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  return async (...args) => {
    const { stdout } = await run(join(BIN, "chat"), ["--server", gateway.url, "--config-dir", dir, "--json", ...args], {
      timeout: DEADLINE_MS,
    });
    return stdout
      .split("\n")
      .filter(Boolean)
      .map((line) => JSON.parse(line));
  };
}

/** Headless Chromium from Debian's package. */
export async function browser() {
  const { chromium } = await import("playwright-core");
  const launched = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    headless: true,
    args: ["--no-sandbox"],
  });
  cleanups.push(() => launched.close());
  mkdirSync(ARTIFACTS, { recursive: true });
  return launched;
}

/** Saves a screenshot of `page` as a test artifact. */
export async function screenshot(page, name) {
  await page.screenshot({ path: join(ARTIFACTS, `${name}.png`), fullPage: true });
}
