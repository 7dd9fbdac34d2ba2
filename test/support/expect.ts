import { expect } from 'vitest';
import type { TestWrit } from './harness.ts';

type Response = { status: number; headers: Headers; body: Record<string, unknown> };

/**
 * A refusal as a client relies on it: the exact status and RFC error, no token, the no-store
 * headers, and the audit record for this request carrying the reason code.
 */
export async function expectDenied(t: TestWrit, res: Response, error: string, reason: string, status = error === 'invalid_client' ? 401 : 400): Promise<void> {
  expect({ status: res.status, error: res.body.error }).toEqual({ status, error });
  expect(res.body.access_token).toBeUndefined();
  expect(res.headers.get('cache-control')).toContain('no-store');
  expect(res.headers.get('pragma')).toBe('no-cache');
  const requestId = res.headers.get('x-request-id');
  expect(requestId).toBeTruthy();
  const rows = await t.auditRows({ request_id: requestId });
  expect(rows.map((r) => r.reason)).toEqual([reason]);
  expect(rows[0]!.jti).toBeNull();
  // The client sees a generic description, never the reason (no oracle).
  expect(String(res.body.error_description ?? '')).not.toContain(reason);
}

export async function lineageCount(t: TestWrit): Promise<number> {
  const rows = await t.writ.db.knex('token_lineage').count<Array<{ count: number }>>('* as count');
  return Number(rows[0]?.count ?? 0);
}

/** No token without its records: every jti that left has its lineage row and its granted audit event. */
export async function expectEveryTokenRecorded(t: TestWrit, jtis: string[]): Promise<void> {
  const recorded = await t.writ.db.knex('audit_events').where({ type: 'exchange.granted' }).whereIn('jti', jtis).count<Array<{ count: number }>>('* as count');
  expect(Number(recorded[0]!.count)).toBe(jtis.length);
  const lineage = await t.writ.db.knex('token_lineage').whereIn('jti', jtis).count<Array<{ count: number }>>('* as count');
  expect(Number(lineage[0]!.count)).toBe(jtis.length);
}
