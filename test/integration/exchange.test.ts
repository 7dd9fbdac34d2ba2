import { generateKeyPair, SignJWT, decodeJwt, decodeProtectedHeader, jwtVerify, createLocalJWKSet, type JWK } from 'jose';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import {
  AT, EXECUTOR_AUD, IDP, JWT_TYPE, PAYMENTS, TX, basicAuth, startTestWrit, type TestWrit,
} from '../support/harness.ts';
import { expectDenied, lineageCount } from '../support/expect.ts';

/** docs/DESIGN.md §6's example, driven over HTTP against PostgreSQL: every row of §7. */
describe('token exchange (docs/DESIGN.md example, PostgreSQL)', () => {
  let t: TestWrit;
  let before: number;
  beforeAll(async () => {
    t = await startTestWrit({ name: 'exchange' });
  });
  afterAll(async () => t?.close());
  beforeEach(async () => {
    before = await lineageCount(t);
  });

  const userToken = (claims: Record<string, unknown> = {}, header: Record<string, unknown> = {}) => t.idp.token(t.issuer, claims, header);

  async function plannerToExecutor(extra: Record<string, string> = {}) {
    const res = await t.exchange('planner-agent', {
      subject_token: await userToken(), subject_token_type: AT, audience: EXECUTOR_AUD, scope: 'payment.read', ...extra,
    });
    expect(res.status).toBe(200);
    return res.body.access_token as string;
  }

  describe('granted', () => {
    it('direct exchange: a narrowed RFC 9068 token with act, sub_id and the RFC 8693 response', async () => {
      const res = await t.exchange('planner-agent', { subject_token: await userToken(), subject_token_type: AT, audience: PAYMENTS });
      expect(res.status).toBe(200);
      expect(res.headers.get('cache-control')).toBe('no-store');
      expect(res.headers.get('pragma')).toBe('no-cache');
      expect(res.body).toMatchObject({
        issued_token_type: 'urn:ietf:params:oauth:token-type:access_token',
        token_type: 'Bearer',
        expires_in: 120,
        scope: 'payment.read',
      });
      expect(res.body.refresh_token).toBeUndefined();
      const jwt = res.body.access_token as string;
      expect(decodeProtectedHeader(jwt)).toMatchObject({ alg: 'ES256', typ: 'at+jwt' });
      const jwks = await (await fetch(`${t.url}/jwks`)).json() as { keys: JWK[] };
      const { payload } = await jwtVerify(jwt, createLocalJWKSet(jwks), {
        issuer: t.issuer, audience: PAYMENTS, typ: 'at+jwt', algorithms: ['ES256'],
      });
      expect(payload).toMatchObject({
        sub: 'alice',
        client_id: 'planner-agent',
        scope: 'payment.read',
        sub_id: { format: 'iss_sub', iss: IDP, sub: 'alice' },
        act: { sub: 'planner-agent' },
      });
      expect(payload.exp! - payload.iat!).toBe(120);
      expect(typeof payload.jti).toBe('string');
      expect(await lineageCount(t)).toBe(before + 1);
      const [row] = await t.auditRows({ jti: payload.jti });
      expect(row).toMatchObject({ type: 'exchange.granted', client_id: 'planner-agent', audience: PAYMENTS, subject: `${IDP}|alice` });
      expect((row!.details as Record<string, unknown>).rule).toBe('planner-reads-payments');
    });

    it('two-hop chain: planner → executor → payments, nested act, narrowed lifetime', async () => {
      const hop1 = await plannerToExecutor();
      const hop2 = await t.exchange('executor-agent', { subject_token: hop1, subject_token_type: AT, resource: PAYMENTS });
      expect(hop2.status).toBe(200);
      expect(hop2.body.expires_in).toBe(60);
      const claims = decodeJwt(hop2.body.access_token as string);
      expect(claims).toMatchObject({
        sub: 'alice', aud: PAYMENTS, client_id: 'executor-agent', scope: 'payment.read',
        act: { sub: 'executor-agent', act: { sub: 'planner-agent' } },
      });
      const [row] = await t.auditRows({ jti: claims.jti });
      expect(row!.parent_jti).toBe(decodeJwt(hop1).jti);
    });

    it('audience and resource naming the same URI count as one target', async () => {
      const res = await t.exchange('planner-agent', { subject_token: await userToken(), subject_token_type: AT, audience: PAYMENTS, resource: PAYMENTS });
      expect(res.status).toBe(200);
    });

    it('accepts the jwt token type and application/at+jwt', async () => {
      const res = await t.exchange('planner-agent', { subject_token: await userToken({}, { typ: 'application/at+jwt' }), subject_token_type: JWT_TYPE, audience: PAYMENTS });
      expect(res.status).toBe(200);
    });

    it('lifetime is capped by the subject token exp', async () => {
      const now = Math.floor(Date.now() / 1000);
      const res = await t.exchange('planner-agent', { subject_token: await userToken({ exp: now + 30 }), subject_token_type: AT, audience: PAYMENTS });
      expect(res.status).toBe(200);
      expect(res.body.expires_in as number).toBeLessThanOrEqual(30);
      expect(decodeJwt(res.body.access_token as string).exp).toBe(now + 30);
    });

    it('client_secret_post authenticates too', async () => {
      const res = await t.post('/token', {
        grant_type: TX, subject_token: await userToken(), subject_token_type: AT, audience: PAYMENTS,
        client_id: 'planner-agent', client_secret: 'planner-secret-0123456789abcdefghijklmnop',
      });
      expect(res.status).toBe(200);
    });
  });

  describe('request (RFC 8693 §2.1) → invalid_request', () => {
    it('missing subject_token never falls back to another grant', async () => {
      await expectDenied(t, await t.exchange('planner-agent', { subject_token_type: AT, audience: PAYMENTS }), 'invalid_request', 'missing_parameter');
    });
    it('missing subject_token_type', async () => {
      await expectDenied(t, await t.exchange('planner-agent', { subject_token: await userToken(), audience: PAYMENTS }), 'invalid_request', 'missing_parameter');
    });
    it('unsupported subject_token_type', async () => {
      await expectDenied(t, await t.exchange('planner-agent', { subject_token: await userToken(), subject_token_type: 'urn:ietf:params:oauth:token-type:saml2', audience: PAYMENTS }), 'invalid_request', 'unsupported_token_type');
    });
    it('actor_token without actor_token_type, and the reverse', async () => {
      const token = await userToken();
      await expectDenied(t, await t.exchange('planner-agent', { subject_token: token, subject_token_type: AT, actor_token: token, audience: PAYMENTS }), 'invalid_request', 'missing_parameter');
      await expectDenied(t, await t.exchange('planner-agent', { subject_token: token, subject_token_type: AT, actor_token_type: AT, audience: PAYMENTS }), 'invalid_request', 'invalid_parameter');
    });
    it('requested_token_type other than access_token', async () => {
      await expectDenied(t, await t.exchange('planner-agent', { subject_token: await userToken(), subject_token_type: AT, requested_token_type: 'urn:ietf:params:oauth:token-type:id_token', audience: PAYMENTS }), 'invalid_request', 'requested_token_type_unsupported');
    });
    it('a repeated non-repeatable parameter', async () => {
      const token = await userToken();
      await expectDenied(t, await t.exchange('planner-agent', { subject_token: [token, token], subject_token_type: AT, audience: PAYMENTS }), 'invalid_request', 'duplicate_parameter');
      await expectDenied(t, await t.exchange('planner-agent', { subject_token: token, subject_token_type: AT, audience: PAYMENTS, scope: ['payment.read', 'payment.read'] }), 'invalid_request', 'duplicate_parameter');
    });
    it('a DPoP proof is refused, not silently answered with a bearer token', async () => {
      const res = await t.post('/token', { grant_type: TX, subject_token: await userToken(), subject_token_type: AT, audience: PAYMENTS }, basicAuth('planner-agent'), { dpop: 'eyJhbGciOiJFUzI1NiJ9.e30.sig' });
      await expectDenied(t, res, 'invalid_request', 'dpop_unsupported');
    });
    it('GET on the token endpoint is refused', async () => {
      const res = await fetch(`${t.url}/token?grant_type=${encodeURIComponent(TX)}`);
      expect(res.status).toBe(405);
      expect(res.headers.get('allow')).toBe('POST');
    });
  });

  describe('client → invalid_client (401) / unauthorized_client', () => {
    it('no client authentication', async () => {
      const res = await t.post('/token', { grant_type: TX, subject_token: await userToken(), subject_token_type: AT, audience: PAYMENTS });
      expect(res.status).toBe(401);
      expect(res.body.error).toBe('invalid_client');
      expect(res.body.access_token).toBeUndefined();
      const rows = await t.auditRows({ request_id: res.headers.get('x-request-id') });
      expect(rows.map((r) => r.reason)).toEqual(['client_auth_failed']);
    });
    it('a wrong secret', async () => {
      const res = await t.post('/token', { grant_type: TX, subject_token: await userToken(), subject_token_type: AT, audience: PAYMENTS }, basicAuth('planner-agent', 'x'.repeat(43)));
      expect(res.status).toBe(401);
      expect(res.body.error).toBe('invalid_client');
      expect(res.headers.get('www-authenticate')).toContain('Basic');
    });
    it('a resource server may never exchange', async () => {
      await expectDenied(t, await t.exchange('payments-api', { subject_token: await userToken(), subject_token_type: AT, audience: PAYMENTS }), 'unauthorized_client', 'client_not_agent');
    });
  });

  describe('target → invalid_target', () => {
    it('no target', async () => {
      await expectDenied(t, await t.exchange('planner-agent', { subject_token: await userToken(), subject_token_type: AT }), 'invalid_target', 'target_missing');
    });
    it('two distinct targets', async () => {
      await expectDenied(t, await t.exchange('planner-agent', { subject_token: await userToken(), subject_token_type: AT, audience: [PAYMENTS, EXECUTOR_AUD] }), 'invalid_target', 'target_multiple');
      await expectDenied(t, await t.exchange('planner-agent', { subject_token: await userToken(), subject_token_type: AT, audience: PAYMENTS, resource: EXECUTOR_AUD }), 'invalid_target', 'target_multiple');
    });
    it('not an absolute URI, or with a fragment', async () => {
      for (const bad of ['payments', '/payments', `${PAYMENTS}#frag`]) {
        await expectDenied(t, await t.exchange('planner-agent', { subject_token: await userToken(), subject_token_type: AT, audience: bad }), 'invalid_target', 'target_invalid');
      }
    });
    it('an unknown audience, and one matched only up to a trailing slash', async () => {
      await expectDenied(t, await t.exchange('planner-agent', { subject_token: await userToken(), subject_token_type: AT, audience: 'https://unknown.example.com' }), 'invalid_target', 'unknown_audience');
      await expectDenied(t, await t.exchange('planner-agent', { subject_token: await userToken(), subject_token_type: AT, audience: `${PAYMENTS}/` }), 'invalid_target', 'unknown_audience');
    });
    it('no rule for (client, audience)', async () => {
      await expectDenied(t, await t.exchange('executor-agent', { subject_token: await userToken(), subject_token_type: AT, audience: EXECUTOR_AUD }), 'invalid_target', 'no_rule');
    });
  });

  describe('subject token → invalid_request', () => {
    it('from an untrusted issuer', async () => {
      await expectDenied(t, await t.exchange('planner-agent', { subject_token: await userToken({ iss: 'https://evil.example.com' }), subject_token_type: AT, audience: PAYMENTS }), 'invalid_request', 'issuer_untrusted');
    });
    it('signed by a key the issuer does not have', async () => {
      const { privateKey } = await generateKeyPair('ES256');
      const now = Math.floor(Date.now() / 1000);
      const forged = await new SignJWT({ iss: IDP, sub: 'alice', aud: t.issuer, iat: now, exp: now + 60, groups: ['finance'] })
        .setProtectedHeader({ alg: 'ES256', typ: 'at+jwt', kid: t.idp.kid }).sign(privateKey);
      await expectDenied(t, await t.exchange('planner-agent', { subject_token: forged, subject_token_type: AT, audience: PAYMENTS }), 'invalid_request', 'signature_invalid');
    });
    it('alg none', async () => {
      const enc = (o: object) => Buffer.from(JSON.stringify(o)).toString('base64url');
      const now = Math.floor(Date.now() / 1000);
      const none = `${enc({ alg: 'none', typ: 'at+jwt' })}.${enc({ iss: IDP, sub: 'alice', aud: t.issuer, iat: now, exp: now + 60 })}.`;
      await expectDenied(t, await t.exchange('planner-agent', { subject_token: none, subject_token_type: AT, audience: PAYMENTS }), 'invalid_request', 'alg_not_allowed');
    });
    it('expired beyond the leeway', async () => {
      const now = Math.floor(Date.now() / 1000);
      await expectDenied(t, await t.exchange('planner-agent', { subject_token: await userToken({ iat: now - 600, exp: now - 120 }), subject_token_type: AT, audience: PAYMENTS }), 'invalid_request', 'token_expired');
    });
    it('not addressed to Writ', async () => {
      await expectDenied(t, await t.exchange('planner-agent', { subject_token: await userToken({ aud: PAYMENTS }), subject_token_type: AT, audience: PAYMENTS }), 'invalid_request', 'aud_mismatch');
    });
    it('a typ the issuer does not send', async () => {
      await expectDenied(t, await t.exchange('planner-agent', { subject_token: await userToken({}, { typ: 'JWT' }), subject_token_type: AT, audience: PAYMENTS }), 'invalid_request', 'typ_not_allowed');
    });
    it('an id_token the issuer does not allow', async () => {
      await expectDenied(t, await t.exchange('planner-agent', { subject_token: await userToken(), subject_token_type: 'urn:ietf:params:oauth:token-type:id_token', audience: PAYMENTS }), 'invalid_request', 'token_type_mismatch');
    });
    it('nonce, cnf and an upstream act', async () => {
      await expectDenied(t, await t.exchange('planner-agent', { subject_token: await userToken({ nonce: 'n' }), subject_token_type: AT, audience: PAYMENTS }), 'invalid_request', 'forbidden_claim');
      await expectDenied(t, await t.exchange('planner-agent', { subject_token: await userToken({ cnf: { jkt: 'x' } }), subject_token_type: AT, audience: PAYMENTS }), 'invalid_request', 'forbidden_claim');
      await expectDenied(t, await t.exchange('planner-agent', { subject_token: await userToken({ act: { sub: 'someone' } }), subject_token_type: AT, audience: PAYMENTS }), 'invalid_request', 'upstream_act');
    });
    it('a Writ token not addressed to the presenting client', async () => {
      const direct = await t.exchange('planner-agent', { subject_token: await userToken(), subject_token_type: AT, audience: PAYMENTS });
      // A token for the payments API re-presented by an agent: tools cannot be impersonated.
      await expectDenied(t, await t.exchange('executor-agent', { subject_token: direct.body.access_token as string, subject_token_type: AT, audience: PAYMENTS }), 'invalid_request', 'not_addressed_to_client');
    });
    it('a Writ token that was revoked', async () => {
      const hop1 = await plannerToExecutor();
      const revoked = await t.post('/token/revocation', { token: hop1 }, basicAuth('planner-agent'));
      expect(revoked.status).toBe(200);
      const again = await t.exchange('executor-agent', { subject_token: hop1, subject_token_type: AT, audience: PAYMENTS });
      await expectDenied(t, again, 'invalid_request', 'parent_revoked');
      // The record names the revoked token presented again, and whose it was.
      const [denial] = await t.auditRows({ request_id: again.headers.get('x-request-id') });
      expect(denial).toMatchObject({ parent_jti: decodeJwt(hop1).jti, subject: `${IDP}|alice` });
    });
    it('a Writ token presented as an actor token', async () => {
      const hop1 = await plannerToExecutor();
      await expectDenied(t, await t.exchange('executor-agent', { subject_token: hop1, subject_token_type: AT, actor_token: hop1, actor_token_type: AT, audience: PAYMENTS }), 'invalid_request', 'actor_token_writ');
    });
    it('an actor token whose identity the client may not present', async () => {
      const actor = await t.idp.token(t.issuer, { sub: 'bot-7' });
      await expectDenied(t, await t.exchange('planner-agent', { subject_token: await userToken(), subject_token_type: AT, actor_token: actor, actor_token_type: AT, audience: PAYMENTS }), 'invalid_request', 'actor_not_allowed');
    });
    it('may_act naming someone else', async () => {
      await expectDenied(t, await t.exchange('planner-agent', { subject_token: await userToken({ may_act: { sub: 'executor-agent' } }), subject_token_type: AT, audience: PAYMENTS }), 'invalid_request', 'may_act_mismatch');
      const ok = await t.exchange('planner-agent', { subject_token: await userToken({ may_act: { sub: 'planner-agent' } }), subject_token_type: AT, audience: PAYMENTS });
      expect(ok.status).toBe(200);
    });
  });

  describe('rule, scopes, task', () => {
    it('a rule exists but the subject does not match → invalid_request', async () => {
      await expectDenied(t, await t.exchange('planner-agent', { subject_token: await userToken({ groups: ['hr'] }), subject_token_type: AT, audience: PAYMENTS }), 'invalid_request', 'subject_mismatch');
    });
    it('a scope the audience does not define → invalid_scope', async () => {
      await expectDenied(t, await t.exchange('planner-agent', { subject_token: await userToken(), subject_token_type: AT, audience: PAYMENTS, scope: 'payment.read payment.delete' }), 'invalid_scope', 'scope_unknown');
    });
    it('a defined scope the rule does not grant → invalid_scope', async () => {
      await expectDenied(t, await t.exchange('planner-agent', { subject_token: await userToken(), subject_token_type: AT, audience: PAYMENTS, scope: 'payment.transfer' }), 'invalid_scope', 'scope_not_allowed');
    });
    it('a child inherits the task; a different task is refused', async () => {
      const hop1 = await plannerToExecutor({ task_id: 'task-1' });
      const child = await t.exchange('executor-agent', { subject_token: hop1, subject_token_type: AT, audience: PAYMENTS });
      expect(decodeJwt(child.body.access_token as string).task_id).toBe('task-1');
      await expectDenied(t, await t.exchange('executor-agent', { subject_token: hop1, subject_token_type: AT, audience: PAYMENTS, task_id: 'task-2' }), 'invalid_request', 'task_mismatch');
    });
    it('a malformed task_id', async () => {
      await expectDenied(t, await t.exchange('planner-agent', { subject_token: await userToken(), subject_token_type: AT, audience: PAYMENTS, task_id: 'has space' }), 'invalid_request', 'task_invalid');
    });
  });

  afterAll(async () => {
    // Nothing a denial test did minted a token.
    const granted = await t.writ.db.knex('audit_events').where({ type: 'exchange.granted' }).count<Array<{ count: number }>>('* as count');
    expect(Number(granted[0]!.count)).toBe(await lineageCount(t));
  });
});
