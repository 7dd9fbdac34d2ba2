import type pg from 'pg';

/** What the watchdog reports when it gives up on PostgreSQL. */
export interface StalledStatement {
  /** How long the longest-waiting statement had gone with no byte back, ms. */
  waitedMs: number;
}

export interface StatementWatchdogOptions {
  /** A statement unanswered for longer than this, ms, means PostgreSQL has stopped answering. */
  limitMs: number;
  /** How often connections are looked at, ms; a stall is noticed within limitMs + 2 × intervalMs. */
  intervalMs: number;
  onStall: (stall: StalledStatement) => void;
  /**
   * Asks PostgreSQL for an answer on a connection of its own, outside the pool; resolves once
   * it answered, rejects (within its own bounded time) otherwise. Run while stalled, one at a time.
   */
  probe: () => Promise<void>;
  onRecovery?: () => void;
}

/** Refused without being sent: PostgreSQL has not answered since a statement stalled. */
export class PostgresNotAnswering extends Error {
  override name = 'PostgresNotAnswering';
  constructor() {
    super('PostgreSQL is not answering: statement not sent');
  }
}

interface Watched {
  readonly client: pg.Client;
  /** The socket's bytes read when last looked at. */
  read: number;
  /** Since when a statement has waited with no byte back; 0 if none is waiting. */
  waitingSince: number;
}

/** pg.Client's own flag: false from sending a statement until PostgreSQL's ReadyForQuery. */
const isWaiting = (client: pg.Client): boolean => (client as unknown as { readyForQuery: boolean }).readyForQuery === false;
const bytesRead = (client: pg.Client): number => (client.connection.stream as { bytesRead?: number }).bytesRead ?? 0;

/**
 * Fails statements closed when PostgreSQL stops answering: its own `statement_timeout` cannot
 * fire on a server that is hung or cut off, and a request must then end in 503 rather than wait
 * on a socket.
 *
 * pg's `query_timeout` arms a timer per statement, and wrapping each statement to count it does
 * not come free either: measured under load, both kept whole exchanges alive past
 * young-generation collections (bench/README.md). So the watchdog adds nothing to a statement.
 * One interval timer looks at each pooled connection instead: a statement out (pg's own
 * `readyForQuery` flag down) with no byte read for longer than the limit is one PostgreSQL has
 * not answered. A live server answers every statement, cancelling its own after
 * `statement_timeout`; bytes that do come back (rows, notices) restart the count.
 *
 * A server that leaves a statement that long has stopped answering (hung, cut off, or unable to
 * commit: `statement_timeout` does not cover waiting on a synchronous standby), so every pooled
 * connection is closed, idle ones too: after a failover or a lost route an idle socket would
 * only stall again. Statements out on them fail with "Connection terminated unexpectedly" (in a
 * transaction, "not queryable"): storage errors, so 503. knex drops the connections from its
 * pool. From then until PostgreSQL answers a probe on a connection of its own, no pooled
 * connection is handed out or opened ({@link PostgresNotAnswering}), so no request waits on a
 * stalled server more than once.
 */
export class StatementWatchdog {
  readonly #watched = new Set<Watched>();
  /** Rejects the wait of each connection being opened. */
  readonly #opening = new Set<(err: Error) => void>();
  readonly #options: Required<StatementWatchdogOptions>;
  readonly #timer: NodeJS.Timeout;
  #stalled = false;
  #probing = false;
  #suspended = 0;
  #lastCheck: number;

  constructor(options: StatementWatchdogOptions) {
    if (!(options.limitMs > 0) || !(options.intervalMs > 0)) throw new RangeError('limitMs and intervalMs must be positive');
    this.#options = { onRecovery: () => undefined, ...options };
    this.#lastCheck = performance.now();
    this.#timer = setInterval(() => this.check(), options.intervalMs);
    this.#timer.unref();
  }

  /** True from a stall until PostgreSQL answers a statement again. */
  get stalled(): boolean {
    return this.#stalled;
  }

  /**
   * Opens a pooled connection with `connect`. Refused at once while stalled; a connect still
   * waiting when a stall is found is given up then, not at its own timeout.
   */
  async open(connect: () => Promise<pg.Client>): Promise<pg.Client> {
    if (this.#stalled) throw new PostgresNotAnswering();
    const attempt = connect();
    const given = Promise.withResolvers<never>();
    this.#opening.add(given.reject);
    try {
      return await Promise.race([attempt, given.promise]);
    } catch (err) {
      if (err instanceof PostgresNotAnswering) attempt.then((late) => late.end(), () => undefined).catch(() => undefined);
      throw err;
    } finally {
      this.#opening.delete(given.reject);
    }
  }

  /**
   * Runs `run` with no limit on how long a statement may go unanswered (schema migrations, whose
   * statements lift `statement_timeout` themselves).
   */
  async unlimited<T>(run: () => Promise<T>): Promise<T> {
    this.#suspended += 1;
    try {
      return await run();
    } finally {
      this.#suspended -= 1;
    }
  }

  /** Looks after `client` from now on, until it ends: call it as soon as it is connected. */
  watch(client: pg.Client): void {
    const entry: Watched = { client, read: bytesRead(client), waitingSince: 0 };
    this.#watched.add(entry);
    client.once('end', () => this.#watched.delete(entry));
  }

  /**
   * Once a statement has waited past the limit, closes every pooled connection; while stalled,
   * probes.
   */
  check(): void {
    const now = performance.now();
    // A timer this late means the event loop was blocked: answers may be waiting unread in the
    // socket. Start the count again rather than blame PostgreSQL for it.
    const blocked = now - this.#lastCheck > 3 * this.#options.intervalMs;
    this.#lastCheck = now;
    let waitedMs = 0;
    for (const entry of this.#watched) {
      const read = bytesRead(entry.client);
      if (!isWaiting(entry.client)) entry.waitingSince = 0;
      // Bytes came back: the statement waiting now (this one or the next) waits from here.
      else if (read !== entry.read || entry.waitingSince === 0 || blocked || this.#suspended > 0) entry.waitingSince = now;
      entry.read = read;
      if (entry.waitingSince > 0) waitedMs = Math.max(waitedMs, now - entry.waitingSince);
    }
    if (waitedMs > this.#options.limitMs || (this.#stalled && waitedMs > 0)) {
      for (const entry of this.#watched) entry.client.connection.stream.destroy();
      this.#watched.clear();
      for (const reject of this.#opening) reject(new PostgresNotAnswering());
      this.#opening.clear();
      if (!this.#stalled) {
        this.#stalled = true;
        this.#options.onStall({ waitedMs: Math.round(waitedMs) });
      }
    }
    if (this.#stalled) this.#probe();
  }

  #probe(): void {
    if (this.#probing) return;
    this.#probing = true;
    this.#options.probe().then(
      () => {
        this.#probing = false;
        if (!this.#stalled) return;
        this.#stalled = false;
        this.#options.onRecovery();
      },
      () => {
        this.#probing = false;
      },
    );
  }

  stop(): void {
    clearInterval(this.#timer);
    this.#watched.clear();
  }
}
