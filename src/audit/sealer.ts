import type { Knex } from 'knex';
import type { Logger } from 'pino';
import { WRIT_AUDIT_INFLIGHT_LOCK } from '../../migrations/20261122_002_audit_chain.ts';
import { GENESIS_HASH, OCCURRED_AT_SQL, eventHash, signCheckpoint, verifyCheckpoint, type ChainEvent } from './chain.ts';

/** Advisory lock (bigint key) held for the duration of one sealing pass: one sealer at a time. */
export const AUDIT_SEAL_LOCK = 7369659;

export interface AuditSealerOptions {
  /** deriveKeys(kek).auditCheckpoint */
  checkpointKey: Buffer;
  logger: Logger;
  /** Pause between passes when there was nothing (more) to seal. */
  intervalMs?: number;
  /** A checkpoint after this many newly sealed events… */
  checkpointEvery?: number;
  /** …or when the last one is this old and events were sealed since. */
  checkpointIntervalMs?: number;
  /**
   * Rows younger than this (by occurred_at, against the database clock) wait for the next
   * pass. It covers the instant between a row taking its id and its transaction raising the
   * in-flight marker, and the gap between reading the markers and reading the rows.
   */
  graceMs?: number;
  /** Rows per pass. */
  batchSize?: number;
  /**
   * A row whose occurred_at is this much older than the sealed head's cannot have been
   * written after it (ids and occurred_at are taken together): it is backdated, and is left
   * unsealed for `audit verify` to report as inserted.
   */
  backdateToleranceMs?: number;
  /** Months of partitions kept created ahead of time. */
  partitionsAhead?: number;
}

export interface SealOnceOptions {
  graceMs?: number;
  /** Write a checkpoint at the head if it has moved since the last one. */
  forceCheckpoint?: boolean;
}

interface Head {
  seq: number;
  /** The sealed event's id. */
  id: number;
  hash: string;
  /** The sealed event's occurred_at; null when that event is gone. */
  occurredMs: number | null;
}

/** A point of the chain: its seq and the hash the chain row there must have. */
interface Anchor {
  seq: number;
  hash: string;
}

interface CandidateRow extends ChainEvent {
  id: number;
  occurred_at: string;
  occurred_ms: number | string;
}

interface LoggedCheckpoint {
  id: number;
  seq: number;
  hash: string;
  count: number;
  signature: string;
  created_at: string;
}

const TWO_31 = 2 ** 31;

/**
 * Chains committed audit events in the background, shortly after they commit; never on the
 * request path, so exchanges do not queue behind the chain.
 *
 * The chain lives in audit_chain (migration 006): sealing appends one narrow row per event,
 * a whole pass in one INSERT, and never touches audit_events, which is immutable.
 *
 * Order. The chain follows id order, and never skips an id that may still commit: rows
 * commit out of id order, and a row with a lower id turning up below the sealed head is
 * exactly what an inserted (forged) row looks like, so it must never happen legitimately.
 * Each transaction inserting audit rows holds, until it ends, a shared advisory lock keyed by
 * its first (lowest) id (the insert trigger of migrations 002 and 006). A pass
 *   1. reads those in-flight markers and the clock (t1), then the id sequence;
 *   2. reads the events above the head's event id in id order, in a fresh snapshot;
 *   3. seals the prefix of them below the lowest in-flight id and older than t1 - graceMs,
 *      stopping at the first row that is not (so no gap is ever left behind the head).
 * A transaction whose marker was not seen in 1 either had finished (its rows are in the
 * snapshot of 2, or it aborted and its ids are gone for good) or took its id after t1 - ε,
 * and then so did every row above it, which the grace keeps out. Only a marker raised more
 * than graceMs after its id was taken (the two happen within one row insert) could be missed.
 *
 * Rows that cannot be legitimate are not sealed (which would launder them into the chain):
 * backdated rows (see backdateToleranceMs), rows below the head, and rows sharing an id.
 * `audit verify` names them.
 *
 * Nor does a pass extend, or sign a checkpoint over, a chain that is not the one already
 * vouched for. Its anchor is the furthest point of the chain it knows to be genuine: the newest
 * checkpoint with a valid signature, in the database or seen earlier by this process, or the
 * head this process last sealed. Someone who rewrites events and recomputes the chain rows
 * above a point changes the chain row at the anchor; someone who also deletes the checkpoints
 * that would show it cannot delete this process's memory of them. If the head is behind the
 * anchor (the tail was deleted), the chain row at the anchor does not match it, or the head's
 * event is gone, sealing stops and says so. A process started after such a rewrite knows only
 * the checkpoints left in the database: the log stream's copies are the anchor then
 * (`writ audit verify --checkpoints`). Nor does a process re-check the rows another instance
 * sealed above its anchor: each vouches for what it has seen, `audit verify` for the whole.
 *
 * Passes take a transaction-level advisory lock, so several instances may run a sealer.
 */
