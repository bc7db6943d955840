/**
 * How things read in the interface: message times, day separators, "last seen", and why a
 * send failed.
 */
import { Code, type ChatError } from "chat-sdk";

const time = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
const weekday = new Intl.DateTimeFormat(undefined, { weekday: "long" });
const shortDate = new Intl.DateTimeFormat(undefined, { day: "numeric", month: "short" });
const fullDate = new Intl.DateTimeFormat(undefined, { day: "numeric", month: "long", year: "numeric" });

const DAY_MS = 86_400_000;

function startOfDay(d: Date): number {
  return new Date(d.getFullYear(), d.getMonth(), d.getDate()).getTime();
}

/** Days between the calendar days of `d` and `now` (0: today). */
function daysAgo(d: Date, now: Date): number {
  return Math.round((startOfDay(now) - startOfDay(d)) / DAY_MS);
}

/** The time under a message bubble: "14:03". */
export function messageTime(d: Date): string {
  return time.format(d);
}

/** The time beside a conversation in the list: today's time, "Yesterday", a weekday, or a date. */
export function listTime(d: Date, now = new Date()): string {
  const days = daysAgo(d, now);
  if (days <= 0) {
    return time.format(d);
  }
  if (days === 1) {
    return "Yesterday";
  }
  return days < 7 ? weekday.format(d) : shortDate.format(d);
}

/** The separator above the first message of a day. */
export function dayLabel(d: Date, now = new Date()): string {
  const days = daysAgo(d, now);
  if (days <= 0) {
    return "Today";
  }
  if (days === 1) {
    return "Yesterday";
  }
  return days < 7 ? weekday.format(d) : fullDate.format(d);
}

/** The day a date falls on, as a key to compare. */
export function dayKey(d: Date): number {
  return startOfDay(d);
}

/** "online", "last seen just now / 5 min ago / today at 14:03 / yesterday at … / on 3 May", or "offline". */
export function presenceText(presence: { online: boolean; lastSeen: Date | undefined } | undefined, now = new Date()): string {
  if (presence === undefined) {
    return "";
  }
  if (presence.online) {
    return "online";
  }
  const seen = presence.lastSeen;
  if (seen === undefined) {
    return "offline";
  }
  const minutes = Math.floor((now.getTime() - seen.getTime()) / 60_000);
  if (minutes < 1) {
    return "last seen just now";
  }
  if (minutes < 60) {
    return `last seen ${minutes} min ago`;
  }
  const days = daysAgo(seen, now);
  if (days <= 0) {
    return `last seen today at ${time.format(seen)}`;
  }
  if (days === 1) {
    return `last seen yesterday at ${time.format(seen)}`;
  }
  return `last seen on ${shortDate.format(seen)}`;
}

/**
 * The gateway answers a request body over its size limit with RESOURCE_EXHAUSTED ("request
 * body too large"), the same code as the server's rate limit ("too many messages; slow down
 * and retry"): only the status message tells them apart.
 */
const TOO_LARGE = /too (large|big|long)|larger than/i;

/**
 * Why a send failed, under its bubble ("Not sent: …"), in words its writer can act on. The
 * session's outbox has already retried what it could.
 */
export function describeSendError(error: ChatError): string {
  switch (error.code) {
    case Code.ResourceExhausted:
      return TOO_LARGE.test(error.rawMessage)
        ? "the message is too long to send; shorten it or split it into several messages"
        : "you are sending too fast; wait a moment, then retry";
    case Code.InvalidArgument:
      return error.rawMessage || "the message was refused";
    case Code.NotFound:
      return "this conversation is no longer available";
    default:
      return error.rawMessage || error.codeName;
  }
}
