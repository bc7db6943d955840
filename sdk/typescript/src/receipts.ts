/**
 * Receipts are watermarks (delivered_seq, read_seq) per member and conversation. They only
 * move forward, but updates published by concurrent requests can arrive out of order, so the
 * client keeps the highest it has seen and never reports one backwards. The status of a
 * message (sent / delivered / read) is derived from the recipients' watermarks.
 */
import { create } from "@bufbuild/protobuf";
import { ReceiptSchema, type Receipt } from "./gen/chat/v1/types_pb.js";

/** The status of one message as its sender sees it. */
export type DeliveryStatus = "sent" | "delivered" | "read";

export interface Watermarks {
  deliveredSeq: bigint;
  readSeq: bigint;
}

const max = (a: bigint, b: bigint): bigint => (a > b ? a : b);

/** The highest watermarks seen per (conversation, user). */
export class ReceiptBook {
  readonly #known = new Map<string, Watermarks>();

  /**
   * Merges a receipt into what is known. Returns the receipt to report (each watermark at
   * least as high as any seen before), or undefined when it moves nothing forward.
   */
  merge(receipt: Receipt): Receipt | undefined {
    const key = ReceiptBook.#key(receipt.conversationId, receipt.user?.id ?? "");
    const known = this.#known.get(key);
    let deliveredSeq = receipt.deliveredSeq;
    let readSeq = receipt.readSeq;
    if (known !== undefined) {
      if (deliveredSeq <= known.deliveredSeq && readSeq <= known.readSeq) {
        return undefined;
      }
      deliveredSeq = max(deliveredSeq, known.deliveredSeq);
      readSeq = max(readSeq, known.readSeq);
    }
    // Read implies delivered, even if a delivered update is still on its way.
    deliveredSeq = max(deliveredSeq, readSeq);
    this.#known.set(key, { deliveredSeq, readSeq });
    return create(ReceiptSchema, {
      conversationId: receipt.conversationId,
      user: receipt.user,
      deliveredSeq,
      readSeq,
    });
  }

  /** The watermarks known for a member, if any. */
  get(conversationId: string, userId: string): Watermarks | undefined {
    return this.#known.get(ReceiptBook.#key(conversationId, userId));
  }

  static #key(conversationId: string, userId: string): string {
    // Ids never contain NUL (the server refuses it), so the pair cannot collide.
    return `${conversationId}\u0000${userId}`;
  }
}

/**
 * The status of message `seq` from the recipients' watermarks: the least advanced recipient
 * decides, as on the server. Without recipients a message is only "sent".
 */
export function deriveStatus(seq: bigint, recipients: Iterable<Watermarks>): DeliveryStatus {
  let anyone = false;
  let allDelivered = true;
  let allRead = true;
  for (const r of recipients) {
    anyone = true;
    allRead &&= r.readSeq >= seq;
    allDelivered &&= r.deliveredSeq >= seq || r.readSeq >= seq;
  }
  if (!anyone) {
    return "sent";
  }
  return allRead ? "read" : allDelivered ? "delivered" : "sent";
}
