/** The SDK's pure logic: cursors (de-duplication), receipt merging, status, backoff, ack batches, errors. */
import { ConnectError } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";

import { AckBatch, Backoff, ChatError, Code, Cursors, ReceiptBook, codeFromName, deriveStatus, fullJitter } from "../src/index.js";
import { RIYA, receipt } from "./fake-server.js";

describe("Cursors", () => {
  it("treat duplicates and older seqs as not new, per conversation", () => {
    const c = new Cursors();
    expect(c.advance("a", 1n)).toBe(true);
    expect(c.advance("a", 1n)).toBe(false);
    expect(c.advance("a", 3n)).toBe(true);
    expect(c.advance("a", 2n)).toBe(false);
    expect(c.advance("b", 1n)).toBe(true);
    expect([c.get("a"), c.get("b"), c.get("z")]).toEqual([3n, 1n, 0n]);
  });

  it("round-trip through the wire form and JSON", () => {
    const c = Cursors.fromProto([
      { $typeName: "chat.v1.Cursor", conversationId: "a", seq: 7n },
      { $typeName: "chat.v1.Cursor", conversationId: "b", seq: 9007199254740993n },
    ]);
    const json = JSON.parse(JSON.stringify(c)) as unknown;
    expect(json).toEqual({ complete: false, seqs: { a: "7", b: "9007199254740993" } });
    const back = Cursors.fromJSON(json);
    expect(back.toProto().map((x) => [x.conversationId, x.seq])).toEqual([
      ["a", 7n],
      ["b", 9007199254740993n],
    ]);
    expect(back.complete).toBe(false);
  });

  it("are complete only once marked, and keep it through clone and JSON", () => {
    const c = new Cursors();
    c.advance("a", 4n);
    expect(c.complete).toBe(false);
    expect(c.clone().complete).toBe(false);
    c.markComplete();
    c.advance("b", 1n);
    expect(c.complete).toBe(true);
    expect(c.clone().complete).toBe(true);
    const json = JSON.parse(JSON.stringify(c)) as unknown;
    expect(json).toEqual({ complete: true, seqs: { a: "4", b: "1" } });
    const back = Cursors.fromJSON(json);
    expect([back.complete, back.get("a"), back.get("b")]).toEqual([true, 4n, 1n]);
    expect(Cursors.fromProto(c.toProto()).complete).toBe(false);
  });

  it("read the older bare-map JSON as incomplete, and skip what does not parse", () => {
    const old = Cursors.fromJSON({ a: "7", b: "x", complete: "3" });
    expect([old.complete, old.size, old.get("a"), old.get("complete")]).toEqual([false, 2, 7n, 3n]);
    const odd = Cursors.fromJSON({ complete: "yes", seqs: { a: "-1", b: "2" } });
    expect([odd.complete, odd.size, odd.get("b")]).toEqual([false, 1, 2n]);
    for (const junk of [null, 7, "a", ["1"]]) {
      expect(Cursors.fromJSON(junk).size).toBe(0);
    }
  });

  it("clone independently", () => {
    const c = new Cursors();
    c.advance("a", 1n);
    const d = c.clone();
    d.advance("a", 2n);
    expect(c.get("a")).toBe(1n);
  });
});

describe("ReceiptBook", () => {
  it("never reports a receipt backwards", () => {
    const book = new ReceiptBook();
    const seen = (d: bigint, r: bigint): [bigint, bigint] | undefined => {
      const merged = book.merge(receipt("c", RIYA, d, r));
      return merged === undefined ? undefined : [merged.deliveredSeq, merged.readSeq];
    };
    expect(seen(0n, 0n)).toEqual([0n, 0n]);
    expect(seen(0n, 0n)).toBeUndefined();
    expect(seen(5n, 2n)).toEqual([5n, 2n]);
    expect(seen(4n, 1n)).toBeUndefined();
    expect(seen(4n, 3n)).toEqual([5n, 3n]);
    expect(book.get("c", RIYA.id)).toEqual({ deliveredSeq: 5n, readSeq: 3n });
  });

  it("keeps members and conversations apart", () => {
    const book = new ReceiptBook();
    book.merge(receipt("c", RIYA, 5n, 5n));
    expect(book.merge(receipt("c", { id: "u2", name: "sam" }, 1n, 0n))).toBeDefined();
    expect(book.merge(receipt("d", RIYA, 1n, 0n))).toBeDefined();
  });
});

