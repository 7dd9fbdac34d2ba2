import { decodeJwt } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AT, EXECUTOR_AUD, PAYMENTS, basicAuth, startTestWrit, type TestWrit } from '../support/harness.ts';
import { expectDenied } from '../support/expect.ts';

describe('introspection (RFC 7662) and revocation (RFC 7009)', () => {
  let t: TestWrit;
  beforeAll(async () => {
    t = await startTestWrit({ name: 'introspect' });
  });
  afterAll(async () => t?.close());

  async function chain(task?: string): Promise<{ hop1: string; hop2: string }> {
    const user = await t.idp.token(t.issuer);
    const r1 = await t.exchange('planner-agent', { subject_token: user, subject_token_type: AT, audience: EXECUTOR_AUD, ...(task ? { task_id: task } : {}) });
    expect(r1.status).toBe(200);
    const r2 = await t.exchange('executor-agent', { subject_token: r1.body.access_token as string, subject_token_type: AT, audience: PAYMENTS });
    expect(r2.status).toBe(200);
    return { hop1: r1.body.access_token as string, hop2: r2.body.access_token as string };
  }

  it('an active answer carries the token’s claims and is not cached', async () => {
    const { hop2 } = await chain('task-a');
    const res = await t.post('/token/introspection', { token: hop2 }, basicAuth('payments-api'));
    expect(res.status).toBe(200);
    expect(res.headers.get('cache-control')).toContain('no-store');
    expect(res.headers.get('pragma')).toBe('no-cache');
    const claims = decodeJwt(hop2);
    expect(res.body).toEqual({
      active: true, iss: t.issuer, sub: 'alice', sub_id: claims.sub_id, aud: PAYMENTS, client_id: 'executor-agent',
      scope: 'payment.read', exp: claims.exp, iat: claims.iat, jti: claims.jti,
      act: { sub: 'executor-agent', act: { sub: 'planner-agent' } }, task_id: 'task-a', token_type: 'Bearer',
    });
    const rows = await t.auditRows({ type: 'introspection', jti: claims.jti });
    expect(rows.map((r) => [r.client_id, r.outcome])).toEqual([['payments-api', 'active']]);
  });

  it('only a caller owning the token’s audience sees it; everyone else gets exactly {active:false}', async () => {
    const { hop1, hop2 } = await chain();
    expect(await t.introspect('executor-agent', hop1)).toMatchObject({ active: true });
    expect(await t.introspect('planner-agent', hop2)).toEqual({ active: false });
    expect(await t.introspect('executor-agent', hop2)).toEqual({ active: false });
    expect(await t.introspect('payments-api', hop1)).toEqual({ active: false });
  });

  it('garbage, foreign and tampered tokens are inactive, never an error', async () => {
    const { hop2 } = await chain();
    const [h, p, s] = hop2.split('.') as [string, string, string];
    const tampered = `${h}.${Buffer.from(JSON.stringify({ ...decodeJwt(hop2), scope: 'payment.transfer' })).toString('base64url')}.${s}`;
    for (const token of ['not-a-token', tampered, `${h}.${p}.`, await t.idp.token(PAYMENTS)]) {
      expect(await t.introspect('payments-api', token)).toEqual({ active: false });
    }
  });

  it('requires client authentication and POST', async () => {
    const { hop2 } = await chain();
    const res = await t.post('/token/introspection', { token: hop2 });
    expect(res.status).toBe(401);
    expect(res.body.error).toBe('invalid_client');
    expect((await fetch(`${t.url}/token/introspection`)).status).toBe(405);
    const missing = await t.post('/token/introspection', {}, basicAuth('payments-api'));
    expect(missing.status).toBe(400);
    expect(missing.body.error).toBe('invalid_request');
  });

  it('revoking a token revokes everything derived from it, at once', async () => {
    const { hop1, hop2 } = await chain();
    const res = await t.post('/token/revocation', { token: hop1 }, basicAuth('planner-agent'));
    expect(res.status).toBe(200);
    // Persisted before the 200, and applied to this instance's own set by then (RFC 7009 §2:
    // the token is unusable once the 200 is sent), not only when its NOTIFY comes round.
    const jti2 = decodeJwt(hop2).jti as string;
    expect(await t.writ.db.knex('revocations').where({ kind: 'jti', value: jti2 }).first()).toBeTruthy();
    expect(await t.introspect('payments-api', hop2)).toEqual({ active: false });
    expect(await t.introspect('executor-agent', hop1)).toEqual({ active: false });
    const [event] = await t.auditRows({ type: 'revocation', jti: decodeJwt(hop1).jti });
    expect(event!.details).toMatchObject({ revoked: 2, derived: 1 });
  });

  it('an agent may revoke tokens derived from its own, not others’; a tool may revoke nothing', async () => {
    const { hop1, hop2 } = await chain();
    // The executor did not take part in obtaining hop1.
    const refused = await t.post('/token/revocation', { token: hop1 }, basicAuth('executor-agent'));
    await expectDenied(t, refused, 'unauthorized_client', 'not_permitted');
    expect(await t.introspect('executor-agent', hop1)).toMatchObject({ active: true });
    const tool = await t.post('/token/revocation', { token: hop2 }, basicAuth('payments-api'));
    await expectDenied(t, tool, 'unauthorized_client', 'not_permitted');
    expect(await t.introspect('payments-api', hop2)).toMatchObject({ active: true });
    // The planner obtained hop1, from which hop2 derives.
    expect((await t.post('/token/revocation', { token: hop2 }, basicAuth('planner-agent'))).status).toBe(200);
    expect(await t.introspect('payments-api', hop2)).toEqual({ active: false });
    expect(await t.introspect('executor-agent', hop1)).toMatchObject({ active: true });
  });

  it('unknown or invalid tokens are answered 200 (no oracle)', async () => {
    const res = await t.post('/token/revocation', { token: 'whatever' }, basicAuth('planner-agent'));
    expect([res.status, res.body]).toEqual([200, {}]);
    // Nothing was revoked, so nothing is recorded (RFC 7009 §2.2).
    expect(await t.auditRows({ request_id: res.headers.get('x-request-id') })).toEqual([]);
  });

  it('task revocation ends every token of the task and refuses further exchanges in it', async () => {
    const { hop1, hop2 } = await chain('task-end');
    const other = await chain('task-other');
    const res = await t.post('/task/revocation', { task_id: 'task-end' }, basicAuth('executor-agent'));
    expect(res.status).toBe(200);
    expect(await t.introspect('payments-api', hop2)).toEqual({ active: false });
    expect(await t.introspect('executor-agent', hop1)).toEqual({ active: false });
    expect(await t.introspect('payments-api', other.hop2)).toMatchObject({ active: true });
    const again = await t.exchange('planner-agent', { subject_token: await t.idp.token(t.issuer), subject_token_type: AT, audience: EXECUTOR_AUD, task_id: 'task-end' });
    expect(again.status).toBe(400);
    expect(again.body.error).toBe('invalid_request');
    // A task the client never took part in is not its to end.
    const foreign = await t.post('/task/revocation', { task_id: 'task-other' }, basicAuth('payments-api'));
    await expectDenied(t, foreign, 'unauthorized_client', 'not_permitted');
    expect(await t.introspect('payments-api', other.hop2)).toMatchObject({ active: true });
  });

  it('a revocation holds at this instance from its 200, without waiting for its NOTIFY or the poll', async () => {
    const { hop1, hop2 } = await chain();
    const task = await chain('task-quiet');
    // Deaf to the feed every other instance relies on: only what the revocation itself applied counts.
    await t.writ.revocations.stop();
    try {
      expect((await t.post('/token/revocation', { token: hop1 }, basicAuth('planner-agent'))).status).toBe(200);
      expect(await t.introspect('payments-api', hop2)).toEqual({ active: false });
      expect((await t.post('/task/revocation', { task_id: 'task-quiet' }, basicAuth('executor-agent'))).status).toBe(200);
      expect(await t.introspect('payments-api', task.hop2)).toEqual({ active: false });
    } finally {
      await t.writ.revocations.start();
    }
  });

  it('a token minted while its parent is being revoked cannot escape the revocation', async () => {
    for (let round = 0; round < 5; round++) {
      const { hop1 } = await chain();
      const exchanges = Array.from({ length: 8 }, () => t.exchange('executor-agent', { subject_token: hop1, subject_token_type: AT, audience: PAYMENTS }));
      const revocation = t.post('/token/revocation', { token: hop1 }, basicAuth('planner-agent'));
      const results = await Promise.all(exchanges);
      expect((await revocation).status).toBe(200);
      for (const r of results.filter((x) => x.status === 200)) {
        expect(await t.introspect('payments-api', r.body.access_token as string)).toEqual({ active: false });
      }
      for (const r of results.filter((x) => x.status !== 200)) expect(r.body.error).toBe('invalid_request');
    }
  });
});

