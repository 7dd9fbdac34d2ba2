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
 * once per connection.
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

export async function recordGrant(knex: Knex, lineage: Lineage, granted: AuditEvent, deniedIfParentRevoked: AuditEvent): Promise<boolean> {
  const g = toRow(granted);
  const d = toRow(deniedIfParentRevoked);
  const rows = await runPrepared<{ granted: number }>(knex, RECORD_GRANT, [
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
  ]);
  return rows[0]?.granted === 1;
}