export class AuditSealer {
  private readonly knex: Knex;
  private readonly key: Buffer;
  private readonly logger: Logger;
  private readonly intervalMs: number;
  private readonly checkpointEvery: number;
  private readonly checkpointIntervalMs: number;
  private readonly graceMs: number;
  private readonly batchSize: number;
  private readonly backdateToleranceMs: number;
  private readonly partitionsAhead: number;
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private stopped = true;
  private oldestUnsealedMs: number | undefined;
  private lastPartitionCheck = 0;
  private readonly reported = new Set<string>();
  /** The furthest point of the chain this process knows to be genuine (see the class comment). */
  private anchor: Anchor | undefined;
  /** The newest checkpoint with a valid signature this process has seen, by seq. */
  private checkpointSeen = 0;
  /** Events left unsealed because they cannot be legitimate (backdated or below the head). */
  anomalies = 0;
  /** Events sealed by this instance. */
  sealed = 0;

  constructor(knex: Knex, options: AuditSealerOptions) {
    this.knex = knex;
    this.key = options.checkpointKey;
    this.logger = options.logger;
    this.intervalMs = options.intervalMs ?? 200;
    this.checkpointEvery = options.checkpointEvery ?? 1000;
    this.checkpointIntervalMs = options.checkpointIntervalMs ?? 60_000;
    this.graceMs = options.graceMs ?? 500;
    this.batchSize = options.batchSize ?? 1000;
    this.backdateToleranceMs = options.backdateToleranceMs ?? 300_000;
    this.partitionsAhead = options.partitionsAhead ?? 3;
  }

  start(): void {
    if (!this.stopped) return;
    this.stopped = false;
    this.schedule(0);
  }

  /** Stops the loop, then seals what has committed (without the grace) and checkpoints it. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    await this.running;
    try {
      for (let i = 0; i < 100; i += 1) {
        const n = await this.sealOnce({ graceMs: 0, forceCheckpoint: true });
        if (n < this.batchSize) break;
      }
    } catch (err) {
      this.logger.warn({ err: (err as Error).message }, 'audit sealer: final pass failed; the next start seals the rest');
    }
  }

  /** Age in ms of the oldest committed event not yet sealed (0 when none), as of the last pass. */
  lag(): number {
    return this.oldestUnsealedMs === undefined ? 0 : Math.max(0, Date.now() - this.oldestUnsealedMs);
  }

