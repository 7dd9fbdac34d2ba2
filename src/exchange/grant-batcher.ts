import type { Knex } from 'knex';
import { recordGrant, recordGrants, type GrantRecord } from './record.ts';

interface Pending {
  record: GrantRecord;
  resolve: (granted: boolean) => void;
  reject: (err: unknown) => void;
}

export interface GrantBatcherOptions {
  /** Statements allowed in flight at once; a grant that arrives while they are all busy waits for the next one. */
  maxInFlight?: number;
  /** The most grants one statement carries. */
  maxBatch?: number;
  /** Errors after which retrying each grant alone is pointless (the database is gone), so all fail at once. */
  isStorageError: (err: unknown) => boolean;
  /** Told the size of each statement's batch as it is sent, for metrics. */
  onBatch?: (size: number) => void;
}

/**
 * Group commit for grants. Every exchange still waits for its own lineage row and audit event
 * to commit before its token leaves; what concurrent exchanges share is the statement, the
 * round trip and the commit. A grant is written at once when a statement slot is free, so an
 * idle server adds no delay; under load the grants that arrive while the slots are busy go
 * together in the next statement. That is where the cost per exchange falls: PostgreSQL's
 * per-statement and per-commit work, and a socket write and read each side, are paid per batch.
 *
 * A batch that fails for any reason but a lost database is retried one grant at a time, so a
 * grant the database refuses fails alone and does not take its neighbours with it.
 *
 * One statement in flight per process batches best: on 2 cores, direct exchanges at c=50 went
 * from ~1,750 (two in flight) to ~2,000/s. A batch waits behind a lock only when it holds a
 * child of a parent being revoked at that moment, and a revocation is one short transaction.
 */
export class GrantBatcher {
  readonly #knex: Knex;
  readonly #maxInFlight: number;
  readonly #maxBatch: number;
  readonly #isStorageError: (err: unknown) => boolean;
  readonly #onBatch: ((size: number) => void) | undefined;
  readonly #queue: Pending[] = [];
  #inFlight = 0;

  constructor(knex: Knex, options: GrantBatcherOptions) {
    this.#knex = knex;
    this.#maxInFlight = options.maxInFlight ?? 1;
    this.#maxBatch = options.maxBatch ?? 64;
    this.#isStorageError = options.isStorageError;
    this.#onBatch = options.onBatch;
  }

  /** Resolves once the grant is committed: true if granted, false if its parent was revoked first. */
  record(record: GrantRecord): Promise<boolean> {
    return new Promise<boolean>((resolve, reject) => {
      this.#queue.push({ record, resolve, reject });
      this.#pump();
    });
  }

  #pump(): void {
    while (this.#inFlight < this.#maxInFlight && this.#queue.length > 0) {
      const batch = this.#queue.splice(0, this.#maxBatch);
      this.#inFlight += 1;
      this.#onBatch?.(batch.length);
      void this.#write(batch).finally(() => {
        this.#inFlight -= 1;
        this.#pump();
      });
    }
  }

  async #write(batch: Pending[]): Promise<void> {
    if (batch.length === 1) return this.#writeOne(batch[0]!);
    let granted: boolean[];
    try {
      granted = await recordGrants(this.#knex, batch.map((p) => p.record));
    } catch (err) {
      if (this.#isStorageError(err)) {
        for (const p of batch) p.reject(err);
        return;
      }
      // In arrival order, so that of two grants that cannot both commit the earlier one does.
      for (const p of batch) await this.#writeOne(p);
      return;
    }
    batch.forEach((p, i) => p.resolve(granted[i]!));
  }

  async #writeOne(p: Pending): Promise<void> {
    try {
      p.resolve(await recordGrant(this.#knex, p.record));
    } catch (err) {
      p.reject(err);
    }
  }
}
