import type { Knex } from 'knex';
import { GENESIS_HASH, OCCURRED_AT_SQL, eventHash, verifyCheckpoint, type ChainEvent, type SignedCheckpoint } from './chain.ts';
import { loadRetentionMarkers, retainedSpans, verifyRetention, type RetainedSpan } from './retention-marker.ts';

export type ProblemKind =
  /** A sealed event's content differs from what was sealed (at the head, where nothing links to it, this also covers its chain row's hash). */
  | 'altered'
  /** Sealed events are missing: from the middle or the start of the chain (a seq gap), or from audit_events while their chain rows remain. */
  | 'deleted'
  /** An event that was not written where it sits: it breaks the chain, shares a sealed event's id, or is unsealed but below the sealed head or older than it. */
  | 'inserted'
  /** The chain ends before a signed checkpoint: its tail was deleted. */
  | 'truncated'
  /** The chain is consistent but does not match a signed checkpoint: it was recomputed after a change. */
  | 'rewritten'
  /** A checkpoint whose signature does not verify (forged, altered, or signed under another key). */
  | 'bad_checkpoint'
  /** Committed events not sealed yet. A warning: the sealer runs shortly after commit, and only while a server runs. */
  | 'unsealed_tail'
  /** Chain rows deleted while their events remain: the events still recompute the chain across the gap. */
  | 'seal_deleted'
  /** A chain row's hash or prev_hash was changed while its event still recomputes the chain. */
  | 'seal_altered'
  /** A retention marker whose signature does not verify: the events it names are not taken as archived. */
  | 'bad_retention';

export interface VerifyProblem {
  kind: ProblemKind;
  severity: 'error' | 'warning';
  message: string;
  /**
   * The event concerned. For deleted: the event after the seq gap, or the first deleted event
   * when the chain rows remain; for seal_deleted: the first event whose chain row is gone.
   */
  id?: number;
  seq?: number;
  /** For deleted/seal_deleted/truncated/unsealed_tail: how many events. */
  count?: number;
  /** For deleted/seal_deleted: the event before the gap. */
  afterId?: number;
  checkpointId?: number;
  /** For unsealed_tail: age of the oldest, ms. */
  ageMs?: number;
}

export interface VerifyReport {
  /** No errors (an unsealed tail is only a warning). */
  ok: boolean;
  sealed: { count: number; firstSeq: number | null; lastSeq: number | null; headId: number | null; headHash: string | null };
  checkpoints: { total: number; valid: number; lastSeq: number | null; external: number };
  unsealed: { count: number; oldestId: number | null; oldestAgeMs: number | null };
  /** Events removed by retention (src/audit/retention.ts), vouched for by valid signed markers. */
  retained: { markers: number; events: number };
  /** Errors in chain order, then warnings. */
  problems: VerifyProblem[];
  /** The first error, if any. */
  first: VerifyProblem | null;
}

export interface VerifyOptions {
  /** Checkpoints kept outside the database (log stream, exports): they catch a deleted tail whose checkpoints were deleted too. */
  externalCheckpoints?: SignedCheckpoint[];
  /** As the sealer's: an unsealed event this much older than the sealed head is reported as inserted. */
  backdateToleranceMs?: number;
  batchSize?: number;
  /** At most this many unsealed anomalies are listed. */
  maxListed?: number;
}

/** An audit_events row as the chain covers it. */
interface EventRow extends ChainEvent {
  id: number | string;
  occurred_at: string;
}

/** One audit_chain row with the events bearing its event_id: none if deleted, several if one was forged. */
interface ChainEntry {
  seq: number;
  eventId: number;
  prevHash: string;
  hash: string;
  events: EventRow[];
}

/** A chain row as the walk saw it: its stored hash, and the hash its event recomputes to. */
interface Link {
  seq: number;
  id: number;
  hash: string;
  computed: string;
}

interface Checkpoint extends SignedCheckpoint {
  id: number | null;
  valid: boolean;
}

const GENESIS: Link = { seq: 0, id: Number.MIN_SAFE_INTEGER, hash: GENESIS_HASH, computed: GENESIS_HASH };

