import { createServer, request, type Server } from 'node:http';
import { randomBytes } from 'node:crypto';
import { createLocalJWKSet, decodeJwt, decodeProtectedHeader, exportJWK, generateKeyPair, jwtVerify, SignJWT, type CryptoKey, type JWK } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AT, TestIdp, TX, basicAuth, startTestWrit, type TestWrit } from '../support/harness.ts';
import { expectDenied } from '../support/expect.ts';

const A = 'https://agents.example.com/a';
const B = 'https://agents.example.com/b';
const C = 'https://agents.example.com/c';
const RSA_TOOL = 'https://rsa-tool.example.com';
const TASK_TOOL = 'https://task-tool.example.com';
const SHALLOW_TOOL = 'https://shallow-tool.example.com';
const SECRET = { A_SECRET: 'a-secret-0123456789abcdefghijklmnopqrstu', B_SECRET: 'b-secret-0123456789abcdefghijklmnopqrstu', TOOL_SECRET: 't-secret-0123456789abcdefghijklmnopqrstu' };

/** A chain of three agents, an actor identity, private_key_jwt, RS256, a jwks_uri issuer and tasks. */
function policy(idp: TestIdp, remoteIssuer: string, agentCKey: JWK, lateIssuer: string): string {
  return JSON.stringify({
    issuers: [
      { issuer: idp.issuer, jwks: { keys: [idp.publicJwk] }, algorithms: ['ES256'], audience: 'self' },
      { issuer: remoteIssuer, jwks_uri: `${remoteIssuer}/jwks.json`, algorithms: ['ES256'], audience: 'self' },
      { issuer: lateIssuer, jwks_uri: `${lateIssuer}/jwks.json`, algorithms: ['ES256'], audience: 'self' },
    ],
    clients: [
      { client_id: 'agent-a', kind: 'agent', auth: 'client_secret_basic', secret: '${A_SECRET}', audiences: [A], actor_identities: [{ issuer: idp.issuer, sub: 'bot-7' }] },
      { client_id: 'agent-b', kind: 'agent', auth: 'client_secret_basic', secret: '${B_SECRET}', audiences: [B] },
      { client_id: 'agent-c', kind: 'agent', auth: 'private_key_jwt', jwks: { keys: [agentCKey] }, audiences: [C] },
      { client_id: 'rsa-tool', kind: 'resource_server', auth: 'client_secret_basic', secret: '${TOOL_SECRET}', audiences: [RSA_TOOL] },
    ],
    audiences: [
      { audience: A, scopes: ['x'], max_ttl: 600 },
      { audience: B, scopes: ['x'], max_ttl: 600 },
      { audience: C, scopes: ['x'], max_ttl: 600 },
      { audience: RSA_TOOL, scopes: ['x', 'y'], max_ttl: 300, signing_alg: 'RS256' },
      { audience: TASK_TOOL, scopes: ['x'], max_ttl: 300 },
      { audience: SHALLOW_TOOL, scopes: ['x'], max_ttl: 300 },
    ],
    rules: [
      { id: 'a-to-b', actor: 'agent-a', subject: { issuer: idp.issuer }, audience: B, scopes: ['x'], ttl: 300, max_depth: 4 },
      { id: 'b-to-c', actor: 'agent-b', subject: { issuer: 'self', after: ['agent-a'] }, audience: C, scopes: ['x'], ttl: 300, max_depth: 4 },
      { id: 'c-to-a', actor: 'agent-c', subject: { issuer: 'self', after: ['agent-b'] }, audience: A, scopes: ['x'], ttl: 300, max_depth: 5 },
      { id: 'a-back-to-b', actor: 'agent-a', subject: { issuer: 'self', after: ['agent-c'] }, audience: B, scopes: ['x'], ttl: 300, max_depth: 5 },
      { id: 'c-to-rsa', actor: 'agent-c', subject: { issuer: 'self', root: { issuer: idp.issuer, claims: { groups: 'finance' } } }, audience: RSA_TOOL, scopes: ['x'], ttl: 300, max_depth: 3 },
      { id: 'c-to-shallow', actor: 'agent-c', subject: { issuer: 'self' }, audience: SHALLOW_TOOL, scopes: ['x'], ttl: 60, max_depth: 2 },
      { id: 'b-to-rsa-shallow', actor: 'agent-b', subject: { issuer: 'self' }, audience: RSA_TOOL, scopes: ['x'], ttl: 60, max_depth: 2 },
      { id: 'a-to-rsa', actor: 'agent-a', subject: { issuer: idp.issuer }, audience: RSA_TOOL, scopes: ['x', 'y'], ttl: 120 },
      { id: 'a-task', actor: 'agent-a', subject: { issuer: remoteIssuer }, audience: TASK_TOOL, scopes: ['x'], ttl: 60, require_task: true },
      { id: 'a-late', actor: 'agent-a', subject: { issuer: lateIssuer }, audience: SHALLOW_TOOL, scopes: ['x'], ttl: 60 },
    ],
  });
}

