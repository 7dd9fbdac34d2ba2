import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AT, PAYMENTS, TX, basicAuth, examplePolicyFor, startTestWrit, type TestWrit } from '../support/harness.ts';

interface Limit { per_second: number; burst: number }
const CLIENT_LIMIT: Limit = { per_second: 0.5, burst: 3 };
const SUBJECT_LIMIT: Limit = { per_second: 0.5, burst: 4 };
const AUTH_FAILURE_LIMIT: Limit = { per_second: 0.5, burst: 5 };
/** Per source address: ten times the failure limit (src/http/rate-limit.ts: ADDRESS_FAILURE_FACTOR). */
const ADDRESS_LIMIT: Limit = { per_second: 5, burst: 50 };
const yaml = (l: Limit): string => `{ per_second: ${l.per_second}, burst: ${l.burst} }`;

/**
 * A 429 carries RFC 6585 Retry-After and the RateLimit fields of the bucket that refused it: its
 * size, nothing left, and whole seconds until it is full again, which is no sooner than the
 * retry (a failure bucket can be spent down to minus its burst, hence at most twice its refill).
 */
function expectRateLimited(res: { status: number; headers: Headers; body: Record<string, unknown> }, limit: Limit): void {
  expect(res.status).toBe(429);
  expect(res.body.error).toBe('temporarily_unavailable');
  const h = Object.fromEntries(['retry-after', 'ratelimit-limit', 'ratelimit-remaining', 'ratelimit-reset'].map((n) => [n, res.headers.get(n)]));
  expect(h).toEqual({
    'retry-after': expect.stringMatching(/^[1-9][0-9]*$/),
    'ratelimit-limit': String(limit.burst),
    'ratelimit-remaining': '0',
    'ratelimit-reset': expect.stringMatching(/^[1-9][0-9]*$/),
  });
  const reset = Number(h['ratelimit-reset']);
  expect(Number(h['retry-after'])).toBeLessThanOrEqual(reset);
  expect(reset).toBeLessThanOrEqual(Math.ceil((2 * limit.burst) / limit.per_second));
  // The same, as the structured fields of draft-ietf-httpapi-ratelimit-headers.
  expect(res.headers.get('ratelimit')).toBe(`"writ";r=0;t=${reset}`);
  expect(res.headers.get('ratelimit-policy')).toBe(`"writ";q=${limit.burst};w=${Math.max(1, Math.ceil(limit.burst / limit.per_second))}`);
}

