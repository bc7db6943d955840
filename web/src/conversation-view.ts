/**
 * The chat pane of one conversation: the header (peer, presence, the mute toggle), the
 * message list with day separators, bubbles, times and ticks, the typing indicator, and the
 * composer. It keeps the scroll where the reader is: at the bottom while they follow the
 * conversation, and still when earlier messages are loaded above them.
 */
import { avatar, h, reconcile, setAttr, setText } from "./dom.js";
import { dayKey, dayLabel, messageTime, presenceText } from "./format.js";
import { bellIcon, bellOffIcon, chatIcon, clockIcon } from "./icons.js";
import type { ChatMessage, ChatState, ConversationModel, OwnStatus } from "./state.js";

export interface ConversationActions {
  send(text: string): void;
  /** The composer's text changed (drives the typing signal). */
  typing(text: string): void;
  loadOlder(): void;
  retry(message: ChatMessage): void;
  back(): void;
  /** Mutes or unmutes the conversation's push notifications. */
  setMuted(muted: boolean): void;
}

/** Within this many pixels of the bottom, the reader is "following" and new messages scroll in. */
const STICKY_PX = 48;
/** Within this many pixels of the top, earlier history is fetched. */
const LOAD_OLDER_PX = 160;

const TICKS: Record<OwnStatus, { text: string; label: string }> = {
  pending: { text: "", label: "Sending" },
  failed: { text: "!", label: "Not sent" },
  sent: { text: "✓", label: "Sent" },
  delivered: { text: "✓✓", label: "Delivered" },
  read: { text: "✓✓", label: "Read" },
};

interface Bubble {
  li: HTMLLIElement;
  ticks: HTMLElement | undefined;
  time: HTMLTimeElement;
  retry: HTMLButtonElement | undefined;
}

export class ConversationView {
  readonly el: HTMLElement;
  readonly conversationId: string;
  readonly #state: ChatState;
  readonly #actions: ConversationActions;
  readonly #title: HTMLElement;
  readonly #presence: HTMLElement;
  readonly #dot: HTMLElement;
  readonly #mute: HTMLButtonElement;
  readonly #scroller: HTMLElement;
  readonly #items: HTMLOListElement;
  readonly #loading: HTMLElement;
  readonly #start: HTMLElement;
  readonly #typing: HTMLElement;
  readonly #input: HTMLTextAreaElement;
  readonly #sendButton: HTMLButtonElement;
  readonly #bubbles = new Map<string, Bubble>();
  readonly #days = new Map<number, HTMLLIElement>();
  #firstKey: string | undefined;
  #rendered = false;

