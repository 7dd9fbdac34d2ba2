import type { Knex } from 'knex';

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
  | 'key.generated';

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

export interface AuditRow {
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
  policy_version: number | null;
  details: string;
}

export function toRow(e: AuditEvent): AuditRow {
  return {
    type: e.type,
    outcome: e.outcome,
    reason: e.reason ?? null,
    request_id: e.requestId ?? null,
    client_id: e.clientId ?? null,
    jti: e.jti ?? null,
    parent_jti: e.parentJti ?? null,
    task_id: e.taskId ?? null,
    subject: e.subject ?? null,
    audience: e.audience ?? null,
    policy_version: e.policyVersion ?? null,
    details: JSON.stringify(e.details ?? {}),
  };
}

export const AUDIT_COLUMNS = [
  'type', 'outcome', 'reason', 'request_id', 'client_id', 'jti', 'parent_jti', 'task_id',
  'subject', 'audience', 'policy_version', 'details',
] as const satisfies ReadonlyArray<keyof AuditRow>;

export async function recordAudit(knex: Knex, events: AuditEvent | AuditEvent[]): Promise<void> {
  const rows = (Array.isArray(events) ? events : [events]).map(toRow);
  if (rows.length > 0) await knex('audit_events').insert(rows);
}