const EVENT_COLUMNS = `e.id, ${OCCURRED_AT_SQL} AS occurred_at, e.type, e.outcome, e.reason, e.request_id, e.client_id, e.jti,
  e.parent_jti, e.task_id, e.subject, e.audience, e.policy_version, e.details`;

/** `seq n`, or `seq n..m` for a run of `count` positions from `seq`. */
function span(seq: number, count: number): string {
  return count === 1 ? `seq ${seq}` : `seq ${seq}..${seq + count - 1}`;
}

/**
 * Walks audit_chain in seq order, each row joined to its event, and names what does not hold.
 * Chain rows come one at a time (step); a gap makes it look for the events left between its
 * ends, the only query besides the walk's own.
 */
class ChainWalk {
  private readonly knex: Knex;
  private readonly validBySeq: Map<number, Checkpoint[]>;
  private readonly maxRelinked: number;
  readonly errors: VerifyProblem[] = [];
  /** Events whose chain rows were deleted, found in a gap: not also reported as inserted. */
  readonly relinked: number[] = [];
  prev: Link = GENESIS;
  private prevPrev: Link | undefined;
  first: Link | undefined;
  count = 0;
  /** occurred_at of the last chain row whose event is there. */
  headOccurredAt: string | undefined;
  /** An altered row is only known to be its chain row's hash once the next row links to the recomputed one. */
  private altered: { problem: VerifyProblem; seq: number } | undefined;
  /** The last run of events gone while their chain rows remain, extended while it continues. */
  private gone: { problem: VerifyProblem; id: number; seq: number; count: number } | undefined;

  /** What valid retention markers vouch for, and how many chain rows without their event each span covered. */
  private readonly retained: RetainedSpan[];
  readonly archived = new Map<RetainedSpan, number>();

  constructor(knex: Knex, validBySeq: Map<number, Checkpoint[]>, maxRelinked: number, retained: RetainedSpan[] = []) {
    this.knex = knex;
    this.validBySeq = validBySeq;
    this.maxRelinked = maxRelinked;
    this.retained = retained;
  }

  /** The retained span whose dropped partitions held this event, judged by its id and seq ranges. */
  private retainedBy(link: Link): RetainedSpan | undefined {
    return this.retained.find((m) => link.id >= m.firstEventId && link.id <= m.lastEventId && link.seq >= m.firstSeq && link.seq <= m.lastSeq);
  }

  async step(entry: ChainEntry): Promise<void> {
    // Of several events with its id, the chain row vouches for the one that recomputes its hash.
    const hashes = entry.events.map((e) => eventHash(entry.prevHash, entry.seq, e));
    const at = Math.max(0, hashes.indexOf(entry.hash));
    const event = entry.events[at];
    const link: Link = {
      seq: entry.seq, id: entry.eventId, hash: entry.hash,
      // Without its event a row cannot be recomputed: its stored hash is taken, so the chain goes on.
      computed: hashes[at] ?? entry.hash,
    };
    this.count += 1;
    this.first ??= link;
    for (const other of entry.events) {
      if (other === event) continue;
      this.error({ kind: 'inserted', id: link.id, seq: link.seq,
        message: `an event dated ${other.occurred_at} shares the id of event ${link.id} (seq ${link.seq}): inserted` });
    }
    const named = entry.seq > this.prev.seq + 1 ? await this.gap(entry) : this.linkTo(entry, link, event);
    const archivedBy = event ? undefined : this.retainedBy(link);
    if (archivedBy) this.archived.set(archivedBy, (this.archived.get(archivedBy) ?? 0) + 1);
    else if (!event) this.eventGone(link);
    else if (link.computed !== link.hash && !named) {
      const problem = this.error({ kind: 'altered', id: link.id, seq: link.seq,
        message: `event ${link.id} at seq ${link.seq} was altered after sealing (its hash does not match its content)` });
      this.altered = { problem, seq: link.seq };
    }
    this.compareCheckpoints(link);
    this.prevPrev = this.prev;
    this.prev = link;
    if (event) this.headOccurredAt = event.occurred_at;
  }

  private error(p: Omit<VerifyProblem, 'severity'>): VerifyProblem {
    const problem: VerifyProblem = { ...p, severity: 'error' };
    this.errors.push(problem);
    return problem;
  }

