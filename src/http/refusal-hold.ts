/**
 * Holds the refusals of a caller that ignores Retry-After.
 *
 * A 429 tells the caller when it may try again. A caller that comes back before then (a retry
 * loop, a flood) gets its next refusals only at that time: answering a refusal costs little,
 * but a closed-loop client answered at once simply asks again, and its refusals alone can
 * keep a core busy and delay every other client. Held, such a client sends about one request
 * per connection per Retry-After. A caller that waits as told is never held. Held refusals are
 * released spread over the second after the time given (not all at that instant), so that a
 * flood's connections do not come back as one burst.
 *
 * Holding costs an idle socket and a timer, so at most `maxHeld` refusals are held at once;
 * beyond that they are answered at once and the connection is closed.
 */
export class RefusalHold {
  /** When each key was told it may retry, in ms (performance.now()). */
  private readonly retryAt = new Map<string, number>();
  private held = 0;
  private readonly maxHeld: number;
  private readonly maxHoldMs: number;
  private readonly maxKeys: number;
  private readonly clock: () => number;
  private readonly jitter: () => number;

  constructor(options: { maxHeld?: number; maxHoldMs?: number; maxKeys?: number; now?: () => number; random?: () => number } = {}) {
    this.maxHeld = options.maxHeld ?? 1000;
    this.maxHoldMs = options.maxHoldMs ?? 5000;
    this.maxKeys = options.maxKeys ?? 100_000;
    this.clock = options.now ?? (() => performance.now());
    this.jitter = options.random ?? Math.random;
  }

  /** Refusals being held right now. */
  get holding(): number {
    return this.held;
  }

  /**
   * Decides what to do with a refusal of `key` that says "retry after `retryAfterSeconds`":
   * `0` answer at once; a positive number: hold it that many ms first; `'close'`: answer at
   * once and close the connection (too many held already).
   */
  plan(key: string, retryAfterSeconds: number): number | 'close' {
    const now = this.clock();
    const due = this.retryAt.get(key);
    if (due !== undefined && due > now) {
      // Came back before it was told to: hold this refusal until then.
      if (this.held >= this.maxHeld) return 'close';
      return Math.min(Math.ceil(due - now + this.jitter() * 1000), this.maxHoldMs);
    }
    if (this.retryAt.size >= this.maxKeys) this.forgetPast(now);
    this.retryAt.set(key, now + Math.max(0, retryAfterSeconds) * 1000);
    return 0;
  }

  /** Waits `ms` counted as one held refusal. */
  async hold(ms: number): Promise<void> {
    this.held += 1;
    try {
      await new Promise((resolve) => setTimeout(resolve, ms));
    } finally {
      this.held -= 1;
    }
  }

  private forgetPast(now: number): void {
    for (const [key, at] of this.retryAt) if (at <= now) this.retryAt.delete(key);
    // Still full of live entries: drop the oldest half rather than grow without bound.
    if (this.retryAt.size >= this.maxKeys) {
      let drop = Math.floor(this.maxKeys / 2);
      for (const key of this.retryAt.keys()) {
        if (drop-- <= 0) break;
        this.retryAt.delete(key);
      }
    }
  }
}
