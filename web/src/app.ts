/**
 * The logged-in app: it owns the live `ChatSession` and the `ChatState`, feeds session
 * events and unary answers into the state, and decides when to call the server for the
 * user — history when a chat opens or scrolls back, read marks while a chat is open and
 * the page visible, typing on and off, sends (through the session's outbox) and retries,
 * muting, and push notifications (turning them on, and opening the chat a click on one
 * asks for). The views only draw the state and report what the user did.
 */
import {
  ChatError,
  Code,
  newClientMsgId,
  type ChatClient,
  type ChatSession,
  type Message,
  type PushSettings,
  type Receipt,
  type SessionEvent,
  type User,
} from "chat-sdk";

import { ConnectionBanner } from "./banner-view.js";
import { ConversationView, emptyChat } from "./conversation-view.js";
import { h } from "./dom.js";
import { describeSendError } from "./format.js";
import {
  closeNotifications,
  disableNotifications,
  enableNotifications,
  pushAvailability,
  resumeNotifications,
  type PushAvailability,
} from "./notifications.js";
import { conversationFromHash, conversationToOpen } from "./push-payload.js";
import { PushSettingsView } from "./push-view.js";
import { Sidebar } from "./sidebar-view.js";
import { ChatState, type ChatMessage, type ConversationModel } from "./state.js";

const HISTORY_PAGE = 50;
/** Typing stays "on" for the others while keys keep coming; refreshed this often. */
const TYPING_REFRESH_MS = 3_000;
/** "Stopped typing" after this long without a key. */
const TYPING_PAUSE_MS = 3_000;
/** Relative times ("last seen 5 min ago") and typing expiry are redrawn this often. */
const CLOCK_MS = 15_000;

export class ChatApp {
  readonly el: HTMLElement;
  readonly #client: ChatClient;
  readonly #session: ChatSession;
  readonly #state: ChatState;
  readonly #sidebar: Sidebar;
  readonly #banner: ConnectionBanner;
  readonly #push: PushSettingsView;
  readonly #pane: HTMLElement;
  readonly #onSignedOut: (notice?: string) => void;
  #view: ConversationView | undefined;
  readonly #drafts = new Map<string, string>();
  readonly #cleanups: Array<() => void> = [];

  #renderQueued = false;
  #refreshing: Promise<void> | undefined;
  #refreshAgain = false;
  readonly #marking = new Set<string>();
  readonly #presenceAsked = new Set<string>();
  /** Mute toggles on their way, by conversation: a list fetched before them must not undo them. */
  readonly #muting = new Map<string, boolean>();
  /** The conversation a notification click asked for, opened once it is known. */
  #wantOpen: string | undefined;
  #typing: { conversationId: string; sentAt: number } | undefined;
  #typingPause: ReturnType<typeof setTimeout> | undefined;
  #typingExpiry: ReturnType<typeof setTimeout> | undefined;
  #stopped = false;

