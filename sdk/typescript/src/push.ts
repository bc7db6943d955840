/**
 * The pure parts of push notifications, shared by `ChatClient` and the browser helper in
 * `webpush.ts`: push modes by name, base64url, and turning a browser's Web Push
 * subscription (a `PushSubscription` or its `toJSON()`) into the `WebPushTarget` the server
 * registers. No DOM here: this runs in Node as well.
 */
import { PushMode, type PushTarget } from "./gen/chat/v1/push_pb.js";
import { ChatError, Code } from "./errors.js";

/** How much a push may say: sender and text, or only that something arrived (and the count). */
export type PushModeName = "content" | "content-free";

/** The caller's push settings. */
export interface PushSettings {
  mode: PushModeName;
  /**
   * The server's VAPID public key (uncompressed P-256, base64url), the
   * `applicationServerKey` of a Web Push subscription; empty if the server offers no Web Push.
   */
  vapidPublicKey: string;
}

/**
 * A Web Push subscription as the browser gives it: `PushSubscription.toJSON()` (keys as
 * base64url), the `PushSubscription` itself, or the same fields written by hand.
 */
export type WebPushSubscriptionLike =
  | { endpoint?: string | null | undefined; keys?: { p256dh?: string | undefined; auth?: string | undefined } | undefined }
  | { toJSON(): { endpoint?: string | undefined; keys?: Record<string, string> | undefined } };

/** The fields of a `WebPushTarget`, as the server wants them (keys base64url, unpadded). */
export interface WebPushFields {
  endpoint: string;
  p256dh: string;
  auth: string;
}

/** The `PushMode` of a mode name. */
export function pushModeValue(mode: PushModeName): PushMode {
  switch (mode) {
    case "content":
      return PushMode.CONTENT;
    case "content-free":
      return PushMode.CONTENT_FREE;
  }
}

/** The name of a `PushMode`; unspecified is the server's default, content. */
export function pushModeName(mode: PushMode): PushModeName {
  return mode === PushMode.CONTENT_FREE ? "content-free" : "content";
}

const ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
const DECODE = new Map<string, number>([...ALPHABET].map((c, i) => [c, i]));

/**
 * The bytes of a base64url string (padding optional). Standard base64 (`+`, `/`) is taken
 * too, since some browsers and tools write it; anything else is an INVALID_ARGUMENT error.
 */
export function base64UrlToBytes(text: string): Uint8Array<ArrayBuffer> {
  const clean = text.trim().replace(/=+$/, "").replace(/\+/g, "-").replace(/\//g, "_");
  if (clean.length % 4 === 1) {
    throw invalid(`not base64url: ${clean.length} characters`);
  }
  const bytes = new Uint8Array(Math.floor((clean.length * 3) / 4));
  let buffer = 0;
  let bits = 0;
  let out = 0;
  for (const c of clean) {
    const value = DECODE.get(c);
    if (value === undefined) {
      throw invalid(`not base64url: unexpected ${JSON.stringify(c)}`);
    }
    buffer = ((buffer << 6) | value) & 0xffffff;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      bytes[out++] = (buffer >> bits) & 0xff;
    }
  }
  return bytes;
}

/** Base64url without padding, as the server writes keys. */
export function bytesToBase64Url(bytes: Uint8Array | ArrayBuffer): string {
  const b = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
  let text = "";
  for (let i = 0; i < b.length; i += 3) {
    const n = ((b[i] ?? 0) << 16) | ((b[i + 1] ?? 0) << 8) | (b[i + 2] ?? 0);
    const chars = i + 2 < b.length ? 4 : i + 1 < b.length ? 3 : 2;
    for (let k = 0; k < chars; k++) {
      text += ALPHABET[(n >> (18 - 6 * k)) & 63];
    }
  }
  return text;
}

/** Two keys are the same bytes (a subscription's `applicationServerKey` against the server's). */
export function sameKey(a: ArrayBuffer | Uint8Array | null | undefined, b: Uint8Array): boolean {
  if (a === null || a === undefined) {
    return false;
  }
  const x = a instanceof Uint8Array ? a : new Uint8Array(a);
  return x.length === b.length && x.every((v, i) => v === b[i]);
}

/**
 * The `WebPushTarget` of a browser subscription: its endpoint and keys, the keys re-encoded
 * as unpadded base64url. A subscription without an endpoint or either key is refused with
 * INVALID_ARGUMENT before anything is sent.
 */
export function webPushFields(subscription: WebPushSubscriptionLike): WebPushFields {
  const json = "toJSON" in subscription && typeof subscription.toJSON === "function" ? subscription.toJSON() : subscription;
  const endpoint = "endpoint" in json ? json.endpoint : undefined;
  const keys = "keys" in json ? json.keys : undefined;
  if (typeof endpoint !== "string" || endpoint === "") {
    throw invalid("the push subscription has no endpoint");
  }
  const p256dh = keys?.p256dh;
  const auth = keys?.auth;
  if (p256dh === undefined || p256dh === "" || auth === undefined || auth === "") {
    throw invalid("the push subscription has no p256dh or auth key");
  }
  return { endpoint, p256dh: bytesToBase64Url(base64UrlToBytes(p256dh)), auth: bytesToBase64Url(base64UrlToBytes(auth)) };
}

/** The endpoint of a Web Push target (undefined for webhooks). */
export function webPushEndpoint(target: PushTarget): string | undefined {
  return target.kind.case === "webPush" ? target.kind.value.endpoint : undefined;
}

function invalid(message: string): ChatError {
  return new ChatError("status", Code.InvalidArgument, message);
}
