/**
 * The service worker (built to /sw.js, scope "/"): shows the server's Web Push
 * notifications, one per conversation (a newer push replaces the older), drops repeats of
 * a delivery, keeps the app badge at the unread count, and on a click focuses an open
 * app window (asking it to open the conversation) or opens a new one.
 *
 * The project type-checks against the DOM library, which has no service worker types, so
 * the few used here are declared below.
 */
import {
  RecentIds,
  notificationFor,
  openConversationHash,
  openConversationMessage,
  parsePushPayload,
  superseded,
} from "./push-payload.js";

interface ExtendableEvent extends Event {
  waitUntil(promise: Promise<unknown>): void;
}

interface PushEvent extends ExtendableEvent {
  readonly data: { json(): unknown } | null;
}

interface NotificationEvent extends ExtendableEvent {
  readonly notification: Notification;
}

interface WindowClient {
  readonly url: string;
  readonly focused: boolean;
  focus(): Promise<WindowClient>;
  postMessage(message: unknown): void;
}

interface ServiceWorkerScope {
  readonly registration: ServiceWorkerRegistration;
  readonly clients: {
    matchAll(options: { type: "window"; includeUncontrolled: boolean }): Promise<readonly WindowClient[]>;
    openWindow(url: string): Promise<WindowClient | null>;
    claim(): Promise<void>;
  };
  /** The Badging API, where the browser has it. */
  readonly navigator: { setAppBadge?(count: number): Promise<void>; clearAppBadge?(): Promise<void> };
  skipWaiting(): Promise<void>;
  addEventListener(type: "install" | "activate", listener: (event: ExtendableEvent) => void): void;
  addEventListener(type: "push", listener: (event: PushEvent) => void): void;
  addEventListener(type: "notificationclick", listener: (event: NotificationEvent) => void): void;
}

declare const self: ServiceWorkerScope;

const recent = new RecentIds();

// A new version takes over at once: it only shows notifications, there is no cache to migrate.
self.addEventListener("install", (event) => event.waitUntil(self.skipWaiting()));
self.addEventListener("activate", (event) => event.waitUntil(self.clients.claim()));

self.addEventListener("push", (event) => {
  let json: unknown;
  try {
    json = event.data?.json();
  } catch {
    json = undefined;
  }
  event.waitUntil(show(json));
});

async function show(json: unknown): Promise<void> {
  const payload = parsePushPayload(json);
  if (payload === undefined) {
    // Subscribed "user visible only": every push must show something.
    await self.registration.showNotification("New message", { tag: "chat" });
    return;
  }
  if (recent.seen(payload.delivery_id)) {
    return;
  }
  const shown = await self.registration.getNotifications({ tag: payload.conversation_id });
  if (superseded(payload, shown.map((n) => n.data as unknown))) {
    return;
  }
  const { title, options } = notificationFor(payload);
  await Promise.all([self.registration.showNotification(title, options), setBadge(payload.badge)]);
}

async function setBadge(count: number): Promise<void> {
  try {
    await (count > 0 ? self.navigator.setAppBadge?.(count) : self.navigator.clearAppBadge?.());
  } catch {
    // No badge permission, or no badge on this platform.
  }
}

self.addEventListener("notificationclick", (event) => {
  event.notification.close();
  const data = event.notification.data as { conversation_id?: unknown } | null;
  const conversationId = typeof data?.conversation_id === "string" ? data.conversation_id : undefined;
  event.waitUntil(openApp(conversationId));
});

async function openApp(conversationId: string | undefined): Promise<void> {
  const scope = self.registration.scope;
  const windows = (await self.clients.matchAll({ type: "window", includeUncontrolled: true })).filter((w) => w.url.startsWith(scope));
  const open = windows.find((w) => w.focused) ?? windows[0];
  if (open !== undefined) {
    if (conversationId !== undefined) {
      open.postMessage(openConversationMessage(conversationId));
    }
    await open.focus();
    return;
  }
  const url = new URL(scope);
  if (conversationId !== undefined) {
    url.hash = openConversationHash(conversationId);
  }
  await self.clients.openWindow(url.href);
}