describe("deriveStatus", () => {
  it("takes the least advanced recipient", () => {
    expect(deriveStatus(3n, [])).toBe("sent");
    expect(deriveStatus(3n, [{ deliveredSeq: 2n, readSeq: 0n }])).toBe("sent");
    expect(deriveStatus(3n, [{ deliveredSeq: 3n, readSeq: 2n }])).toBe("delivered");
    expect(deriveStatus(3n, [{ deliveredSeq: 4n, readSeq: 3n }])).toBe("read");
    expect(
      deriveStatus(3n, [
        { deliveredSeq: 9n, readSeq: 9n },
        { deliveredSeq: 3n, readSeq: 0n },
      ]),
    ).toBe("delivered");
  });
});

describe("Backoff", () => {
  it("doubles its cap per failure up to the maximum", () => {
    const b = new Backoff({ initialMs: 100, maxMs: 1_000 });
    expect([1, 2, 3, 4, 5, 10, 100].map((n) => b.capMs(n))).toEqual([100, 200, 400, 800, 1_000, 1_000, 1_000]);
  });

  it("draws every delay below its cap (full jitter), and resets", () => {
    const top = new Backoff({ initialMs: 100, maxMs: 1_000 }, () => 0.999_999);
    const delays = Array.from({ length: 8 }, () => top.next());
    expect(delays).toEqual([99, 199, 399, 799, 999, 999, 999, 999]);
    expect(top.failures).toBe(8);
    top.reset();
    expect(top.next()).toBe(99);

    const bottom = new Backoff({ initialMs: 100, maxMs: 1_000 }, () => 0);
    expect(Array.from({ length: 5 }, () => bottom.next())).toEqual([0, 0, 0, 0, 0]);
  });

  it("is jittered and bounded with a real random source", () => {
    const b = new Backoff({ initialMs: 50, maxMs: 400 });
    const delays = Array.from({ length: 200 }, () => b.next());
    expect(delays.every((d) => d >= 0 && d < 400)).toBe(true);
    expect(new Set(delays).size).toBeGreaterThan(20);
  });

  it("never returns the cap itself, even from a source that returns 1", () => {
    expect(fullJitter(100, () => 1)).toBe(99);
    expect(fullJitter(0, () => 0.5)).toBe(0);
  });
});

describe("AckBatch", () => {
  it("keeps the highest seq per conversation and empties on take", () => {
    const acks = new AckBatch();
    for (const seq of [1n, 3n, 2n]) {
      acks.record("a", seq);
    }
    acks.record("b", 1n);
    expect(acks.size).toBe(2);
    expect(acks.take()).toEqual([
      ["a", 3n],
      ["b", 1n],
    ]);
    expect(acks.take()).toEqual([]);
  });
});

describe("ChatError", () => {
  it("retries exactly the codes the Rust SDK retries", () => {
    const retryable = [Code.Unavailable, Code.DeadlineExceeded, Code.Aborted, Code.Unknown];
    for (let code = Code.Canceled; code <= Code.Unauthenticated; code++) {
      const e = ChatError.from(new ConnectError("x", code));
      expect([e.code, e.retryable]).toEqual([code, retryable.includes(code)]);
    }
  });

  it("names codes like the server's error frames", () => {
    const e = ChatError.from(new ConnectError("slow down", Code.ResourceExhausted));
    expect(e.message).toBe("RESOURCE_EXHAUSTED: slow down");
    expect(e.codeName).toBe("RESOURCE_EXHAUSTED");
    expect(codeFromName("NOT_FOUND")).toBe(Code.NotFound);
    expect(codeFromName("OK")).toBe(Code.Unknown);
    expect(codeFromName("NONSENSE")).toBe(Code.Unknown);
    expect(ChatError.from(new TypeError("Failed to fetch")).code).toBe(Code.Unknown);
  });
});