describe('policy features over HTTP', () => {
  let t: TestWrit;
  let jwksServer: Server;
  let remoteIssuer: string;
  let remoteKey: CryptoKey;
  let remoteJwk: JWK;
  let jwksUp = true;
  /** An issuer nothing listens for until a test starts it. */
  let lateIssuer: string;
  let cKey: CryptoKey;
  beforeAll(async () => {
    const remote = await generateKeyPair('ES256');
    remoteKey = remote.privateKey;
    remoteJwk = { ...(await exportJWK(remote.publicKey)), kid: 'remote-1', alg: 'ES256', use: 'sig' };
    jwksServer = createServer((req, res) => {
      if (!jwksUp) {
        res.writeHead(503).end();
        return;
      }
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ keys: [remoteJwk] }));
    });
    await new Promise<void>((r) => jwksServer.listen(0, '127.0.0.1', () => r()));
    remoteIssuer = `http://127.0.0.1:${(jwksServer.address() as { port: number }).port}`;
    const reserved = createServer();
    await new Promise<void>((r) => reserved.listen(0, '127.0.0.1', () => r()));
    lateIssuer = `http://127.0.0.1:${(reserved.address() as { port: number }).port}`;
    await new Promise<void>((r) => reserved.close(() => r()));
    const c = await generateKeyPair('ES256');
    cKey = c.privateKey;
    const cJwk = { ...(await exportJWK(c.publicKey)), kid: 'agent-c-1', alg: 'ES256', use: 'sig' };
    const idp = await TestIdp.create();
    t = await startTestWrit({ name: 'features', idp, applyExample: false });
    await t.apply([{ name: 'features.yaml', text: policy(idp, remoteIssuer, cJwk, lateIssuer) }], SECRET);
  });
  afterAll(async () => {
    await t?.close();
    jwksServer?.close();
  });

  const asA = (form: Record<string, string>) => t.post('/token', { grant_type: TX, ...form }, basicAuth('agent-a', SECRET.A_SECRET));
  const asB = (form: Record<string, string>) => t.post('/token', { grant_type: TX, ...form }, basicAuth('agent-b', SECRET.B_SECRET));
  async function asC(form: Record<string, string>, aud: string | string[] = t.issuer) {
    const now = Math.floor(Date.now() / 1000);
    const assertion = await new SignJWT({ jti: randomBytes(8).toString('hex') })
      .setProtectedHeader({ alg: 'ES256', kid: 'agent-c-1' })
      .setIssuer('agent-c').setSubject('agent-c').setAudience(aud).setIssuedAt(now).setExpirationTime(now + 60)
      .sign(cKey);
    return t.post('/token', {
      grant_type: TX, ...form,
      client_assertion_type: 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer', client_assertion: assertion,
    });
  }
  const user = (claims: Record<string, unknown> = {}) => t.idp.token(t.issuer, claims);

  async function chainToC(): Promise<{ ab: string; bc: string }> {
    const ab = await asA({ subject_token: await user(), subject_token_type: AT, audience: B });
    expect(ab.status).toBe(200);
    const bc = await asB({ subject_token: ab.body.access_token as string, subject_token_type: AT, audience: C });
    expect(bc.status).toBe(200);
    return { ab: ab.body.access_token as string, bc: bc.body.access_token as string };
  }

  it('authenticates a private_key_jwt client and runs a three-agent chain to an RS256 tool', async () => {
    const { bc } = await chainToC();
    const cr = await asC({ subject_token: bc, subject_token_type: AT, audience: RSA_TOOL });
    expect(cr.status).toBe(200);
    const jwt = cr.body.access_token as string;
    expect(decodeProtectedHeader(jwt)).toMatchObject({ alg: 'RS256', typ: 'at+jwt' });
    const jwks = await (await fetch(`${t.url}/jwks`)).json() as { keys: JWK[] };
    const { payload } = await jwtVerify(jwt, createLocalJWKSet(jwks), { issuer: t.issuer, audience: RSA_TOOL, algorithms: ['RS256'], typ: 'at+jwt' });
    expect(payload.act).toEqual({ sub: 'agent-c', act: { sub: 'agent-b', act: { sub: 'agent-a' } } });
    expect((await t.post('/token/introspection', { token: jwt }, basicAuth('rsa-tool', SECRET.TOOL_SECRET))).body).toMatchObject({ active: true });
  });

  it('refuses a client assertion for another audience', async () => {
    const { bc } = await chainToC();
    const res = await asC({ subject_token: bc, subject_token_type: AT, audience: RSA_TOOL }, 'https://elsewhere.example.com');
    expect(res.status).toBe(401);
    expect(res.body.error).toBe('invalid_client');
  });

  it('takes an assertion only with aud = the issuer identifier, as a single string (rfc7523bis)', async () => {
    const { bc } = await chainToC();
    const form = { subject_token: bc, subject_token_type: AT, audience: RSA_TOOL };
    for (const aud of [[t.issuer, 'https://other-as.example'], [t.issuer], `${t.issuer}/token`]) {
      const res = await asC(form, aud);
      expect({ aud, status: res.status, error: res.body.error }).toEqual({ aud, status: 401, error: 'invalid_client' });
      expect(res.body.access_token).toBeUndefined();
    }
    // An endpoint URL built from the Host header the request names: made for another server.
    const now = Math.floor(Date.now() / 1000);
    const assertion = await new SignJWT({ jti: randomBytes(8).toString('hex') })
      .setProtectedHeader({ alg: 'ES256', kid: 'agent-c-1' })
      .setIssuer('agent-c').setSubject('agent-c').setAudience('http://evil.example/token').setIssuedAt(now).setExpirationTime(now + 60)
      .sign(cKey);
    const body = new URLSearchParams({ grant_type: TX, ...form, client_assertion_type: 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer', client_assertion: assertion }).toString();
    const url = new URL(`${t.url}/token`);
    const answer = await new Promise<{ status: number; body: Record<string, unknown> }>((resolve, reject) => {
      const req = request({ host: url.hostname, port: url.port, path: url.pathname, method: 'POST', headers: { host: 'evil.example', 'content-type': 'application/x-www-form-urlencoded', 'content-length': Buffer.byteLength(body) } }, (res) => {
        let text = '';
        res.setEncoding('utf8').on('data', (chunk: string) => { text += chunk; }).on('end', () => resolve({ status: res.statusCode!, body: JSON.parse(text) as Record<string, unknown> }));
      });
      req.on('error', reject).end(body);
    });
    expect({ status: answer.status, error: answer.body.error, token: answer.body.access_token }).toEqual({ status: 401, error: 'invalid_client', token: undefined });
    // The issuer itself, as a string, authenticates.
    expect((await asC(form)).status).toBe(200);
  });

  it('a replayed client assertion is refused and recorded as unauthenticated', async () => {
    const now = Math.floor(Date.now() / 1000);
    const assertion = await new SignJWT({ jti: randomBytes(8).toString('hex') })
      .setProtectedHeader({ alg: 'ES256', kid: 'agent-c-1' })
      .setIssuer('agent-c').setSubject('agent-c').setAudience(t.issuer).setIssuedAt(now).setExpirationTime(now + 60)
      .sign(cKey);
    const send = () => t.post('/token', {
      grant_type: TX, subject_token: 'not-a-token', subject_token_type: AT, audience: RSA_TOOL,
      client_assertion_type: 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer', client_assertion: assertion,
    });
    expect((await send()).status).toBe(400);
    const replay = await send();
    expect({ status: replay.status, error: replay.body.error }).toEqual({ status: 401, error: 'invalid_client' });
    const [row] = await t.auditRows({ request_id: replay.headers.get('x-request-id') });
    expect(row).toMatchObject({ client_id: null, reason: 'client_auth_failed' });
    expect(row!.details).toMatchObject({ authenticated: false, claimed_client_id: 'agent-c' });
  });

  it('an assertion client’s refused exchanges are not failed authentications', async () => {
    // More than the failure limit's burst (10): none of them may be refused as a failed login.
    const statuses: number[] = [];
    for (let i = 0; i < 12; i++) statuses.push((await asC({ subject_token: 'not-a-token', subject_token_type: AT, audience: RSA_TOOL })).status);
    expect(statuses).toEqual(Array.from({ length: 12 }, () => 400));
  });

  it('a client appearing twice in a chain is refused (act_cycle)', async () => {
    const { bc } = await chainToC();
    const ca = await asC({ subject_token: bc, subject_token_type: AT, audience: A });
    expect(ca.status).toBe(200);
    await expectDenied(t, await asA({ subject_token: ca.body.access_token as string, subject_token_type: AT, audience: B }), 'invalid_request', 'act_cycle');
  });

  it('depth beyond the smallest bound on the lineage is refused (depth_exceeded)', async () => {
    const { ab, bc } = await chainToC();
    // b on a's token: two act levels, within b's rule (2).
    expect((await asB({ subject_token: ab, subject_token_type: AT, audience: RSA_TOOL })).status).toBe(200);
    // c on b's token: three levels; the shallow tool's rule allows 2.
    await expectDenied(t, await asC({ subject_token: bc, subject_token_type: AT, audience: SHALLOW_TOOL }), 'invalid_request', 'depth_exceeded');
  });

  it('an actor token names another identity in act', async () => {
    const actor = await t.idp.token(t.issuer, { sub: 'bot-7' });
    const res = await asA({ subject_token: await user(), subject_token_type: AT, actor_token: actor, actor_token_type: AT, audience: RSA_TOOL });
    expect(res.status).toBe(200);
    expect(decodeJwt(res.body.access_token as string).act).toEqual({ sub: 'bot-7', iss: t.idp.issuer, client_id: 'agent-a' });
    expect(res.body.scope).toBe('x y');
  });

  it('the root selector constrains the chain’s human', async () => {
    const ab = await asA({ subject_token: await user({ groups: ['hr'] }), subject_token_type: AT, audience: B });
    const bc = await asB({ subject_token: ab.body.access_token as string, subject_token_type: AT, audience: C });
    await expectDenied(t, await asC({ subject_token: bc.body.access_token as string, subject_token_type: AT, audience: RSA_TOOL }), 'invalid_request', 'subject_mismatch');
  });

  it('an issuer with a jwks_uri: 503 while its keys cannot be had, then fetched, kept through an outage; a task required', async () => {
    const now = Math.floor(Date.now() / 1000);
    const remoteToken = () => new SignJWT({ sub: 'carol', groups: ['ops'] })
      .setProtectedHeader({ alg: 'ES256', typ: 'at+jwt', kid: 'remote-1' })
      .setIssuer(remoteIssuer).setAudience(t.issuer).setIssuedAt(now).setExpirationTime(now + 300)
      .sign(remoteKey);
    jwksUp = false;
    const unreachable = await asA({ subject_token: await remoteToken(), subject_token_type: AT, audience: TASK_TOOL, task_id: 'job-9' });
    expect(unreachable.status).toBe(503);
    expect(unreachable.body.error).toBe('temporarily_unavailable');
    expect(unreachable.body.access_token).toBeUndefined();
    expect(unreachable.headers.get('retry-after')).toBe('1');
    expect((await t.auditRows({ request_id: unreachable.headers.get('x-request-id') })).map((r) => r.reason)).toEqual(['jwks_unavailable']);
    jwksUp = true;
    // After a failed fetch the cache waits a few seconds before trying again.
    await expect.poll(async () => (await asA({ subject_token: await remoteToken(), subject_token_type: AT, audience: TASK_TOOL, task_id: 'job-9' })).status, { timeout: 8000, interval: 500 }).toBe(200);
    await expectDenied(t, await asA({ subject_token: await remoteToken(), subject_token_type: AT, audience: TASK_TOOL }), 'invalid_request', 'task_required');
    jwksUp = false;
    try {
      const during = await asA({ subject_token: await remoteToken(), subject_token_type: AT, audience: TASK_TOOL, task_id: 'job-9' });
      expect(during.status).toBe(200);
      expect(decodeJwt(during.body.access_token as string).task_id).toBe('job-9');
    } finally {
      jwksUp = true;
    }
  }, 20_000);

  it('an unknown kid is 503 while the issuer is unreachable and 400 once it answers', async () => {
    const late = await generateKeyPair('ES256');
    const lateJwk = { ...(await exportJWK(late.publicKey)), kid: 'late-1', alg: 'ES256', use: 'sig' };
    const lateToken = (kid: string) => {
      const now = Math.floor(Date.now() / 1000);
      return new SignJWT({ sub: 'dave' })
        .setProtectedHeader({ alg: 'ES256', typ: 'at+jwt', kid })
        .setIssuer(lateIssuer).setAudience(t.issuer).setIssuedAt(now).setExpirationTime(now + 300)
        .sign(late.privateKey);
    };
    const exchange = async (kid: string) => asA({ subject_token: await lateToken(kid), subject_token_type: AT, audience: SHALLOW_TOOL });
    // Nothing listens at the issuer's jwks_uri: Writ cannot tell an unknown kid from a key it
    // could not fetch, so it says "try again", never "invalid".
    const unreachable = await exchange('rotated-2');
    expect(unreachable.status).toBe(503);
    expect(unreachable.body.error).toBe('temporarily_unavailable');
    expect(unreachable.body.access_token).toBeUndefined();
    expect(unreachable.headers.get('retry-after')).toBe('1');
    expect((await t.auditRows({ request_id: unreachable.headers.get('x-request-id') })).map((r) => r.reason)).toEqual(['jwks_unavailable']);
    const server = createServer((req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ keys: [lateJwk] }));
    });
    await new Promise<void>((r) => server.listen(Number(new URL(lateIssuer).port), '127.0.0.1', () => r()));
    try {
      // Within the failure backoff (5 s) of the issuer answering, the same kid is a 400.
      const answeredAt = Date.now();
      await expect.poll(async () => (await exchange('rotated-2')).status, { timeout: 8000, interval: 250 }).toBe(400);
      expect(Date.now() - answeredAt).toBeLessThan(7000);
      await expectDenied(t, await exchange('rotated-2'), 'invalid_request', 'kid_unknown');
      expect((await exchange('late-1')).status).toBe(200);
    } finally {
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    }
  }, 20_000);
});
