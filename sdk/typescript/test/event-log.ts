/**
 * Records every event of a session from its start, so a test can wait (with a deadline) for
 * the next event that matches, in order, whether it has already happened or not.
 */
import type { ChatSession, ConnectionState, SessionEvent, SessionEventOf, SessionEventType } from "../src/index.js";
import { within } from "./fake-server.js";

export class EventLog {
  readonly events: SessionEvent[] = [];
  #position = 0;
  #waiters: Array<() => void> = [];

  constructor(session: ChatSession) {
    session.onEvent((event) => {
      this.events.push(event);
      for (const wake of this.#waiters.splice(0)) {
        wake();
      }
    });
  }

  /** The next event (after the last one returned) of this type that matches. */
  next<K extends SessionEventType>(
    type: K,
    matches: (event: SessionEventOf<K>) => boolean = () => true,
    ms = 5_000,
  ): Promise<SessionEventOf<K>> {
    const find = async (): Promise<SessionEventOf<K>> => {
      for (;;) {
        for (let i = this.#position; i < this.events.length; i++) {
          const event = this.events[i];
          if (event?.type === type && matches(event as SessionEventOf<K>)) {
            this.#position = i + 1;
            return event as SessionEventOf<K>;
          }
        }
        await new Promise<void>((resolve) => this.#waiters.push(resolve));
      }
    };
    return within(find(), ms, `a "${type}" event`);
  }

  /** The next connection state with this status. */
  async state<S extends ConnectionState["status"]>(status: S, ms = 5_000): Promise<Extract<ConnectionState, { status: S }>> {
    const event = await this.next("state", (e) => e.state.status === status, ms);
    return event.state as Extract<ConnectionState, { status: S }>;
  }

  /** Every message delivered so far, as "conversation:seq". */
  messages(): string[] {
    return this.events.flatMap((e) => (e.type === "message" ? [`${e.message.conversationId}:${e.message.seq}`] : []));
  }
}
