/**
 * Retry delays: exponential backoff with "full jitter" (a uniformly random delay below a cap
 * that doubles per failure, up to a maximum). Randomising the whole delay spreads out
 * clients that all lost the same server at once, so they do not return in lockstep.
 */

/** A source of numbers in [0, 1); `Math.random` unless a test injects its own. */
export type Random = () => number;

export interface BackoffOptions {
  /** The cap of the first delay, in milliseconds. */
  initialMs: number;
  /** No delay is ever longer than this. */
  maxMs: number;
  /** How much the cap grows per failure; 2 by default. */
  factor?: number;
}

/** A random delay in [0, capMs): "full jitter". */
export function fullJitter(capMs: number, random: Random = Math.random): number {
  const cap = Math.max(0, capMs);
  // Clamp in case an injected source returns exactly 1.
  return Math.min(Math.floor(random() * cap), Math.max(0, Math.ceil(cap) - 1));
}

/** The delays of one run of consecutive failures; `reset` after a success. */
export class Backoff {
  readonly #initialMs: number;
  readonly #maxMs: number;
  readonly #factor: number;
  readonly #random: Random;
  #failures = 0;

  constructor(options: BackoffOptions, random: Random = Math.random) {
    this.#initialMs = Math.max(1, options.initialMs);
    this.#maxMs = Math.max(this.#initialMs, options.maxMs);
    this.#factor = Math.max(1, options.factor ?? 2);
    this.#random = random;
  }

  /** Failures since the last reset. */
  get failures(): number {
    return this.#failures;
  }

  /** The cap for the delay after the `failure`-th consecutive failure (1-based). */
  capMs(failure: number): number {
    const exponent = Math.max(0, failure - 1);
    return Math.min(this.#maxMs, this.#initialMs * this.#factor ** exponent);
  }

  /** Records a failure and returns how long to wait before the next attempt. */
  next(): number {
    this.#failures += 1;
    return fullJitter(this.capMs(this.#failures), this.#random);
  }

  reset(): void {
    this.#failures = 0;
  }
}
