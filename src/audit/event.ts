import type { Knex } from 'knex';
import { GroupCommit } from '../store/group-commit.ts';
import { runPrepared, type PreparedStatement } from '../store/prepared.ts';
import { storableJson, storableText } from '../store/text.ts';

export type AuditType =
  | 'exchange.granted'
  | 'exchange.denied'
  | 'token_endpoint.rejected'
  | 'introspection'
  | 'revocation'
  | 'task.revocation'
  | 'policy.applied'
  | 'kill_switch'
  | 'admin.action'
  | 'admin.token_issued'
  | 'key.generated'
  | 'key.removed'
  | 'audit.retained';

/** One audit record. Raw tokens and secrets never go in here: tokens are named by `jti`. */
export interface AuditEvent {
  type: AuditType;
  outcome: 'granted' | 'denied' | 'active' | 'inactive' | 'revoked' | 'rejected' | 'applied' | 'ok';
  reason?: string | null;
  requestId?: string | null;
  clientId?: string | null;
  jti?: string | null;
  parentJti?: string | null;
  taskId?: string | null;
  /** The root subject, as `issuer|sub`. */
  subject?: string | null;
  audience?: string | null;
  policyVersion?: number | null;
  details?: Record<string, unknown>;
}

/** The columns every audit event has, as stored, apart from its id, time and details. */
export interface AuditTextColumns {
  type: string;
  outcome: string;
  reason: string | null;
  request_id: string | null;
  client_id: string | null;
  jti: string | null;
  parent_jti: string | null;
  task_id: string | null;
  subject: string | null;
  audience: string | null;
}

export interface AuditRow extends AuditTextColumns {
  policy_version: number | null;
  details: string;
}

/** An event's columns with `details` still a value, for an event that travels inside a larger JSON document. */
export interface AuditColumns extends AuditTextColumns {
  policy_version: number | null;
  details: unknown;
}

/** Request-derived values may hold what PostgreSQL cannot store: they are recorded, made storable. */
const text = (v: string | null | undefined): string | null => (v === null || v === undefined ? null : storableText(v));

export function toColumns(e: AuditEvent): AuditColumns {
  return {
    type: e.type,
    outcome: e.outcome,
    reason: e.reason ?? null,
    request_id: text(e.requestId),
    client_id: text(e.clientId),
    jti: text(e.jti),
    parent_jti: text(e.parentJti),
    task_id: text(e.taskId),
    subject: text(e.subject),
    audience: text(e.audience),
    policy_version: e.policyVersion ?? null,
    details: storableJson(e.details ?? {}),
  };
}

export function toRow(e: AuditEvent): AuditRow {
  const columns = toColumns(e);
  return { ...columns, details: JSON.stringify(columns.details) };
}

export const AUDIT_COLUMNS = [
  'type', 'outcome', 'reason', 'request_id', 'client_id', 'jti', 'parent_jti', 'task_id',
  'subject', 'audience', 'policy_version', 'details',
] as const satisfies ReadonlyArray<keyof AuditRow>;

/**
 * One event, as every denied exchange writes it: a prepared statement, so that PostgreSQL does
 * not plan an insert into the partitioned table for each denial (a flood of denials is exactly
 * when that would cost most).
 */
const INSERT_AUDIT_EVENT: PreparedStatement = {
  name: 'writ_insert_audit_event_v1',
  text: `INSERT INTO audit_events (${AUDIT_COLUMNS.join(', ')})
    VALUES ($1::text, $2::text, $3::text, $4::text, $5::text, $6::text, $7::text, $8::text, $9::text, $10::text, $11::int, $12::jsonb)`,
};

export async function recordAudit(knex: Knex, events: AuditEvent | AuditEvent[]): Promise<void> {
  const rows = (Array.isArray(events) ? events : [events]).map(toRow);
  if (rows.length === 1) {
    const row = rows[0]!;
    await runPrepared(knex, INSERT_AUDIT_EVENT, AUDIT_COLUMNS.map((c) => row[c]));
  } else if (rows.length > 1) {
    await knex('audit_events').insert(rows);
  }
}

/**
 * Audit events that must commit before their answer leaves (denied exchanges, authenticated
 * protocol refusals), group-committed (src/store/group-commit.ts). Denials come in bursts — a
 * flooding client's allowance, a misconfigured agent — and one statement and one pooled
 * connection per burst, instead of per denial, keeps a burst from opening fresh PostgreSQL
 * backends that every other request then waits behind.
 */
export function auditCommitter(
  knex: Knex, options: { isStorageError: (err: unknown) => boolean; onBatch?: (size: number) => void },
): GroupCommit<AuditEvent, void> {
  return new GroupCommit<AuditEvent, void>({
    ...options,
    writeOne: (event) => recordAudit(knex, event),
    writeMany: async (events) => {
      await recordAudit(knex, events);
      return events.map(() => undefined);
    },
  });
}
