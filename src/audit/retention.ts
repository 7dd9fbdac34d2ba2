import { createHash } from 'node:crypto';
import { mkdir, open, rename, rm } from 'node:fs/promises';
import path from 'node:path';
import type { Knex } from 'knex';
import { GENESIS_HASH, OCCURRED_AT_SQL, eventHash, verifyCheckpoint, type ChainEvent } from './chain.ts';
import { toRow } from './event.ts';
import { num, signRetention, type RetentionFields } from './retention-marker.ts';
import { verifyAuditChain } from './verify.ts';

/** Serialises retention runs. */
const RETENTION_LOCK = 7369660;

/** A retention that cannot be done as asked; the message says why, for the operator. */
export class RetentionError extends Error {
  override name = 'RetentionError';
}

const PARTITION = /^audit_events_y(\d{4})m(\d{2})$/;

/** Monthly partitions whose whole month ends on or before `before`, oldest first. */
async function partitionsBefore(knex: Knex, before: Date): Promise<Array<{ name: string; start: Date; end: Date }>> {
  const { rows } = await knex.raw<{ rows: Array<{ relname: string }> }>(`
    SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
    WHERE i.inhparent = 'audit_events'::regclass ORDER BY c.relname`);
  return rows.flatMap(({ relname }) => {
    const m = PARTITION.exec(relname);
    if (!m) return [];
    const start = new Date(Date.UTC(Number(m[1]), Number(m[2]) - 1, 1));
    const end = new Date(Date.UTC(Number(m[1]), Number(m[2]), 1));
    return end.getTime() <= before.getTime() ? [{ name: relname, start, end }] : [];
  });
}

export interface RetentionResult {
  partition: string;
  events: number;
  archive: string;
  archiveSha256: string;
}

/**
 * Removes each monthly partition of audit events that ended on or before `before` (never the
 * current month), after writing it to `${archiveDir}/<partition>.ndjson`: every event with its
 * place in the chain, then the signed checkpoints that vouch for it. A partition goes only if
 * every event in it is sealed and a signed checkpoint covers its last one, so what the archive
 * holds can be checked against the chain that stays. The drop and a signed marker (its id and
 * seq range, count and the archive's SHA-256) commit together, with a `audit.retained` event;
 * `audit verify` then takes exactly those events as archived, and any other missing event as
 * deleted.
 *
 * The archive file is written and synced before the drop; if anything fails, the partition
 * stays and the file is removed.
 */
export async function retainAudit(knex: Knex, checkpointKey: Buffer, input: { before: Date; archiveDir: string; by: string }): Promise<RetentionResult[]> {
  const thisMonth = new Date(Date.UTC(new Date().getUTCFullYear(), new Date().getUTCMonth(), 1));
  const before = new Date(Math.min(input.before.getTime(), thisMonth.getTime()));
  // Dropping events makes their content unrecoverable from the database: whatever is wrong
  // with them now could never be shown afterwards. The whole chain must verify first.
  const report = await verifyAuditChain(knex, checkpointKey);
  if (!report.ok) throw new RetentionError(`the audit chain does not verify (${report.first?.message}); retention would hide it. Run writ audit verify.`);
  // Only the operator and Writ read the archives: a directory made here is theirs alone.
  await mkdir(input.archiveDir, { recursive: true, mode: 0o700 });
  const results: RetentionResult[] = [];
  for (const part of await partitionsBefore(knex, before)) {
    results.push(await retainPartition(knex, checkpointKey, part, input));
  }
  return results;
}

