import { decodeJwt } from 'jose';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it, inject } from 'vitest';
import { bootstrapAdmin } from '../../src/admin/bootstrap.ts';
import { AT, EXECUTOR_AUD, PAYMENTS, basicAuth, startTestWrit, type TestWrit } from '../support/harness.ts';
import { expectEveryTokenRecorded } from '../support/expect.ts';

/** PostgreSQL going away under load: fail closed with 503, never a token without its record; recover by itself. */
describe('PostgreSQL unavailable', () => {
  let t: TestWrit;
  let admin: pg.Client;
  let dbName: string;
  let adminSecret: string;
  beforeAll(async () => {
    t = await startTestWrit({ name: 'outage' });
    adminSecret = (await bootstrapAdmin(t.writ.db.knex, { clientId: 'ops-admin', scopes: ['writ:audit.read'], secretKey: t.writ.derived.clientSecret, by: 'test' })).secret;
    await t.writ.policy.reload();
    dbName = new URL(t.databaseUrl!).pathname.slice(1);
    admin = new pg.Client({ connectionString: inject('adminDatabaseUrl') });
    await admin.connect();
  });
  afterAll(async () => {
    await admin.query(`ALTER DATABASE "${dbName}" WITH ALLOW_CONNECTIONS true`).catch(() => undefined);
    await admin.end();
    await t?.close();
  });

  async function cutOff(): Promise<void> {
    await admin.query(`ALTER DATABASE "${dbName}" WITH ALLOW_CONNECTIONS false`);
    await admin.query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()', [dbName]);
  }

  it('answers 503 with Retry-After within 2 s, issues nothing unrecorded, and recovers within 5 s without a restart', async () => {
    const before = await t.exchange('planner-agent', { subject_token: await t.idp.token(t.issuer), subject_token_type: AT, audience: EXECUTOR_AUD });
    expect(before.status).toBe(200);

    // Load: four clients exchanging back to back for the whole test.
    const issued: string[] = [];
    const statuses: number[] = [];
    let running = true;
    const worker = async (): Promise<void> => {
      while (running) {
        const res = await t.exchange('planner-agent', { subject_token: await t.idp.token(t.issuer), subject_token_type: AT, audience: EXECUTOR_AUD });
        statuses.push(res.status);
        if (res.status === 200) issued.push(decodeJwt(res.body.access_token as string).jti as string);
        else {
          expect(res.status).toBe(503);
          expect(res.body.access_token).toBeUndefined();
          expect(res.headers.get('retry-after')).toBe('1');
        }
      }
    };
    const workers = Array.from({ length: 4 }, worker);
    await new Promise((r) => setTimeout(r, 300));

    await cutOff();
    const cut = Date.now();
    const seen = statuses.length;
    await expect.poll(() => statuses.slice(seen).includes(503), { timeout: 2000, interval: 20 }).toBe(true);
    expect(Date.now() - cut).toBeLessThan(2000);
    // A denial is answered only with its record too: without the database it is a 503, not its 400.
    const overScope = { subject_token: await t.idp.token(t.issuer), subject_token_type: AT, audience: PAYMENTS, scope: 'payment.transfer' };
    const deniedDuring = await t.exchange('planner-agent', overScope);
    expect([deniedDuring.status, deniedDuring.body.error]).toEqual([503, 'temporarily_unavailable']);
    // Nor is an admin API token issued without its record.
    const adminToken = await t.post('/token', { grant_type: 'client_credentials', scope: 'writ:audit.read' }, basicAuth('ops-admin', adminSecret));
    expect([adminToken.status, adminToken.body.error, adminToken.body.access_token, adminToken.headers.get('retry-after')]).toEqual([503, 'temporarily_unavailable', undefined, '1']);
    // Revocation must not answer 200 unless persisted (RFC 7009 §2.2.1).
    expect((await t.post('/token/revocation', { token: before.body.access_token as string }, basicAuth('planner-agent'))).status).toBe(503);
    // Once the revoked set can no longer be kept current, introspection refuses to say active.
    await expect.poll(async () => (await t.post('/token/introspection', { token: before.body.access_token as string }, basicAuth('executor-agent'))).status, { timeout: 3000, interval: 100 }).toBe(503);
    expect((await fetch(`${t.url}/readyz`)).status).toBe(503);

    await admin.query(`ALTER DATABASE "${dbName}" WITH ALLOW_CONNECTIONS true`);
    const back = Date.now();
    const atRestore = statuses.length;
    await expect.poll(() => statuses.slice(atRestore).includes(200), { timeout: 5000, interval: 50 }).toBe(true);
    expect(Date.now() - back).toBeLessThan(5000);
    await expect.poll(async () => (await fetch(`${t.url}/readyz`)).status, { timeout: 5000, interval: 100 }).toBe(200);
    const deniedAfter = await t.exchange('planner-agent', { ...overScope, subject_token: await t.idp.token(t.issuer) });
    expect([deniedAfter.status, deniedAfter.body.error]).toEqual([400, 'invalid_scope']);
    // Recorded once: the denial after the outage (the one during it could not be, and was not answered as a denial).
    const denials = await t.writ.db.knex('audit_events').where({ type: 'exchange.denied', reason: 'scope_not_allowed' }).count<Array<{ count: number }>>('* as count');
    expect(Number(denials[0]!.count)).toBe(1);
    running = false;
    await Promise.all(workers);

    // Every token that left has its lineage row and its audit event.
    expect(issued.length).toBeGreaterThan(10);
    await expectEveryTokenRecorded(t, issued);
  }, 30_000);
});