  constructor(client: ChatClient, me: User, onSignedOut: (notice?: string) => void) {
    this.#client = client;
    this.#onSignedOut = onSignedOut;
    this.#state = new ChatState(me);
    this.#session = client.openSession();
    this.#banner = new ConnectionBanner(() => this.#session.reconnectNow());
    this.#push = new PushSettingsView({
      toggle: (on) => this.#togglePush(on),
      setMode: (mode) => this.#client.setPushMode(mode),
    });
    this.#sidebar = new Sidebar(
      this.#state,
      {
        open: (id) => this.open(id),
        startChat: (name) => this.#startChat(name),
        logout: () => void this.logout(),
      },
      this.#push.el,
    );
    this.#pane = h("div", { class: "chat-pane" }, emptyChat());
    this.el = h("div", { class: "app", "data-testid": "chat-app" }, this.#banner.el, h("div", { class: "layout" }, this.#sidebar.el, this.#pane));

    this.#cleanups.push(this.#session.onEvent((event) => this.#onEvent(event)));
    this.#state.onChange(() => this.#scheduleRender());
    this.#listen(document, "visibilitychange", () => this.#markRead());
    this.#listen(window, "focus", () => this.#markRead());
    // The browser knows before a hung stream does.
    this.#listen(window, "online", () => this.#session.reconnectNow());
    // A click on a notification: from the service worker when this window was open, or in
    // the URL of the window it opened.
    if ("serviceWorker" in navigator) {
      this.#listen(navigator.serviceWorker, "message", (e) => this.#openFromNotification(conversationToOpen((e as MessageEvent).data)));
    }
    this.#wantOpen = conversationFromHash(location.hash);
    if (this.#wantOpen !== undefined) {
      history.replaceState(history.state, "", location.pathname + location.search);
    }
    const clock = setInterval(() => this.#scheduleRender(), CLOCK_MS);
    this.#cleanups.push(() => clearInterval(clock));

    void this.#refreshConversations();
    void this.#initPush();
    this.#render();
  }

  /** Ends the session here and on the server, then shows the login screen. */
  async logout(): Promise<void> {
    this.#stopTyping();
    this.stop();
    try {
      await this.#client.logout();
    } catch {
      // The token is forgotten locally either way; an unreachable server expires it.
    }
    this.#onSignedOut();
  }

  stop(): void {
    if (this.#stopped) {
      return;
    }
    this.#stopped = true;
    this.#session.close();
    for (const undo of this.#cleanups.splice(0)) {
      undo();
    }
    clearTimeout(this.#typingPause);
    clearTimeout(this.#typingExpiry);
  }

  /** Shows a conversation: its latest history, read marks, the composer focused. */
  open(conversationId: string): void {
    const c = this.#state.conversations.get(conversationId);
    if (c === undefined) {
      return;
    }
    if (this.#view?.conversationId !== conversationId) {
      if (this.#view !== undefined) {
        this.#drafts.set(this.#view.conversationId, this.#view.draft);
      }
      this.#stopTyping();
      this.#state.activeId = conversationId;
      this.#view = new ConversationView(
        this.#state,
        c,
        {
          send: (text) => this.#send(c, text),
          typing: (text) => this.#onComposerInput(c, text),
          loadOlder: () => void this.#loadOlder(c),
          retry: (m) => this.#retry(m),
          back: () => this.#closeChat(),
          setMuted: (muted) => this.#setMuted(c, muted),
        },
        this.#drafts.get(conversationId) ?? "",
      );
      this.#pane.replaceChildren(this.#view.el);
      this.el.classList.add("chat-open");
    }
    if (!c.history.loaded) {
      void this.#loadLatest(c);
    }
    this.#ensurePresence(c);
    this.#render();
    this.#view.focus();
    this.#markRead();
  }

  // --- session events ---

  #onEvent(event: SessionEvent): void {
    const state = this.#state;
    switch (event.type) {
      case "message": {
        const m = state.applyMessage(event.message);
        const c = state.conversations.get(m.conversationId);
        if (c?.peer === undefined) {
          // An own message from another device in a new conversation: the list knows the peer.
          void this.#refreshConversations();
        } else {
          this.#ensurePresence(c);
        }
        this.#markRead();
        break;
      }
      case "receipt":
        state.applyReceipt(event.receipt);
        break;
      case "presence":
        state.applyPresence(event.presence);
        break;
      case "typing":
        state.applyTyping(event.typing.conversationId, event.typing.user, event.typing.typing);
        this.#expireTypingLater();
        break;
      case "caughtUp":
        // Unread counts, peers' receipts and presence may have moved while disconnected.
        void this.#refreshConversations();
        break;
      case "state":
        this.#banner.update(event.state);
        if (event.state.status === "online") {
          this.#markRead();
        }
        if (event.state.status === "closed" && event.state.reason === "auth") {
          this.stop();
          this.#onSignedOut("Your session has ended. Please log in again.");
          return;
        }
        return;
      case "error":
        console.warn("chat:", event.error.message);
        return;
    }
    state.changed();
  }

  // --- calls on the user's behalf ---

  async #refreshConversations(): Promise<void> {
    if (this.#refreshing !== undefined) {
      this.#refreshAgain = true;
      return this.#refreshing;
    }
    this.#refreshing = (async () => {
      try {
        do {
          this.#refreshAgain = false;
          const conversations = await this.#client.listConversations();
          for (const view of conversations) {
            const c = this.#state.applyConversation(view);
            c.muted = this.#muting.get(c.id) ?? c.muted;
          }
          this.#state.changed();
        } while (this.#refreshAgain && !this.#stopped);
        this.#openWanted();
      } catch (e) {
        this.#authCheck(e);
      } finally {
        this.#refreshing = undefined;
      }
    })();
    return this.#refreshing;
  }

  async #startChat(name: string): Promise<void> {
    const existing = [...this.#state.conversations.values()].find((c) => c.peer?.name === name);
    if (existing !== undefined) {
      this.open(existing.id);
      return;
    }
    const view = await this.#client.openDirect(name);
    const c = this.#state.applyConversation(view);
    if (c.lastActivity === 0) {
      // New and empty: at the top of the list until something newer happens.
      c.lastActivity = Date.now();
    }
    this.#state.changed();
    this.open(c.id);
  }

  async #loadLatest(c: ConversationModel): Promise<void> {
    if (c.history.loading) {
      return;
    }
    c.history.loading = true;
    this.#state.changed();
    try {
      const page = await this.#client.history(c.id, "latest", HISTORY_PAGE);
      this.#applyPage(page.messages, page.receipts);
      c.history.loaded = true;
      c.history.hasMoreBefore = page.hasMore;
    } catch (e) {
      this.#authCheck(e);
    } finally {
      c.history.loading = false;
      this.#state.changed();
      this.#markRead();
    }
  }

  async #loadOlder(c: ConversationModel): Promise<void> {
    const oldest = this.#state.oldestSeq(c);
    if (c.history.loading || !c.history.hasMoreBefore) {
      return;
    }
    if (oldest === undefined) {
      return this.#loadLatest(c);
    }
    if (oldest <= 1n) {
      c.history.hasMoreBefore = false;
      this.#state.changed();
      return;
    }
    c.history.loading = true;
    this.#state.changed();
    try {
      const page = await this.#client.history(c.id, { before: oldest }, HISTORY_PAGE);
      this.#applyPage(page.messages, page.receipts);
      c.history.hasMoreBefore = page.hasMore;
    } catch (e) {
      this.#authCheck(e);
    } finally {
      c.history.loading = false;
      this.#state.changed();
    }
  }

  #applyPage(messages: readonly Message[], receipts: readonly Receipt[]): void {
    for (const m of messages) {
      this.#state.applyMessage(m);
    }
    for (const r of receipts) {
      this.#state.applyReceipt(r);
    }
  }

  /**
   * Fetches the peer's presence when it is not known. Presence is pushed only when it
   * changes, and only between users who share a conversation with a message in it, so a
   * conversation's first message is when it becomes visible (before, the server says
   * NOT_FOUND and a later message asks again).
   */
  #ensurePresence(c: ConversationModel): void {
    const peer = c.peer;
    if (peer === undefined || this.#state.presence.has(peer.id) || this.#presenceAsked.has(peer.id)) {
      return;
    }
    this.#presenceAsked.add(peer.id);
    this.#client
      .getPresence([peer.name])
      .then((presences) => {
        for (const p of presences) {
          this.#state.applyPresence(p);
        }
        this.#state.changed();
      })
      .catch((e: unknown) => this.#authCheck(e, { quiet: true }))
      .finally(() => this.#presenceAsked.delete(peer.id));
  }

  /** Marks the open chat read up to its newest message, when the user can see it. */
  #markRead(): void {
    const c = this.#state.activeId === undefined ? undefined : this.#state.conversations.get(this.#state.activeId);
    if (c === undefined || this.#stopped || document.visibilityState !== "visible") {
      return;
    }
    if (c.lastSeq <= c.readSeq || this.#marking.has(c.id) || this.#session.state.status !== "online") {
      return;
    }
    const seq = c.lastSeq;
    this.#marking.add(c.id);
    this.#state.markReadLocally(c, seq);
    this.#state.changed();
    this.#session
      .markRead(c.id, seq)
      .then((receipt) => {
        this.#state.applyReceipt(receipt);
        // Read here: its notifications have nothing left to say.
        closeNotifications(c.id).catch(() => undefined);
      })
      .catch((e: unknown) => this.#authCheck(e))
      .finally(() => {
        this.#marking.delete(c.id);
        this.#state.changed();
        // Messages may have come in while the mark was on its way.
        this.#markRead();
      });
  }

  #send(c: ConversationModel, text: string): void {
    this.#stopTyping();
    const clientMsgId = newClientMsgId();
    this.#state.addPending(c.id, clientMsgId, text);
    this.#state.changed();
    this.#deliver(c.id, clientMsgId, text);
  }

  #retry(m: ChatMessage): void {
    const pending = this.#state.retrying(m.conversationId, m.clientMsgId);
    if (pending !== undefined) {
      this.#state.changed();
      this.#deliver(m.conversationId, m.clientMsgId, pending.text);
    }
  }

  /** Through the session's outbox: held while offline, retried with the same client_msg_id. */
  #deliver(conversationId: string, clientMsgId: string, text: string): void {
    this.#session
      .send({ conversationId }, text, { clientMsgId })
      .then((ack) => {
        this.#state.confirm(conversationId, clientMsgId, ack);
        const c = this.#state.conversations.get(conversationId);
        if (c !== undefined) {
          this.#ensurePresence(c);
        }
      })
      .catch((e: unknown) => {
        const error = ChatError.from(e);
        if (error.kind === "sessionClosed" || error.isAuth) {
          return; // Signing out: the whole view goes.
        }
        this.#state.fail(conversationId, clientMsgId, describeSendError(error));
      })
      .finally(() => this.#state.changed());
  }

  /** Mutes at once on screen; back as it was if the server refuses. */
  #setMuted(c: ConversationModel, muted: boolean): void {
    const before = c.muted;
    c.muted = muted;
    this.#muting.set(c.id, muted);
    this.#state.changed();
    this.#client
      .setMuted(c.id, muted)
      .catch((e: unknown) => {
        if (this.#muting.get(c.id) === muted) {
          c.muted = before;
        }
        this.#authCheck(e);
      })
      .finally(() => {
        if (this.#muting.get(c.id) === muted) {
          this.#muting.delete(c.id);
        }
        this.#state.changed();
      });
  }

  // --- push notifications ---

  /**
   * Shows the notification settings once the server has said it pushes (a server without
   * push shows none), and re-registers this browser if the user turned them on here before.
   */
  async #initPush(): Promise<void> {
    let settings: PushSettings;
    try {
      settings = await this.#client.pushSettings();
    } catch (e) {
      this.#authCheck(e, { quiet: true });
      return;
    }
    const webPush = settings.vapidPublicKey !== "";
    let on = false;
    if (webPush) {
      try {
        on = await resumeNotifications(this.#client, this.#state.me.id);
      } catch (e) {
        this.#authCheck(e);
      }
    }
    if (!this.#stopped) {
      this.#push.show({ availability: pushAvailability(), webPush, on, mode: settings.mode });
    }
  }

  async #togglePush(on: boolean): Promise<{ availability: PushAvailability; on: boolean }> {
    const me = this.#state.me.id;
    if (on) {
      const availability = await enableNotifications(this.#client, me);
      return { availability, on: availability === "granted" };
    }
    await disableNotifications(this.#client, me);
    return { availability: pushAvailability(), on: false };
  }

  #openFromNotification(conversationId: string | undefined): void {
    if (conversationId === undefined) {
      return;
    }
    this.#wantOpen = conversationId;
    if (!this.#openWanted()) {
      // Not in the list yet (its first message came while this page was away).
      void this.#refreshConversations();
    }
  }

  /** Opens the conversation a notification asked for, if it is known; true if it was. */
  #openWanted(): boolean {
    const id = this.#wantOpen;
    if (id === undefined || this.#stopped || !this.#state.conversations.has(id)) {
      return false;
    }
    this.#wantOpen = undefined;
    this.open(id);
    return true;
  }

  #onComposerInput(c: ConversationModel, text: string): void {
    clearTimeout(this.#typingPause);
    if (text.trim() === "") {
      this.#stopTyping();
      return;
    }
    const now = Date.now();
    if (this.#typing?.conversationId !== c.id || now - this.#typing.sentAt > TYPING_REFRESH_MS) {
      this.#typing = { conversationId: c.id, sentAt: now };
      this.#session.setTyping(c.id, true).catch(() => undefined);
    }
    this.#typingPause = setTimeout(() => this.#stopTyping(), TYPING_PAUSE_MS);
  }

  #stopTyping(): void {
    clearTimeout(this.#typingPause);
    const typing = this.#typing;
    this.#typing = undefined;
    if (typing !== undefined) {
      // Best effort: the others' indicator also expires on its own.
      this.#session.setTyping(typing.conversationId, false).catch(() => undefined);
    }
  }

  /** Redraws when the earliest "is typing" runs out, in case its "stopped" never comes. */
  #expireTypingLater(): void {
    clearTimeout(this.#typingExpiry);
    const now = Date.now();
    let next = Infinity;
    for (const c of this.#state.conversations.values()) {
      if (c.typing !== undefined && c.typing.until > now) {
        next = Math.min(next, c.typing.until);
      }
    }
    if (next !== Infinity) {
      this.#typingExpiry = setTimeout(() => {
        this.#scheduleRender();
        this.#expireTypingLater();
      }, next - now + 50);
    }
  }

  #closeChat(): void {
    this.#stopTyping();
    if (this.#view !== undefined) {
      this.#drafts.set(this.#view.conversationId, this.#view.draft);
    }
    this.#view = undefined;
    this.#state.activeId = undefined;
    this.#pane.replaceChildren(emptyChat());
    this.el.classList.remove("chat-open");
    this.#render();
  }

  /** An UNAUTHENTICATED answer means the token is gone: back to the login screen. */
  #authCheck(e: unknown, options: { quiet?: boolean } = {}): void {
    const error = ChatError.from(e);
    if (error.code === Code.Unauthenticated && !this.#stopped) {
      this.stop();
      this.#onSignedOut("Your session has ended. Please log in again.");
    } else if (options.quiet !== true) {
      console.warn("chat:", error.message);
    }
  }

  // --- drawing ---

  #scheduleRender(): void {
    if (this.#renderQueued || this.#stopped) {
      return;
    }
    this.#renderQueued = true;
    // A timer rather than requestAnimationFrame: hidden tabs keep their state current.
    setTimeout(() => {
      this.#renderQueued = false;
      this.#render();
    }, 0);
  }

  #render(): void {
    if (this.#stopped) {
      return;
    }
    const now = new Date();
    this.#sidebar.render(now);
    this.#view?.render(now);
    const peer = this.#view === undefined ? undefined : this.#state.conversations.get(this.#view.conversationId)?.peer?.name;
    document.title = peer === undefined ? "Chat" : `${peer} · Chat`;
  }

  #listen(target: EventTarget, type: string, listener: (event: Event) => void): void {
    target.addEventListener(type, listener);
    this.#cleanups.push(() => target.removeEventListener(type, listener));
  }
}
