/**
 * The logged-in device session of this tab, kept in sessionStorage: a reload stays logged
 * in, and two tabs can be two different users (each tab has its own storage), which is also
 * what an end-to-end test with two people in one browser needs.
 */
import type { User } from "chat-sdk";

const KEY = "chat.credentials";

export interface StoredCredentials {
  token: string;
  user: { id: string; name: string };
  /** Milliseconds since the epoch, if the server said. */
  expiresAt?: number;
}

export function loadCredentials(): StoredCredentials | undefined {
  try {
    const raw = sessionStorage.getItem(KEY);
    if (raw === null) {
      return undefined;
    }
    const parsed = JSON.parse(raw) as Partial<StoredCredentials>;
    if (typeof parsed.token !== "string" || typeof parsed.user?.id !== "string" || typeof parsed.user.name !== "string") {
      return undefined;
    }
    if (typeof parsed.expiresAt === "number" && parsed.expiresAt <= Date.now()) {
      clearCredentials();
      return undefined;
    }
    return parsed as StoredCredentials;
  } catch {
    // Storage disabled or a corrupt entry: behave as logged out.
    return undefined;
  }
}

export function saveCredentials(token: string, user: User, expiresAt: Date | undefined): StoredCredentials {
  const stored: StoredCredentials = { token, user: { id: user.id, name: user.name } };
  if (expiresAt !== undefined) {
    stored.expiresAt = expiresAt.getTime();
  }
  try {
    sessionStorage.setItem(KEY, JSON.stringify(stored));
  } catch {
    // Private mode without storage: the session lasts until the tab reloads.
  }
  return stored;
}

export function clearCredentials(): void {
  try {
    sessionStorage.removeItem(KEY);
  } catch {
    // Nothing stored, nothing to clear.
  }
}
