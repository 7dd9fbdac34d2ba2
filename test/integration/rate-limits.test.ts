import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AT, PAYMENTS, TX, basicAuth, examplePolicyFor, startTestWrit, type TestWrit } from '../support/harness.ts';

/** Limits set in policy, counted per instance: 429 with Retry-After and RateLimit headers. */
describe('rate limits', () => {
  let t: TestWrit;
  beforeAll(async () => {
    t = await startTestWrit({ name: 'ratelimits', applyExample: false });
    const text = examplePolicyFor(t.idp)
      .replace('  - client_id: planner-agent\n', '  - client_id: planner-agent\n    rate_limit: { per_second: 0.5, burst: 3 }\n')
      .concat('\nsettings:\n  subject_rate_limit: { per_second: 0.5, burst: 4 }\n  auth_failure_limit: { per_second: 0.5, burst: 5 }\n');
    await t.apply([{ name: 'example.yaml', text }]);
  });
  afterAll(async () => t?.close());

  const exchange = async (clientId: string, sub: string, audience = PAYMENTS) => t.exchange(clientId, {
    subject_token: await t.idp.token(t.issuer, { sub }), subject_token_type: AT, audience,
  });

  it('a client over its limit gets 429 and no token; other clients are not affected', async () => {
    const results = [];
    for (let i = 0; i < 4; i++) results.push(await exchange('planner-agent', `user-${i}`));
    expect(results.slice(0, 3).map((r) => r.status)).toEqual([200, 200, 200]);
    expect(results[0]!.headers.get('ratelimit-limit')).toBe('3');
    expect(results[2]!.headers.get('ratelimit-remaining')).toBe('0');
    const limited = results[3]!;
    expect(limited.status).toBe(429);
    expect(limited.body.error).toBe('temporarily_unavailable');
    expect(limited.body.access_token).toBeUndefined();
    expect(Number(limited.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
    expect(limited.headers.get('ratelimit-remaining')).toBe('0');
    expect((await t.auditRows({ request_id: limited.headers.get('x-request-id') })).map((r) => r.reason)).toEqual(['rate_limited']);
    // Asking again at once, ignoring Retry-After: the refusal comes only when it was told to retry.
    const wait = Number(limited.headers.get('retry-after'));
    const early = performance.now();
    const again = await exchange('planner-agent', 'user-early');
    expect(again.status).toBe(429);
    expect(again.body.access_token).toBeUndefined();
    expect(performance.now() - early).toBeGreaterThanOrEqual(wait * 1000 - 400);
    // Having waited as told, a client is answered at once.
    await new Promise((r) => setTimeout(r, 1000));
    const patient = performance.now();
    expect((await exchange('planner-agent', 'user-patient')).status).toBe(200);
    expect(performance.now() - patient).toBeLessThan(1000);
    // The executor has no limit of its own.
    const hop = await t.post('/token', { grant_type: TX, subject_token: await t.idp.token(t.issuer, { sub: 'zed' }), subject_token_type: AT, audience: PAYMENTS }, basicAuth('executor-agent'));
    expect(hop.status).not.toBe(429);
  });

  it('a subject over its limit is refused whichever client asks', async () => {
    const token = await t.idp.token(t.issuer, { sub: 'busy-user' });
    const statuses: number[] = [];
    for (const client of ['executor-agent', 'executor-agent', 'executor-agent', 'executor-agent', 'executor-agent']) {
      // The executor has no rule for a direct exchange: each attempt is a 400, but counts.
      statuses.push((await t.post('/token', { grant_type: TX, subject_token: token, subject_token_type: AT, audience: PAYMENTS }, basicAuth(client))).status);
    }
    expect(statuses.slice(0, 4)).toEqual([400, 400, 400, 400]);
    expect(statuses[4]).toBe(429);
    // Another subject, through the same client, is not limited.
    expect((await exchange('executor-agent', 'calm-user')).status).toBe(400);
  });

  it('failed client authentications are limited per client id and source, before any secret is checked', async () => {
    const wrong = basicAuth('payments-api', 'w'.repeat(40));
    const statuses: number[] = [];
    for (let i = 0; i < 6; i++) statuses.push((await t.post('/token/introspection', { token: 'x' }, wrong)).status);
    expect(statuses).toEqual([401, 401, 401, 401, 401, 429]);
    // Even the right secret is not checked now: the client id's bucket is empty.
    const right = await t.post('/token/introspection', { token: 'x' }, basicAuth('payments-api'));
    expect(right.status).toBe(429);
    expect(Number(right.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
    // Refusals under a flood are recorded in aggregate: the first of each window at once.
    const rows = await t.auditRows({ reason: 'auth_rate_limited' });
    expect(rows.length).toBeGreaterThanOrEqual(1);
    expect(rows[0]!.details).toMatchObject({ claimed_client_id: 'payments-api', first_of_window: true });
    expect(JSON.stringify(rows)).not.toContain('w'.repeat(40));
  });
});
