import type { Knex } from 'knex';
import type { Logger } from 'pino';
import { recordAudit, type AuditEvent } from './event.ts';

/**
 * For events that must not cost a round trip on the request path (introspections,
 * unauthenticated failures): queued, written in multi-row inserts within `intervalMs`, and
 * flushed at shutdown. The queue is bounded; overflow is counted and logged, never blocking.
 */
export class BatchedAuditWriter {
  private queue: AuditEvent[] = [];
  private timer: NodeJS.Timeout | undefined;
  private flushing: Promise<void> | undefined;
  private closed = false;
  private readonly beforeClose: Array<() => void> = [];
  dropped = 0;
  private readonly knex: Knex;
  private readonly logger: Logger;
  private readonly intervalMs: number;
  private readonly maxQueue: number;

  constructor(knex: Knex, logger: Logger, options: { intervalMs?: number; maxQueue?: number } = {}) {
    this.knex = knex;
    this.logger = logger;
    this.intervalMs = options.intervalMs ?? 250;
    this.maxQueue = options.maxQueue ?? 50_000;
  }

  enqueue(event: AuditEvent): void {
    if (this.queue.length >= this.maxQueue) {
      this.dropped += 1;
      return;
    }
    this.queue.push(event);
    if (this.closed) return;
    this.timer ??= setTimeout(() => {
      this.timer = undefined;
      // A failure after close is close()'s to report, not this timer's.
      this.flush().catch(() => undefined);
    }, this.intervalMs);
  }

  get pending(): number {
    return this.queue.length;
  }

  async flush(): Promise<void> {
    if (this.flushing) await this.flushing;
    if (this.queue.length === 0) return;
    const batch = this.queue.splice(0, 1000);
    this.flushing = recordAudit(this.knex, batch)
      .catch((err: unknown) => {
        // Put the batch back for the next attempt; PostgreSQL may be briefly away.
        this.queue.unshift(...batch.slice(0, Math.max(0, this.maxQueue - this.queue.length)));
        if (this.closed) throw err;
        this.logger.warn({ err: (err as Error).message, events: batch.length }, 'audit batch write failed; will retry');
        this.timer ??= setTimeout(() => {
          this.timer = undefined;
          // A failure after close is close()'s to report, not this timer's.
          this.flush().catch(() => undefined);
        }, 1000);
      })
      .finally(() => {
        this.flushing = undefined;
      });
    await this.flushing;
    if (this.queue.length > 0 && !this.timer) await this.flush();
  }

  /** Called at close, before the last flush: holders of counts not yet queued add them then. */
  onClose(hook: () => void): void {
    this.beforeClose.push(hook);
  }

  /**
   * Writes what is queued, once. A process stopping while PostgreSQL is away must still exit:
   * after close nothing is retried, and what could not be written is counted in the log.
   */
  async close(): Promise<void> {
    for (const hook of this.beforeClose) hook();
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    try {
      await this.flush();
    } catch (err) {
      const lost = this.queue.length;
      this.queue = [];
      this.logger.error({ err: (err as Error).message, events: lost }, 'audit events could not be written before shutdown');
    }
  }
}
