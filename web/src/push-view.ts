/**
 * The notification settings at the foot of the sidebar: turn push notifications on or off
 * in this browser, and whether they show the sender and text (the account's push mode,
 * which webhooks follow too). The app makes the calls; this draws what it reports.
 */
import { ChatError, type PushModeName } from "chat-sdk";

import { h, setAttr, setText } from "./dom.js";
import type { PushAvailability } from "./notifications.js";

export interface PushStatus {
  availability: PushAvailability;
  /** The server has a VAPID key: it can push to browsers. */
  webPush: boolean;
  /** Subscribed in this browser for this user. */
  on: boolean;
  /** Undefined until known, or when the server offers no push at all (then nothing shows). */
  mode: PushModeName | undefined;
}

export interface PushActions {
  /** Turns notifications on (asking permission) or off; resolves to what the browser allows and whether they are on. */
  toggle(on: boolean): Promise<Pick<PushStatus, "availability" | "on">>;
  setMode(mode: PushModeName): Promise<PushModeName>;
}

export class PushSettingsView {
  readonly el: HTMLElement;
  readonly #actions: PushActions;
  readonly #text: HTMLElement;
  readonly #toggle: HTMLButtonElement;
  readonly #content: HTMLInputElement;
  readonly #error: HTMLElement;
  #status: PushStatus = { availability: "unsupported", webPush: false, on: false, mode: undefined };

  constructor(actions: PushActions) {
    this.#actions = actions;
    this.#text = h("span", { class: "push-text", "data-testid": "push-status" });
    this.#toggle = h("button", {
      type: "button",
      class: "button secondary small",
      "data-testid": "push-toggle",
      onclick: () => this.#run(() => this.#actions.toggle(!this.#status.on).then((r) => this.show({ ...this.#status, ...r }))),
    });
    this.#content = h("input", {
      type: "checkbox",
      "data-testid": "push-content-toggle",
      onchange: () => {
        const mode: PushModeName = this.#content.checked ? "content" : "content-free";
        this.#run(() => this.#actions.setMode(mode).then((m) => this.show({ ...this.#status, mode: m })));
      },
    });
    this.#error = h("p", { class: "form-error", "data-testid": "push-error", role: "alert", hidden: true });
    this.el = h(
      "section",
      { class: "push-settings", "data-testid": "push-settings", "aria-label": "Notifications", hidden: true },
      h("div", { class: "push-row" }, this.#text, this.#toggle),
      h("label", { class: "push-row push-content" }, this.#content, "Show sender and text"),
      this.#error,
    );
  }

  show(status: PushStatus): void {
    this.#status = status;
    const { availability, webPush, on, mode } = status;
    this.el.hidden = mode === undefined;
    setAttr(this.el, "data-on", String(on));
    setText(this.#text, statusText(status));
    // Turning off stays possible whatever happened since; turning on needs the browser's
    // permission (once blocked, only the browser's settings can undo that) and the server's key.
    this.#toggle.hidden = !on && (!webPush || availability === "unsupported" || availability === "denied");
    setText(this.#toggle, on ? "Turn off" : "Enable notifications");
    this.#content.checked = mode !== "content-free";
  }

  #run(action: () => Promise<void>): void {
    this.#error.hidden = true;
    this.#toggle.disabled = true;
    this.#content.disabled = true;
    action()
      .catch((e: unknown) => {
        this.#content.checked = this.#status.mode !== "content-free";
        setText(this.#error, `Could not change notifications: ${ChatError.from(e).rawMessage || "unknown error"}`);
        this.#error.hidden = false;
      })
      .finally(() => {
        this.#toggle.disabled = false;
        this.#content.disabled = false;
      });
  }
}

function statusText({ availability, webPush, on }: PushStatus): string {
  if (on) {
    return "Notifications are on.";
  }
  if (!webPush) {
    return "This server does not send browser notifications.";
  }
  switch (availability) {
    case "unsupported":
      return "This browser cannot show notifications.";
    case "denied":
      return "Notifications are blocked in the browser's site settings.";
    default:
      return "Notifications are off.";
  }
}
