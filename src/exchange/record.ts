import type { Knex } from 'knex';
import { toRow, type AuditEvent } from '../audit/event.ts';
import { storableJson } from '../store/text.ts';
import type { Lineage } from './types.ts';

/**
 * The grant's one round trip: the lineage row and its audit event commit together in a single
 * statement, before the token leaves. For a chained exchange the parent's lineage row is read
 * `FOR SHARE` in the same statement: a revocation of the parent (which updates that row) either
 * committed first — then the row no longer qualifies and the child is refused as
 * `parent_revoked` — or waits until this child is committed and then finds and revokes it.
 * Either way no child escapes a revocation running at the same moment.
 */
export async function recordGrant(knex: Knex, lineage: Lineage, granted: AuditEvent, deniedIfParentRevoked: AuditEvent): Promise<boolean> {
  const g = toRow(granted);
  const d = toRow(deniedIfParentRevoked);
  const result = await knex.raw<{ rows: Array<{ granted: number }> }>(`
    WITH parent AS (
      SELECT jti FROM token_lineage WHERE jti = :parent_jti AND revoked_at IS NULL FOR SHARE
    ), ins AS (
      INSERT INTO token_lineage (jti, parent_jti, client_id, audience, scopes, root_issuer, root_sub,
        root_claims, task_id, depth, depth_bound, actors, rule_id, policy_version, iat, exp)
      SELECT :jti, :parent_jti, :client_id, :audience, CAST(:scopes AS jsonb), :root_issuer, :root_sub,
        CAST(:root_claims AS jsonb), :task_id, :depth, :depth_bound, CAST(:actors AS jsonb), :rule_id, :policy_version,
        to_timestamp(:iat), to_timestamp(:exp)
      WHERE CAST(:parent_jti AS text) IS NULL OR EXISTS (SELECT 1 FROM parent)
      RETURNING jti
    ), audit AS (
      INSERT INTO audit_events (type, outcome, reason, request_id, client_id, jti, parent_jti, task_id,
        subject, audience, policy_version, details)
      SELECT
        CASE WHEN s.granted THEN :g_type ELSE :d_type END,
        CASE WHEN s.granted THEN :g_outcome ELSE :d_outcome END,
        CASE WHEN s.granted THEN CAST(:g_reason AS text) ELSE CAST(:d_reason AS text) END,
        :request_id, :client_id, CASE WHEN s.granted THEN :jti END, :parent_jti, :task_id,
        :subject, :audience, :policy_version,
        (CASE WHEN s.granted THEN :g_details ELSE :d_details END)::jsonb
      FROM (SELECT EXISTS (SELECT 1 FROM ins) AS granted) AS s
      RETURNING id
    )
    SELECT (SELECT count(*) FROM ins)::int AS granted, (SELECT count(*) FROM audit)::int AS audited
  `, {
    jti: lineage.jti,
    parent_jti: lineage.parentJti,
    client_id: lineage.clientId,
    audience: lineage.audience,
    scopes: JSON.stringify(lineage.scopes),
    root_issuer: lineage.root.issuer,
    root_sub: lineage.root.sub,
    // Claims the upstream issuer vouched for, kept for `root` selectors: odd characters made storable.
    root_claims: JSON.stringify(storableJson(lineage.root.claims)),
    task_id: lineage.taskId,
    depth: lineage.depth,
    depth_bound: lineage.depthBound,
    actors: JSON.stringify(lineage.actors),
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
    d_type: d.type,
    d_outcome: d.outcome,
    d_reason: d.reason,
    d_details: d.details,
  });
  return result.rows[0]?.granted === 1;
}
