/**
 * Web Push in the browser: subscribe a service worker registration's `PushManager` with
 * the server's VAPID key and register the subscription as this device's push target, or
 * undo both. The browser objects are passed in (nothing here touches `navigator` or
 * `window`), so the module loads anywhere and the tests hand it fakes.
 */
import type { PushTarget } from "./gen/chat/v1/push_pb.js";
import { ChatError, Code } from "./errors.js";
import {
  base64UrlToBytes,
  sameKey,
  webPushEndpoint,
  type PushSettings,
  type WebPushSubscriptionLike,
} from "./push.js";

/** The calls the helpers make: a `ChatClient` has them all. */
export interface PushClient {
  pushSettings(): Promise<PushSettings>;
  addWebPush(subscription: WebPushSubscriptionLike): Promise<PushTarget>;
  listPushTargets(): Promise<PushTarget[]>;
  removePushTarget(id: string): Promise<void>;
}

/** What the helpers use of a `PushSubscription`. */
export interface PushSubscriptionLike {
  readonly endpoint: string;
  readonly options: { readonly applicationServerKey: ArrayBuffer | null };
  toJSON(): { endpoint?: string | undefined; keys?: Record<string, string> | undefined };
  unsubscribe(): Promise<boolean>;
}

/** What the helpers use of a `ServiceWorkerRegistration`. */
export interface PushRegistrationLike {
  readonly pushManager: {
    getSubscription(): Promise<PushSubscriptionLike | null>;
    subscribe(options: { userVisibleOnly: boolean; applicationServerKey: Uint8Array<ArrayBuffer> }): Promise<PushSubscriptionLike>;
  };
}

/**
 * Subscribes `registration` (an active service worker's, e.g. `navigator.serviceWorker.ready`)
 * to Web Push with the server's VAPID key and registers the subscription for this device;
 * returns the target the server registered. Notification permission must already be
 * granted (`Notification.requestPermission()`).
 *
 * A subscription the registration already has is reused when it was made with the same
 * key, so calling this again (after a new login, say) only re-registers it; one made with
 * another key is dropped, here and on the server, and replaced. Fails with
 * FAILED_PRECONDITION when the server has no VAPID key (it offers no Web Push).
 */
export async function subscribeWebPush(client: PushClient, registration: PushRegistrationLike): Promise<PushTarget> {
  const settings = await client.pushSettings();
  if (settings.vapidPublicKey === "") {
    throw new ChatError("status", Code.FailedPrecondition, "the server does not offer Web Push");
  }
  const applicationServerKey = base64UrlToBytes(settings.vapidPublicKey);
  const manager = registration.pushManager;
  let subscription = await manager.getSubscription();
  if (subscription !== null && !sameKey(subscription.options.applicationServerKey, applicationServerKey)) {
    // Made for another key (the server's changed): the push service would refuse our pushes.
    await removeTargetsFor(client, subscription.endpoint);
    await subscription.unsubscribe();
    subscription = null;
  }
  subscription ??= await manager.subscribe({ userVisibleOnly: true, applicationServerKey });
  return client.addWebPush(subscription);
}

/**
 * Removes this browser's Web Push target from the server, then the subscription from the
 * browser. False if the registration had no subscription. If the server cannot be reached
 * the call fails and the subscription stays, so it can be tried again.
 */
export async function unsubscribeWebPush(client: PushClient, registration: PushRegistrationLike): Promise<boolean> {
  const subscription = await registration.pushManager.getSubscription();
  if (subscription === null) {
    return false;
  }
  await removeTargetsFor(client, subscription.endpoint);
  await subscription.unsubscribe();
  return true;
}

/** Removes the user's Web Push targets with this endpoint (at most one, by the server's rule). */
async function removeTargetsFor(client: PushClient, endpoint: string): Promise<void> {
  for (const target of await client.listPushTargets()) {
    if (webPushEndpoint(target) === endpoint) {
      try {
        await client.removePushTarget(target.id);
      } catch (e) {
        // Gone already (another tab, or the server dropped an expired subscription).
        if (ChatError.from(e).code !== Code.NotFound) {
          throw e;
        }
      }
    }
  }
}
