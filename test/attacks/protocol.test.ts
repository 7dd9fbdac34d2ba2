import http from 'node:http';
import { generateKeyPairSync, sign as cryptoSign, randomBytes } from 'node:crypto';
import { decodeJwt } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  AT, EXECUTOR_AUD, PAYMENTS, TX, basicAuth, examplePolicyFor, startTestWrit, type TestWrit,
} from '../support/harness.ts';
import { expectDenied, lineageCount } from '../support/expect.ts';

/**
 * Protocol abuse at the token endpoint (RFC 6749 §3.2, RFC 8693 §2.1, RFC 9449; docs/standards.md X1,
 * X4, X10, B1, DP1) and at the introspection and revocation endpoints, over HTTP against
 * PostgreSQL with the docs/DESIGN.md example policy. Every refusal at the token endpoint asserts the
 * exact status and RFC error, that no token was minted, no-store, and the audit reason.
 */

type Res = Awaited<ReturnType<TestWrit['post']>>;
const ENDPOINTS = ['/token', '/token/introspection', '/token/revocation', '/task/revocation'] as const;

describe('protocol abuse over HTTP', () => {
  let t: TestWrit;
  beforeAll(async () => {
    t = await startTestWrit({ name: 'attacks_protocol', applyExample: false });
    // The example policy, with the failed-authentication limit (default 1/s, burst 10, per
    // source address) opened up: these tests send many bad credentials from one address on
    // purpose and must reach the code behind the limiter. The limiter has its own tests
    // (test/integration/rate-limits.test.ts).
    await t.apply([{ name: 'example.yaml', text: `${examplePolicyFor(t.idp)}\nsettings:\n  auth_failure_limit: { per_second: 100000, burst: 100000 }\n` }]);
  });
  afterAll(async () => {
    if (!t) return;
    const granted = await t.writ.db.knex('audit_events').where({ type: 'exchange.granted' }).count<Array<{ count: number }>>('* as count');
    expect(Number(granted[0]!.count)).toBe(await lineageCount(t));
    await t.close();
  });

  const user = (claims: Record<string, unknown> = {}): Promise<string> => t.idp.token(t.issuer, claims);
  const base = async (): Promise<Record<string, string>> => ({ grant_type: TX, subject_token: await user(), subject_token_type: AT, audience: PAYMENTS });
  const planner = (): string => basicAuth('planner-agent');

  /** Sends, then asserts the refusal and that the lineage did not grow. */
  async function refused(send: () => Promise<Res>, error: string, reason: string, status?: number): Promise<Res> {
    const n = await lineageCount(t);
    const res = await send();
    await expectDenied(t, res, error, reason, status);
    expect(await lineageCount(t)).toBe(n);
    return res;
  }

  async function raw(path: string, init: RequestInit): Promise<Res> {
    const response = await fetch(`${t.url}${path}`, init);
    const text = await response.text();
    let body: Record<string, unknown> = {};
    try {
      body = text ? JSON.parse(text) as Record<string, unknown> : {};
    } catch {
      body = { raw: text };
    }
    return { status: response.status, headers: response.headers, body };
  }

  // -------------------------------------------------------------------------------------------
  describe('duplicate parameters (RFC 6749 §3.2, RFC 8693 §2.1: only audience and resource repeat)', () => {
    const single = ['grant_type', 'subject_token', 'subject_token_type', 'actor_token', 'actor_token_type', 'requested_token_type', 'scope', 'task_id'] as const;
    it.each(single)('%s twice, same value → invalid_request / duplicate_parameter', async (name) => {
      const form: Record<string, string | string[]> = { ...(await base()), actor_token: await user({ sub: 'bot-7' }), actor_token_type: AT, requested_token_type: AT, scope: 'payment.read', task_id: 't-1' };
      form[name] = [form[name] as string, form[name] as string];
      await refused(() => t.post('/token', form, planner()), 'invalid_request', 'duplicate_parameter');
    });
    it.each(single.filter((n) => n !== 'grant_type'))('%s twice, different values → invalid_request / duplicate_parameter', async (name) => {
      const values: Record<string, [string, string]> = {
        subject_token: [await user(), await user({ sub: 'admin' })],
        subject_token_type: [AT, 'urn:ietf:params:oauth:token-type:jwt'],
        actor_token: [await user({ sub: 'bot-7' }), await user({ sub: 'bot-8' })],
        actor_token_type: [AT, 'urn:ietf:params:oauth:token-type:jwt'],
        requested_token_type: [AT, 'urn:ietf:params:oauth:token-type:id_token'],
        scope: ['payment.read', 'payment.transfer'],
        task_id: ['t-1', 't-2'],
      };
      const form: Record<string, string | string[]> = { ...(await base()), ...(name.startsWith('actor') ? { actor_token: values.actor_token![0], actor_token_type: AT } : {}) };
      form[name] = values[name]!;
      await refused(() => t.post('/token', form, planner()), 'invalid_request', 'duplicate_parameter');
    });
    it('client_id twice (client_secret_post) → invalid_request / duplicate_parameter', async () => {
      await refused(async () => t.post('/token', { ...(await base()), client_id: ['planner-agent', 'planner-agent'], client_secret: 'planner-secret-0123456789abcdefghijklmnop' }), 'invalid_request', 'duplicate_parameter');
    });
    it('audience repeated with one value is one target (granted); two values → invalid_target', async () => {
      expect((await t.post('/token', { ...(await base()), audience: [PAYMENTS, PAYMENTS] }, planner())).status).toBe(200);
      await refused(async () => t.post('/token', { ...(await base()), audience: [PAYMENTS, EXECUTOR_AUD] }, planner()), 'invalid_target', 'target_multiple');
      await refused(async () => t.post('/token', { ...(await base()), resource: [PAYMENTS, `${PAYMENTS}/other`] }, planner()), 'invalid_target', 'target_multiple');
    });
    it('two client authentication methods at once → invalid_request', async () => {
      await refused(async () => t.post('/token', { ...(await base()), client_id: 'planner-agent', client_secret: 'planner-secret-0123456789abcdefghijklmnop' }, planner()), 'invalid_request', 'duplicate_parameter');
    });
    it('a body client_id naming another client than the Basic credentials → invalid_request', async () => {
      await refused(async () => t.post('/token', { ...(await base()), client_id: 'executor-agent' }, planner()), 'invalid_request', 'invalid_parameter');
    });
    // Regression: the provider's form parser (`querystring.parse`, maxKeys 1000) drops every
    // parameter after the 1000th, so a second subject_token and scope placed after 1000 junk (or
    // empty) parameters went unseen and the exchange was granted on the first values: a parser
    // differential with any gateway that reads the whole body (docs/DESIGN.md §7 request row,
    // docs/standards.md X1, X4). Writ's form guard refuses such a body before the provider.
    it('a duplicate hidden after 1,000 junk parameters is still a duplicate', async () => {
      const body = new URLSearchParams(await base());
      for (let i = 0; i < 1001; i++) body.append(`x${i}`, '1');
      body.append('subject_token', await user({ sub: 'admin' }));
      body.append('scope', 'payment.transfer');
      // node:querystring would drop every key after the 1,000th; Writ refuses such a body whole.
      await refused(() => raw('/token', { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded', authorization: planner() }, body }), 'invalid_request', 'invalid_parameter');
    });
    it('a duplicate hidden after 1,000 empty parameters is still a duplicate', async () => {
      // node:querystring spends its key budget on `&&` as on `x=1&`.
      const body = `${new URLSearchParams(await base()).toString()}${'&'.repeat(1001)}&${new URLSearchParams({ subject_token: await user({ sub: 'admin' }), scope: 'payment.transfer' }).toString()}`;
      await refused(() => raw('/token', { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded', authorization: planner() }, body }), 'invalid_request', 'invalid_parameter');
    });
  });

  // -------------------------------------------------------------------------------------------
  describe('a missing subject_token never falls back to another grant (X1, X6)', () => {
    it('absent, empty, or replaced by an actor token → invalid_request / missing_parameter', async () => {
      const { subject_token: token, ...rest } = await base();
      await refused(() => t.post('/token', rest, planner()), 'invalid_request', 'missing_parameter');
      await refused(() => t.post('/token', { ...rest, subject_token: '' }, planner()), 'invalid_request', 'missing_parameter');
      await refused(() => t.post('/token', { ...rest, actor_token: token!, actor_token_type: AT }, planner()), 'invalid_request', 'missing_parameter');
      await refused(() => t.post('/token', { ...rest, scope: 'payment.read' }, planner()), 'invalid_request', 'missing_parameter');
      const { subject_token_type: _type, ...noType } = await base();
      await refused(() => t.post('/token', noType, planner()), 'invalid_request', 'missing_parameter');
    });
    it('without grant_type → invalid_request / missing_parameter', async () => {
      const { grant_type: _g, ...rest } = await base();
      await refused(() => t.post('/token', rest, planner()), 'invalid_request', 'missing_parameter');
      await refused(async () => t.post('/token', { ...(await base()), grant_type: '' }, planner()), 'invalid_request', 'missing_parameter');
    });
    it('client_credentials for an agent is refused: no token, audited', async () => {
      const n = await lineageCount(t);
      const res = await t.post('/token', { grant_type: 'client_credentials', scope: 'payment.read', audience: PAYMENTS, resource: PAYMENTS }, planner());
      expect(res.status).toBe(400);
      // RFC 6749 §5.2: a grant type the client may not use is `unauthorized_client`.
      expect(res.body.error).toBe('unauthorized_client');
      expect(res.body.access_token).toBeUndefined();
      expect(res.headers.get('cache-control')).toContain('no-store');
      expect((await t.auditRows({ request_id: res.headers.get('x-request-id') })).map((r) => r.reason)).toEqual(['grant_type_not_allowed']);
      expect(await lineageCount(t)).toBe(n);
    });
    it.each(['password', 'authorization_code', 'refresh_token', 'implicit', 'urn:ietf:params:oauth:grant-type:jwt-bearer', 'urn:ietf:params:oauth:grant-type:device_code', 'urn:ietf:params:oauth:grant-type:token-exchange ', 'URN:IETF:PARAMS:OAUTH:GRANT-TYPE:TOKEN-EXCHANGE'])(
      'grant_type %j → unsupported_grant_type', async (grant) => {
        const token = await user();
        await refused(() => t.post('/token', {
          grant_type: grant, subject_token: token, subject_token_type: AT, audience: PAYMENTS,
          username: 'alice', password: 'alice', code: 'x', refresh_token: 'x', assertion: token, device_code: 'x',
        }, planner()), 'unsupported_grant_type', 'unsupported_grant_type');
      },
    );
    it('no client authentication at all, even with a valid subject token → 401 invalid_client', async () => {
      await refused(async () => t.post('/token', await base()), 'invalid_client', 'client_auth_failed');
    });
  });

  // -------------------------------------------------------------------------------------------
  describe('client authentication abuse', () => {
    it.each<[string, string]>([
      ['an unknown client', basicAuth('nobody', 'x'.repeat(43))],
      ['a wrong secret', basicAuth('planner-agent', 'y'.repeat(43))],
      ['another client’s secret', basicAuth('planner-agent', 'executor-secret-0123456789abcdefghijklmno')],
      ['a resource server with a wrong secret', basicAuth('payments-api', 'z'.repeat(43))],
    ])('%s → 401 invalid_client / client_auth_failed', async (_name, auth) => {
      const res = await refused(async () => t.post('/token', await base(), auth), 'invalid_client', 'client_auth_failed');
      expect(res.headers.get('www-authenticate')).toContain('Basic');
    });
    it('a client named by an attestation header but never authenticated is recorded as unauthenticated', async () => {
      // The provider finds the client, then refuses the two mechanisms with a 400: the client is
      // named, never authenticated. Its refusal must not pass for an authenticated client's.
      const claims = Buffer.from(JSON.stringify({ sub: 'planner-agent' })).toString('base64url');
      const res = await t.post('/token', { ...(await base()), client_id: 'planner-agent' }, undefined, { 'oauth-client-attestation': `eyJhbGciOiJFUzI1NiJ9.${claims}.c2ln` });
      expect({ status: res.status, error: res.body.error, token: res.body.access_token }).toEqual({ status: 400, error: 'invalid_request', token: undefined });
      const rows = await t.auditRows({ request_id: res.headers.get('x-request-id') });
      expect(rows).toHaveLength(1);
      expect(rows[0]!.client_id).toBeNull();
      expect(rows[0]!.details).toMatchObject({ authenticated: false, claimed_client_id: 'planner-agent' });
    });
    it('an Origin header tells nothing: a known client and an unknown one are refused alike', async () => {
      // The provider's CORS check refused a request with Origin once it had found the client
      // named (400), before any secret; an unknown client got 401. An oracle of client ids.
      const origin = { origin: 'https://elsewhere.example' };
      for (const path of ['/token', '/token/introspection', '/token/revocation'] as const) {
        const form = path === '/token' ? await base() : { token: 'x' };
        for (const auth of [basicAuth('planner-agent', 'y'.repeat(43)), basicAuth('nobody', 'y'.repeat(43))]) {
          const res = await refused(async () => t.post(path, form, auth, origin), 'invalid_client', 'client_auth_failed');
          expect(res.headers.get('access-control-allow-origin'), path).toBeNull();
        }
        const bodyNamed = await t.post(path, { ...form, client_id: 'planner-agent', client_secret: 'y'.repeat(43) }, undefined, origin);
        expect({ path, status: bodyNamed.status, error: bodyNamed.body.error }).toEqual({ path, status: 401, error: 'invalid_client' });
      }
      const granted = await t.post('/token', await base(), planner(), origin);
      expect(granted.status).toBe(200);
      expect(typeof granted.body.access_token).toBe('string');
      expect(granted.headers.get('access-control-allow-origin')).toBeNull();
    });
    it.each(['payment.read  payment.transfer', ' payment.read', 'payment.read '])('a scope %j outside RFC 6749 §3.3 syntax → invalid_scope / invalid_parameter', async (scope) => {
      await refused(async () => t.post('/token', { ...(await base()), scope }, planner()), 'invalid_scope', 'invalid_parameter');
    });
    // RFC 6749 §5.2: "If the client attempted to authenticate via the "Authorization" request
    // header field, the authorization server MUST respond with an HTTP 401 (Unauthorized) status
    // code and include the "WWW-Authenticate" response header field". oidc-provider answers
    // these 400 invalid_request; Writ answers them 401, counted and audited as failures.
    const challenge = (description: string): string => `Basic realm="${t.issuer}", error="invalid_client", error_description="${description}"`;
    it.each<[string, string]>([
      ['an empty secret', basicAuth('planner-agent', '')],
      ['not base64', 'Basic !!!'],
      ['no colon', `Basic ${Buffer.from('no-colon').toString('base64')}`],
      ['credentials not form-encoded', `Basic ${Buffer.from('planner-agent:%zz').toString('base64')}`],
      ['a Bearer token', 'Bearer abc'],
      ['Basic with nothing after it', 'Basic'],
      ['three parts', 'Basic a b'],
      ['another scheme', 'Digest username="planner-agent"'],
      ['an empty header', ''],
    ])('an Authorization header with %s → 401 invalid_client / client_auth_failed, with the Basic challenge', async (_name, auth) => {
      for (const path of ENDPOINTS) {
        const form = path === '/token' ? await base() : path === '/task/revocation' ? { task_id: 't-1' } : { token: 'x' };
        const res = await refused(async () => t.post(path, form, undefined, { authorization: auth }), 'invalid_client', 'client_auth_failed');
        expect([path, res.headers.get('www-authenticate')]).toEqual([path, challenge('client authentication failed')]);
      }
    });
    it('two mechanisms at once stay invalid_request / duplicate_parameter, without a challenge', async () => {
      const res = await refused(async () => t.post('/token', { ...(await base()), client_id: 'planner-agent', client_secret: 'x' }, planner()), 'invalid_request', 'duplicate_parameter');
      expect(res.headers.get('www-authenticate')).toBeNull();
    });
    it('every Basic challenge reads alike: no credentials, a bare client_id, a wrong Basic secret', async () => {
      const none = await refused(async () => t.post('/token', await base()), 'invalid_client', 'client_auth_failed');
      expect(none.headers.get('www-authenticate')).toBe(challenge('client authentication is required'));
      // RFC 6749 §2.3: a client_id alone is no client authentication.
      for (const client_id of ['planner-agent', 'nobody']) {
        const bare = await refused(async () => t.post('/token', { ...(await base()), client_id }), 'invalid_client', 'client_auth_failed');
        expect([client_id, bare.headers.get('www-authenticate')]).toEqual([client_id, challenge('client authentication failed')]);
      }
      const wrong = await refused(async () => t.post('/token', await base(), basicAuth('planner-agent', 'y'.repeat(43))), 'invalid_client', 'client_auth_failed');
      expect(wrong.headers.get('www-authenticate')).toBe(challenge('client authentication failed'));
    });
    it('a failed client_secret_post or client assertion gets no challenge (RFC 6749 §5.2)', async () => {
      const post = await refused(async () => t.post('/token', { ...(await base()), client_id: 'planner-agent', client_secret: 'y'.repeat(43) }), 'invalid_client', 'client_auth_failed');
      expect(post.headers.get('www-authenticate')).toBeNull();
      const header = Buffer.from(JSON.stringify({ alg: 'ES256' })).toString('base64url');
      const claims = Buffer.from(JSON.stringify({ iss: 'planner-agent', sub: 'planner-agent', aud: t.issuer, exp: Math.floor(Date.now() / 1000) + 60, jti: randomBytes(8).toString('hex') })).toString('base64url');
      const assertion = await t.post('/token', {
        ...(await base()), client_assertion_type: 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer', client_assertion: `${header}.${claims}.c2ln`,
      });
      expect({ status: assertion.status, error: assertion.body.error }).toEqual({ status: 401, error: 'invalid_client' });
      expect(assertion.headers.get('www-authenticate')).toBeNull();
    });
  });

  // -------------------------------------------------------------------------------------------
  describe('bodies', () => {
    it('over 56 KiB (a junk parameter, or a huge subject_token) → invalid_request', async () => {
      await refused(async () => t.post('/token', { ...(await base()), junk: 'x'.repeat(60 * 1024) }, planner()), 'invalid_request', 'invalid_parameter');
      await refused(async () => t.post('/token', { ...(await base()), subject_token: `${await user()}${'A'.repeat(60 * 1024)}` }, planner()), 'invalid_request', 'invalid_parameter');
      await refused(async () => t.post('/token', { ...(await base()), junk: 'x'.repeat(1024 * 1024) }, planner()), 'invalid_request', 'invalid_parameter');
    });
    it('a body declared as 10 MiB, or chunked past the cap, is refused without waiting for it', async () => {
      const n = await lineageCount(t);
      const send = (headers: Record<string, string>, write: (req: http.ClientRequest) => void) => new Promise<{ status: number; requestId: string; body: string }>((resolve, reject) => {
        const u = new URL(t.url);
        const req = http.request({ host: u.hostname, port: u.port, method: 'POST', path: '/token', headers: { 'content-type': 'application/x-www-form-urlencoded', authorization: planner(), ...headers } }, (res) => {
          let body = '';
          res.setEncoding('utf8');
          res.on('data', (chunk: string) => (body += chunk));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, requestId: String(res.headers['x-request-id']), body }));
        });
        req.on('error', reject);
        write(req);
      });
      const declared = await send({ 'content-length': String(10 * 1024 * 1024) }, (req) => {
        req.write('grant_type=x');
        setTimeout(() => req.destroy(), 2000);
      });
      expect(declared.status).toBe(400);
      const chunked = await send({ 'transfer-encoding': 'chunked' }, (req) => {
        for (let i = 0; i < 70; i++) req.write(`j${i}=${'x'.repeat(1020)}&`);
        req.end();
      });
      expect(chunked.status).toBe(400);
      for (const { requestId, body } of [declared, chunked]) {
        expect(JSON.parse(body)).toMatchObject({ error: 'invalid_request' });
        expect(JSON.parse(body).access_token).toBeUndefined();
        expect((await t.auditRows({ request_id: requestId })).map((r) => r.reason)).toEqual(['invalid_parameter']);
      }
      expect(await lineageCount(t)).toBe(n);
    });
    it.each(['application/x-www-form-urlencoded; charset=bogus', 'application/x-www-form-urlencoded; charset=utf-16le'])('content-type %j: the charset is ignored, the body read as UTF-8 (never a 5xx)', async (type) => {
      const res = await raw('/token', { method: 'POST', headers: { authorization: planner(), 'content-type': type }, body: new URLSearchParams(await base()).toString() });
      expect(res.status).toBe(200);
      expect(decodeJwt(res.body.access_token as string)).toMatchObject({ aud: PAYMENTS, sub: 'alice' });
    });
    it.each(['application/json', 'text/plain', 'multipart/form-data; boundary=x', 'application/xml', ''])('content-type %j → invalid_request', async (type) => {
      const form = await base();
      const body = type === 'application/json' ? JSON.stringify(form) : new URLSearchParams(form).toString();
      await refused(() => raw('/token', { method: 'POST', headers: { authorization: planner(), ...(type ? { 'content-type': type } : {}) }, body }), 'invalid_request', 'invalid_parameter');
    });
    it('parameters in the query string have no effect (only the form body counts)', async () => {
      const res = await t.post(`/token?audience=${encodeURIComponent(EXECUTOR_AUD)}&scope=payment.transfer&task_id=from-query`, await base(), planner());
      expect(res.status).toBe(200);
      const claims = decodeJwt(res.body.access_token as string);
      expect(claims).toMatchObject({ aud: PAYMENTS, scope: 'payment.read' });
      expect(claims.task_id).toBeUndefined();
      const { subject_token, ...rest } = await base();
      await refused(() => t.post(`/token?subject_token=${encodeURIComponent(subject_token!)}`, rest, planner()), 'invalid_request', 'missing_parameter');
    });
    it('unrecognised parameters are ignored and have no effect (B1)', async () => {
      const res = await t.post('/token', {
        ...(await base()), requested_subject: 'admin', subject_issuer: 'https://evil.example.com', sub: 'admin', act: '{"sub":"root"}',
        may_act: '{"sub":"x"}', client_id_override: 'executor-agent', ttl: '86400', expires_in: '86400', max_depth: '9',
      }, planner());
      expect(res.status).toBe(200);
      expect(res.body.expires_in).toBe(120);
      expect(decodeJwt(res.body.access_token as string)).toMatchObject({ sub: 'alice', client_id: 'planner-agent', act: { sub: 'planner-agent' } });
    });
  });

  // -------------------------------------------------------------------------------------------
  describe('methods other than POST (B1, I4)', () => {
    it.each([...ENDPOINTS, '/jwks', '/.well-known/oauth-authorization-server'])('a CORS preflight at %s → 404, nothing allowed', async (path) => {
      const res = await raw(path, { method: 'OPTIONS', headers: { origin: 'https://elsewhere.example', 'access-control-request-method': 'POST', 'access-control-request-headers': 'authorization' } });
      expect(res.status).toBe(404);
      expect(res.headers.get('access-control-allow-origin')).toBeNull();
      expect(res.headers.get('access-control-allow-methods')).toBeNull();
    });
    for (const path of ENDPOINTS) {
      it.each(['GET', 'PUT', 'DELETE', 'PATCH'])(`%s ${path} → 405, Allow: POST, no token`, async (method) => {
        const query = path === '/token' ? `?${new URLSearchParams({ ...(await base()) })}` : '?token=x&task_id=x';
        const n = await lineageCount(t);
        const res = await raw(`${path}${query}`, { method, headers: { authorization: planner() } });
        await expectDenied(t, res, 'invalid_request', 'method_not_allowed', 405);
        expect(res.headers.get('allow')).toBe('POST');
        expect(res.body.active).toBeUndefined();
        expect(await lineageCount(t)).toBe(n);
        const [row] = await t.auditRows({ request_id: res.headers.get('x-request-id') });
        expect(row!.details).toMatchObject({ endpoint: path, method });
      });
    }
  });

  // -------------------------------------------------------------------------------------------
  describe('DPoP (RFC 9449) is refused, never answered with a bearer token', () => {
    function dpopProof(): string {
      const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
      const enc = (o: object) => Buffer.from(JSON.stringify(o)).toString('base64url');
      const input = `${enc({ typ: 'dpop+jwt', alg: 'ES256', jwk: publicKey.export({ format: 'jwk' }) })}.${enc({ jti: randomBytes(8).toString('hex'), htm: 'POST', htu: `${t.issuer}/token`, iat: Math.floor(Date.now() / 1000) })}`;
      return `${input}.${cryptoSign('sha256', Buffer.from(input), { key: privateKey, dsaEncoding: 'ieee-p1363' }).toString('base64url')}`;
    }
    it.each<[string, () => string]>([
      ['a well-formed proof', dpopProof],
      ['garbage', () => 'not-a-jwt'],
      ['two proofs in one header', () => `${dpopProof()}, ${dpopProof()}`],
      ['an alg none proof', () => `${Buffer.from('{"typ":"dpop+jwt","alg":"none"}').toString('base64url')}.e30.`],
    ])('%s → invalid_request / dpop_unsupported', async (_name, proof) => {
      await refused(async () => t.post('/token', await base(), planner(), { dpop: proof() }), 'invalid_request', 'dpop_unsupported');
    });
    it('with a cnf-bound subject token too', async () => {
      await refused(async () => t.post('/token', { ...(await base()), subject_token: await user({ cnf: { jkt: 'abc' } }) }, planner(), { dpop: dpopProof() }), 'invalid_request', 'dpop_unsupported');
    });
  });

  // -------------------------------------------------------------------------------------------
  describe('introspection and revocation endpoints', () => {
    it('duplicate or missing token, and no client authentication', async () => {
      for (const path of ['/token/introspection', '/token/revocation']) {
        const auth = path === '/token/introspection' ? basicAuth('payments-api') : planner();
        await refused(() => t.post(path, { token: ['a', 'b'] }, auth), 'invalid_request', 'duplicate_parameter');
        await refused(() => t.post(path, {}, auth), 'invalid_request', 'missing_parameter');
        await refused(() => t.post(path, { token: 'a' }), 'invalid_client', 'client_auth_failed');
      }
      await refused(() => t.post('/task/revocation', { task_id: ['a', 'b'] }, planner()), 'invalid_request', 'duplicate_parameter');
      await refused(() => t.post('/task/revocation', {}, planner()), 'invalid_request', 'missing_parameter');
      await refused(() => t.post('/task/revocation', { task_id: 'a' }), 'invalid_client', 'client_auth_failed');
    });
    it('a client may not introspect a token addressed elsewhere, nor revoke another client’s token', async () => {
      const token = (await t.post('/token', await base(), planner())).body.access_token as string;
      expect((await t.post('/token/introspection', { token }, basicAuth('executor-agent'))).body).toEqual({ active: false });
      const res = await refused(() => t.post('/token/revocation', { token }, basicAuth('executor-agent')), 'unauthorized_client', 'not_permitted');
      expect((await t.auditRows({ request_id: res.headers.get('x-request-id') }))[0]).toMatchObject({ type: 'revocation', outcome: 'rejected', client_id: 'executor-agent' });
      expect((await t.post('/token/introspection', { token }, basicAuth('payments-api'))).body.active).toBe(true);
    });
  });

  // -------------------------------------------------------------------------------------------
  describe('hostile characters', () => {
    // Regression: a NUL (U+0000) in `audience`/`resource` survives the URI check (WHATWG URL
    // percent-encodes it in a path or query) and once turned the denial's audit write, which
    // PostgreSQL refused, into a 503 without a record.
    it('an audience with a NUL character → invalid_target (not 503)', async () => {
      await refused(async () => t.post('/token', { ...(await base()), audience: `${PAYMENTS}/\u0000` }, planner()), 'invalid_target', 'target_invalid');
    });
    // Regression: verified upstream claims holding U+0000 or a lone surrogate (a display name,
    // say) once made every exchange of that token a 503, since the lineage row's jsonb and text
    // columns cannot hold them.
    it('a NUL or lone surrogate inside an upstream claim is never a 503: kept as U+FFFD, or refused in sub', async () => {
      // Another claim: granted; the lineage keeps the claim with U+FFFD in its place.
      for (const claims of [{ name: 'Al\u0000ice' }, { name: 'Al\ud800ice' }]) {
        const res = await t.post('/token', { ...(await base()), subject_token: await user(claims) }, planner());
        expect(res.status).toBe(200);
        const jti = decodeJwt(res.body.access_token as string).jti as string;
        const row = await t.writ.db.knex('token_lineage').where({ jti }).first<{ root_claims: Record<string, unknown> }>();
        expect(row!.root_claims.name).toBe('Al\ufffdice');
        expect((await t.auditRows({ request_id: res.headers.get('x-request-id') })).map((r) => r.type)).toEqual(['exchange.granted']);
      }
      // The subject identifier itself: refused.
      await refused(async () => t.post('/token', { ...(await base()), subject_token: await user({ sub: 'alice\u0000' }) }, planner()), 'invalid_request', 'claim_invalid');
    });
    it('a token holding NUL or a lone surrogate is simply unknown to introspection and revocation', async () => {
      // Found by fuzzing: the revocation endpoint looked such a value up as an admin API token
      // and PostgreSQL refused the comparison (500).
      for (const token of ['\u0000', 'a\u0000b', '\ud800', 'x.\u0000.y']) {
        const revoked = await t.post('/token/revocation', { token }, basicAuth('executor-agent'));
        expect({ status: revoked.status, body: revoked.body }).toEqual({ status: 200, body: {} });
        expect((await t.post('/token/introspection', { token }, basicAuth('payments-api'))).body).toEqual({ active: false });
      }
      expect((await t.post('/task/revocation', { task_id: '\u0000' }, planner())).body.error).toBe('invalid_request');
    });
    it('a lone surrogate in task_id or audience is refused and audited', async () => {
      await refused(async () => t.post('/token', { ...(await base()), task_id: 'a\ud800' }, planner()), 'invalid_request', 'task_invalid');
      await refused(async () => t.post('/token', { ...(await base()), audience: `${PAYMENTS}/\ud800` }, planner()), 'invalid_target', 'unknown_audience');
    });
  });
});
