import type { Knex } from 'knex';
import { toColumns, type AuditColumns, type AuditEvent } from '../audit/event.ts';
import { runPrepared, type PreparedStatement } from '../store/prepared.ts';
import { storableJsonText } from '../store/text.ts';
import type { LineageRow } from './lineage-store.ts';
import type { Lineage } from './types.ts';

/**
 * The grant's one round trip: the lineage row and its audit event commit together in a single
 * statement, before the token leaves. For a chained exchange the parent's lineage row is read
 * `FOR SHARE` in the same statement: a revocation of the parent (which updates that row) either
 * committed first — then the row no longer qualifies and the child is refused as
 * `parent_revoked` — or waits until this child is committed and then finds and revokes it.
 * Either way no child escapes a revocation running at the same moment.
 *
 * It is the busiest statement Writ runs, so it is prepared: PostgreSQL parses and plans it
 * once per connection. Under load, concurrent grants share one statement instead
 * (RECORD_GRANTS, sent by grant-batcher.ts). Its $1…$26 are a GrantInputRow's columns in
 * INPUT_COLUMNS' order (grantValues): one grant as it is alone, taken apart.
 */
const RECORD_GRANT: PreparedStatement = {
  name: 'writ_record_grant_v1',
  text: `
    WITH parent AS (
      SELECT jti FROM token_lineage WHERE jti = $2::text AND revoked_at IS NULL FOR SHARE
    ), ins AS (
      INSERT INTO token_lineage (jti, parent_jti, client_id, audience, scopes, root_issuer, root_sub,
        root_claims, task_id, depth, depth_bound, actors, rule_id, policy_version, iat, exp)
      SELECT $1::text, $2::text, $3::text, $4::text, $5::jsonb, $6::text, $7::text,
        $8::jsonb, $9::text, $10::int, $11::int, $12::jsonb, $13::text, $14::int,
        to_timestamp($15::float8), to_timestamp($16::float8)
      WHERE $2::text IS NULL OR EXISTS (SELECT 1 FROM parent)
      RETURNING jti
    ), audit AS (
      INSERT INTO audit_events (type, outcome, reason, request_id, client_id, jti, parent_jti, task_id,
        subject, audience, policy_version, details)
      SELECT
        CASE WHEN s.granted THEN $19::text ELSE $23::text END,
        CASE WHEN s.granted THEN $20::text ELSE $24::text END,
        CASE WHEN s.granted THEN $21::text ELSE $25::text END,
        $17::text, $3::text, CASE WHEN s.granted THEN $1::text END, $2::text, $9::text,
        $18::text, $4::text, $14::int,
        CASE WHEN s.granted THEN $22::jsonb ELSE $26::jsonb END
      FROM (SELECT EXISTS (SELECT 1 FROM ins) AS granted) AS s
      RETURNING id
    )
    SELECT (SELECT count(*) FROM ins)::int AS granted, (SELECT count(*) FROM audit)::int AS audited`,
};

/** What one grant writes: its lineage, its audit event, and for a chained grant the denial recorded instead if its parent was revoked meanwhile. */
export interface GrantRecord {
  lineage: Lineage;
  granted: AuditEvent;
  /** Required when `lineage.parentJti` is set; a grant with no parent cannot lose it, so has none. */
  deniedIfParentRevoked?: AuditEvent;
}

/** Why a grant cannot be recorded as it is, if it cannot: a chained grant must carry its denial. */
export function unrecordable({ lineage, deniedIfParentRevoked }: GrantRecord): Error | undefined {
  if (lineage.parentJti !== null && !deniedIfParentRevoked) {
    return new Error(`grant ${lineage.jti} has a parent but no denial to record if it is revoked`);
  }
  return undefined;
}

/**
 * One grant as an element of RECORD_GRANTS' input (and, in order, RECORD_GRANT's parameters): its
 * token_lineage row with times as epoch seconds, then the audit columns of the event it records
 * and of the denial recorded instead if its parent was revoked meanwhile. JSON values stay JSON.
 */
interface GrantInputRow extends Omit<LineageRow, 'iat' | 'exp' | 'revoked_at'> {
  ord: number;
  iat: number;
  exp: number;
  request_id: string | null;
  subject: string | null;
  g_type: string;
  g_outcome: string;
  g_reason: string | null;
  g_details: unknown;
  d_type: string | null;
  d_outcome: string | null;
  d_reason: string | null;
  d_details: unknown;
}

/**
 * Each field of GrantInputRow with the type json_to_recordset gives it. A JSON null becomes SQL
 * NULL even in a jsonb column (not jsonb 'null'): the jsonb fields here are always arrays or
 * objects, and the denial's are NULL exactly when a grant has no parent.
 */
const INPUT_COLUMNS = {
  ord: 'int', jti: 'text', parent_jti: 'text', client_id: 'text', audience: 'text', scopes: 'jsonb',
  root_issuer: 'text', root_sub: 'text', root_claims: 'jsonb', task_id: 'text', depth: 'int', depth_bound: 'int',
  actors: 'jsonb', rule_id: 'text', policy_version: 'int', iat: 'float8', exp: 'float8', request_id: 'text',
  subject: 'text', g_type: 'text', g_outcome: 'text', g_reason: 'text', g_details: 'jsonb', d_type: 'text',
  d_outcome: 'text', d_reason: 'text', d_details: 'jsonb',
} as const satisfies Record<keyof GrantInputRow, string>;

