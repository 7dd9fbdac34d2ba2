import type { Knex } from 'knex';
import { toRow, type AuditEvent } from '../audit/event.ts';
import { runPrepared, type PreparedStatement } from '../store/prepared.ts';
import { storableJson } from '../store/text.ts';
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
 * (RECORD_GRANTS, sent by grant-batcher.ts).
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

/** What one grant writes: its lineage, its audit event, and the denial recorded instead if its parent was revoked meanwhile. */
export interface GrantRecord {
  lineage: Lineage;
  granted: AuditEvent;
  deniedIfParentRevoked: AuditEvent;
}

/** The 26 values of one grant, in the order of RECORD_GRANT's parameters and RECORD_GRANTS' arrays. */
function grantValues({ lineage, granted, deniedIfParentRevoked }: GrantRecord): unknown[] {
  const g = toRow(granted);
  const d = toRow(deniedIfParentRevoked);
  return [
    lineage.jti,
    lineage.parentJti,
    lineage.clientId,
    lineage.audience,
    JSON.stringify(lineage.scopes),
    lineage.root.issuer,
    lineage.root.sub,
    // Claims the upstream issuer vouched for, kept for `root` selectors: odd characters made storable.
    JSON.stringify(storableJson(lineage.root.claims)),
    lineage.taskId,
    lineage.depth,
    lineage.depthBound,
    JSON.stringify(lineage.actors),
    lineage.ruleId,
    lineage.policyVersion,
    lineage.iat,
    lineage.exp,
    g.request_id,
    g.subject,
    g.type,
    g.outcome,
    g.reason,
    g.details,
    d.type,
    d.outcome,
    d.reason,
    d.details,
  ];
}

export async function recordGrant(knex: Knex, record: GrantRecord): Promise<boolean> {
  const rows = await runPrepared<{ granted: number }>(knex, RECORD_GRANT, grantValues(record));
  return rows[0]?.granted === 1;
}

/** Each column's type in RECORD_GRANT, which RECORD_GRANTS takes as an array of that type. */
const COLUMNS: ReadonlyArray<readonly [name: string, type: string]> = [
  ['jti', 'text'], ['parent_jti', 'text'], ['client_id', 'text'], ['audience', 'text'], ['scopes', 'text'],
  ['root_issuer', 'text'], ['root_sub', 'text'], ['root_claims', 'text'], ['task_id', 'text'], ['depth', 'int'],
  ['depth_bound', 'int'], ['actors', 'text'], ['rule_id', 'text'], ['policy_version', 'int'], ['iat', 'float8'],
  ['exp', 'float8'], ['request_id', 'text'], ['subject', 'text'], ['g_type', 'text'], ['g_outcome', 'text'],
  ['g_reason', 'text'], ['g_details', 'text'], ['d_type', 'text'], ['d_outcome', 'text'], ['d_reason', 'text'],
  ['d_details', 'text'],
];

/**
 * RECORD_GRANT for several grants in one statement, so one transaction: concurrent exchanges
 * share a round trip and a commit instead of paying one each. Row by row it decides exactly
 * as RECORD_GRANT does, the parents read `FOR SHARE` together. The arrays are passed one per
 * column (the text arrays keep each value as the single statement's text parameter would).
 */
export const RECORD_GRANTS: PreparedStatement = {
  name: 'writ_record_grants_v1',
  text: `
    WITH input AS (
      SELECT * FROM unnest(${COLUMNS.map(([, type], i) => `$${i + 1}::${type}[]`).join(', ')}) WITH ORDINALITY
        AS i(${COLUMNS.map(([name]) => name).join(', ')}, ord)
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
      SELECT jti, parent_jti, client_id, audience, scopes::jsonb, root_issuer, root_sub,
        root_claims::jsonb, task_id, depth, depth_bound, actors::jsonb, rule_id, policy_version,
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
        CASE WHEN ins.jti IS NOT NULL THEN g_details ELSE d_details END::jsonb
      FROM input LEFT JOIN ins ON ins.jti = input.jti
      ORDER BY ord
      RETURNING id
    )
    SELECT input.ord::int AS ord, ins.jti IS NOT NULL AS granted, (SELECT count(*) FROM audit)::int AS audited
    FROM input LEFT JOIN ins ON ins.jti = input.jti
    ORDER BY input.ord`,
};

/** Records several grants in one statement; the answer says, in order, which were granted. */
export async function recordGrants(knex: Knex, records: readonly GrantRecord[]): Promise<boolean[]> {
  const columns: unknown[][] = COLUMNS.map(() => new Array<unknown>(records.length));
  records.forEach((record, row) => {
    grantValues(record).forEach((value, column) => { columns[column]![row] = value; });
  });
  const rows = await runPrepared<{ ord: number; granted: boolean; audited: number }>(knex, RECORD_GRANTS, columns);
  if (rows.length !== records.length || rows.some((r) => r.audited !== records.length)) {
    throw new Error(`recording ${records.length} grants returned ${rows.length} rows`);
  }
  return rows.map((r) => r.granted);
}
