/**
 * The SDK's error type. Every failure a call or a session reports is a `ChatError` carrying a
 * gRPC status code, so an app has one thing to inspect: the code, and whether retrying the
 * same request (with the same `client_msg_id`) can help.
 */
import { Code, ConnectError } from "@connectrpc/connect";

export { Code };

/** Where an error came from; the code says what it means. */
export type ChatErrorKind =
  /** The server (or the transport) answered with a status. */
  | "status"
  /** The call needs a token and the client has none. */
  | "notLoggedIn"
  /** The session was closed before the request finished. */
  | "sessionClosed"
  /** The server answered something the protocol does not allow. */
  | "protocol";

// Indexed by the numeric gRPC code; Connect's `Code` enum uses the same numbers.
const CODE_NAMES = [
  "OK",
  "CANCELLED",
  "UNKNOWN",
  "INVALID_ARGUMENT",
  "DEADLINE_EXCEEDED",
  "NOT_FOUND",
  "ALREADY_EXISTS",
  "PERMISSION_DENIED",
  "RESOURCE_EXHAUSTED",
  "FAILED_PRECONDITION",
  "ABORTED",
  "OUT_OF_RANGE",
  "UNIMPLEMENTED",
  "INTERNAL",
  "UNAVAILABLE",
  "DATA_LOSS",
  "UNAUTHENTICATED",
] as const;

/** The gRPC name of a code, e.g. `UNAVAILABLE`, as the server writes it in `Error` frames. */
export function codeName(code: Code): string {
  return CODE_NAMES[code] ?? "UNKNOWN";
}

/** The code for a gRPC code name (the `code` field of an `Error` frame); unknown names map to UNKNOWN. */
export function codeFromName(name: string): Code {
  const index = CODE_NAMES.indexOf(name.toUpperCase() as (typeof CODE_NAMES)[number]);
  // Index 0 is OK, which never describes a failure.
  return index > 0 ? (index as Code) : Code.Unknown;
}

/**
 * Worth retrying with the same request: the server may not have seen it, or it failed in a
 * way that can pass. The same set as the Rust SDK's `Error::is_retryable`.
 */
export function isRetryableCode(code: Code): boolean {
  return (
    code === Code.Unavailable ||
    code === Code.DeadlineExceeded ||
    code === Code.Aborted ||
    code === Code.Unknown
  );
}

export class ChatError extends Error {
  override readonly name = "ChatError";
  readonly kind: ChatErrorKind;
  readonly code: Code;
  /** The message without the code prefix. */
  readonly rawMessage: string;

  constructor(kind: ChatErrorKind, code: Code, message: string, options?: { cause?: unknown }) {
    super(`${codeName(code)}: ${message}`, options);
    this.kind = kind;
    this.code = code;
    this.rawMessage = message;
  }

  /** Wraps anything thrown by a call: a ConnectError keeps its code, the rest become UNKNOWN. */
  static from(reason: unknown): ChatError {
    if (reason instanceof ChatError) {
      return reason;
    }
    const e = ConnectError.from(reason);
    return new ChatError("status", e.code, e.rawMessage, { cause: reason });
  }

  static notLoggedIn(): ChatError {
    return new ChatError("notLoggedIn", Code.Unauthenticated, "not logged in");
  }

  static sessionClosed(): ChatError {
    return new ChatError("sessionClosed", Code.Unavailable, "the session has ended");
  }

  static protocol(message: string): ChatError {
    return new ChatError("protocol", Code.Internal, `protocol error: ${message}`);
  }

  /** The gRPC name of the code, e.g. `UNAVAILABLE`. */
  get codeName(): string {
    return codeName(this.code);
  }

  /** Retrying the same request (same `client_msg_id`) may succeed. */
  get retryable(): boolean {
    return isRetryableCode(this.code);
  }

  /** The token is missing, expired or revoked: log in again. */
  get isAuth(): boolean {
    return this.code === Code.Unauthenticated;
  }
}