  /** The row right after prev: does it link to it? Returns whether `link` itself was named. */
  private linkTo(entry: ChainEntry, link: Link, event: EventRow | undefined): boolean {
    const p = this.prev;
    if (entry.prevHash === p.hash || entry.prevHash === p.computed) {
      if (entry.prevHash !== p.hash) this.sealAltered(p);
      if (p.seq > 0 && link.id <= p.id) {
        if (this.prevPrev && this.prevPrev.seq > 0 && this.prevPrev.id < link.id) {
          this.error({ kind: 'inserted', id: p.id, seq: p.seq, message: `event ${p.id} at seq ${p.seq} is out of id order: inserted into the chain` });
          return false;
        }
        this.error({ kind: 'inserted', id: link.id, seq: link.seq, message: `event ${link.id} at seq ${link.seq} is out of id order: inserted into the chain` });
        return true;
      }
      return false;
    }
    const pp = this.prevPrev;
    if (pp && pp.seq === p.seq - 1 && (entry.prevHash === pp.hash || entry.prevHash === pp.computed)) {
      this.error({ kind: 'inserted', id: p.id, seq: p.seq,
        message: `event ${p.id} at seq ${p.seq} was inserted into the chain: event ${link.id} (seq ${link.seq}) links past it to seq ${pp.seq}` });
      return false;
    }
    if (event && eventHash(p.hash, link.seq, event) === link.hash) {
      this.error({ kind: 'seal_altered', id: link.id, seq: link.seq,
        message: `the chain row of event ${link.id} at seq ${link.seq} was altered: its prev_hash is not the hash of seq ${p.seq}, though the event links to it` });
      return true;
    }
    this.error({ kind: 'inserted', id: link.id, seq: link.seq,
      message: p.seq === 0
        ? `event ${link.id} at seq 1 does not start the chain (its prev_hash is not the genesis hash)`
        : `event ${link.id} at seq ${link.seq} does not link to event ${p.id} before it: it was inserted (or event ${p.id} was altered and re-hashed)` });
    return true;
  }

  /** The `altered` reported at `link` was its chain row's hash: the event recomputes to what the chain holds. */
  private sealAltered(link: Link): void {
    if (this.altered?.seq !== link.seq) return;
    Object.assign(this.altered.problem, {
      kind: 'seal_altered',
      message: `the chain row of event ${link.id} at seq ${link.seq} was altered: its hash is not the one its event recomputes to and the chain goes on from`,
    });
    this.altered = undefined;
  }

  /** Chain rows missing before `entry`: deleted alone if their events remain and still link, else with them. */
  private async gap(entry: ChainEntry): Promise<boolean> {
    const p = this.prev;
    const missing = entry.seq - p.seq - 1;
    const after = p.seq > 0 ? { afterId: p.id } : {};
    const orphans = missing <= this.maxRelinked ? await this.unsealedBetween(p.id, entry.eventId, missing + 1) : [];
    if (orphans.length === missing && relink(p, orphans) === entry.prevHash) {
      const ids = orphans.map((o) => Number(o.id));
      this.relinked.push(...ids);
      this.error({ kind: 'seal_deleted', seq: p.seq + 1, count: missing, id: ids[0]!, ...after,
        message: missing === 1
          ? `the chain row of event ${ids[0]} (seq ${p.seq + 1}) was deleted; the event remains`
          : `the chain rows of events ${ids[0]}..${ids.at(-1)} (${span(p.seq + 1, missing)}) were deleted; the events remain` });
      return false;
    }
    this.error({ kind: 'deleted', seq: p.seq + 1, count: missing, id: entry.eventId, ...after,
      message: p.seq === 0
        ? `${missing === 1 ? 'event at seq 1' : `events at ${span(1, missing)}`} deleted (the chain starts at seq ${entry.seq}, event ${entry.eventId})`
        : `${missing === 1 ? 'event at' : 'events at'} ${span(p.seq + 1, missing)} deleted (between events ${p.id} and ${entry.eventId})` });
    return false;
  }

