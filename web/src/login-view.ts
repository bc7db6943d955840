/**
 * The sign-in screen: log in to an existing account or create one. It calls the SDK's
 * register / login and hands the credentials to `onSignedIn`; errors from the server are
 * shown in words a person can act on.
 */
import { ChatError, Code, type ChatClient, type Credentials } from "chat-sdk";

import { h } from "./dom.js";
import { chatIcon } from "./icons.js";

export function loginView(
  client: ChatClient,
  onSignedIn: (credentials: Credentials) => void,
  notice?: string,
): HTMLElement {
  const name = h("input", {
    id: "login-name",
    "data-testid": "login-name",
    name: "username",
    autocomplete: "username",
    required: true,
    maxlength: 64,
    autocapitalize: "none",
    spellcheck: "false",
  });
  const password = h("input", {
    id: "login-password",
    "data-testid": "login-password",
    name: "password",
    type: "password",
    autocomplete: "current-password",
    required: true,
  });
  const error = h("p", { class: "form-error", "data-testid": "login-error", role: "alert", hidden: notice === undefined }, notice ?? "");
  const login = h("button", { type: "submit", class: "button primary", "data-testid": "login-submit" }, "Log in");
  const register = h("button", { type: "button", class: "button secondary", "data-testid": "register-submit" }, "Create account");

  const submit = async (mode: "login" | "register"): Promise<void> => {
    if (!form.reportValidity()) {
      return;
    }
    error.hidden = true;
    login.disabled = register.disabled = true;
    form.setAttribute("aria-busy", "true");
    try {
      const credentials =
        mode === "login"
          ? await client.login(name.value.trim(), password.value)
          : await client.register(name.value.trim(), password.value);
      onSignedIn(credentials);
    } catch (e) {
      error.textContent = describe(ChatError.from(e), mode);
      error.hidden = false;
      password.select();
    } finally {
      login.disabled = register.disabled = false;
      form.removeAttribute("aria-busy");
    }
  };

  const form = h(
    "form",
    {
      class: "login-card",
      "data-testid": "login-form",
      novalidate: true,
      onsubmit: (e: Event) => {
        e.preventDefault();
        void submit("login");
      },
    },
    h("div", { class: "brand" }, chatIcon("brand-mark"), h("h1", {}, "Chat")),
    h("p", { class: "login-lead" }, "Log in, or create an account to start talking."),
    h("label", { for: "login-name" }, "User name"),
    name,
    h("label", { for: "login-password" }, "Password"),
    password,
    error,
    h("div", { class: "login-actions" }, login, register),
  );
  register.addEventListener("click", () => void submit("register"));
  queueMicrotask(() => name.focus());
  return h("main", { class: "login-screen" }, form);
}

function describe(error: ChatError, mode: "login" | "register"): string {
  switch (error.code) {
    case Code.Unauthenticated:
      return "Wrong user name or password.";
    case Code.AlreadyExists:
      return "That user name is taken. Pick another, or log in.";
    case Code.InvalidArgument:
      return mode === "register" ? `That will not do: ${error.rawMessage}` : error.rawMessage;
    case Code.ResourceExhausted:
      return "Too many attempts. Wait a moment and try again.";
    case Code.Unavailable:
    case Code.Unknown:
    case Code.DeadlineExceeded:
      return "Cannot reach the server. Check your connection and try again.";
    default:
      return error.rawMessage || error.message;
  }
}
