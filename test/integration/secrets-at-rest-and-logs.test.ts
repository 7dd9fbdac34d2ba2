import { Writable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '../../src/log.ts';
import { createWrit, type Writ } from '../../src/server.ts';
import { loadConfig } from '../../src/config.ts';
import { applyPolicyFiles } from '../../src/policy/apply.ts';
import { AT, EXECUTOR_AUD, PAYMENTS, SECRETS, TestIdp, basicAuth, createTestDatabase, examplePolicyFor, freePort } from '../support/harness.ts';

/** Secrets never reach logs; keys at rest are encrypted; client secrets are stored only hashed. */
describe('secrets', () => {
  const lines: string[] = [];
  let writ: Writ;
  let url: string;
  let idp: TestIdp;
  let issuer: string;
  beforeAll(async () => {
    const port = await freePort();
    issuer = `http://localhost:${port}`;
    const config = loadConfig({
      WRIT_ISSUER: issuer, PORT: String(port), WRIT_DATA_DIR: '/tmp/writ-secrets-test', WRIT_KEK: Buffer.alloc(32, 9).toString('base64'),
      DATABASE_URL: await createTestDatabase('secrets'), LOG_LEVEL: 'trace',
    });
    const sink = new Writable({ write(chunk, _enc, done) { lines.push(String(chunk)); done(); } });
    writ = await createWrit(config, createLogger('trace', sink), { pollMs: 100 });
    url = await writ.listen();
    idp = await TestIdp.create();
    const applied = await applyPolicyFiles(writ.db.knex, [{ name: 'example.yaml', text: examplePolicyFor(idp) }], {
      env: SECRETS, selfIssuer: issuer, maxTtl: 900, appliedBy: 'test', message: '', secretKey: writ.derived.clientSecret,
    });
    expect(applied.ok).toBe(true);
    await writ.policy.reload();
  });
  afterAll(async () => writ?.close());

  const post = async (path: string, form: Record<string, string>, auth?: string) => {
    const response = await fetch(`${url}${path}`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded', ...(auth ? { authorization: auth } : {}) },
      body: new URLSearchParams(form),
    });
    return { status: response.status, body: await response.json().catch(() => ({})) as Record<string, unknown> };
  };

  it('no token, secret or key material appears in any log line', async () => {
    const subject = await idp.token(issuer);
    const exchanged = await post('/token', { grant_type: 'urn:ietf:params:oauth:grant-type:token-exchange', subject_token: subject, subject_token_type: AT, audience: EXECUTOR_AUD }, basicAuth('planner-agent'));
    expect(exchanged.status).toBe(200);
    const token = exchanged.body.access_token as string;
    await post('/token', { grant_type: 'urn:ietf:params:oauth:grant-type:token-exchange', subject_token: token, subject_token_type: AT, audience: PAYMENTS }, basicAuth('executor-agent'));
    await post('/token', { grant_type: 'urn:ietf:params:oauth:grant-type:token-exchange', subject_token: subject, subject_token_type: AT, audience: PAYMENTS, client_id: 'planner-agent', client_secret: 'wrong-secret-wrong-secret-wrong-secret!' });
    await post('/token/introspection', { token }, basicAuth('executor-agent'));
    await post('/token/revocation', { token }, basicAuth('planner-agent'));
    await writ.auditQueue.flush();
    const log = lines.join('');
    expect(lines.length).toBeGreaterThan(4);
    for (const secret of [subject, token, ...token.split('.'), ...Object.values(SECRETS), 'wrong-secret-wrong-secret', Buffer.from(`planner-agent:${SECRETS.PLANNER_SECRET}`).toString('base64')]) {
      expect(log).not.toContain(secret);
    }
    for (const key of writ.keys.current().byKid.values()) expect(log).not.toContain(String(key.privateJwk.d));
    // Nor in the audit record.
    const audit = JSON.stringify(await writ.db.knex('audit_events').select());
    expect(audit).not.toContain(subject);
    expect(audit).not.toContain(token.split('.')[2]!);
  });

  it('signing keys are stored encrypted and client secrets only as keyed hashes', async () => {
    const rows = await writ.db.knex('signing_keys').select();
    expect(rows.length).toBeGreaterThanOrEqual(3);
    for (const row of rows as Array<{ kid: string; private_jwk_enc: string; public_jwk: Record<string, unknown> }>) {
      const key = writ.keys.current().byKid.get(row.kid)!;
      expect(row.private_jwk_enc).toMatch(/^v1\./);
      expect(row.private_jwk_enc).not.toContain(String(key.privateJwk.d));
      expect(row.public_jwk.d).toBeUndefined();
    }
    const jwks = await (await fetch(`${url}/jwks`)).json() as { keys: Array<Record<string, unknown>> };
    for (const k of jwks.keys) expect(k.d).toBeUndefined();
    const credentials = JSON.stringify(await writ.db.knex('client_credentials').select());
    for (const secret of Object.values(SECRETS)) expect(credentials).not.toContain(secret);
    const versions = JSON.stringify(await writ.db.knex('policy_versions').select());
    for (const secret of Object.values(SECRETS)) expect(versions).not.toContain(secret);
  });
});