  private async unsealedBetween(lowId: number, highId: number, limit: number): Promise<EventRow[]> {
    const result = await this.knex.raw<{ rows: EventRow[] }>(`
      SELECT ${EVENT_COLUMNS} FROM audit_events e
      WHERE e.id > ? AND e.id < ? AND NOT EXISTS (SELECT 1 FROM audit_chain c WHERE c.event_id = e.id AND c.event_id > ? AND c.event_id < ?)
      ORDER BY e.id, e.occurred_at LIMIT ?`, [lowId, highId, lowId, highId, limit]);
    return result.rows;
  }

  /** A chain row whose event is gone; consecutive ones make one problem. */
  private eventGone(link: Link): void {
    const run = this.gone;
    if (run && run.seq + run.count === link.seq) {
      run.count += 1;
      Object.assign(run.problem, { count: run.count, message: `events ${run.id}..${link.id} at ${span(run.seq, run.count)} deleted; their chain rows remain` });
      return;
    }
    const problem = this.error({ kind: 'deleted', seq: link.seq, count: 1, id: link.id,
      message: `event ${link.id} at seq ${link.seq} deleted; its chain row remains` });
    this.gone = { problem, id: link.id, seq: link.seq, count: 1 };
  }

  private compareCheckpoints(link: Link): void {
    for (const c of this.validBySeq.get(link.seq) ?? []) {
      // A checkpoint matching what the event recomputes to shows the row's hash was what changed.
      if (c.hash === link.computed && link.computed !== link.hash) this.sealAltered(link);
      if (c.hash === link.hash || c.hash === link.computed) continue;
      this.error({ kind: 'rewritten', seq: link.seq, id: link.id, ...(c.id !== null ? { checkpointId: c.id } : {}),
        message: `the chain at seq ${link.seq} (event ${link.id}) does not match its signed checkpoint: events up to it were changed and the chain recomputed` });
    }
  }
}

/** The hash at the end of `events` chained on from `from`. */
function relink(from: Link, events: EventRow[]): string {
  let hash = from.hash;
  events.forEach((e, i) => {
    hash = eventHash(hash, from.seq + 1 + i, e);
  });
  return hash;
}

/** Chain rows after `afterSeq`, each with the events bearing its event_id. */
async function readChain(knex: Knex, afterSeq: number, limit: number): Promise<ChainEntry[]> {
  const chain = await knex.raw<{ rows: Array<{ seq: number | string; event_id: number | string; prev_hash: string; hash: string }> }>(
    'SELECT seq, event_id, prev_hash, hash FROM audit_chain WHERE seq > ? ORDER BY seq LIMIT ?', [afterSeq, limit]);
  const entries: ChainEntry[] = chain.rows.map((r) => ({ seq: Number(r.seq), eventId: Number(r.event_id), prevHash: r.prev_hash, hash: r.hash, events: [] }));
  const byId = new Map(entries.map((e) => [e.eventId, e]));
  for (const event of await readEvents(knex, [...byId.keys()])) byId.get(Number(event.id))?.events.push(event);
  return entries;
}

/**
 * The events with these ids, by id then occurred_at. The chain is in id order, so a batch's ids
 * lie in a narrow range: one range scan of each partition's primary key reads them (a join
 * would have PostgreSQL hash the whole table for every batch). Ids spread wider (a chain
 * tampered out of order) are read one by one.
 */
async function readEvents(knex: Knex, ids: number[]): Promise<EventRow[]> {
  if (ids.length === 0) return [];
  const low = Math.min(...ids);
  const high = Math.max(...ids);
  const narrow = high - low <= 4 * ids.length + 100;
  const result = await knex.raw<{ rows: EventRow[] }>(`
    SELECT ${EVENT_COLUMNS} FROM audit_events e
    WHERE ${narrow ? 'e.id BETWEEN ? AND ?' : 'e.id = ANY(CAST(? AS bigint[]))'}
    ORDER BY e.id, e.occurred_at`, narrow ? [low, high] : [ids]);
  return result.rows;
}

type TailRow = { n: number | string; oldest_id: number | string | null; age_ms: number | string | null };

