/**
 * Delivery acks waiting to be sent: the highest seq per conversation. A burst of messages
 * (a replay after reconnecting, say) costs one Ack call per conversation, and memory is
 * bounded by the number of conversations, however many messages arrive.
 */
export class AckBatch {
  readonly #latest = new Map<string, bigint>();

  /** Marks everything up to `seq` in the conversation as to be acknowledged. */
  record(conversationId: string, seq: bigint): void {
    const current = this.#latest.get(conversationId);
    if (current === undefined || seq > current) {
      this.#latest.set(conversationId, seq);
    }
  }

  /** Conversations with an ack waiting. */
  get size(): number {
    return this.#latest.size;
  }

  /** Everything waiting, emptying the batch. */
  take(): Array<[conversationId: string, seq: bigint]> {
    const out = [...this.#latest];
    this.#latest.clear();
    return out;
  }
}
