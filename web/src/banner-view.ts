/**
 * The connection banner over the app. Hidden while the session is online; "Connecting…" at
 * the start, "Reconnecting…" with a countdown and a "Retry now" button when the stream has
 * dropped, and "Back online" for a moment once it recovers. `data-state` carries the
 * session's connection status for tests and styling.
 */
import type { ConnectionState } from "chat-sdk";

import { h, setAttr, setText } from "./dom.js";

const RECOVERED_MS = 2_500;

export class ConnectionBanner {
  readonly el: HTMLElement;
  readonly #text: HTMLElement;
  readonly #detail: HTMLElement;
  readonly #retry: HTMLButtonElement;
  #everOnline = false;
  #dropped = false;
  #hideTimer: ReturnType<typeof setTimeout> | undefined;
  #countdown: ReturnType<typeof setInterval> | undefined;

  constructor(onRetryNow: () => void) {
    this.#text = h("strong", { class: "banner-text", "data-testid": "connection-banner-text" });
    this.#detail = h("span", { class: "banner-detail" });
    this.#retry = h("button", { type: "button", class: "banner-retry", "data-testid": "reconnect-now", onclick: onRetryNow }, "Retry now");
    this.el = h(
      "div",
      { class: "connection-banner", "data-testid": "connection-banner", role: "status", "aria-live": "polite", hidden: true },
      this.#text,
      this.#detail,
      this.#retry,
    );
  }

  update(state: ConnectionState): void {
    clearTimeout(this.#hideTimer);
    clearInterval(this.#countdown);
    setAttr(this.el, "data-state", state.status);
    this.#retry.hidden = true;
    setText(this.#detail, "");
    switch (state.status) {
      case "connecting":
        this.#show(this.#everOnline ? "warning" : "info", this.#everOnline ? "Reconnecting…" : "Connecting…");
        if (this.#everOnline) {
          setAttr(this.el, "data-state", "reconnecting");
          setText(this.#detail, `Attempt ${state.attempt}`);
        }
        return;
      case "reconnecting": {
        this.#dropped = true;
        this.#show("warning", "Reconnecting…");
        const until = Date.now() + state.delayMs;
        const tick = (): void => {
          const seconds = Math.ceil((until - Date.now()) / 1000);
          setText(this.#detail, seconds > 0 ? `Connection lost. Retrying in ${seconds} s` : "Connection lost. Retrying…");
        };
        tick();
        if (state.delayMs >= 1_500) {
          this.#retry.hidden = false;
          this.#countdown = setInterval(tick, 500);
        }
        return;
      }
      case "online":
        if (this.#dropped) {
          this.#show("ok", "Back online");
          this.#hideTimer = setTimeout(() => {
            this.el.hidden = true;
          }, RECOVERED_MS);
        } else {
          this.el.hidden = true;
        }
        this.#everOnline = true;
        this.#dropped = false;
        return;
      case "closed":
        this.#show("error", state.reason === "auth" ? "Signed out" : "Disconnected");
        return;
    }
  }

  #show(tone: "info" | "warning" | "ok" | "error", text: string): void {
    setAttr(this.el, "data-tone", tone);
    setText(this.#text, text);
    this.el.hidden = false;
  }
}