  private schedule(delay: number): void {
    if (this.stopped) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.running = this.tick().finally(() => {
        this.running = undefined;
      });
    }, delay);
    this.timer.unref();
  }

  private async tick(): Promise<void> {
    let delay = this.intervalMs;
    if (Date.now() - this.lastPartitionCheck > 3_600_000) {
      this.lastPartitionCheck = Date.now();
      await this.ensurePartitions().catch((err: unknown) => {
        this.logger.warn({ err: (err as Error).message }, 'audit partitions could not be created ahead; retrying in an hour');
      });
    }
    try {
      const n = await this.sealOnce();
      if (n >= this.batchSize) delay = 0;
    } catch (err) {
      this.logger.warn({ err: (err as Error).message }, 'audit sealer pass failed; retrying');
      delay = Math.max(this.intervalMs, 1000);
    }
    this.schedule(delay);
  }

  /** Creates the coming months' partitions (returns how many were created). */
  async ensurePartitions(): Promise<number> {
    const result = await this.knex.raw<{ rows: Array<{ created: number }> }>('SELECT writ_audit_ensure_partitions(0, ?) AS created', [this.partitionsAhead]);
    return Number(result.rows[0]?.created ?? 0);
  }

  private reportOnce(key: string, log: () => void): void {
    if (this.reported.has(key)) return;
    if (this.reported.size > 10_000) this.reported.clear();
    this.reported.add(key);
    log();
  }

  /**
   * The oldest committed event still waiting above the head (anomalies left aside), among the
   * next 1,000 by id: events are sealed in id order, so the oldest waiting one is among the
   * first. The bound keeps this a range scan of each partition's primary key; unbounded, the
   * minimum over everything above the head became a parallel sequential scan of audit_events
   * once the partition's statistics were stale, five times a second (~30% of a core).
   */
  private async measureLag(trx: Knex.Transaction, headId: number, skipped: number[]): Promise<void> {
    const oldest = await trx.raw<{ rows: Array<{ ms: string | number | null }> }>(`
      SELECT extract(epoch FROM min(u.occurred_at)) * 1000 AS ms FROM (
        SELECT e.occurred_at FROM audit_events e
        WHERE e.id > ? AND NOT (e.id = ANY(CAST(? AS bigint[])))
          AND NOT EXISTS (SELECT 1 FROM audit_chain c WHERE c.event_id = e.id AND c.event_id > ?)
        ORDER BY e.id, e.occurred_at LIMIT 1000
      ) AS u`,
    [headId, skipped, headId]);
    const ms = oldest.rows[0]?.ms;
    this.oldestUnsealedMs = ms === null || ms === undefined ? undefined : Number(ms);
  }

  /** One pass: seals up to batchSize events; resolves with how many. */
  async sealOnce(options: SealOnceOptions = {}): Promise<number> {
    const graceMs = options.graceMs ?? this.graceMs;
    const logged: LoggedCheckpoint[] = [];
    let reached: Anchor | undefined;
    let checkpointNow = 0;
    const sealedNow = await this.knex.transaction(async (trx) => {
      // No parallel workers for the rest of the pass. Once the events table holds some 100,000
      // rows, its planner estimates put the candidate read (a bounded range scan of ~200 rows)
      // on two parallel workers: PostgreSQL launched both on every pass, five times a second,
      // and the read took 7 ms instead of under 1 (10-20 ms under load), in bursts that took the
      // same cores as the exchanges (bench/README.md, "The sealer's parallel workers").
      const lock = await trx.raw<{ rows: Array<{ ok: boolean }> }>(
        "SELECT pg_try_advisory_xact_lock(?) AS ok, set_config('max_parallel_workers_per_gather', '0', true)", [AUDIT_SEAL_LOCK]);
      if (!lock.rows[0]?.ok) return 0;

      // 1. In-flight markers and the clock, then the sequence (so every marker's id ≤ lastId).
      const marks = await trx.raw<{ rows: Array<{ now_ms: string | number; objid: string | number | null }> }>(`
        SELECT extract(epoch FROM clock_timestamp()) * 1000 AS now_ms, l.objid
        FROM (SELECT 1) AS one
        LEFT JOIN pg_locks l ON l.locktype = 'advisory' AND l.classid = ? AND l.objsubid = 2
          AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())`, [WRIT_AUDIT_INFLIGHT_LOCK]);
      const t1 = Number(marks.rows[0]!.now_ms);
      const seqRow = await trx.raw<{ rows: Array<{ last_value: string | number }> }>('SELECT last_value FROM audit_events_id_seq');
      const lastId = Number(seqRow.rows[0]!.last_value);
      let watermark = Infinity;
      for (const m of marks.rows) {
        if (m.objid === null || m.objid === undefined) continue;
        const low = Number(m.objid);
        const id = lastId - ((((lastId - low) % TWO_31) + TWO_31) % TWO_31);
        watermark = Math.min(watermark, id);
      }

      // 2. The anchor, and the head, which must extend the chain through it.
      // (Only a checkpoint this key signed counts: a forged one must not stop the sealer.)
      const { valid, forged, gaveUp } = await newestValidCheckpoint(trx, this.key);
      if (gaveUp) {
        this.reportOnce(`cpflood:${forged[0]?.id}`, () => this.logger.error(
          { checked: forged.length }, 'audit checkpoints with invalid signatures bury any valid one: sealing stopped; run `writ audit verify`'));
        await this.measureLag(trx, (await readHead(trx, undefined))?.id ?? 0, []);
        return 0;
      }
      if (forged.length > 0) {
        this.reportOnce(`badcp:${forged.map((c) => c.id).join(',')}`, () => this.logger.error(
          { checkpoints: forged.map((c) => Number(c.id)) }, 'audit checkpoint with an invalid signature ignored; run `writ audit verify`'));
      }
      const lastCheckpoint = valid ? { seq: Number(valid.seq), hash: valid.hash, createdMs: Number(valid.created_ms) } : undefined;
      const seen = this.checkpointSeen;
      if (seen > (lastCheckpoint?.seq ?? 0)) {
        this.reportOnce(`lostcp:${seen}:${lastCheckpoint?.seq ?? 0}`, () => this.logger.error(
          { checkpoint: seen, newest_in_database: lastCheckpoint?.seq ?? null },
          'a signed audit checkpoint seen earlier is gone from the database (deleted?); run `writ audit verify --checkpoints` with the logged checkpoints'));
      }
      const remembered = this.anchor;
      const anchor = lastCheckpoint && (!remembered || lastCheckpoint.seq >= remembered.seq) ? lastCheckpoint : remembered;
      const head = await readHead(trx, anchor?.seq);
      if (anchor && (!head || head.seq < anchor.seq)) {
        this.reportOnce(`behind:${anchor.seq}:${head?.seq ?? 0}`, () => this.logger.error(
          { head: head?.seq ?? 0, anchor: anchor.seq },
          'audit chain head is behind a point already sealed or signed (events deleted?): sealing stopped; run `writ audit verify`'));
        await this.measureLag(trx, head?.id ?? 0, []);
        return 0;
      }
      if (anchor && head && head.hashAtAnchor !== anchor.hash) {
        this.reportOnce(`mismatch:${anchor.seq}`, () => this.logger.error(
          { seq: anchor.seq, head: head.seq },
          'audit chain no longer matches a point already sealed or signed (rewritten?): sealing stopped; run `writ audit verify`'));
        await this.measureLag(trx, head.id, []);
        return 0;
      }
      // Without the head's event there is no date to tell a backdated row by.
      if (head && head.occurredMs === null) {
        this.reportOnce(`headless:${head.seq}`, () => this.logger.error(
          { seq: head.seq, id: head.id }, 'audit chain head\'s event is missing (deleted?): sealing stopped; run `writ audit verify`'));
        await this.measureLag(trx, head.id, []);
        return 0;
      }

      // 3. Events above the head, in id order, in a snapshot taken after step 1.
      // With no grace (at shutdown, in tests) an event of this very clock tick is sealable too:
      // PGlite's clock ticks in whole milliseconds, so an event recorded within the millisecond
      // of this pass would read as no older than now and be left for the next.
      const youngFromMs = graceMs > 0 ? t1 - graceMs : t1 + 1;
      const candidates = await readCandidates(trx, head?.id ?? 0, this.batchSize, { watermark, youngFromMs });
      const shared = sharedIds(candidates);
      let tip: Head | undefined = head;
      const seals: Seal[] = [];
      const skipped: number[] = [];
      for (const row of candidates) {
        const id = Number(row.id);
        const occurredMs = Number(row.occurred_ms);
        if (id >= watermark) break;
        if (occurredMs >= youngFromMs) break;
        if (shared.has(id)) {
          skipped.push(id);
          this.anomalies += 1;
          this.reportOnce(`shared:${id}`, () => this.logger.error(
            { id }, 'audit events share an id (forged insert?): left unsealed; run `writ audit verify`'));
          continue;
        }
        if (tip && tip.occurredMs !== null && occurredMs < tip.occurredMs - this.backdateToleranceMs) {
          skipped.push(id);
          this.anomalies += 1;
          this.reportOnce(`backdated:${id}`, () => this.logger.error(
            { id, occurred_at: row.occurred_at, head: tip!.seq },
            'audit event is older than the sealed chain (backdated insert?): left unsealed; run `writ audit verify`'));
          continue;
        }
        const seq = (tip?.seq ?? 0) + 1;
        const prevHash = tip?.hash ?? GENESIS_HASH;
        const hash = eventHash(prevHash, seq, row);
        seals.push({ id, seq, prevHash, hash });
        tip = { seq, id, hash, occurredMs };
      }
      await insertSeals(trx, seals);

      // 4. A signed checkpoint at the head when enough has been sealed since the last one.
      if (tip && tip.seq > (lastCheckpoint?.seq ?? 0)) {
        const since = tip.seq - (lastCheckpoint?.seq ?? 0);
        const due = options.forceCheckpoint
          || since >= this.checkpointEvery
          || t1 - (lastCheckpoint?.createdMs ?? 0) >= this.checkpointIntervalMs;
        if (due) {
          const fields = { seq: tip.seq, hash: tip.hash, count: tip.seq };
          const signature = signCheckpoint(this.key, fields);
          const inserted = await trx.raw<{ rows: Array<{ id: number | string; created_at: string }> }>(`
            INSERT INTO audit_checkpoints (seq, hash, count, signature) VALUES (?, ?, ?, ?)
            RETURNING id, to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS created_at`,
          [fields.seq, fields.hash, fields.count, signature]);
          const row = inserted.rows[0]!;
          logged.push({ id: Number(row.id), ...fields, signature, created_at: row.created_at });
        }
      }

      await this.measureLag(trx, tip?.id ?? 0, skipped);
      // The head this pass leaves extends the anchor (checked above), so it becomes the anchor.
      reached = tip ?? anchor;
      checkpointNow = logged.length > 0 ? tip!.seq : lastCheckpoint?.seq ?? 0;
      return seals.length;
    });
    this.sealed += sealedNow;
    // Only what committed becomes the anchor: a pass that rolled back sealed nothing.
    if (reached && (!this.anchor || reached.seq >= this.anchor.seq)) this.anchor = { seq: reached.seq, hash: reached.hash };
    this.checkpointSeen = Math.max(this.checkpointSeen, checkpointNow);
    // Logged only once committed: every checkpoint in the log stream is one in the database.
    for (const checkpoint of logged) this.logger.info({ checkpoint }, 'audit checkpoint');
    return sealedNow;
  }
}

