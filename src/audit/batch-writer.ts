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
    this.timer ??= setTimeout(() => {
      this.timer = undefined;
      void this.flush();
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
        this.logger.warn({ err: (err as Error).message, events: batch.length }, 'audit batch write failed; will retry');
        this.timer ??= setTimeout(() => {
          this.timer = undefined;
          void this.flush();
        }, 1000);
      })
      .finally(() => {
        this.flushing = undefined;
      });
    await this.flushing;
    if (this.queue.length > 0 && !this.timer) await this.flush();
  }

  async close(): Promise<void> {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    await this.flush();
  }
}
