/**
 * Per-conversation cursors: the highest seq the client holds in each conversation. They are
 * both the resume point sent when a stream (re)starts and the de-duplication rule: seqs are
 * gapless and delivered in order per conversation, so a message at or below the cursor has
 * been seen already.
 *
 * Cursors are *complete* when they cover every conversation of the user: a session marks
 * them so once the server has sent `caught_up`. Only complete cursors are sent to the server,
 * because a stream that carries cursors replays a conversation without one from its start
 * (the server takes it that the device has never seen it): partial cursors, from a session
 * that never caught up, would bring back every other conversation from seq 1 as new
 * messages. Incomplete cursors still drop what they hold as duplicates.
 */
import { create } from "@bufbuild/protobuf";
import { CursorSchema, type Cursor } from "./gen/chat/v1/types_pb.js";

/** The JSON form of `Cursors` (seqs as decimal strings, since JSON has no bigint). */
export interface CursorsJSON {
  /** Whether the cursors cover every conversation of the user (see `Cursors.complete`). */
  complete: boolean;
  /** Conversation id → highest seq held. */
  seqs: Record<string, string>;
}

export class Cursors {
  readonly #seqs = new Map<string, bigint>();
  #complete = false;

  /**
   * Cursors as the server lists them. Not marked complete: a list of cursors does not say
   * whether it covers every conversation (`markComplete` when it does, as after `caught_up`).
   */
  static fromProto(cursors: readonly Cursor[]): Cursors {
    const out = new Cursors();
    for (const c of cursors) {
      out.advance(c.conversationId, c.seq);
    }
    return out;
  }

  /**
   * Cursors saved with `toJSON` (`{ complete, seqs }`). The older form, a bare map of
   * conversation id → seq, is still read, as incomplete: it did not record whether the
   * session had caught up. Entries that do not parse are skipped.
   */
  static fromJSON(json: CursorsJSON | Readonly<Record<string, string>> | unknown): Cursors {
    const out = new Cursors();
    if (!isRecord(json)) {
      return out;
    }
    // A bare map holds only strings, so an object under `seqs` means the current form.
    const current = isRecord(json["seqs"]);
    const seqs = current ? (json["seqs"] as Record<string, unknown>) : json;
    for (const [conversationId, seq] of Object.entries(seqs)) {
      if (typeof seq === "string" && /^\d+$/.test(seq)) {
        out.advance(conversationId, BigInt(seq));
      }
    }
    out.#complete = current && json["complete"] === true;
    return out;
  }

  /**
   * Whether these cursors cover every conversation of the user, so that a session may send
   * them to the server. A session's cursors become complete at its first `caught_up`, and
   * stay so (every later message moves them on).
   */
  get complete(): boolean {
    return this.#complete;
  }

  /** Declares that these cursors cover every conversation of the user (see `complete`). */
  markComplete(): void {
    this.#complete = true;
  }

  /** The cursor of one conversation (0 when unknown). */
  get(conversationId: string): bigint {
    return this.#seqs.get(conversationId) ?? 0n;
  }

  /** Records `seq` as held; true if it is new (above the cursor), false for a duplicate. */
  advance(conversationId: string, seq: bigint): boolean {
    if (seq <= this.get(conversationId)) {
      return false;
    }
    this.#seqs.set(conversationId, seq);
    return true;
  }

  /** Number of conversations with a cursor. */
  get size(): number {
    return this.#seqs.size;
  }

  entries(): IterableIterator<[string, bigint]> {
    return this.#seqs.entries();
  }

  /** An independent copy, completeness included. */
  clone(): Cursors {
    const out = new Cursors();
    for (const [conversationId, seq] of this.#seqs) {
      out.#seqs.set(conversationId, seq);
    }
    out.#complete = this.#complete;
    return out;
  }

  toProto(): Cursor[] {
    return [...this.#seqs].map(([conversationId, seq]) => create(CursorSchema, { conversationId, seq }));
  }

  /** The form to save (e.g. in `localStorage`) and read back with `fromJSON`. */
  toJSON(): CursorsJSON {
    return {
      complete: this.#complete,
      seqs: Object.fromEntries([...this.#seqs].map(([c, seq]) => [c, seq.toString()])),
    };
  }
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}