interface Seal {
  id: number;
  seq: number;
  prevHash: string;
  hash: string;
}

interface CheckpointRow {
  id: string | number;
  seq: string | number;
  hash: string;
  count: string | number;
  signature: string;
  created_ms: string | number;
}

/**
 * The newest checkpoint whose signature verifies, and the ones above it that do not. Read a
 * page at a time: the serving role may insert checkpoints, and forged ones piled on top must
 * not hide the genuine one. A pass looks through up to 1,000; past that it gives up (and the
 * sealer stops) rather than seal with no anchor.
 */
async function newestValidCheckpoint(knex: Knex, key: Buffer): Promise<{ valid: CheckpointRow | undefined; forged: CheckpointRow[]; gaveUp: boolean }> {
  const PAGE = 50;
  const forged: CheckpointRow[] = [];
  let after: CheckpointRow | undefined;
  for (let page = 0; page < 20; page += 1) {
    const { rows } = await knex.raw<{ rows: CheckpointRow[] }>(`
      SELECT id, seq, hash, count, signature, extract(epoch FROM created_at) * 1000 AS created_ms FROM audit_checkpoints
      ${after ? 'WHERE (seq, id) < (?, ?)' : ''} ORDER BY seq DESC, id DESC LIMIT ${PAGE}`, after ? [after.seq, after.id] : []);
    for (const c of rows) {
      if (verifyCheckpoint(key, { seq: Number(c.seq), hash: c.hash, count: Number(c.count), signature: c.signature })) return { valid: c, forged, gaveUp: false };
      forged.push(c);
    }
    if (rows.length < PAGE) return { valid: undefined, forged, gaveUp: false };
    after = rows.at(-1);
  }
  return { valid: undefined, forged, gaveUp: true };
}

