import type { Knex } from 'knex';
import { toRow, type AuditEvent } from '../audit/event.ts';
import { retryOnConflict } from '../store/retry.ts';
import { markSeconds, REVOCATION_CHANNEL, subjectTaskKey, type RevocationEntry } from './state.ts';

const NOTIFY_LIMIT = 7000;

/** NOTIFY payloads are capped at 8000 bytes: send entries in chunks, or a hint to poll. */
export async function notify(trx: Knex.Transaction, entries: RevocationEntry[]): Promise<void> {
  let chunk: RevocationEntry[] = [];
  let size = 2;
  const send = async (): Promise<void> => {
    if (chunk.length > 0) await trx.raw('SELECT pg_notify(?, ?)', [REVOCATION_CHANNEL, JSON.stringify(chunk)]);
    chunk = [];
    size = 2;
  };
  for (const e of entries) {
    const length = JSON.stringify(e).length + 1;
    if (size + length > NOTIFY_LIMIT) await send();
    chunk.push(e);
    size += length;
  }
  await send();
}

/**
 * Marks tokens revoked by jti, as many as there are: one statement takes their jtis and exps as
 * two arrays (a row of parameters each would pass PostgreSQL's 65,535 at 16,384 tokens, and a
 * kill switch on a busy rule may reach that), and the revoked sets hear of them in chunks.
 */
export async function markJtisRevoked(trx: Knex.Transaction, tokens: readonly RevokedToken[], revokedBy: string): Promise<void> {
  if (tokens.length === 0) return;
  await trx.raw(`
    INSERT INTO revocations (kind, value, expires_at, revoked_by)
    SELECT 'jti', t.value, to_timestamp(t.exp), ? FROM unnest(CAST(? AS text[]), CAST(? AS bigint[])) AS t(value, exp)
    ON CONFLICT (kind, value) DO NOTHING`, [revokedBy, tokens.map((t) => t.jti), tokens.map((t) => t.exp)]);
  await notify(trx, tokens.map((t): RevocationEntry => ({ kind: 'jti', value: t.jti, notBefore: null, expiresAt: t.exp })));
}

/** A token whose lineage row a revocation just marked. */
export interface RevokedToken {
  jti: string;
  exp: number;
}

/**
 * Given tokens whose lineage rows were just marked revoked, marks everything derived from them,
 * a generation at a time, and returns them all. Each UPDATE locks the rows it marks; an exchange
 * deriving from one of them holds `FOR SHARE` on it until it commits, so each later statement
 * (a fresh snapshot under READ COMMITTED) sees any child committed meanwhile. A token revoked
 * earlier is not followed: its descendants were revoked with it, and none can be minted since.
 */
export async function revokeDescendants(trx: Knex.Transaction, revoked: readonly RevokedToken[]): Promise<RevokedToken[]> {
  const all = [...revoked];
  let frontier = revoked;
  while (frontier.length > 0) {
    frontier = (await trx.raw<{ rows: RevokedToken[] }>(`
      UPDATE token_lineage SET revoked_at = clock_timestamp()
      WHERE parent_jti = ANY(?) AND revoked_at IS NULL
      RETURNING jti, extract(epoch FROM exp)::bigint AS exp`, [frontier.map((r) => r.jti)])).rows;
    for (const row of frontier) all.push(row);
  }
  return all;
}

export interface TokenRevocationResult {
  /** Every jti revoked by this call: the token and all its descendants not revoked before. */
  revoked: RevokedToken[];
}

/** Revokes a token and, transitively, every token derived from it (revokeDescendants). */
export async function revokeTokenCascade(knex: Knex, input: { jti: string; revokedBy: string; audit: (count: number) => AuditEvent }): Promise<TokenRevocationResult> {
  return retryOnConflict(() => knex.transaction(async (trx) => {
    const token = await trx.raw<{ rows: RevokedToken[] }>(`
      UPDATE token_lineage SET revoked_at = clock_timestamp() WHERE jti = ? AND revoked_at IS NULL
      RETURNING jti, extract(epoch FROM exp)::bigint AS exp`, [input.jti]);
    const revoked = await revokeDescendants(trx, token.rows);
    await markJtisRevoked(trx, revoked, input.revokedBy);
    await trx('audit_events').insert(toRow(input.audit(revoked.length)));
    return { revoked };
  }));
}

/**
 * Ends a task: every token carrying this task_id is inactive from now on, and no exchange may
 * continue it. Lineage rows are marked too, so chained exchanges from them are refused in the
 * same statement that would record them.
 */