/**
 * Checks the chain (audit_chain joined to audit_events, in seq order) against the signed
 * checkpoints (docs/DESIGN.md §8) and names what does not hold. Read-only; run it on a quiet
 * database or live (the unsealed tail is then whatever committed in the last moments).
 *
 * What each tampering looks like:
 * - content of a sealed event changed: its hash no longer recomputes → altered;
 * - a sealed event deleted with its chain row: a seq gap → deleted (the tail: the last
 *   checkpoint's seq is missing → truncated); without it: a chain row with no event → deleted;
 * - a chain row deleted, its event left: a seq gap the event still recomputes → seal_deleted;
 * - a chain row's hash or prev_hash changed: the event recomputes what the next row (or the
 *   checkpoint) links to, or links to the row before → seal_altered;
 * - a forged event: inserted plainly it is unsealed, and if backdated, below the head or
 *   sharing an id the sealer leaves it so → inserted; spliced into the chain it breaks the
 *   link of the event after it, or of itself → inserted;
 * - any of these with every later hash recomputed: the chain holds but no longer matches the
 *   next signed checkpoint → rewritten. (Changes after the last checkpoint, recomputed, are
 *   only caught by the next one: checkpoints are frequent for that reason.)
 */
export async function verifyAuditChain(knex: Knex, checkpointKey: Buffer, options: VerifyOptions = {}): Promise<VerifyReport> {
  const batchSize = options.batchSize ?? 2000;
  const tolerance = options.backdateToleranceMs ?? 300_000;
  const maxListed = options.maxListed ?? 100;
  const warnings: VerifyProblem[] = [];

  // Checkpoints: signatures first; only valid ones vouch for anything.
  const stored = await knex.raw<{ rows: Array<{ id: number | string; seq: number | string; hash: string; count: number | string; signature: string }> }>(
    'SELECT id, seq, hash, count, signature FROM audit_checkpoints ORDER BY seq, id');
  const checkpoints: Checkpoint[] = stored.rows.map((r) => {
    const c = { id: Number(r.id), seq: Number(r.seq), hash: r.hash, count: Number(r.count), signature: r.signature };
    return { ...c, valid: verifyCheckpoint(checkpointKey, c) && c.count === c.seq };
  });
  const external: Checkpoint[] = (options.externalCheckpoints ?? []).map((c) => ({
    ...c, id: null, valid: verifyCheckpoint(checkpointKey, c) && c.count === c.seq,
  }));
  const checkpointErrors: VerifyProblem[] = [];
  for (const c of [...checkpoints, ...external]) {
    if (c.valid) continue;
    checkpointErrors.push({
      kind: 'bad_checkpoint',
      severity: 'error',
      seq: c.seq,
      ...(c.id !== null ? { checkpointId: c.id } : {}),
      message: `checkpoint ${c.id ?? '(external)'} at seq ${c.seq} has an invalid signature: forged, altered, or signed under another WRIT_KEK`,
    });
  }
  const validBySeq = new Map<number, Checkpoint[]>();
  for (const c of [...checkpoints, ...external]) {
    if (!c.valid) continue;
    const list = validBySeq.get(c.seq) ?? [];
    list.push(c);
    validBySeq.set(c.seq, list);
  }

  // Retention markers: only validly signed ones excuse missing events, and only as many as each counts.
  const markers = await loadRetentionMarkers(knex);
  const retained: typeof markers = [];
  for (const m of markers) {
    const valid = verifyRetention(checkpointKey, m);
    // A partition is retained once: a copy of a valid marker would excuse its count twice.
    const replay = valid && retained.some((r) => r.partition === m.partition);
    if (valid && !replay) {
      retained.push(m);
      continue;
    }
    checkpointErrors.push({
      kind: 'bad_retention', severity: 'error', ...(m.firstEventId !== null ? { id: m.firstEventId } : {}),
      message: replay
        ? `retention marker ${m.id} repeats the one for ${m.partition}: a copy, not taken as archiving anything more`
        : `retention marker ${m.id} (${m.partition}) has an invalid signature: forged, altered, or signed under another WRIT_KEK; the events it names are not taken as archived`,
    });
  }
  const spans = retainedSpans(retained);

  // The chain, in seq order.
  const walk = new ChainWalk(knex, validBySeq, batchSize, spans);
  for (let after = 0; ;) {
    const entries = await readChain(knex, after, batchSize);
    for (const entry of entries) await walk.step(entry);
    if (entries.length < batchSize) break;
    after = entries.at(-1)!.seq;
  }
  const errors = walk.errors;
  const head = walk.count > 0 ? walk.prev : undefined;
  for (const span of spans) {
    // Every dropped event leaves its chain row: more rows without events than the markers count were deleted.
    const gone = walk.archived.get(span) ?? 0;
    if (gone <= span.events) continue;
    errors.push({
      kind: 'deleted', severity: 'error', count: gone - span.events, id: span.firstEventId,
      message: `${gone - span.events} event(s) deleted between events ${span.firstEventId} and ${span.lastEventId}: retention marker(s) ${span.markers.join(', ')} archived ${span.events} there, and ${gone} are gone`,
    });
  }

  // A signed checkpoint beyond the end of the chain: its tail is gone.
  const lastValid = [...checkpoints, ...external].filter((c) => c.valid).reduce<Checkpoint | undefined>((a, c) => (!a || c.seq > a.seq ? c : a), undefined);
  const lastSeq = head?.seq ?? 0;
  if (lastValid && lastValid.seq > lastSeq) {
    errors.push({
      kind: 'truncated', severity: 'error', seq: lastSeq + 1, count: lastValid.seq - lastSeq,
      ...(lastValid.id !== null ? { checkpointId: lastValid.id } : {}),
      message: `the chain ends at seq ${lastSeq} but a signed checkpoint vouches for seq ${lastValid.seq}: ${lastValid.seq - lastSeq} event(s) deleted from its tail`,
    });
  }

  // Events without a chain row: anything that cannot be waiting for the sealer, then the tail that is.
  if (head) errors.push(...await unsealedAnomalies(knex, head, walk, tolerance, maxListed));
  const unsealed = head ? await unsealedAbove(knex, head, walk, tolerance) : await allUnsealed(knex);
  if (unsealed.count > 0) {
    warnings.push({
      kind: 'unsealed_tail', severity: 'warning', count: unsealed.count, id: unsealed.oldestId!, ageMs: unsealed.oldestAgeMs!,
      message: `${unsealed.count} event(s) not sealed yet, the oldest (event ${unsealed.oldestId}) ${formatAge(unsealed.oldestAgeMs!)} old${unsealed.oldestAgeMs! > 60_000 ? ': is the sealer running?' : ''}`,
    });
  }

  const all = [...checkpointErrors, ...errors];
  const problems = [...all, ...warnings];
  return {
    ok: all.length === 0,
    sealed: { count: walk.count, firstSeq: walk.first?.seq ?? null, lastSeq: head?.seq ?? null, headId: head?.id ?? null, headHash: head?.hash ?? null },
    checkpoints: { total: checkpoints.length, valid: checkpoints.filter((c) => c.valid).length, lastSeq: lastValid?.seq ?? null, external: external.length },
    unsealed,
    retained: { markers: retained.length, events: spans.reduce((n, s) => n + Math.min(s.events, walk.archived.get(s) ?? 0), 0) },
    problems,
    first: all[0] ?? null,
  };
}