/**
 * The highest chain row, with its event's occurred_at (null when that event is gone) and the
 * hash of the chain row at `anchorSeq` (undefined without an anchor, null when that row is gone).
 */
async function readHead(knex: Knex, anchorSeq: number | undefined): Promise<(Head & { hashAtAnchor: string | null | undefined }) | undefined> {
  // Were a forged event to share the head's id, the earliest date is the one that can only
  // make the backdate test laxer, never hold back a legitimate row.
  const result = await knex.raw<{ rows: Array<{ seq: string | number; event_id: string | number; hash: string; occurred_ms: string | number | null; anchor_hash: string | null }> }>(`
    SELECT c.seq, c.event_id, c.hash,
      (SELECT extract(epoch FROM min(e.occurred_at)) * 1000 FROM audit_events e WHERE e.id = c.event_id) AS occurred_ms,
      (SELECT a.hash FROM audit_chain a WHERE a.seq = ?) AS anchor_hash
    FROM audit_chain c ORDER BY c.seq DESC LIMIT 1`, [anchorSeq ?? 0]);
  const row = result.rows[0];
  if (!row) return undefined;
  const occurredMs = row.occurred_ms === null ? null : Number(row.occurred_ms);
  return {
    seq: Number(row.seq), id: Number(row.event_id), hash: row.hash, occurredMs,
    hashAtAnchor: anchorSeq === undefined ? undefined : row.anchor_hash,
  };
}

