interface Pending<Item, Result> {
  item: Item;
  resolve: (result: Result) => void;
  reject: (err: unknown) => void;
}

export interface GroupCommitOptions<Item, Result> {
  /** Writes one item in its own statement. */
  writeOne: (item: Item) => Promise<Result>;
  /** Writes several in one statement, answering in their order. */
  writeMany: (items: Item[]) => Promise<Result[]>;
  /** Errors after which retrying each item alone is pointless (the database is gone), so all fail at once. */
  isStorageError: (err: unknown) => boolean;
  /** Statements allowed in flight at once; an item that arrives while they are all busy waits for the next one. */
  maxInFlight?: number;
  /** The most items one statement carries. */
  maxBatch?: number;
  /** Told the size of each statement's batch as it is sent, for metrics. */
  onBatch?: (size: number) => void;
}

/**
 * Group commit. Every caller still waits for its own rows to commit; what concurrent callers
 * share is the statement, the round trip, the commit and the pooled connection. An item is
 * written at once when a statement slot is free, so an idle server adds no delay; under load
 * the items that arrive while the slots are busy go together in the next statement.
 *
 * A batch that fails for any reason but a lost database is retried one item at a time, in
 * arrival order, so an item the database refuses fails alone and does not take its neighbours
 * with it; a lost database fails the whole batch at once.
 */
export class GroupCommit<Item, Result> {
  readonly #options: GroupCommitOptions<Item, Result>;
  readonly #maxInFlight: number;
  readonly #maxBatch: number;
  readonly #queue: Array<Pending<Item, Result>> = [];
  #inFlight = 0;

  constructor(options: GroupCommitOptions<Item, Result>) {
    this.#options = options;
    this.#maxInFlight = options.maxInFlight ?? 1;
    this.#maxBatch = options.maxBatch ?? 64;
  }

  /** Resolves with the item's result once its statement committed. */
  write(item: Item): Promise<Result> {
    return new Promise<Result>((resolve, reject) => {
      this.#queue.push({ item, resolve, reject });
      this.#pump();
    });
  }

  #pump(): void {
    while (this.#inFlight < this.#maxInFlight && this.#queue.length > 0) {
      const batch = this.#queue.splice(0, this.#maxBatch);
      this.#inFlight += 1;
      this.#options.onBatch?.(batch.length);
      void this.#write(batch).finally(() => {
        this.#inFlight -= 1;
        this.#pump();
      });
    }
  }

  async #write(batch: Array<Pending<Item, Result>>): Promise<void> {
    if (batch.length === 1) return this.#writeOne(batch[0]!);
    let results: Result[];
    try {
      results = await this.#options.writeMany(batch.map((p) => p.item));
    } catch (err) {
      if (this.#options.isStorageError(err)) {
        for (const p of batch) p.reject(err);
        return;
      }
      for (const p of batch) await this.#writeOne(p);
      return;
    }
    batch.forEach((p, i) => p.resolve(results[i]!));
  }

  async #writeOne(p: Pending<Item, Result>): Promise<void> {
    try {
      p.resolve(await this.#options.writeOne(p.item));
    } catch (err) {
      p.reject(err);
    }
  }
}
