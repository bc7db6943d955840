/**
 * Push notifications in this browser: asking permission, registering the service worker
 * (/sw.js, scope "/"), and subscribing it to Web Push for the logged-in user through the
 * SDK. Which users turned notifications on here is kept in localStorage, so a later login
 * (a new device session on the server) registers the browser again without asking.
 */
import { subscribeWebPush, unsubscribeWebPush, type ChatClient } from "chat-sdk";

const WORKER_URL = "/sw.js";
const SCOPE = "/";
const WANTED_KEY = "chat.push.users";

/** What the browser allows: no Web Push at all, blocked, not asked yet, or allowed. */
export type PushAvailability = "unsupported" | NotificationPermission;

export function pushAvailability(): PushAvailability {
  if (!("serviceWorker" in navigator) || typeof PushManager === "undefined" || typeof Notification === "undefined") {
    return "unsupported";
  }
  return Notification.permission;
}

/**
 * Asks for permission (call it from a click), registers the worker and subscribes; returns
 * the permission when it is not granted.
 */
export async function enableNotifications(client: ChatClient, userId: string): Promise<PushAvailability> {
  if (pushAvailability() === "unsupported") {
    return "unsupported";
  }
  const permission = await Notification.requestPermission();
  if (permission !== "granted") {
    return permission;
  }
  await subscribeWebPush(client, await workerRegistration());
  setWanted(userId, true);
  return "granted";
}

/** Removes this browser's target from the server and drops the browser's subscription. */
export async function disableNotifications(client: ChatClient, userId: string): Promise<void> {
  setWanted(userId, false);
  const registration = await existingRegistration();
  if (registration !== undefined) {
    await unsubscribeWebPush(client, registration);
  }
}

/**
 * At start: for a user who turned notifications on in this browser and still allows them,
 * registers the subscription again (for this login's device session; a fresh one if the
 * browser dropped the old). True if notifications are on.
 */
export async function resumeNotifications(client: ChatClient, userId: string): Promise<boolean> {
  if (pushAvailability() !== "granted" || !wanted().includes(userId)) {
    return false;
  }
  await subscribeWebPush(client, await workerRegistration());
  return true;
}

/** Closes the notifications shown for a conversation (it has been read here). */
export async function closeNotifications(conversationId: string): Promise<void> {
  const registration = await existingRegistration();
  for (const n of (await registration?.getNotifications({ tag: conversationId })) ?? []) {
    n.close();
  }
}

async function workerRegistration(): Promise<ServiceWorkerRegistration> {
  await navigator.serviceWorker.register(WORKER_URL, { scope: SCOPE });
  // Subscribing needs an active worker; this page is in its scope.
  return navigator.serviceWorker.ready;
}

async function existingRegistration(): Promise<ServiceWorkerRegistration | undefined> {
  if (pushAvailability() === "unsupported") {
    return undefined;
  }
  return navigator.serviceWorker.getRegistration(SCOPE);
}

function wanted(): string[] {
  try {
    const parsed: unknown = JSON.parse(localStorage.getItem(WANTED_KEY) ?? "[]");
    return Array.isArray(parsed) ? parsed.filter((id): id is string => typeof id === "string") : [];
  } catch {
    return [];
  }
}

function setWanted(userId: string, on: boolean): void {
  const ids = wanted().filter((id) => id !== userId);
  if (on) {
    ids.push(userId);
  }
  try {
    localStorage.setItem(WANTED_KEY, JSON.stringify(ids));
  } catch {
    // No storage: notifications stay on until this login ends.
  }
}
