/**
 * The web client's entry point: picks the API base URL(s), restores this tab's login, and
 * switches between the sign-in screen and the chat app.
 *
 * The API is grpc-web at the page's own origin: the gateway serves this page and the API on
 * one port. `?api=https://a,https://b` points the client elsewhere (the gateway must then
 * allow this origin in its CORS list); with several URLs the session fails over between them.
 */
import { ChatClient, type Credentials } from "chat-sdk";

import { ChatApp } from "./app.js";
import { clearCredentials, loadCredentials, saveCredentials } from "./credentials.js";
import { loginView } from "./login-view.js";

function apiBaseUrls(): string[] {
  const fromQuery = new URLSearchParams(location.search).get("api");
  const urls = (fromQuery ?? "")
    .split(",")
    .map((u) => u.trim())
    .filter((u) => u !== "");
  return urls.length > 0 ? urls : [location.origin];
}

const root = document.getElementById("root") ?? document.body;
let app: ChatApp | undefined;

function showLogin(notice?: string): void {
  app?.stop();
  app = undefined;
  clearCredentials();
  document.title = "Chat";
  const client = new ChatClient({ baseUrls: apiBaseUrls(), deviceName: "web" });
  root.replaceChildren(loginView(client, (credentials) => signedIn(client, credentials), notice));
}

function signedIn(client: ChatClient, credentials: Credentials): void {
  saveCredentials(credentials.token, credentials.user, credentials.expiresAt);
  showApp(client, credentials.user);
}

function showApp(client: ChatClient, user: Credentials["user"]): void {
  app = new ChatApp(client, user, (notice) => showLogin(notice));
  root.replaceChildren(app.el);
}

const stored = loadCredentials();
if (stored === undefined) {
  showLogin();
} else {
  const client = new ChatClient({ baseUrls: apiBaseUrls(), token: stored.token, deviceName: "web" });
  showApp(client, { $typeName: "chat.v1.User", id: stored.user.id, name: stored.user.name });
}