function inputRow(record: GrantRecord, ord: number): GrantInputRow {
  const { lineage } = record;
  const refused = unrecordable(record);
  if (refused) throw refused;
  const g = toColumns(record.granted);
  const d: AuditColumns | null = lineage.parentJti !== null && record.deniedIfParentRevoked ? toColumns(record.deniedIfParentRevoked) : null;
  return {
    ord,
    jti: lineage.jti,
    parent_jti: lineage.parentJti,
    client_id: lineage.clientId,
    audience: lineage.audience,
    scopes: lineage.scopes,
    root_issuer: lineage.root.issuer,
    root_sub: lineage.root.sub,
    // Claims the upstream issuer vouched for: grantsInput makes odd characters in them storable.
    root_claims: lineage.root.claims,
    task_id: lineage.taskId,
    depth: lineage.depth,
    depth_bound: lineage.depthBound,
    actors: lineage.actors,
    rule_id: lineage.ruleId,
    policy_version: lineage.policyVersion,
    iat: lineage.iat,
    exp: lineage.exp,
    request_id: g.request_id,
    subject: g.subject,
    g_type: g.type,
    g_outcome: g.outcome,
    g_reason: g.reason,
    g_details: g.details,
    d_type: d?.type ?? null,
    d_outcome: d?.outcome ?? null,
    d_reason: d?.reason ?? null,
    d_details: d?.details ?? null,
  };
}

const SINGLE_GRANT_COLUMNS = Object.entries(INPUT_COLUMNS).filter(([name]) => name !== 'ord') as Array<[keyof GrantInputRow, string]>;

/** RECORD_GRANT's $1…$26: the columns of GrantInputRow in INPUT_COLUMNS' order, `ord` left out, JSON as text. */
function grantValues(record: GrantRecord): unknown[] {
  const row = inputRow(record, 0);
  return SINGLE_GRANT_COLUMNS.map(([name, type]) => (type === 'jsonb' && row[name] !== null ? storableJsonText(row[name]) : row[name]));
}

export async function recordGrant(knex: Knex, record: GrantRecord): Promise<boolean> {
  const rows = await runPrepared<{ granted: number }>(knex, RECORD_GRANT, grantValues(record));
  return rows[0]?.granted === 1;
}

/** The batch as one JSON parameter, every string in it storable. */
export function grantsInput(records: readonly GrantRecord[]): string {
  return storableJsonText(records.map(inputRow));
}

/**
 * RECORD_GRANT for several grants in one statement, so one transaction: concurrent exchanges
 * share a round trip and a commit instead of paying one each. Row by row it decides exactly
 * as RECORD_GRANT does, the parents read `FOR SHARE` together. The grants travel as one JSON
 * array: one value to serialise and send, where 26 arrays of text cost the driver ~10 KB of
 * garbage and an escaping pass per grant.
 */
export const RECORD_GRANTS: PreparedStatement = {
  name: 'writ_record_grants_v2',
  text: `
    WITH input AS (
      SELECT * FROM json_to_recordset($1::json)
        AS i(${Object.entries(INPUT_COLUMNS).map(([name, type]) => `${name} ${type}`).join(', ')})
    ), parent AS (
      -- One primary-key probe per parent. The plan is cached per connection and may be made
      -- while the table is small: for "jti = ANY(array)" it was then a sequential scan, kept as
      -- the table grew. A locking subquery is never flattened, so this stays a lookup per parent.
      SELECT l.jti
      FROM (SELECT DISTINCT parent_jti FROM input WHERE parent_jti IS NOT NULL) AS p
      CROSS JOIN LATERAL (
        SELECT jti FROM token_lineage WHERE jti = p.parent_jti AND revoked_at IS NULL FOR SHARE
      ) AS l
    ), ins AS (
      INSERT INTO token_lineage (jti, parent_jti, client_id, audience, scopes, root_issuer, root_sub,
        root_claims, task_id, depth, depth_bound, actors, rule_id, policy_version, iat, exp)
      SELECT jti, parent_jti, client_id, audience, scopes, root_issuer, root_sub,
        root_claims, task_id, depth, depth_bound, actors, rule_id, policy_version,
        to_timestamp(iat), to_timestamp(exp)
      FROM input
      WHERE parent_jti IS NULL OR parent_jti IN (SELECT jti FROM parent)
      ORDER BY ord
      RETURNING jti
    ), audit AS (
      INSERT INTO audit_events (type, outcome, reason, request_id, client_id, jti, parent_jti, task_id,
        subject, audience, policy_version, details)
      SELECT
        CASE WHEN ins.jti IS NOT NULL THEN g_type ELSE d_type END,
        CASE WHEN ins.jti IS NOT NULL THEN g_outcome ELSE d_outcome END,
        CASE WHEN ins.jti IS NOT NULL THEN g_reason ELSE d_reason END,
        request_id, client_id, ins.jti, parent_jti, task_id, subject, audience, policy_version,
        CASE WHEN ins.jti IS NOT NULL THEN g_details ELSE d_details END
      FROM input LEFT JOIN ins ON ins.jti = input.jti
      ORDER BY ord
      RETURNING id
    )
    SELECT input.ord AS ord, ins.jti IS NOT NULL AS granted, (SELECT count(*) FROM audit)::int AS audited
    FROM input LEFT JOIN ins ON ins.jti = input.jti
    ORDER BY input.ord`,
};

/** Records several grants in one statement; the answer says, in order, which were granted. */
export async function recordGrants(knex: Knex, records: readonly GrantRecord[]): Promise<boolean[]> {
  const rows = await runPrepared<{ ord: number; granted: boolean; audited: number }>(knex, RECORD_GRANTS, [grantsInput(records)]);
  if (rows.length !== records.length || rows.some((r, i) => r.ord !== i || r.audited !== records.length)) {
    throw new Error(`recording ${records.length} grants returned ${rows.length} rows`);
  }
  return rows.map((r) => r.granted);
}
