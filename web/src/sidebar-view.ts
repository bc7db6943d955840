/**
 * The sidebar: who is logged in (and the logout button), the "new chat" box, the
 * conversation list with avatars, presence, the last message, its time, the unread badge
 * and a muted mark, and at the foot whatever the app puts there (the notification
 * settings). Items are kept per conversation and updated in place on each render.
 */
import { ChatError, Code } from "chat-sdk";

import { avatar, h, reconcile, setAttr, setText } from "./dom.js";
import { listTime, presenceText } from "./format.js";
import { bellOffIcon } from "./icons.js";
import type { ChatState, ConversationModel } from "./state.js";

export interface SidebarActions {
  open(conversationId: string): void;
  /** Opens (or creates) the direct conversation with a user name. */
  startChat(name: string): Promise<void>;
  logout(): void;
}

interface Item {
  li: HTMLLIElement;
  name: HTMLElement;
  presence: HTMLElement;
  dot: HTMLElement;
  time: HTMLTimeElement;
  preview: HTMLElement;
  badge: HTMLElement;
  muted: HTMLElement;
  row2: HTMLElement;
}

export class Sidebar {
  readonly el: HTMLElement;
  readonly #state: ChatState;
  readonly #actions: SidebarActions;
  readonly #list: HTMLElement;
  readonly #empty: HTMLElement;
  readonly #items = new Map<string, Item>();

  constructor(state: ChatState, actions: SidebarActions, footer?: Node) {
    this.#state = state;
    this.#actions = actions;

    const input = h("input", {
      "data-testid": "new-chat-input",
      placeholder: "Start a chat with… (user name)",
      "aria-label": "User name to chat with",
      autocapitalize: "none",
      spellcheck: "false",
      maxlength: 64,
    });
    const button = h("button", { type: "submit", class: "button primary small", "data-testid": "new-chat-button" }, "Chat");
    const error = h("p", { class: "form-error", "data-testid": "new-chat-error", role: "alert", hidden: true });
    const form = h(
      "form",
      {
        class: "new-chat",
        "data-testid": "new-chat-form",
        onsubmit: (e: Event) => {
          e.preventDefault();
          const name = input.value.trim();
          if (name === "") {
            input.focus();
            return;
          }
          error.hidden = true;
          button.disabled = true;
          actions
            .startChat(name)
            .then(() => {
              input.value = "";
            })
            .catch((err: unknown) => {
              error.textContent = describeStartError(ChatError.from(err), name);
              error.hidden = false;
            })
            .finally(() => {
              button.disabled = false;
            });
        },
      },
      input,
      button,
    );

    this.#list = h("ul", { class: "conversation-list", "data-testid": "conversation-list", "aria-label": "Conversations" });
    this.#empty = h(
      "p",
      { class: "conversation-list-empty", "data-testid": "conversation-list-empty" },
      "No conversations yet. Start one with a user name above.",
    );
    const me = state.me.name;
    this.el = h(
      "aside",
      { class: "sidebar", "data-testid": "sidebar" },
      h(
        "header",
        { class: "sidebar-header" },
        avatar(me),
        h("div", { class: "me" }, h("span", { class: "me-name", "data-testid": "current-user" }, me), h("span", { class: "me-sub" }, "Chats")),
        h("button", { type: "button", class: "button ghost small", "data-testid": "logout-button", onclick: () => actions.logout() }, "Log out"),
      ),
      form,
      error,
      h("nav", { class: "conversation-scroll" }, this.#list, this.#empty),
      footer,
    );
  }