async function syncDir(dir: string): Promise<void> {
  const handle = await open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

type ArchiveRow = ChainEvent & { id: number | string; seq: number | string; prev_hash: string; hash: string; link_hash: string | null };

async function retainPartition(knex: Knex, checkpointKey: Buffer, part: { name: string; start: Date; end: Date }, input: { archiveDir: string; by: string }): Promise<RetentionResult> {
  const file = path.join(input.archiveDir, `${part.name}.ndjson`);
  // Written under a temporary name and renamed once the drop has committed: a file with the
  // final name is always the archive of a dropped month.
  const partial = `${file}.partial`;
  let written = false;
  let committing = false;
  let result: RetentionResult;
  try {
    result = await knex.transaction(async (trx) => {
      await trx.raw('SELECT pg_advisory_xact_lock(?)', [RETENTION_LOCK]);
      // Whole-partition scans; the CLI's connection has no client-side limit either.
      await trx.raw('SET LOCAL statement_timeout = 0');
      // The name matched PARTITION: letters, digits and underscores only.
      const table = `"${part.name}"`;
      // Nothing is written into an old month but a backdated forgery; none can land once checked.
      await trx.raw(`LOCK TABLE ${table} IN SHARE MODE`);
      const { rows: [stats] } = await trx.raw<{ rows: Array<{ n: string; unsealed: string; min_id: string | null; max_id: string | null; min_seq: string | null; max_seq: string | null }> }>(`
        SELECT count(*) AS n, count(*) FILTER (WHERE c.seq IS NULL) AS unsealed, min(e.id) AS min_id, max(e.id) AS max_id,
               min(c.seq) AS min_seq, max(c.seq) AS max_seq
        FROM ${table} e LEFT JOIN audit_chain c ON c.event_id = e.id`);
      const events = Number(stats!.n);
      if (Number(stats!.unsealed) > 0) {
        throw new RetentionError(`${part.name}: ${stats!.unsealed} event(s) are not sealed yet; is the sealer running (writ serve)?`);
      }
      const lastSeq = num(stats!.max_seq);
      if (lastSeq !== null) {
        // The sealer links each new event to the newest sealed one: dropping that event would
        // leave it nothing to link to, and sealing would stop for good.
        const { rows: [head] } = await trx.raw<{ rows: Array<{ seq: string | null }> }>('SELECT max(seq) AS seq FROM audit_chain');
        if (num(head!.seq) === lastSeq) {
          throw new RetentionError(`${part.name}: it holds the newest sealed event (seq ${lastSeq}), which the next one must link to; run retention once a later event has been sealed`);
        }
        // A checkpoint that verifies, counts the dense chain, and matches the chain row at its seq.
        const { rows: cps } = await trx.raw<{ rows: Array<{ seq: string; hash: string; count: string; signature: string; chain_hash: string | null }> }>(`
          SELECT k.seq, k.hash, k.count, k.signature, c.hash AS chain_hash FROM audit_checkpoints k LEFT JOIN audit_chain c ON c.seq = k.seq
          WHERE k.seq >= ? ORDER BY k.seq LIMIT 20`, [lastSeq]);
        const covering = cps.some((c) => Number(c.count) === Number(c.seq) && c.chain_hash === c.hash
          && verifyCheckpoint(checkpointKey, { seq: Number(c.seq), hash: c.hash, count: Number(c.count), signature: c.signature }));
        if (!covering) throw new RetentionError(`${part.name}: no signed checkpoint covers its last event (seq ${lastSeq}) yet; wait for the next one`);
      }

      const handle = await open(partial, 'wx', 0o640);
      written = true;
      const digest = createHash('sha256');
      const write = async (line: string): Promise<void> => {
        const data = `${line}\n`;
        digest.update(data);
        await handle.write(data);
      };
      try {
        await write(JSON.stringify({ retention: { partition: part.name, range_start: part.start.toISOString(), range_end: part.end.toISOString(), events } }));
        let previousId = -Infinity;
        for (let after = -1; ;) {
          const { rows } = await trx.raw<{ rows: ArchiveRow[] }>(`
            SELECT e.id, ${OCCURRED_AT_SQL} AS occurred_at, e.type, e.outcome, e.reason, e.request_id, e.client_id, e.jti,
              e.parent_jti, e.task_id, e.subject, e.audience, e.policy_version, e.details, c.seq, c.prev_hash, c.hash, p.hash AS link_hash
            FROM ${table} e JOIN audit_chain c ON c.event_id = e.id LEFT JOIN audit_chain p ON p.seq = c.seq - 1
            WHERE e.id > ? ORDER BY e.id, e.occurred_at LIMIT 1000`, [after]);
          for (const r of rows) {
            // Each event must be exactly what was sealed, where it was sealed: the archive is
            // all that will be left of it, and the marker will vouch for its absence.
            const id = Number(r.id);
            const seq = Number(r.seq);
            const linked = seq === 1 ? r.prev_hash === GENESIS_HASH : r.link_hash === r.prev_hash;
            if (id <= previousId || !linked || eventHash(r.prev_hash, seq, r) !== r.hash) {
              throw new RetentionError(`${part.name}: event ${id} (seq ${seq}) is not what the chain sealed; run writ audit verify`);
            }
            previousId = id;
            const { link_hash: _link, ...row } = r;
            await write(JSON.stringify({ ...row, id, seq }));
          }
          if (rows.length < 1000) break;
          after = Number(rows.at(-1)!.id);
        }
        if (lastSeq !== null) {
          const { rows } = await trx.raw<{ rows: Array<Record<string, unknown>> }>(`
            SELECT seq, hash, count, signature FROM audit_checkpoints
            WHERE seq >= ? AND seq <= (SELECT min(seq) FROM audit_checkpoints WHERE seq >= ?) ORDER BY seq, id`, [num(stats!.min_seq), lastSeq]);
          for (const c of rows) await write(JSON.stringify({ checkpoint: { seq: Number(c.seq), hash: c.hash, count: Number(c.count), signature: c.signature } }));
        }
        await handle.sync();
      } finally {
        await handle.close();
      }
      await syncDir(input.archiveDir);

      const fields: RetentionFields = {
        partition: part.name, rangeStart: part.start, rangeEnd: part.end, events,
        firstEventId: num(stats!.min_id), lastEventId: num(stats!.max_id), firstSeq: num(stats!.min_seq), lastSeq,
        archiveSha256: digest.digest('hex'), retainedBy: input.by, createdAt: new Date(),
      };
      await trx('audit_retention').insert({
        partition: fields.partition, range_start: fields.rangeStart, range_end: fields.rangeEnd, events: fields.events,
        first_event_id: fields.firstEventId, last_event_id: fields.lastEventId, first_seq: fields.firstSeq, last_seq: fields.lastSeq,
        archive_sha256: fields.archiveSha256, retained_by: fields.retainedBy, created_at: fields.createdAt, signature: signRetention(checkpointKey, fields),
      });
      await trx('audit_events').insert(toRow({
        type: 'audit.retained', outcome: 'ok', clientId: input.by,
        details: { partition: part.name, events, first_event_id: fields.firstEventId, last_event_id: fields.lastEventId, archive_sha256: fields.archiveSha256 },
      }));
      // Last, so the audit table is held only for the moment of the drop; a drop that would
      // wait behind long readers gives up rather than queue every audit insert behind it.
      await trx.raw(`SET LOCAL lock_timeout = '5s'`);
      await trx.raw(`ALTER TABLE audit_events DETACH PARTITION ${table}`);
      await trx.raw(`DROP TABLE ${table}`);
      committing = true;
      return { partition: part.name, events, archive: file, archiveSha256: fields.archiveSha256 };
    });
  } catch (err) {
    if (written && !committing) await rm(partial, { force: true });
    if (committing) {
      throw new RetentionError(`${part.name}: the commit's outcome is unknown (${(err as Error).message}); the archive is kept at ${partial}. `
        + 'If audit_retention has a marker for it, the month was dropped: rename the file to drop the .partial.');
    }
    throw err;
  }
  await rename(partial, file);
  await syncDir(input.archiveDir);
  return result;
}