export async function revokeTask(knex: Knex, input: { taskId: string; revokedBy: string; audit: (count: number) => AuditEvent }): Promise<number> {
  return retryOnConflict(() => knex.transaction(async (trx) => {
    await trx('revocations')
      .insert({ kind: 'task', value: input.taskId, revoked_by: input.revokedBy })
      .onConflict(['kind', 'value']).ignore();
    const updated = await trx('token_lineage').where({ task_id: input.taskId }).whereNull('revoked_at')
      .update({ revoked_at: trx.raw('clock_timestamp()') });
    await notify(trx, [{ kind: 'task', value: input.taskId, notBefore: null, expiresAt: null }]);
    await trx('audit_events').insert(toRow(input.audit(updated)));
    return updated;
  }));
}

export type KillSwitchKind = 'client' | 'subject' | 'issuer' | 'rule';

/**
 * A revoke-before mark: every token whose chain involves the client (anywhere), whose root is
 * the subject (`issuer|sub`) or issuer, or that a rule granted, and that was issued before
 * `notBefore`, is inactive. A later mark for the same target moves the time forward.
 */
export async function setRevokeBefore(trx: Knex.Transaction, input: { kind: KillSwitchKind; value: string; notBefore: Date; revokedBy: string }): Promise<Date> {
  // The database's clock bounds the time, not the caller's: a mark set by a host whose clock
  // runs ahead would otherwise cover tokens the servers issue after it. Rounded up to the
  // millisecond, the precision every reader (a JavaScript Date) keeps: truncated, a mark in the
  // first microseconds of a second would not cover the tokens issued in them before it.
  const [row] = await trx('revocations')
    .insert({
      kind: input.kind,
      value: input.value,
      not_before: trx.raw('to_timestamp(ceil(extract(epoch FROM LEAST(?::timestamptz, clock_timestamp())) * 1000) / 1000)', [input.notBefore]),
      revoked_by: input.revokedBy,
      created_at: trx.raw('clock_timestamp()'),
    })
    .onConflict(['kind', 'value'])
    .merge({
      not_before: trx.raw('GREATEST(revocations.not_before, excluded.not_before)'),
      created_at: trx.raw('clock_timestamp()'),
      revoked_by: input.revokedBy,
    })
    .returning('not_before') as Array<{ not_before: Date | string }>;
  const notBefore = new Date(row!.not_before);
  await notify(trx, [{ kind: input.kind, value: input.value, notBefore: markSeconds(notBefore), expiresAt: null }]);
  return notBefore;
}

/**
 * An agent ends a task for the chains it took part in: the tokens carrying the task id whose
 * root subject is one the agent acted for in that task. Task ids are chosen by clients, so one
 * agent naming another chain's task id can neither join nor end that chain.
 */
export async function revokeTaskForAgent(knex: Knex, input: { taskId: string; agent: string; audit: (count: number) => AuditEvent }): Promise<number | undefined> {
  return retryOnConflict(() => knex.transaction(async (trx) => {
    const roots = await trx('token_lineage')
      .distinct('root_issuer', 'root_sub')
      .where({ task_id: input.taskId })
      .whereRaw('actors @> ?::jsonb', [JSON.stringify([input.agent])]) as Array<{ root_issuer: string; root_sub: string }>;
    if (roots.length === 0) return undefined;
    const { rows } = await trx.raw<{ rows: Array<{ jti: string; exp: number }> }>(`
      UPDATE token_lineage SET revoked_at = clock_timestamp()
      WHERE task_id = ? AND revoked_at IS NULL
        AND (root_issuer, root_sub) IN (SELECT * FROM jsonb_to_recordset(?::jsonb) AS r(root_issuer text, root_sub text))
      RETURNING jti, extract(epoch FROM exp)::bigint AS exp`, [input.taskId, JSON.stringify(roots)]);
    // The task is over for these subjects: its tokens, and any later exchange naming it.
    const marks = roots.map((r) => subjectTaskKey(r.root_issuer, r.root_sub, input.taskId));
    await trx('revocations').insert(marks.map((value) => ({ kind: 'subject_task', value, revoked_by: input.agent })))
      .onConflict(['kind', 'value']).ignore();
    await notify(trx, marks.map((value): RevocationEntry => ({ kind: 'subject_task', value, notBefore: null, expiresAt: null })));
    await markJtisRevoked(trx, rows, input.agent);
    await trx('audit_events').insert(toRow(input.audit(rows.length)));
    return rows.length;
  }));
}
