import type { Knex } from 'knex';
import { GENESIS_HASH, OCCURRED_AT_SQL, eventHash, verifyCheckpoint, type ChainEvent, type SignedCheckpoint } from './chain.ts';

export type ProblemKind =
  /** A sealed event's content (or its hash) differs from what was sealed. */
  | 'altered'
  /** Sealed events are missing from the middle or the start of the chain (a seq gap). */
  | 'deleted'
  /** An event that was not written where it sits: it breaks the chain, duplicates a seq, or is unsealed but older than the sealed head. */
  | 'inserted'
  /** The chain ends before a signed checkpoint: its tail was deleted. */
  | 'truncated'
  /** The chain is consistent but does not match a signed checkpoint: it was recomputed after a change. */
  | 'rewritten'
  /** A checkpoint whose signature does not verify (forged, altered, or signed under another key). */
  | 'bad_checkpoint'
  /** Committed events not sealed yet. A warning: the sealer runs shortly after commit, and only while a server runs. */
  | 'unsealed_tail';

export interface VerifyProblem {
  kind: ProblemKind;
  severity: 'error' | 'warning';
  message: string;
  /** The event concerned (for deleted: the event after the gap). */
  id?: number;
  seq?: number;
  /** For deleted/truncated/unsealed_tail: how many events. */
  count?: number;
  /** For deleted: the event before the gap. */
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

interface SealedRow extends ChainEvent {
  id: number;
  occurred_at: string;
  seq: number | string;
  prev_hash: string | null;
  hash: string | null;
}

interface Link {
  seq: number;
  id: number;
  hash: string | null;
  computed: string;
}

interface Checkpoint extends SignedCheckpoint {
  id: number | null;
  valid: boolean;
}

const EVENT_SELECT = `id, ${OCCURRED_AT_SQL} AS occurred_at, type, outcome, reason, request_id, client_id, jti, parent_jti,
  task_id, subject, audience, policy_version, details, seq, prev_hash, hash`;

/**
 * Walks the whole chain in seq order against the signed checkpoints (DESIGN.md §8) and names
 * what does not hold. Read-only; run it on a quiet database or live (the unsealed tail is then
 * whatever committed in the last moments).
 *
 * What each tampering looks like:
 * - content of a sealed event changed: its hash no longer recomputes → altered;
 * - a sealed event deleted: a seq gap → deleted (the tail: the last checkpoint's seq is
 *   missing → truncated);
 * - a forged event: inserted plainly it is unsealed, and if backdated or below the head the
 *   sealer leaves it so → inserted; spliced into the chain it breaks the link of the event
 *   after it, or of itself → inserted;
 * - any of these with every later hash recomputed: the chain holds but no longer matches the
 *   next signed checkpoint → rewritten. (Changes after the last checkpoint, recomputed, are
 *   only caught by the next one: checkpoints are frequent for that reason.)
 */
export async function verifyAuditChain(knex: Knex, checkpointKey: Buffer, options: VerifyOptions = {}): Promise<VerifyReport> {
  const batchSize = options.batchSize ?? 2000;
  const tolerance = options.backdateToleranceMs ?? 300_000;
  const maxListed = options.maxListed ?? 100;
  const errors: VerifyProblem[] = [];
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

  // The chain, in seq order.
  let prev: Link | undefined;
  let prevPrev: Link | undefined;
  let first: Link | undefined;
  let count = 0;
  let cursor: { seq: number; id: number } | undefined;
  let headOccurredAt: string | undefined;
  for (;;) {
    const batch = await knex.raw<{ rows: SealedRow[] }>(`
      SELECT ${EVENT_SELECT} FROM audit_events
      WHERE seq IS NOT NULL${cursor ? ' AND seq >= ? AND NOT (seq = ? AND id <= ?)' : ''}
      ORDER BY seq, id LIMIT ?`, cursor ? [cursor.seq, cursor.seq, cursor.id, batchSize] : [batchSize]);
    for (const row of batch.rows) {
      const seq = Number(row.seq);
      const id = Number(row.id);
      const computed = eventHash(row.prev_hash ?? '', seq, row);
      const link: Link = { seq, id, hash: row.hash, computed };
      const selfOk = row.hash === computed;
      let named = false;
      const inserted = (who: Link, message: string): void => {
        errors.push({ kind: 'inserted', severity: 'error', id: who.id, seq: who.seq, message });
        if (who === link) named = true;
      };
      count += 1;
      if (!prev) {
        first = link;
        if (seq === 1) {
          if (row.prev_hash !== GENESIS_HASH) inserted(link, `event ${id} at seq 1 does not start the chain (its prev_hash is not the genesis hash)`);
        } else {
          // Retention (dropping old partitions, not built yet) will have to leave a signed
          // marker that verify accepts here; until then a chain starts at seq 1.
          errors.push({
            kind: 'deleted', severity: 'error', seq: 1, count: seq - 1, id,
            message: seq === 2
              ? `event at seq 1 deleted (the chain starts at seq 2, event ${id})`
              : `events at seq 1..${seq - 1} deleted (the chain starts at seq ${seq}, event ${id})`,
          });
        }
      } else if (seq === prev.seq) {
        inserted(link, `event ${id} duplicates seq ${seq} (held by event ${prev.id})`);
      } else if (seq > prev.seq + 1) {
        errors.push({
          kind: 'deleted', severity: 'error', seq: prev.seq + 1, count: seq - prev.seq - 1, afterId: prev.id, id,
          message: seq - prev.seq - 1 === 1
            ? `event at seq ${prev.seq + 1} deleted (between events ${prev.id} and ${id})`
            : `events at seq ${prev.seq + 1}..${seq - 1} deleted (between events ${prev.id} and ${id})`,
        });
      } else {
        const linked = row.prev_hash !== null && (row.prev_hash === prev.hash || row.prev_hash === prev.computed);
        if (!linked) {
          if (prevPrev && prevPrev.seq === prev.seq - 1 && row.prev_hash !== null && (row.prev_hash === prevPrev.hash || row.prev_hash === prevPrev.computed)) {
            inserted(prev, `event ${prev.id} at seq ${prev.seq} was inserted into the chain: event ${id} (seq ${seq}) links past it to seq ${prevPrev.seq}`);
          } else {
            inserted(link, `event ${id} at seq ${seq} does not link to event ${prev.id} before it: it was inserted (or event ${prev.id} was altered and re-hashed)`);
          }
        } else if (id <= prev.id) {
          if (prevPrev && prevPrev.id < id) inserted(prev, `event ${prev.id} at seq ${prev.seq} is out of id order: inserted into the chain`);
          else inserted(link, `event ${id} at seq ${seq} is out of id order: inserted into the chain`);
        }
      }
      if (!selfOk && !named) {
        errors.push({ kind: 'altered', severity: 'error', id, seq, message: `event ${id} at seq ${seq} was altered after sealing (its hash does not match its content)` });
      }
      for (const c of validBySeq.get(seq) ?? []) {
        if (c.hash !== row.hash) {
          errors.push({
            kind: 'rewritten', severity: 'error', seq, id, ...(c.id !== null ? { checkpointId: c.id } : {}),
            message: `the chain at seq ${seq} (event ${id}) does not match its signed checkpoint: events up to it were changed and the chain recomputed`,
          });
        }
      }
      if (seq !== prev?.seq) {
        prevPrev = prev;
        prev = link;
      }
      headOccurredAt = row.occurred_at;
      cursor = { seq, id };
    }
    if (batch.rows.length < batchSize) break;
  }

  // A signed checkpoint beyond the end of the chain: its tail is gone.
  const lastValid = [...checkpoints, ...external].filter((c) => c.valid).reduce<Checkpoint | undefined>((a, c) => (!a || c.seq > a.seq ? c : a), undefined);
  const lastSeq = prev?.seq ?? 0;
  if (lastValid && lastValid.seq > lastSeq) {
    errors.push({
      kind: 'truncated', severity: 'error', seq: lastSeq + 1, count: lastValid.seq - lastSeq,
      ...(lastValid.id !== null ? { checkpointId: lastValid.id } : {}),
      message: `the chain ends at seq ${lastSeq} but a signed checkpoint vouches for seq ${lastValid.seq}: ${lastValid.seq - lastSeq} event(s) deleted from its tail`,
    });
  }

  // Unsealed events: the tail waiting for the sealer, and anything that cannot be one.
  let unsealed = { count: 0, oldestId: null as number | null, oldestAgeMs: null as number | null };
  if (prev && headOccurredAt) {
    const anomalies = await knex.raw<{ rows: Array<{ id: number | string; occurred_at: string }> }>(`
      SELECT id, ${OCCURRED_AT_SQL} AS occurred_at FROM audit_events
      WHERE seq IS NULL AND (id < ? OR occurred_at < CAST(? AS timestamptz) - make_interval(secs => ?))
      ORDER BY id LIMIT ?`, [prev.id, headOccurredAt, tolerance / 1000, maxListed]);
    for (const a of anomalies.rows) {
      const id = Number(a.id);
      errors.push({
        kind: 'inserted', severity: 'error', id,
        message: id < prev.id
          ? `event ${id} is unsealed but below the sealed head (event ${prev.id}): inserted after the chain moved past it`
          : `event ${id} is unsealed and dated ${a.occurred_at}, before the sealed head: backdated insert`,
      });
    }
    const tail = await knex.raw<{ rows: Array<{ n: number | string; oldest_id: number | string | null; age_ms: number | string | null }> }>(`
      SELECT count(*) AS n, min(id) AS oldest_id, extract(epoch FROM clock_timestamp() - min(occurred_at)) * 1000 AS age_ms
      FROM audit_events WHERE seq IS NULL AND id > ? AND occurred_at >= CAST(? AS timestamptz) - make_interval(secs => ?)`,
    [prev.id, headOccurredAt, tolerance / 1000]);
    unsealed = tailOf(tail.rows[0]);
  } else {
    const tail = await knex.raw<{ rows: Array<{ n: number | string; oldest_id: number | string | null; age_ms: number | string | null }> }>(`
      SELECT count(*) AS n, min(id) AS oldest_id, extract(epoch FROM clock_timestamp() - min(occurred_at)) * 1000 AS age_ms
      FROM audit_events WHERE seq IS NULL`);
    unsealed = tailOf(tail.rows[0]);
  }
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
    sealed: { count, firstSeq: first?.seq ?? null, lastSeq: prev?.seq ?? null, headId: prev?.id ?? null, headHash: prev?.hash ?? null },
    checkpoints: { total: checkpoints.length, valid: checkpoints.filter((c) => c.valid).length, lastSeq: lastValid?.seq ?? null, external: external.length },
    unsealed,
    problems,
    first: all[0] ?? null,
  };
}

function tailOf(row: { n: number | string; oldest_id: number | string | null; age_ms: number | string | null } | undefined): VerifyReport['unsealed'] {
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
  const cps = `${report.checkpoints.valid}/${report.checkpoints.total} checkpoint(s) valid${report.checkpoints.external ? ` (+${report.checkpoints.external} external)` : ''}`;
  if (report.ok) lines.push(`audit chain OK: ${head}; ${cps}`);
  else lines.push(`audit chain FAILED: ${report.first?.message}`, `  ${head}; ${cps}`);
  for (const p of report.problems) {
    if (p === report.first) continue;
    lines.push(`  ${p.severity === 'error' ? 'error' : 'warning'}: ${p.kind}: ${p.message}`);
  }
  return lines;
}
