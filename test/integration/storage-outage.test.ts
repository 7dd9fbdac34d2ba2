import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it, inject } from 'vitest';
import { AT, EXECUTOR_AUD, basicAuth, startTestWrit, type TestWrit } from '../support/harness.ts';

/** PostgreSQL going away under Writ: fail closed with 503, never a token; recover by itself. */
describe('PostgreSQL unavailable', () => {
  let t: TestWrit;
  let admin: pg.Client;
  let dbName: string;
  beforeAll(async () => {
    t = await startTestWrit({ name: 'outage' });
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

  it('answers 503 with Retry-After and issues nothing; recovers without a restart', async () => {
    const subject = await t.idp.token(t.issuer);
    const before = await t.exchange('planner-agent', { subject_token: subject, subject_token_type: AT, audience: EXECUTOR_AUD });
    expect(before.status).toBe(200);
    const granted = Number((await t.writ.db.knex('audit_events').where({ type: 'exchange.granted' }).count('* as n'))[0]!.n);

    await cutOff();
    const started = Date.now();
    const during = await t.exchange('planner-agent', { subject_token: await t.idp.token(t.issuer), subject_token_type: AT, audience: EXECUTOR_AUD });
    expect(Date.now() - started).toBeLessThan(2500);
    expect(during.status).toBe(503);
    expect(during.body).toMatchObject({ error: 'temporarily_unavailable' });
    expect(during.body.access_token).toBeUndefined();
    expect(during.headers.get('retry-after')).toBe('1');

    // Revocation must not answer 200 unless persisted (RFC 7009 §2.2.1).
    const revoke = await t.post('/token/revocation', { token: before.body.access_token as string }, basicAuth('planner-agent'));
    expect(revoke.status).toBe(503);
    // Once the revoked set can no longer be kept current, introspection refuses to say active.
    await expect.poll(async () => (await t.post('/token/introspection', { token: before.body.access_token as string }, basicAuth('executor-agent'))).status, { timeout: 3000, interval: 100 }).toBe(503);
    expect((await fetch(`${t.url}/readyz`)).status).toBe(503);

    await admin.query(`ALTER DATABASE "${dbName}" WITH ALLOW_CONNECTIONS true`);
    const back = Date.now();
    await expect.poll(async () => (await t.exchange('planner-agent', { subject_token: await t.idp.token(t.issuer), subject_token_type: AT, audience: EXECUTOR_AUD })).status, { timeout: 5000, interval: 200 }).toBe(200);
    expect(Date.now() - back).toBeLessThan(5000);
    await expect.poll(async () => (await fetch(`${t.url}/readyz`)).status, { timeout: 5000, interval: 100 }).toBe(200);
    // Every token that left has its audit row: exactly the grants made while PostgreSQL was up.
    const lineage = Number((await t.writ.db.knex('token_lineage').count('* as n'))[0]!.n);
    const grantsNow = Number((await t.writ.db.knex('audit_events').where({ type: 'exchange.granted' }).count('* as n'))[0]!.n);
    expect(grantsNow).toBe(granted + 1);
    expect(lineage).toBe(grantsNow);
  }, 30_000);
});