  render(now = new Date()): void {
    const conversations = this.#state.sortedConversations();
    const nodes: Node[] = [];
    const seen = new Set<string>();
    for (const c of conversations) {
      seen.add(c.id);
      const item = this.#items.get(c.id) ?? this.#create(c);
      this.#update(item, c, now);
      nodes.push(item.li);
    }
    for (const id of this.#items.keys()) {
      if (!seen.has(id)) {
        this.#items.delete(id);
      }
    }
    reconcile(this.#list, nodes);
    this.#empty.hidden = conversations.length > 0;
  }

  #create(c: ConversationModel): Item {
    const peerName = c.peer?.name ?? "…";
    const dot = h("span", { class: "presence-dot", "data-testid": "presence-dot" });
    const name = h("span", { class: "conversation-name" }, peerName);
    const presence = h("span", { class: "conversation-presence", "data-testid": "presence-text" });
    const time = h("time", { class: "conversation-time" });
    const preview = h("span", { class: "conversation-preview" });
    const badge = h("span", { class: "unread-badge", "data-testid": "unread-badge" });
    const muted = h("span", { class: "muted-mark", "data-testid": "muted-mark", role: "img", "aria-label": "Muted", title: "Muted", hidden: true }, bellOffIcon("muted-icon"));
    const row2 = h("span", { class: "conversation-row" }, preview, muted);
    const li = h(
      "li",
      { class: "conversation-item", "data-testid": "conversation-item", "data-conversation-id": c.id },
      h(
        "button",
        { type: "button", class: "conversation-button", onclick: () => this.#actions.open(c.id) },
        h("span", { class: "avatar-wrap" }, avatar(peerName), dot),
        h(
          "span",
          { class: "conversation-body" },
          h("span", { class: "conversation-row" }, h("span", { class: "conversation-title" }, name, presence), time),
          row2,
        ),
      ),
    );
    const item = { li, name, presence, dot, time, preview, badge, muted, row2 };
    this.#items.set(c.id, item);
    return item;
  }

  #update(item: Item, c: ConversationModel, now: Date): void {
    const peerName = c.peer?.name ?? "";
    setAttr(item.li, "data-peer", peerName);
    setText(item.name, peerName || "…");
    setAttr(item.li, "aria-current", c.id === this.#state.activeId ? "true" : undefined);

    const presence = this.#state.presenceOf(c.peer);
    const online = presence?.online === true;
    setAttr(item.dot, "data-online", String(online));
    item.dot.hidden = !online;
    setText(item.presence, presence === undefined ? "" : presenceText(presence, now));
    setAttr(item.presence, "data-online", String(online));

    const typing = this.#state.typingIn(c);
    const last = c.preview;
    if (typing !== undefined) {
      setText(item.preview, "typing…");
      item.preview.classList.add("is-typing");
    } else {
      setText(item.preview, last === undefined ? "" : `${last.own ? "You: " : ""}${last.text}`);
      item.preview.classList.remove("is-typing");
    }
    if (last !== undefined) {
      setText(item.time, listTime(last.sentAt, now));
      setAttr(item.time, "datetime", last.sentAt.toISOString());
    }

    setAttr(item.li, "data-muted", String(c.muted));
    item.li.classList.toggle("is-muted", c.muted);
    item.muted.hidden = !c.muted;

    const unread = this.#state.unread(c);
    setAttr(item.li, "data-unread", unread.toString());
    item.li.classList.toggle("has-unread", unread > 0n);
    if (unread > 0n) {
      setText(item.badge, unread > 99n ? "99+" : unread.toString());
      setAttr(item.badge, "aria-label", `${unread} unread`);
      if (item.badge.parentNode !== item.row2) {
        item.row2.append(item.badge);
      }
    } else {
      // Gone rather than hidden: no badge at all when everything is read.
      item.badge.remove();
    }
  }
}

function describeStartError(error: ChatError, name: string): string {
  switch (error.code) {
    case Code.NotFound:
      return `There is no user called “${name}”.`;
    case Code.InvalidArgument:
      return error.rawMessage.includes("yourself") ? "You cannot start a chat with yourself." : error.rawMessage;
    case Code.Unavailable:
    case Code.Unknown:
    case Code.DeadlineExceeded:
      return "Cannot reach the server right now. Try again in a moment.";
    default:
      return error.rawMessage || error.message;
  }
}