  constructor(state: ChatState, conversation: ConversationModel, actions: ConversationActions, draft: string) {
    this.#state = state;
    this.#actions = actions;
    this.conversationId = conversation.id;
    const peerName = conversation.peer?.name ?? "…";

    this.#title = h("h2", { class: "chat-title", "data-testid": "chat-title" }, peerName);
    this.#presence = h("p", { class: "chat-presence", "data-testid": "chat-presence" });
    this.#dot = h("span", { class: "presence-dot", hidden: true });
    this.#mute = h("button", {
      type: "button",
      class: "mute-button",
      "data-testid": "mute-toggle",
      onclick: () => {
        const c = this.#state.conversations.get(this.conversationId);
        if (c !== undefined) {
          this.#actions.setMuted(!c.muted);
        }
      },
    });
    this.#loading = h("div", { class: "history-status", "data-testid": "history-loading", hidden: true }, "Loading earlier messages…");
    this.#start = h(
      "div",
      { class: "history-start", "data-testid": "history-start", hidden: true },
      `This is the beginning of your conversation with ${peerName}.`,
    );
    this.#items = h("ol", { class: "message-items", "aria-live": "polite", "aria-relevant": "additions" });
    this.#scroller = h(
      "div",
      { class: "messages", "data-testid": "message-list", tabindex: 0, "aria-label": `Messages with ${peerName}` },
      this.#loading,
      this.#start,
      this.#items,
    );
    this.#scroller.addEventListener("scroll", () => this.#maybeLoadOlder(), { passive: true });

    this.#typing = h("div", { class: "typing-indicator", "data-testid": "typing-indicator", hidden: true, "aria-live": "polite" });

    this.#input = h("textarea", {
      class: "composer-input",
      "data-testid": "composer-input",
      rows: 1,
      placeholder: "Write a message",
      "aria-label": "Message",
      maxlength: 4096,
    });
    this.#input.value = draft;
    this.#sendButton = h("button", { type: "submit", class: "send-button", "data-testid": "send-button", "aria-label": "Send" }, "Send");
    const submit = (): void => {
      const text = this.#input.value.trim();
      if (text === "") {
        return;
      }
      this.#input.value = "";
      this.#syncComposer();
      this.#actions.send(text);
      this.scrollToBottom();
    };
    this.#input.addEventListener("input", () => {
      this.#syncComposer();
      this.#actions.typing(this.#input.value);
    });
    this.#input.addEventListener("keydown", (e) => {
      // Enter sends, Shift+Enter breaks the line; never while an IME is composing.
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        submit();
      }
    });
    const composer = h(
      "form",
      {
        class: "composer",
        "data-testid": "composer",
        onsubmit: (e: Event) => {
          e.preventDefault();
          submit();
        },
      },
      this.#input,
      this.#sendButton,
    );

    this.el = h(
      "section",
      { class: "chat", "data-testid": "chat-pane", "data-conversation-id": conversation.id, "data-peer": conversation.peer?.name ?? "" },
      h(
        "header",
        { class: "chat-header" },
        h("button", { type: "button", class: "back-button", "aria-label": "Back to conversations", onclick: () => actions.back() }, "‹"),
        h("span", { class: "avatar-wrap" }, avatar(peerName, "large"), this.#dot),
        h("div", { class: "chat-heading" }, this.#title, this.#presence),
        this.#mute,
      ),
      this.#scroller,
      this.#typing,
      composer,
    );
    this.#syncComposer();
  }

  get draft(): string {
    return this.#input.value;
  }

  focus(): void {
    this.#syncComposer();
    this.#input.focus({ preventScroll: true });
  }

  scrollToBottom(): void {
    this.#scroller.scrollTop = this.#scroller.scrollHeight;
  }

  render(now = new Date()): void {
    const c = this.#state.conversations.get(this.conversationId);
    if (c === undefined) {
      return;
    }
    const presence = this.#state.presenceOf(c.peer);
    setText(this.#presence, presenceText(presence, now));
    setAttr(this.#presence, "data-online", String(presence?.online === true));
    this.#dot.hidden = presence?.online !== true;
    this.#renderMute(c.muted);

    const typist = this.#state.typingIn(c, now.getTime());
    this.#typing.hidden = typist === undefined;
    setText(this.#typing, typist === undefined ? "" : `${typist} is typing…`);

    // Where the reader is, before the list changes under them.
    const s = this.#scroller;
    const following = !this.#rendered || s.scrollHeight - s.scrollTop - s.clientHeight < STICKY_PX;
    const heightBefore = s.scrollHeight;
    const topBefore = s.scrollTop;

    const messages = this.#state.messagesOf(c);
    const nodes: Node[] = [];
    const seen = new Set<string>();
    let lastDay: number | undefined;
    for (const m of messages) {
      const day = dayKey(m.sentAt);
      if (day !== lastDay) {
        nodes.push(this.#day(day, m.sentAt, now));
        lastDay = day;
      }
      seen.add(m.key);
      nodes.push(this.#bubble(c, m));
    }
    for (const key of this.#bubbles.keys()) {
      if (!seen.has(key)) {
        this.#bubbles.delete(key);
      }
    }
    reconcile(this.#items, nodes);

    this.#loading.hidden = !c.history.loading;
    const complete = c.history.loaded && !c.history.hasMoreBefore;
    this.#start.hidden = !complete;

    const firstKey = messages[0]?.key;
    const prepended = this.#rendered && firstKey !== this.#firstKey && this.#firstKey !== undefined;
    this.#firstKey = firstKey;
    if (following) {
      this.scrollToBottom();
    } else if (prepended) {
      // Earlier messages went in above: keep the same message under the reader's eyes.
      s.scrollTop = topBefore + (s.scrollHeight - heightBefore);
    }
    this.#rendered = true;
    // A short history may not fill the pane, and then there is nothing to scroll: fetch more.
    this.#maybeLoadOlder();
  }

  #renderMute(muted: boolean): void {
    if (this.#mute.getAttribute("aria-pressed") === String(muted)) {
      return;
    }
    // A toggle: the name stays, aria-pressed says whether it is muted.
    setAttr(this.#mute, "aria-label", "Mute notifications");
    setAttr(this.#mute, "aria-pressed", String(muted));
    setAttr(this.#mute, "title", muted ? "Muted: no notifications. Click to unmute" : "Mute notifications");
    setAttr(this.#mute, "data-muted", String(muted));
    this.#mute.replaceChildren(muted ? bellOffIcon("mute-icon") : bellIcon("mute-icon"));
  }

  #maybeLoadOlder(): void {
    const c = this.#state.conversations.get(this.conversationId);
    if (c === undefined || c.history.loading || !c.history.loaded || !c.history.hasMoreBefore) {
      return;
    }
    const s = this.#scroller;
    if (s.scrollTop < LOAD_OLDER_PX || s.scrollHeight <= s.clientHeight) {
      this.#actions.loadOlder();
    }
  }

  #day(day: number, date: Date, now: Date): HTMLLIElement {
    let li = this.#days.get(day);
    if (li === undefined) {
      li = h("li", { class: "day-separator", role: "separator" }, h("span", {}));
      this.#days.set(day, li);
    }
    const label = li.firstElementChild;
    if (label !== null) {
      setText(label, dayLabel(date, now));
    }
    return li;
  }

  #bubble(c: ConversationModel, m: ChatMessage): HTMLLIElement {
    let bubble = this.#bubbles.get(m.key);
    if (bubble === undefined) {
      bubble = this.#createBubble(m);
      this.#bubbles.set(m.key, bubble);
    }
    const { li } = bubble;
    setAttr(li, "data-seq", m.seq?.toString() ?? "");
    setText(bubble.time, messageTime(m.sentAt));
    setAttr(bubble.time, "datetime", m.sentAt.toISOString());
    if (m.own && bubble.ticks !== undefined) {
      const status = this.#state.statusOf(c, m);
      setAttr(li, "data-status", status);
      const tick = TICKS[status];
      if (status === "pending") {
        if (bubble.ticks.firstElementChild === null) {
          bubble.ticks.replaceChildren(clockIcon("clock"));
        }
      } else {
        setText(bubble.ticks, tick.text);
      }
      setAttr(bubble.ticks, "aria-label", tick.label);
      setAttr(bubble.ticks, "title", m.error ?? tick.label);
      setAttr(bubble.ticks, "class", `ticks ticks-${status}`);
      if (bubble.retry !== undefined) {
        bubble.retry.hidden = status !== "failed";
        setText(bubble.retry, m.error === undefined ? "" : `Not sent: ${m.error}. Retry`);
      }
    }
    return li;
  }

  #createBubble(m: ChatMessage): Bubble {
    const time = h("time", { class: "message-time", "data-testid": "message-time" });
    const ticks = m.own ? h("span", { class: "ticks", "data-testid": "message-status", role: "img" }) : undefined;
    const retry = m.own
      ? h("button", { type: "button", class: "retry-button", "data-testid": "message-retry", hidden: true, onclick: () => this.#actions.retry(m) })
      : undefined;
    const li = h(
      "li",
      {
        class: `message ${m.own ? "own" : "theirs"}`,
        "data-testid": "message",
        "data-own": String(m.own),
        "data-sender": m.sender.name,
        "data-client-msg-id": m.clientMsgId,
      },
      h(
        "div",
        { class: "bubble" },
        h("p", { class: "message-text", "data-testid": "message-text" }, m.text),
        h("span", { class: "message-meta" }, time, ticks),
      ),
      retry,
    );
    return { li, ticks, time, retry };
  }

  #syncComposer(): void {
    this.#sendButton.disabled = this.#input.value.trim() === "";
    // Grow with the text up to a few lines, then scroll inside. Before the pane is in the
    // document there is nothing to measure: keep the stylesheet's height.
    this.#input.style.height = "auto";
    const needed = this.#input.scrollHeight;
    this.#input.style.height = needed > 0 ? `${Math.min(needed + 2, 160)}px` : "";
  }
}

/** What the chat pane shows before a conversation is chosen. */
export function emptyChat(): HTMLElement {
  return h(
    "section",
    { class: "chat-empty", "data-testid": "empty-chat" },
    chatIcon("chat-empty-art"),
    h("h2", {}, "Your messages"),
    h("p", {}, "Pick a conversation on the left, or start a new one with a user name."),
  );
}