/** Limits set in policy, counted per instance: 429 with Retry-After and RateLimit headers. */
describe('rate limits', () => {
  let t: TestWrit;
  beforeAll(async () => {
    // Behind a trusted proxy, so that each test can speak from addresses of its own.
    t = await startTestWrit({ name: 'ratelimits', applyExample: false, env: { WRIT_TRUST_PROXY: 'true' } });
    const text = examplePolicyFor(t.idp)
      .replace('  - client_id: planner-agent\n', `  - client_id: planner-agent\n    rate_limit: ${yaml(CLIENT_LIMIT)}\n`)
      .concat(`\nsettings:\n  subject_rate_limit: ${yaml(SUBJECT_LIMIT)}\n  auth_failure_limit: ${yaml(AUTH_FAILURE_LIMIT)}\n`);
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
    expectRateLimited(limited, CLIENT_LIMIT);
    expect(limited.body.access_token).toBeUndefined();
    expect((await t.auditRows({ request_id: limited.headers.get('x-request-id') })).map((r) => r.reason)).toEqual(['rate_limited']);
    // Asking again at once, ignoring Retry-After: the refusal comes only when it was told to retry.
    const wait = Number(limited.headers.get('retry-after'));
    const early = performance.now();
    const again = await exchange('planner-agent', 'user-early');
    expectRateLimited(again, CLIENT_LIMIT);
    expect(again.body.access_token).toBeUndefined();
    expect(performance.now() - early).toBeGreaterThanOrEqual(wait * 1000 - 400);
    // Having waited as told, a client is answered (the hold itself: test/unit/refusal-hold.test.ts).
    await new Promise((r) => setTimeout(r, 1000));
    expect((await exchange('planner-agent', 'user-patient')).status).toBe(200);
    // The executor has no limit of its own.
    const hop = await t.post('/token', { grant_type: TX, subject_token: await t.idp.token(t.issuer, { sub: 'zed' }), subject_token_type: AT, audience: PAYMENTS }, basicAuth('executor-agent'));
    expect(hop.status).not.toBe(429);
  });

  it('a subject over its limit is refused whichever client asks', async () => {
    const token = await t.idp.token(t.issuer, { sub: 'busy-user' });
    // The planner's own bucket (0.5/s), which the test before emptied, has a token again.
    await new Promise((r) => setTimeout(r, 2100));
    const answers: Array<Awaited<ReturnType<TestWrit['post']>>> = [];
    for (const client of ['planner-agent', 'executor-agent', 'executor-agent', 'executor-agent', 'executor-agent']) {
      // The executor has no rule for a direct exchange: each attempt is a 400, but counts.
      answers.push(await t.post('/token', { grant_type: TX, subject_token: token, subject_token_type: AT, audience: PAYMENTS }, basicAuth(client)));
    }
    expect(answers.map((a) => a.status)).toEqual([200, 400, 400, 400, 429]);
    expectRateLimited(answers[4]!, SUBJECT_LIMIT);
    expect(answers[4]!.body.access_token).toBeUndefined();
    // The executor's fourth try is refused for the subject's exchanges through both clients.
    const rows = await t.auditRows({ request_id: answers[4]!.headers.get('x-request-id') });
    expect(rows.map((r) => [r.type, r.reason, r.client_id])).toEqual([['exchange.denied', 'rate_limited', 'executor-agent']]);
    expect(rows[0]!.details).toMatchObject({ limit: 'subject' });
    // Another subject, through the same client, is not limited.
    expect((await exchange('executor-agent', 'calm-user')).status).toBe(400);
  });

  const from = (address: string, extra: Record<string, string> = {}) => ({ 'x-forwarded-for': address, ...extra });

  it('failed client authentications are limited per client id and source, before any secret is checked', async () => {
    const wrong = basicAuth('payments-api', 'w'.repeat(40));
    const answers = [];
    for (let i = 0; i < 6; i++) answers.push(await t.post('/token/introspection', { token: 'x' }, wrong, from('203.0.113.7')));
    expect(answers.map((a) => a.status)).toEqual([401, 401, 401, 401, 401, 429]);
    expectRateLimited(answers[5]!, AUTH_FAILURE_LIMIT);
    // Even the right secret is not checked now, from that address: its bucket is empty.
    const right = await t.post('/token/introspection', { token: 'x' }, basicAuth('payments-api'), from('203.0.113.7'));
    expectRateLimited(right, AUTH_FAILURE_LIMIT);
    // Refusals under a flood are recorded in aggregate: the first of each window at once.
    const rows = await t.auditRows({ reason: 'auth_rate_limited' });
    expect(rows.length).toBeGreaterThanOrEqual(1);
    expect(rows[0]!.details).toMatchObject({ claimed_client_id: 'payments-api', first_of_window: true });
    expect(JSON.stringify(rows)).not.toContain('w'.repeat(40));
  });

  it('wrong secrets sent in a client’s name elsewhere do not lock the client out', async () => {
    const guesses = [];
    for (let i = 0; i < 6; i++) guesses.push(await t.post('/token/introspection', { token: 'x' }, basicAuth('introspector-x', 'w'.repeat(40)), from('203.0.113.8')));
    expect(guesses.map((a) => a.status)).toEqual([401, 401, 401, 401, 401, 429]);
    expectRateLimited(guesses[5]!, AUTH_FAILURE_LIMIT);
    const attacker = await t.post('/token/introspection', { token: 'x' }, basicAuth('payments-api', 'w'.repeat(40)), from('203.0.113.8'));
    expect(attacker.status).toBe(401);
    const more = [];
    for (let i = 0; i < 5; i++) more.push(await t.post('/token/introspection', { token: 'x' }, basicAuth('payments-api', 'w'.repeat(40)), from('203.0.113.8')));
    expect(more.map((a) => a.status)).toEqual([401, 401, 401, 401, 429]);
    expectRateLimited(more[4]!, AUTH_FAILURE_LIMIT);
    expectRateLimited(await t.post('/token/introspection', { token: 'x' }, basicAuth('payments-api'), from('203.0.113.8')), AUTH_FAILURE_LIMIT);
    // The client itself, from its own address, is answered.
    const own = await t.post('/token/introspection', { token: 'x' }, basicAuth('payments-api'), from('198.51.100.9'));
    expect({ status: own.status, body: own.body }).toEqual({ status: 200, body: { active: false } });
  });

  it('a client authenticating in the body is limited per client id and source as well', async () => {
    const answers = [];
    for (let i = 0; i < 6; i++) {
      answers.push(await t.post('/token/introspection', { token: 'x', client_id: 'payments-api', client_secret: 'w'.repeat(40) }, undefined, from('203.0.113.11')));
    }
    expect(answers.map((a) => a.status)).toEqual([401, 401, 401, 401, 401, 429]);
    expectRateLimited(answers[5]!, AUTH_FAILURE_LIMIT);
    // The same bucket whichever way the client id is given; another address is not touched.
    expectRateLimited(await t.post('/token/introspection', { token: 'x' }, basicAuth('payments-api'), from('203.0.113.11')), AUTH_FAILURE_LIMIT);
    expect((await t.post('/token/introspection', { token: 'x', client_id: 'payments-api', client_secret: 'w'.repeat(40) }, undefined, from('198.51.100.10'))).status).toBe(401);
  });

  it('one address cannot try client ids without bound: ten times the limit, then every id is refused', async () => {
    // The address's budget: a burst of 50, refilled at 5/s while the guesses are sent, so the
    // first refusal comes after 50 failures plus what refilled meanwhile, and no later.
    const statuses: number[] = [];
    const started = performance.now();
    let last: Awaited<ReturnType<typeof t.post>> | undefined;
    while (statuses.length < 200 && !statuses.includes(429)) {
      last = await t.post('/token/introspection', { token: 'x' }, basicAuth(`guess-${statuses.length}`, 'w'.repeat(40)), from('203.0.113.9'));
      statuses.push(last.status);
    }
    const refilled = Math.ceil(((performance.now() - started) / 1000) * 5);
    const first = statuses.indexOf(429);
    expect(first).toBeGreaterThanOrEqual(50);
    expect(first).toBeLessThanOrEqual(50 + refilled);
    expect(statuses.slice(0, first).every((s) => s === 401)).toBe(true);
    expectRateLimited(last!, ADDRESS_LIMIT);
    expectRateLimited(await t.post('/token/introspection', { token: 'x' }, basicAuth('payments-api'), from('203.0.113.9')), ADDRESS_LIMIT);
  });

  it('an Authorization header the provider cannot read is a failed authentication: 401, and it spends the budget', async () => {
    // An empty secret names the client: its bucket for this address empties after the burst.
    const empty = `Basic ${Buffer.from('payments-api:').toString('base64')}`;
    const answers = [];
    for (let i = 0; i < 6; i++) answers.push(await t.post('/token/introspection', { token: 'x' }, empty, from('203.0.113.12')));
    expect(answers.map((a) => a.status)).toEqual([401, 401, 401, 401, 401, 429]);
    expectRateLimited(answers[5]!, AUTH_FAILURE_LIMIT);
    expectRateLimited(await t.post('/token/introspection', { token: 'x' }, basicAuth('payments-api'), from('203.0.113.12')), AUTH_FAILURE_LIMIT);
    // The refusal is recorded at the endpoint the client called, task revocation included
    // (which runs through the revocation route).
    // (The bucket refills meanwhile: a 401 may come first, and spends what refilled.)
    let task = await t.post('/task/revocation', { task_id: 't-1' }, empty, from('203.0.113.12'));
    for (let i = 0; i < 5 && task.status === 401; i++) task = await t.post('/task/revocation', { task_id: 't-1' }, empty, from('203.0.113.12'));
    expectRateLimited(task, AUTH_FAILURE_LIMIT);
    expect((await t.auditRows({ request_id: task.headers.get('x-request-id') })).map((r) => [r.reason, (r.details as { endpoint: string }).endpoint]))
      .toEqual([['auth_rate_limited', '/task/revocation']]);
    const rows = await t.auditRows({ reason: 'client_auth_failed' });
    expect(rows.filter((r) => (r.details as { source_ip?: string; endpoint: string }).source_ip === '203.0.113.12' && (r.details as { endpoint: string }).endpoint === '/token/introspection')).toHaveLength(5);
    // Another scheme names nobody: the address's own budget (ten times the burst) runs out.
    const others: number[] = [];
    const started = performance.now();
    let other: Awaited<ReturnType<typeof t.post>> | undefined;
    while (others.length < 200 && !others.includes(429)) {
      other = await t.post('/token/introspection', { token: 'x' }, 'Bearer abc', from('203.0.113.13'));
      others.push(other.status);
    }
    const refilled = Math.ceil(((performance.now() - started) / 1000) * 5);
    expect(others.indexOf(429)).toBeGreaterThanOrEqual(50);
    expect(others.indexOf(429)).toBeLessThanOrEqual(50 + refilled);
    expect(others.slice(0, others.indexOf(429)).every((s) => s === 401)).toBe(true);
    expectRateLimited(other!, ADDRESS_LIMIT);
  });

  it('a request that offers no credential spends a budget of its own: it never locks out clients that authenticate', async () => {
    // Each is refused and recorded: past its own budget per address (ten times the burst), the
    // refusal is a 429, counted in aggregate.
    const statuses: number[] = [];
    const started = performance.now();
    let last: Awaited<ReturnType<typeof t.post>> | undefined;
    while (statuses.length < 200 && !statuses.includes(429)) {
      const form: Record<string, string> = statuses.length % 2 === 0 ? { token: 'x' } : { token: 'x', client_id: 'payments-api' };
      last = await t.post('/token/introspection', form, undefined, from('203.0.113.14'));
      statuses.push(last.status);
      if (last.status === 401) expect(last.headers.get('www-authenticate')).toMatch(/^Basic realm=/);
    }
    const refilled = Math.ceil(((performance.now() - started) / 1000) * 5);
    const first = statuses.indexOf(429);
    // The 429 is a rate limit's, not a challenge.
    expect(last!.headers.get('www-authenticate')).toBeNull();
    expectRateLimited(last!, ADDRESS_LIMIT);
    expect(first).toBeGreaterThanOrEqual(50);
    expect(first).toBeLessThanOrEqual(50 + refilled);
    expect(statuses.slice(0, first).every((s) => s === 401)).toBe(true);
    // Neither the address's failure budget nor the client's was spent: a client that waits for
    // the challenge, or shares the address, still gets in.
    const own = await t.post('/token/introspection', { token: 'x' }, basicAuth('payments-api'), from('203.0.113.14'));
    expect({ status: own.status, body: own.body }).toEqual({ status: 200, body: { active: false } });
  });

  it('a flood of GETs at the client endpoints: every one answered 405 and counted, past its budget in aggregate, and no other budget spent', async () => {
    const max = Number((await t.writ.db.knex('audit_events').max<Array<{ max: number | null }>>('id as max'))[0]?.max ?? 0);
    const N = 120;
    const statuses: number[] = [];
    for (let i = 0; i < N; i++) {
      statuses.push((await fetch(`${t.url}${i % 2 ? '/token' : '/token/introspection'}`, { headers: from('203.0.113.40') })).status);
    }
    expect(statuses.every((status) => status === 405)).toBe(true);
    const recorded = async (): Promise<Array<{ details: { more_refused?: number } }>> => {
      await t.writ.auditQueue.flush();
      return t.writ.db.knex('audit_events').where('id', '>', max).andWhere({ reason: 'method_not_allowed' }).select('details');
    };
    // A row per request within the address's budget (50 at once), then a first-of-window row and
    // the window's count: every request is accounted for, in far fewer rows.
    const counted = async (): Promise<number> => (await recorded()).reduce((n, row) => n + (row.details.more_refused ?? 1), 0);
    await expect.poll(counted, { timeout: 10_000, interval: 500 }).toBe(N);
    expect((await recorded()).length).toBeLessThan(N - 40);
    // The GETs spent a budget of their own: a credential-less POST from the address still gets
    // its challenge, and a client there still gets in.
    const bare = await t.post('/token/introspection', { token: 'x' }, undefined, from('203.0.113.40'));
    expect(bare.status).toBe(401);
    const own = await t.post('/token/introspection', { token: 'x' }, basicAuth('payments-api'), from('203.0.113.40'));
    expect({ status: own.status, body: own.body }).toEqual({ status: 200, body: { active: false } });
  }, 20_000);

  it('a client the provider names but does not authenticate spends the failure budget too', async () => {
    // Two mechanisms at once (an attestation header beside a client_id): the provider's 400.
    const claims = Buffer.from(JSON.stringify({ sub: 'executor-agent' })).toString('base64url');
    const headers = from('203.0.113.10', { 'oauth-client-attestation': `eyJhbGciOiJFUzI1NiJ9.${claims}.c2ln` });
    const answers = [];
    for (let i = 0; i < 6; i++) answers.push(await t.post('/token/introspection', { token: 'x', client_id: 'executor-agent' }, undefined, headers));
    expect(answers.map((a) => a.status)).toEqual([400, 400, 400, 400, 400, 429]);
    expectRateLimited(answers[5]!, AUTH_FAILURE_LIMIT);
  });
});