const MAX_BIGINT = '9223372036854775807';

/**
 * The unsealed events above the head's event id that this pass may seal, in id order: a range
 * scan of each partition's primary key (id, occurred_at). Above the head nothing is sealed
 * unless the chain was tampered with out of id order; the anti-join keeps such an event from
 * being sealed twice. Its bound on c.event_id keeps it to the chain rows above the head too
 * (none, normally): PostgreSQL would otherwise hash the whole of audit_chain on every pass.
 *
 * A pass stops at the first in-flight id or the first event younger than the grace, so the read
 * stops there too: unbounded, at 1,000 exchanges/s it returned each event 3–4 times (a pass
 * every 200 ms, a 500 ms grace) for the main thread to parse. sealOnce still checks both.
 */
async function readCandidates(
  knex: Knex, headId: number, limit: number, stop: { watermark: number; youngFromMs: number },
): Promise<CandidateRow[]> {
  const below = Number.isFinite(stop.watermark) ? String(stop.watermark) : MAX_BIGINT;
  const result = await knex.raw<{ rows: CandidateRow[] }>(`
    SELECT e.id, ${OCCURRED_AT_SQL} AS occurred_at, extract(epoch FROM e.occurred_at) * 1000 AS occurred_ms,
      e.type, e.outcome, e.reason, e.request_id, e.client_id, e.jti, e.parent_jti, e.task_id, e.subject, e.audience,
      e.policy_version, e.details
    FROM audit_events e
    WHERE e.id > ? AND NOT EXISTS (SELECT 1 FROM audit_chain c WHERE c.event_id = e.id AND c.event_id > ?)
      AND e.id < ?::bigint
      AND e.id < coalesce((SELECT min(y.id) FROM audit_events y
        WHERE y.id > ? AND y.occurred_at >= to_timestamp(?::double precision / 1000)), ${MAX_BIGINT})
    ORDER BY e.id, e.occurred_at LIMIT ?`, [headId, headId, below, headId, stop.youngFromMs, limit]);
  return result.rows;
}

/** Ids held by more than one row: the id sequence never gives one twice, so one is forged. */
function sharedIds(rows: CandidateRow[]): Set<number> {
  const shared = new Set<number>();
  for (let i = 1; i < rows.length; i += 1) {
    if (Number(rows[i]!.id) === Number(rows[i - 1]!.id)) shared.add(Number(rows[i]!.id));
  }
  return shared;
}

/** The whole pass in one statement: narrow rows appended, no row of audit_events touched. */
async function insertSeals(knex: Knex, seals: Seal[]): Promise<void> {
  if (seals.length === 0) return;
  await knex.raw(`
    INSERT INTO audit_chain (seq, event_id, prev_hash, hash)
    SELECT * FROM unnest(CAST(? AS bigint[]), CAST(? AS bigint[]), CAST(? AS text[]), CAST(? AS text[]))`,
  [seals.map((s) => s.seq), seals.map((s) => s.id), seals.map((s) => s.prevHash), seals.map((s) => s.hash)]);
}