describe('revocation across instances and restarts', () => {
  it('a second instance sees a revocation within 1 s, and it survives a restart', async () => {
    const a = await startTestWrit({ name: 'multi' });
    // Instances on one database share its issuer (b listens on a port of its own).
    const b = await startTestWrit({ name: 'multi-b', databaseUrl: a.databaseUrl!, idp: a.idp, applyExample: false, issuer: a.issuer });
    try {
      const user = await a.idp.token(a.issuer);
      const hop1 = await a.exchange('planner-agent', { subject_token: user, subject_token_type: AT, audience: EXECUTOR_AUD });
      expect(hop1.status).toBe(200);
      const token = hop1.body.access_token as string;
      expect(await a.introspect('executor-agent', token)).toMatchObject({ active: true });
      const jti = decodeJwt(token).jti as string;
      expect(b.writ.revocations.isJtiRevoked(jti)).toBe(false);
      const started = Date.now();
      expect((await a.post('/token/revocation', { token }, basicAuth('planner-agent'))).status).toBe(200);
      await expect.poll(() => b.writ.revocations.isJtiRevoked(jti), { timeout: 1000, interval: 10 }).toBe(true);
      expect(Date.now() - started).toBeLessThan(1000);
      await a.close();
      const restarted = await startTestWrit({ name: 'multi-c', databaseUrl: a.databaseUrl!, idp: a.idp, applyExample: false, port: Number(new URL(a.issuer).port) });
      try {
        expect(await restarted.introspect('executor-agent', token)).toEqual({ active: false });
        // Keys survived the restart too: a fresh exchange verifies against the same JWKS.
        const again = await restarted.exchange('planner-agent', { subject_token: await a.idp.token(a.issuer), subject_token_type: AT, audience: EXECUTOR_AUD });
        expect(again.status).toBe(200);
        expect(await restarted.introspect('executor-agent', again.body.access_token as string)).toMatchObject({ active: true });
      } finally {
        await restarted.close();
      }
    } finally {
      await b.close();
      await a.close().catch(() => undefined);
    }
  });
});
