import { decodeJwt } from 'jose';
import { randomBytes } from 'node:crypto';
import { rmSync } from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { AT, EXECUTOR_AUD, PAYMENTS, basicAuth, startTestWrit, TestIdp } from '../support/harness.ts';

/** The default deployment: no DATABASE_URL, PGlite in the data dir. */
describe('embedded database (PGlite)', () => {
  const dataDir = path.join('/tmp', `writ-embedded-${randomBytes(4).toString('hex')}`);
  afterAll(() => rmSync(dataDir, { recursive: true, force: true }));

  it('runs the chain, and keys, policy and revocations survive a restart', async () => {
    const idp = await TestIdp.create();
    const first = await startTestWrit({ name: 'embedded', embedded: true, dataDir, idp });
    let hop1: string;
    let hop2: string;
    try {
      expect(first.writ.db.kind).toBe('embedded');
      const r1 = await first.exchange('planner-agent', { subject_token: await idp.token(first.issuer), subject_token_type: AT, audience: EXECUTOR_AUD });
      expect(r1.status).toBe(200);
      hop1 = r1.body.access_token as string;
      const r2 = await first.exchange('executor-agent', { subject_token: hop1, subject_token_type: AT, audience: PAYMENTS });
      expect(r2.status).toBe(200);
      hop2 = r2.body.access_token as string;
      expect(await first.introspect('payments-api', hop2)).toMatchObject({ active: true, act: { sub: 'executor-agent', act: { sub: 'planner-agent' } } });
      expect((await first.post('/token/revocation', { token: hop1 }, basicAuth('planner-agent'))).status).toBe(200);
      await expect.poll(() => first.introspect('payments-api', hop2), { timeout: 1000, interval: 20 }).toEqual({ active: false });
      const rows = await first.auditRows({ type: 'exchange.granted' });
      expect(rows.map((r) => r.jti)).toEqual([decodeJwt(hop1).jti, decodeJwt(hop2).jti]);
    } finally {
      await first.close();
    }
    const again = await startTestWrit({ name: 'embedded', embedded: true, dataDir, idp, applyExample: false, port: Number(new URL(first.issuer).port) });
    try {
      expect(again.writ.policy.policy.version).toBe(1);
      expect(await again.introspect('payments-api', hop2)).toEqual({ active: false });
      const fresh = await again.exchange('planner-agent', { subject_token: await idp.token(again.issuer), subject_token_type: AT, audience: EXECUTOR_AUD });
      expect(fresh.status).toBe(200);
      expect(await again.introspect('executor-agent', fresh.body.access_token as string)).toMatchObject({ active: true });
    } finally {
      await again.close();
    }
  }, 60_000);
});
