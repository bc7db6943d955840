/**
 * Abort helpers: timers that an abort signal can cut short, so closing a session never waits
 * out a backoff, and controllers that abort with a parent signal.
 */

/** Resolves after `ms`, or as soon as `signal` aborts (without throwing: callers re-check their state). */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted === true) {
      resolve();
      return;
    }
    const done = (): void => {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, Math.max(0, ms));
    signal?.addEventListener("abort", done, { once: true });
  });
}

/**
 * An `AbortController` that also aborts when `parent` does (what `AbortSignal.any` does,
 * without needing a browser recent enough to have it). Call `release` when it is no longer
 * needed, so a long-lived parent does not keep every child alive.
 */
export class ChildAbort extends AbortController {
  readonly #parent: AbortSignal;
  readonly #onParentAbort = (): void => this.abort(this.#parent.reason);

  constructor(parent: AbortSignal) {
    super();
    this.#parent = parent;
    if (parent.aborted) {
      this.abort(parent.reason);
    } else {
      parent.addEventListener("abort", this.#onParentAbort, { once: true });
    }
  }

  release(): void {
    this.#parent.removeEventListener("abort", this.#onParentAbort);
  }
}