/** A date condition (and its bindings) true of an event too old to have come after the head. */
function backdatedSql(walk: ChainWalk, toleranceMs: number): { sql: string; bindings: Array<string | number> } {
  // Without any event left in the chain there is nothing to date the head by.
  if (walk.headOccurredAt === undefined) return { sql: 'false', bindings: [] };
  return { sql: 'e.occurred_at < CAST(? AS timestamptz) - make_interval(secs => ?)', bindings: [walk.headOccurredAt, toleranceMs / 1000] };
}

/**
 * Unsealed events that cannot be waiting for the sealer: below the head or backdated (those
 * whose chain rows were deleted, recognised in a gap, are already named). A full scan, the
 * only one verify makes.
 */
async function unsealedAnomalies(knex: Knex, head: Link, walk: ChainWalk, toleranceMs: number, maxListed: number): Promise<VerifyProblem[]> {
  const backdated = backdatedSql(walk, toleranceMs);
  const result = await knex.raw<{ rows: Array<{ id: number | string; occurred_at: string }> }>(`
    SELECT e.id, ${OCCURRED_AT_SQL} AS occurred_at FROM audit_events e
    WHERE NOT EXISTS (SELECT 1 FROM audit_chain c WHERE c.event_id = e.id)
      AND NOT (e.id = ANY(CAST(? AS bigint[]))) AND (e.id < ? OR ${backdated.sql})
    ORDER BY e.id LIMIT ?`, [walk.relinked, head.id, ...backdated.bindings, maxListed]);
  return result.rows.map((a) => {
    const id = Number(a.id);
    return {
      kind: 'inserted', severity: 'error', id,
      message: id < head.id
        ? `event ${id} is unsealed but below the sealed head (event ${head.id}): inserted after the chain moved past it`
        : `event ${id} is unsealed and dated ${a.occurred_at}, before the sealed head: backdated insert`,
    };
  });
}

