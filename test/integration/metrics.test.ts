import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '../../src/log.ts';
import { createWrit, type Writ } from '../../src/server.ts';
import { loadConfig } from '../../src/config.ts';
import { applyPolicyFiles } from '../../src/policy/apply.ts';
import { AT, EXAMPLE_POLICY, EXECUTOR_AUD, PAYMENTS, SECRETS, TX, TestIdp, basicAuth, createTestDatabase, examplePolicyFor, freePort } from '../support/harness.ts';

describe('Prometheus metrics on their own listener', () => {
  let writ: Writ;
  let url: string;
  let metricsUrl: string;
  let idp: TestIdp;
  let issuer: string;
  beforeAll(async () => {
    const [port, metricsPort] = [await freePort(), await freePort()];
    issuer = `http://localhost:${port}`;
    const config = loadConfig({
      WRIT_ISSUER: issuer, PORT: String(port), WRIT_DATA_DIR: '/tmp/writ-metrics-test', WRIT_KEK: Buffer.alloc(32, 3).toString('base64'),
      DATABASE_URL: await createTestDatabase('metrics'), WRIT_METRICS_ADDR: `127.0.0.1:${metricsPort}`, LOG_LEVEL: 'silent',
    });
    writ = await createWrit(config, createLogger('silent'), { metrics: true });
    url = await writ.listen();
    metricsUrl = `http://127.0.0.1:${metricsPort}/metrics`;
    idp = await TestIdp.create();
    expect((await applyPolicyFiles(writ.db.knex, [{ name: 'example.yaml', text: examplePolicyFor(idp) }], {
      env: SECRETS, selfIssuer: issuer, maxTtl: 900, appliedBy: 'test', message: '', secretKey: writ.derived.clientSecret,
    })).ok).toBe(true);
    await writ.policy.reload();
  });
  afterAll(async () => writ?.close());

  const post = (path: string, form: Record<string, string>, auth: string) => fetch(`${url}${path}`, {
    method: 'POST', headers: { authorization: auth, 'content-type': 'application/x-www-form-urlencoded' }, body: new URLSearchParams(form),
  }).then(async (r) => ({ status: r.status, body: await r.json().catch(() => ({})) as Record<string, unknown> }));

  it('counts exchanges by outcome, reason, audience and agent, and introspections by what they found', async () => {
    const user = await idp.token(issuer);
    const granted = await post('/token', { grant_type: TX, subject_token: user, subject_token_type: AT, audience: EXECUTOR_AUD }, basicAuth('planner-agent'));
    expect(granted.status).toBe(200);
    await post('/token', { grant_type: TX, subject_token: user, subject_token_type: AT, audience: PAYMENTS, scope: 'payment.transfer' }, basicAuth('planner-agent'));
    await post('/token', { grant_type: TX, subject_token: user, subject_token_type: AT, audience: 'https://made-up.example.com/x' }, basicAuth('planner-agent'));
    await post('/token/introspection', { token: granted.body.access_token as string }, basicAuth('executor-agent'));
    await post('/token/introspection', { token: 'garbage' }, basicAuth('payments-api'));
    await post('/token/introspection', { token: granted.body.access_token as string }, basicAuth('payments-api'));
    const response = await fetch(metricsUrl);
    expect(response.status).toBe(200);
    const text = await response.text();
    expect(text).toContain(`writ_exchanges_total{outcome="granted",reason="granted",audience="${EXECUTOR_AUD}",client="planner-agent"} 1`);
    expect(text).toContain(`writ_exchanges_total{outcome="denied",reason="scope_not_allowed",audience="${PAYMENTS}",client="planner-agent"} 1`);
    // An audience the policy does not know never becomes a label value.
    expect(text).toContain('writ_exchanges_total{outcome="denied",reason="unknown_audience",audience="other",client="planner-agent"} 1');
    expect(text).not.toContain('made-up.example.com');
    expect(text).toMatch(/writ_exchange_duration_seconds_count \d+/);
    expect(text).toMatch(/writ_decision_duration_seconds_count [1-9]/);
    // The two denials' audit events went through the refusals' group commit.
    expect(text).toMatch(/writ_audit_batch_size_count [2-9]/);
    expect(text).toContain('writ_introspections_total{active="true",client="executor-agent"} 1');
    expect(text).toContain('writ_introspections_suspicious_total{kind="invalid",client="payments-api"} 1');
    expect(text).toContain('writ_introspections_suspicious_total{kind="foreign",client="payments-api"} 1');
    expect(text).toMatch(/writ_policy_version \d+/);
    expect(text).toContain('writ_revocations_fresh 1');
    // The one user token was presented three times: its signature was verified once.
    expect(text).toContain('# TYPE writ_signature_cache_misses_total counter');
    expect(text).toContain('# TYPE writ_signature_cache_hits_total counter');
    expect(text).toContain('# TYPE writ_audit_queue_dropped_total counter');
    expect(text).toContain('writ_signature_cache_misses_total 1');
    expect(text).toContain('writ_signature_cache_hits_total 2');
    // The metrics listener serves nothing else, and the main listener does not serve metrics.
    expect((await fetch(metricsUrl.replace('/metrics', '/token'))).status).toBe(404);
    expect((await fetch(`${url}/metrics`)).status).toBe(404);
  });
  it('counts upstream JWKS fetches by issuer and outcome, failures included', async () => {
    // The example's IdP, its keys now at a JWKS address where nothing listens.
    const dead = await freePort();
    const text = EXAMPLE_POLICY.replace('https://idp.example.com/.well-known/jwks.json', `http://127.0.0.1:${dead}/jwks.json`);
    expect((await applyPolicyFiles(writ.db.knex, [{ name: 'example.yaml', text }], {
      env: SECRETS, selfIssuer: issuer, maxTtl: 900, appliedBy: 'test', message: 'dead jwks', secretKey: writ.derived.clientSecret,
    })).ok).toBe(true);
    await writ.policy.reload();
    const refused = await post('/token', { grant_type: TX, subject_token: await idp.token(issuer), subject_token_type: AT, audience: EXECUTOR_AUD }, basicAuth('planner-agent'));
    expect(refused.status).toBe(503);
    const text2 = await (await fetch(metricsUrl)).text();
    expect(text2).toContain('writ_jwks_fetches_total{issuer="https://idp.example.com",outcome="failed"} 1');
  });
});
