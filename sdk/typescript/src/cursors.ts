/**
 * Per-conversation cursors: the highest seq the client holds in each conversation. They are
 * both the resume point sent when a stream (re)starts and the de-duplication rule: seqs are
 * gapless and delivered in order per conversation, so a message at or below the cursor has
 * been seen already.
 */
import { create } from "@bufbuild/protobuf";
import { CursorSchema, type Cursor } from "./gen/chat/v1/types_pb.js";

export class Cursors {
  readonly #seqs = new Map<string, bigint>();

  /** Cursors as the server lists them (e.g. in `caught_up`). */
  static fromProto(cursors: readonly Cursor[]): Cursors {
    const out = new Cursors();
    for (const c of cursors) {
      out.advance(c.conversationId, c.seq);
    }
    return out;
  }

  /** Cursors saved with `toJSON` (seqs as decimal strings, since JSON has no bigint). */
  static fromJSON(json: Readonly<Record<string, string>>): Cursors {
    const out = new Cursors();
    for (const [conversationId, seq] of Object.entries(json)) {
      if (/^\d+$/.test(seq)) {
        out.advance(conversationId, BigInt(seq));
      }
    }
    return out;
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

  clone(): Cursors {
    const out = new Cursors();
    for (const [conversationId, seq] of this.#seqs) {
      out.#seqs.set(conversationId, seq);
    }
    return out;
  }

  toProto(): Cursor[] {
    return [...this.#seqs].map(([conversationId, seq]) => create(CursorSchema, { conversationId, seq }));
  }

  toJSON(): Record<string, string> {
    return Object.fromEntries([...this.#seqs].map(([c, seq]) => [c, seq.toString()]));
  }
}