/** The tail the sealer has yet to reach: unsealed events above the head, not backdated. */
async function unsealedAbove(knex: Knex, head: Link, walk: ChainWalk, toleranceMs: number): Promise<VerifyReport['unsealed']> {
  const backdated = backdatedSql(walk, toleranceMs);
  // The bound on c.event_id keeps the anti-join to the chain rows above the head (none, normally).
  const tail = await knex.raw<{ rows: TailRow[] }>(`
    SELECT count(*) AS n, min(e.id) AS oldest_id, extract(epoch FROM clock_timestamp() - min(e.occurred_at)) * 1000 AS age_ms
    FROM audit_events e WHERE e.id > ? AND NOT (${backdated.sql})
      AND NOT EXISTS (SELECT 1 FROM audit_chain c WHERE c.event_id = e.id AND c.event_id > ?)`, [head.id, ...backdated.bindings, head.id]);
  return tailOf(tail.rows[0]);
}

/** With no chain at all, every event is the unsealed tail. */
async function allUnsealed(knex: Knex): Promise<VerifyReport['unsealed']> {
  const tail = await knex.raw<{ rows: TailRow[] }>(`
    SELECT count(*) AS n, min(e.id) AS oldest_id, extract(epoch FROM clock_timestamp() - min(e.occurred_at)) * 1000 AS age_ms
    FROM audit_events e`);
  return tailOf(tail.rows[0]);
}

function tailOf(row: TailRow | undefined): VerifyReport['unsealed'] {
  const n = Number(row?.n ?? 0);
  return {
    count: n,
    oldestId: n > 0 && row?.oldest_id !== null && row?.oldest_id !== undefined ? Number(row.oldest_id) : null,
    oldestAgeMs: n > 0 && row?.age_ms !== null && row?.age_ms !== undefined ? Math.max(0, Math.round(Number(row.age_ms))) : null,
  };
}

export function formatAge(ms: number): string {
  if (ms < 1000) return `${ms} ms`;
  if (ms < 120_000) return `${Math.round(ms / 1000)} s`;
  if (ms < 7_200_000) return `${Math.round(ms / 60_000)} min`;
  return `${Math.round(ms / 3_600_000)} h`;
}

/** A human summary of a report, one line per problem. */
export function formatVerifyReport(report: VerifyReport): string[] {
  const lines: string[] = [];
  const s = report.sealed;
  const head = s.lastSeq === null ? 'no sealed events' : `${s.count} sealed event(s), seq ${s.firstSeq}..${s.lastSeq}, head event ${s.headId} ${s.headHash?.slice(0, 16)}…`;
  const cps = `${report.checkpoints.valid}/${report.checkpoints.total} checkpoint(s) valid${report.checkpoints.external ? ` (+${report.checkpoints.external} external)` : ''}`
    + (report.retained.markers > 0 ? `; ${report.retained.events} event(s) archived by ${report.retained.markers} retention marker(s)` : '');
  if (report.ok) lines.push(`audit chain OK: ${head}; ${cps}`);
  else lines.push(`audit chain FAILED: ${report.first?.message}`, `  ${head}; ${cps}`);
  for (const p of report.problems) {
    if (p === report.first) continue;
    lines.push(`  ${p.severity === 'error' ? 'error' : 'warning'}: ${p.kind}: ${p.message}`);
  }
  return lines;
}
