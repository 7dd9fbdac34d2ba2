import { describe, it, expect, beforeAll, afterAll, beforeEach } from 'vitest';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { CompactSign, compactVerify, exportJWK, generateKeyPair, type CryptoKey, type JWK } from 'jose';
import { ExchangeDenied, type ReasonCode } from '../../src/exchange/reasons.ts';
import { RemoteJwks, checkJwksUri, type JwsKeyHeader, type KeyResolver, type RemoteJwksOptions } from '../../src/tokens/jwks-cache.ts';

// ---------------------------------------------------------------------------------------------
// A real JWKS endpoint on 127.0.0.1 whose behaviour each test sets.

type Mode =
  | 'ok' | 'status500' | 'status404' | 'redirect' | 'slowHeaders' | 'slowBody' | 'oversizedDeclared'
  | 'oversizedChunked' | 'notJson' | 'notJwks' | 'keysNotArray' | 'duplicateMembers' | 'badUtf8' | 'destroy';

interface Upstream {
  url: string;
  mode: Mode;
  /** Delay before answering, ms (applied in every mode). */
  delayMs: number;
  body: { keys: JWK[] };
  /** Requests to the JWKS path. */
  hits: number;
  /** Requests anywhere else (e.g. a redirect target): must stay 0. */
  strayHits: number;
}

let server: http.Server;
const upstream: Upstream = { url: '', mode: 'ok', delayMs: 0, body: { keys: [] }, hits: 0, strayHits: 0 };

function sendJson(res: http.ServerResponse, text: string | Buffer): void {
  res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

function answer(req: http.IncomingMessage, res: http.ServerResponse): void {
  if (req.url !== '/jwks.json') {
    upstream.strayHits++;
    sendJson(res, JSON.stringify(upstream.body));
    return;
  }
  upstream.hits++;
  switch (upstream.mode) {
    case 'ok': return sendJson(res, JSON.stringify(upstream.body));
    case 'status500': res.writeHead(500); res.end('oops'); return;
    case 'status404': res.writeHead(404); res.end(); return;
    case 'redirect': res.writeHead(302, { location: '/elsewhere.json' }); res.end(); return;
    case 'slowHeaders': setTimeout(() => sendJson(res, JSON.stringify(upstream.body)), 1000); return;
    case 'slowBody': {
      // Headers at once, then the body a byte at a time: the timeout must cover the body too.
      res.writeHead(200, { 'content-type': 'application/json' });
      const text = JSON.stringify(upstream.body);
      let i = 0;
      const timer = setInterval(() => {
        if (res.destroyed || i >= text.length) {
          clearInterval(timer);
          res.end();
          return;
        }
        res.write(text[i++]!);
      }, 50);
      return;
    }
    case 'oversizedDeclared': {
      const pad = JSON.stringify({ keys: upstream.body.keys, pad: 'x'.repeat(70 * 1024) });
      return sendJson(res, pad);
    }
    case 'oversizedChunked': {
      // No content-length: the cap must be enforced while reading the stream.
      res.writeHead(200, { 'content-type': 'application/json' });
      res.write(`{"keys":${JSON.stringify(upstream.body.keys)},"pad":"`);
      const chunk = 'x'.repeat(16 * 1024);
      let sent = 0;
      const more = (): void => {
        if (res.destroyed) return;
        if (sent++ > 64) {
          res.end('"}');
          return;
        }
        res.write(chunk, more);
      };
      more();
      return;
    }
    case 'notJson': return sendJson(res, '<html>hello</html>');
    case 'notJwks': return sendJson(res, '[]');
    case 'keysNotArray': return sendJson(res, '{"keys":{"kty":"EC"}}');
    case 'duplicateMembers': return sendJson(res, `{"keys":[],"keys":${JSON.stringify(upstream.body.keys)}}`);
    case 'badUtf8': return sendJson(res, Buffer.from([0x7b, 0x22, 0xff, 0x22, 0x3a, 0x31, 0x7d]));
    case 'destroy': req.socket.destroy(); return;
  }
}

beforeAll(async () => {
  server = http.createServer((req, res) => {
    if (upstream.delayMs > 0) setTimeout(() => answer(req, res), upstream.delayMs);
    else answer(req, res);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  upstream.url = `http://127.0.0.1:${port}/jwks.json`;
});

afterAll(async () => {
  server.closeAllConnections();
  await new Promise<void>((resolve) => server.close(() => resolve()));
});

// ---------------------------------------------------------------------------------------------
// Keys, clock and helpers.

interface TestKey {
  kid: string;
  alg: string;
  privateKey: CryptoKey;
  jwk: JWK;
}

async function makeKey(alg: 'ES256' | 'RS256' | 'PS256' | 'EdDSA' | 'ES384', kid: string, extra: Partial<JWK> = {}): Promise<TestKey> {
  const { privateKey, publicKey } = await generateKeyPair(alg);
  return { kid, alg, privateKey, jwk: { ...(await exportJWK(publicKey)), kid, ...extra } };
}

let es1: TestKey;
let es2: TestKey;
let rs1: TestKey;
let ed1: TestKey;

beforeAll(async () => {
  [es1, es2, rs1, ed1] = await Promise.all([
    makeKey('ES256', 'es-1'), makeKey('ES256', 'es-2'), makeKey('RS256', 'rs-1'), makeKey('EdDSA', 'ed-1'),
  ]);
});

let clock = 0;
const now = (): number => clock;

beforeEach(() => {
  clock = 1_750_000_000_000;
  upstream.mode = 'ok';
  upstream.delayMs = 0;
  upstream.hits = 0;
  upstream.strayHits = 0;
  upstream.body = { keys: [es1.jwk, rs1.jwk, ed1.jwk] };
});

function remote(options: RemoteJwksOptions = {}): RemoteJwks {
  return new RemoteJwks(upstream.url, { now, ...options });
}

async function denial(promise: Promise<unknown>): Promise<ExchangeDenied> {
  try {
    await promise;
  } catch (err) {
    if (err instanceof ExchangeDenied) return err;
    throw err;
  }
  throw new Error('expected ExchangeDenied, the promise resolved');
}

async function expectDenied(resolver: KeyResolver, header: JwsKeyHeader, reason: ReasonCode): Promise<ExchangeDenied> {
  const err = await denial(resolver.getKey(header));
  expect(err.reason).toBe(reason);
  return err;
}

/** Proves the returned key is the right one: it verifies a real signature by the private key. */
async function expectVerifies(resolver: KeyResolver, key: TestKey): Promise<void> {
  const jws = await new CompactSign(new TextEncoder().encode('{"sub":"x"}'))
    .setProtectedHeader({ alg: key.alg, kid: key.kid })
    .sign(key.privateKey);
  const verificationKey = await resolver.getKey({ alg: key.alg, kid: key.kid });
  const { payload } = await compactVerify(jws, verificationKey, { algorithms: [key.alg] });
  expect(new TextDecoder().decode(payload)).toBe('{"sub":"x"}');
}

// ---------------------------------------------------------------------------------------------

describe('RemoteJwks: configuration', () => {
  it('accepts https anywhere and plain http only to loopback', () => {
    expect(checkJwksUri('https://idp.example.com/jwks').href).toBe('https://idp.example.com/jwks');
    expect(() => checkJwksUri('http://localhost:8080/jwks')).not.toThrow();
    expect(() => checkJwksUri('http://127.0.0.1/jwks')).not.toThrow();
    expect(() => checkJwksUri('http://[::1]:9000/jwks')).not.toThrow();
    for (const bad of [
      'http://idp.example.com/jwks', 'http://127.0.0.2/jwks', 'http://localhost.evil.example/jwks', 'ftp://idp.example.com/jwks',
      'file:///etc/passwd', 'https://user:pw@idp.example.com/jwks', 'https://idp.example.com/jwks#x', '/relative/jwks', 'not a url',
    ]) {
      expect(() => new RemoteJwks(bad), bad).toThrow(TypeError);
    }
  });
});

describe('RemoteJwks: fetching and caching', () => {
  it('fetches once, returns working keys of every type, and caches them within the TTL', async () => {
    const jwks = remote();
    await expectVerifies(jwks, es1);
    await expectVerifies(jwks, rs1);
    await expectVerifies(jwks, ed1);
    expect(upstream.hits).toBe(1);
    clock += 9 * 60_000;
    await expectVerifies(jwks, es1);
    expect(upstream.hits).toBe(1);
    clock += 60_001;
    await expectVerifies(jwks, es1);
    expect(upstream.hits).toBe(2);
  });

  it('honours a configured TTL', async () => {
    const jwks = remote({ ttlMs: 1000 });
    await jwks.getKey({ alg: 'ES256', kid: 'es-1' });
    clock += 999;
    await jwks.getKey({ alg: 'ES256', kid: 'es-1' });
    expect(upstream.hits).toBe(1);
    clock += 1;
    await jwks.getKey({ alg: 'ES256', kid: 'es-1' });
    expect(upstream.hits).toBe(2);
  });

  it('is single-flight: concurrent callers share one fetch', async () => {
    upstream.delayMs = 150;
    const jwks = remote();
    const keys = await Promise.all(Array.from({ length: 25 }, (_, i) =>
      jwks.getKey(i % 2 === 0 ? { alg: 'ES256', kid: 'es-1' } : { alg: 'RS256', kid: 'rs-1' })));
    expect(upstream.hits).toBe(1);
    // And each (key, alg) is imported once: every caller got the same object.
    expect(new Set(keys.filter((_, i) => i % 2 === 0)).size).toBe(1);
    expect(new Set(keys.filter((_, i) => i % 2 === 1)).size).toBe(1);
  });

  it('keeps imported keys across a refresh when the key did not change', async () => {
    const jwks = remote();
    const first = await jwks.getKey({ alg: 'ES256', kid: 'es-1' });
    clock += 11 * 60_000;
    const second = await jwks.getKey({ alg: 'ES256', kid: 'es-1' });
    expect(upstream.hits).toBe(2);
    expect(second).toBe(first);
  });

  it('sends a plain GET to exactly the configured URL', async () => {
    const seen: Array<{ method?: string; url?: string; cookie?: string; auth?: string }> = [];
    const spy = (req: http.IncomingMessage): void => {
      seen.push({ method: req.method, url: req.url, cookie: req.headers.cookie, auth: req.headers.authorization });
    };
    server.on('request', spy);
    try {
      await remote().getKey({ alg: 'ES256', kid: 'es-1' });
    } finally {
      server.off('request', spy);
    }
    expect(seen).toEqual([{ method: 'GET', url: '/jwks.json', cookie: undefined, auth: undefined }]);
  });
});

describe('RemoteJwks: unknown kid', () => {
  it('refetches for an unknown kid at most once per cooldown, then says kid_unknown', async () => {
    const jwks = remote();
    await jwks.getKey({ alg: 'ES256', kid: 'es-1' });
    expect(upstream.hits).toBe(1);

    // Within the cooldown of the last fetch: no refetch.
    await expectDenied(jwks, { alg: 'ES256', kid: 'nope' }, 'kid_unknown');
    expect(upstream.hits).toBe(1);

    clock += 30_000;
    await expectDenied(jwks, { alg: 'ES256', kid: 'nope' }, 'kid_unknown');
    expect(upstream.hits).toBe(2);
    for (let i = 0; i < 10; i++) {
      clock += 2_000;
      await expectDenied(jwks, { alg: 'ES256', kid: `nope-${i}` }, 'kid_unknown');
    }
    expect(upstream.hits).toBe(2);
    clock += 10_000;
    await expectDenied(jwks, { alg: 'ES256', kid: 'nope' }, 'kid_unknown');
    expect(upstream.hits).toBe(3);
  });

  it('picks up a rotated-in key through the unknown-kid refetch', async () => {
    const jwks = remote();
    await jwks.getKey({ alg: 'ES256', kid: 'es-1' });
    upstream.body = { keys: [es1.jwk, es2.jwk] };
    // Too soon after the last fetch: the new key is not yet known.
    await expectDenied(jwks, { alg: 'ES256', kid: 'es-2' }, 'kid_unknown');
    clock += 30_000;
    await expectVerifies(jwks, es2);
    expect(upstream.hits).toBe(2);
    // A rotated-out key disappears at the next refresh.
    upstream.body = { keys: [es2.jwk] };
    clock += 10 * 60_000;
    await expectDenied(jwks, { alg: 'ES256', kid: 'es-1' }, 'kid_unknown');
  });

  it('honours a configured cooldown', async () => {
    const jwks = remote({ unknownKidCooldownMs: 5_000 });
    await jwks.getKey({ alg: 'ES256', kid: 'es-1' });
    clock += 5_000;
    await expectDenied(jwks, { alg: 'ES256', kid: 'x' }, 'kid_unknown');
    expect(upstream.hits).toBe(2);
  });

  it('shares one refetch among concurrent unknown-kid requests', async () => {
    const jwks = remote();
    await jwks.getKey({ alg: 'ES256', kid: 'es-1' });
    clock += 60_000;
    upstream.delayMs = 100;
    const results = await Promise.all(Array.from({ length: 20 }, (_, i) => denial(jwks.getKey({ alg: 'ES256', kid: `k${i}` }))));
    expect(results.every((e) => e.reason === 'kid_unknown')).toBe(true);
    expect(upstream.hits).toBe(2);
  });

  it('treats injection-shaped kids as plain unknown lookups', async () => {
    const jwks = remote();
    for (const kid of ['../../etc/passwd', "' OR '1'='1", '"; DROP TABLE keys; --', '${jndi:ldap://x}', '\u0000', 'es-1\u0000', 'ES-1', ' es-1']) {
      await expectDenied(jwks, { alg: 'ES256', kid }, 'kid_unknown');
    }
    expect(upstream.strayHits).toBe(0);
  });

  it('answers 503 (jwks_unavailable), not 400, when the refetch for an unknown kid fails', async () => {
    const jwks = remote();
    await jwks.getKey({ alg: 'ES256', kid: 'es-1' });
    upstream.mode = 'status500';
    clock += 30_000;
    await expectDenied(jwks, { alg: 'ES256', kid: 'new-key' }, 'jwks_unavailable');
    // Known keys keep working meanwhile.
    await expectVerifies(jwks, es1);
  });

  it('answers an unknown kid 400 again within the failure backoff once the issuer is back', async () => {
    const jwks = remote();
    await jwks.getKey({ alg: 'ES256', kid: 'es-1' });
    upstream.mode = 'status500';
    clock += 30_000;
    await expectDenied(jwks, { alg: 'ES256', kid: 'new-key' }, 'jwks_unavailable');
    expect(upstream.hits).toBe(2);
    upstream.mode = 'ok';
    // Within the 5 s backoff no new attempt: still 503, the issuer not asked.
    clock += 4_000;
    await expectDenied(jwks, { alg: 'ES256', kid: 'new-key' }, 'jwks_unavailable');
    expect(upstream.hits).toBe(2);
    // Past it (long before the 30 s cooldown) one refetch, and the kid is known to be unknown.
    clock += 1_000;
    await expectDenied(jwks, { alg: 'ES256', kid: 'new-key' }, 'kid_unknown');
    expect(upstream.hits).toBe(3);
    // Healthy again, so the cooldown guards the issuer once more.
    clock += 5_000;
    await expectDenied(jwks, { alg: 'ES256', kid: 'other-key' }, 'kid_unknown');
    expect(upstream.hits).toBe(3);
  });
});

describe('RemoteJwks: failures', () => {
  it('is jwks_unavailable when the set was never fetched', async () => {
    upstream.mode = 'status500';
    const err = await expectDenied(remote(), { alg: 'ES256', kid: 'es-1' }, 'jwks_unavailable');
    expect(err.error).toBe('temporarily_unavailable');
    expect(err.message).toContain('HTTP 500');
  });

  it('is jwks_unavailable when nothing listens', async () => {
    const closed = http.createServer();
    await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve));
    const { port } = closed.address() as AddressInfo;
    await new Promise<void>((resolve) => closed.close(() => resolve()));
    await expectDenied(new RemoteJwks(`http://127.0.0.1:${port}/jwks.json`, { now }), { alg: 'ES256', kid: 'es-1' }, 'jwks_unavailable');
  });

  it('serves the last good keys through an outage for up to an hour', async () => {
    const fetches: string[] = [];
    const jwks = remote({ onFetch: (o) => fetches.push(o.ok ? 'ok' : o.error) });
    await expectVerifies(jwks, es1);
    upstream.mode = 'status500';
    clock += 11 * 60_000; // stale: a refresh is attempted and fails
    await expectVerifies(jwks, es1);
    expect(upstream.hits).toBe(2);
    clock += 1_000; // within the retry backoff: no new attempt
    await expectVerifies(jwks, es1);
    expect(upstream.hits).toBe(2);
    expect(jwks.lastFetchError).toBe('HTTP 500');
    clock = 1_750_000_000_000 + 60 * 60_000; // exactly 1 h after the good fetch: still served
    await expectVerifies(jwks, es1);
    clock += 1;
    await expectDenied(jwks, { alg: 'ES256', kid: 'es-1' }, 'jwks_unavailable');
    // Recovery: the next attempt succeeds and fresh keys are served again.
    upstream.mode = 'ok';
    clock += 10_000;
    await expectVerifies(jwks, es1);
    expect(jwks.lastFetchError).toBeUndefined();
    // Every attempt was reported (metrics and a warning in Writ).
    expect(fetches).toEqual(['ok', 'HTTP 500', 'HTTP 500', 'ok']);
  });

  it('honours a configured stale-if-error window', async () => {
    const jwks = remote({ ttlMs: 1_000, staleIfErrorMs: 5_000 });
    await jwks.getKey({ alg: 'ES256', kid: 'es-1' });
    upstream.mode = 'status404';
    clock += 4_000;
    await jwks.getKey({ alg: 'ES256', kid: 'es-1' });
    clock += 1_001;
    await expectDenied(jwks, { alg: 'ES256', kid: 'es-1' }, 'jwks_unavailable');
  });

  it('backs off after a failure instead of fetching on every request', async () => {
    upstream.mode = 'status500';
    const jwks = remote({ retryAfterErrorMs: 5_000 });
    await expectDenied(jwks, { alg: 'ES256', kid: 'es-1' }, 'jwks_unavailable');
    await expectDenied(jwks, { alg: 'ES256', kid: 'es-1' }, 'jwks_unavailable');
    expect(upstream.hits).toBe(1);
    upstream.mode = 'ok';
    clock += 5_000;
    await expectVerifies(jwks, es1);
    expect(upstream.hits).toBe(2);
  });

  it('refuses redirects and never contacts the redirect target', async () => {
    upstream.mode = 'redirect';
    const err = await expectDenied(remote(), { alg: 'ES256', kid: 'es-1' }, 'jwks_unavailable');
    expect(err.message).toContain('redirect');
    expect(upstream.hits).toBe(1);
    expect(upstream.strayHits).toBe(0);
  });

  it('caps the body, whether or not its length is declared', async () => {
    upstream.mode = 'oversizedDeclared';
    let err = await expectDenied(remote(), { alg: 'ES256', kid: 'es-1' }, 'jwks_unavailable');
    expect(err.message).toContain('exceeds');
    upstream.mode = 'oversizedChunked';
    err = await expectDenied(remote(), { alg: 'ES256', kid: 'es-1' }, 'jwks_unavailable');
    expect(err.message).toContain('exceeds');
    // A small set passes under a small cap; the same set fails under a smaller one.
    upstream.mode = 'ok';
    const size = JSON.stringify(upstream.body).length;
    await remote({ maxBodyBytes: size }).getKey({ alg: 'ES256', kid: 'es-1' });
    await expectDenied(remote({ maxBodyBytes: size - 1 }), { alg: 'ES256', kid: 'es-1' }, 'jwks_unavailable');
  });

  it('times out slow headers and slow bodies', async () => {
    // The upstream would answer in full after 1 s (headers), or a byte every 50 ms (body):
    // 'timed out' means the fetch was cut before that.
    upstream.mode = 'slowHeaders';
    let err = await expectDenied(remote({ timeoutMs: 200 }), { alg: 'ES256', kid: 'es-1' }, 'jwks_unavailable');
    expect(err.message).toContain('timed out');

    upstream.mode = 'slowBody';
    err = await expectDenied(remote({ timeoutMs: 300 }), { alg: 'ES256', kid: 'es-1' }, 'jwks_unavailable');
    expect(err.message).toContain('timed out');
  });

  it('refuses bodies that are not a strict JSON JWK Set', async () => {
    for (const mode of ['notJson', 'notJwks', 'keysNotArray', 'duplicateMembers', 'badUtf8', 'destroy', 'status404'] as const) {
      upstream.mode = mode;
      await expectDenied(remote(), { alg: 'ES256', kid: 'es-1' }, 'jwks_unavailable');
    }
  });

  it('never puts key material into a denial', async () => {
    const jwks = remote();
    await jwks.getKey({ alg: 'ES256', kid: 'es-1' });
    const err = await expectDenied(jwks, { alg: 'RS256', kid: 'es-1' }, 'kid_unknown');
    for (const value of [es1.jwk.x, es1.jwk.y, rs1.jwk.n]) expect(err.message).not.toContain(value);
  });
});

describe('RemoteJwks: key selection', () => {
  it('refuses algorithms it cannot verify before fetching anything', async () => {
    const jwks = remote();
    for (const alg of ['HS256', 'none', 'ES256K', 'RSA-OAEP', '']) {
      await expectDenied(jwks, { alg, kid: 'es-1' }, 'alg_not_allowed');
    }
    expect(upstream.hits).toBe(0);
  });

  it('only offers a key for the algorithm family it fits', async () => {
    const jwks = remote();
    await expectDenied(jwks, { alg: 'RS256', kid: 'es-1' }, 'kid_unknown');
    await expectDenied(jwks, { alg: 'ES384', kid: 'es-1' }, 'kid_unknown');
    await expectDenied(jwks, { alg: 'ES256', kid: 'rs-1' }, 'kid_unknown');
    // One RSA key serves RS256 and PS256 when it does not pin an `alg`.
    await jwks.getKey({ alg: 'PS256', kid: 'rs-1' });
  });

  it('without a kid, uses the single key that fits the algorithm, else kid_unknown', async () => {
    const jwks = remote();
    await jwks.getKey({ alg: 'ES256' });
    await jwks.getKey({ alg: 'RS256' });
    await jwks.getKey({ alg: 'EdDSA' });
    upstream.body = { keys: [es1.jwk, es2.jwk] };
    const ambiguous = remote();
    const err = await expectDenied(ambiguous, { alg: 'ES256' }, 'kid_unknown');
    expect(err.message).toContain('several');
    // The same key listed twice is not ambiguous.
    upstream.body = { keys: [es1.jwk, { ...es1.jwk }] };
    await remote().getKey({ alg: 'ES256', kid: 'es-1' });
  });

  it('checks the JWK use, key_ops and alg members', async () => {
    const [sigUse, encUse, verifyOps, signOps, badOps, pinned] = await Promise.all([
      makeKey('ES256', 'sig-use', { use: 'sig' }), makeKey('ES256', 'enc-use', { use: 'enc' }),
      makeKey('ES256', 'verify-ops', { key_ops: ['verify'] }), makeKey('ES256', 'sign-ops', { key_ops: ['sign'] }),
      makeKey('ES256', 'bad-ops', { key_ops: 'verify' as unknown as string[] }), makeKey('RS256', 'pinned', { alg: 'RS256' }),
    ]);
    upstream.body = { keys: [sigUse.jwk, encUse.jwk, verifyOps.jwk, signOps.jwk, badOps.jwk, pinned.jwk] };
    const jwks = remote();
    await expectVerifies(jwks, sigUse);
    await expectVerifies(jwks, verifyOps);
    await expectVerifies(jwks, pinned);
    await expectDenied(jwks, { alg: 'ES256', kid: 'enc-use' }, 'kid_unknown');
    await expectDenied(jwks, { alg: 'ES256', kid: 'sign-ops' }, 'kid_unknown');
    await expectDenied(jwks, { alg: 'ES256', kid: 'bad-ops' }, 'kid_unknown');
    // RFC 8725 §3.1: a key pinned to RS256 is never used for PS256.
    await expectDenied(jwks, { alg: 'PS256', kid: 'pinned' }, 'kid_unknown');
  });

  it('ignores private, symmetric and unknown keys in the set', async () => {
    const { privateKey } = await generateKeyPair('ES256', { extractable: true });
    const leaked = { ...(await exportJWK(privateKey)), kid: 'leaked' };
    upstream.body = { keys: [leaked, { kty: 'oct', k: 'c2VjcmV0', kid: 'hmac' }, { kty: 'XYZ', kid: 'odd' }, { kid: 'nokty' }, 'junk' as unknown as JWK, es1.jwk] };
    const jwks = remote();
    await expectDenied(jwks, { alg: 'ES256', kid: 'leaked' }, 'kid_unknown');
    await expectDenied(jwks, { alg: 'ES256', kid: 'hmac' }, 'kid_unknown');
    await expectDenied(jwks, { alg: 'ES256', kid: 'odd' }, 'kid_unknown');
    await expectVerifies(jwks, es1);
  });

  it('refuses a key whose point is not on its curve (RFC 8725 §3.4)', async () => {
    const offCurve = { ...es1.jwk, kid: 'bad-point', y: es2.jwk.y };
    upstream.body = { keys: [offCurve] };
    await expectDenied(remote(), { alg: 'ES256', kid: 'bad-point' }, 'kid_unknown');
  });
});

describe('RemoteJwks.fromInline', () => {
  it('serves inline keys without any network access', async () => {
    const jwks = RemoteJwks.fromInline({ keys: [es1.jwk as Record<string, unknown>, rs1.jwk as Record<string, unknown>] });
    await expectVerifies(jwks, es1);
    await expectVerifies(jwks, rs1);
    await expectDenied(jwks, { alg: 'ES256', kid: 'es-2' }, 'kid_unknown');
    await expectDenied(jwks, { alg: 'HS256', kid: 'es-1' }, 'alg_not_allowed');
    expect(upstream.hits).toBe(0);
  });

  it('refuses something that is not a JWK Set', () => {
    expect(() => RemoteJwks.fromInline({ keys: 'nope' } as unknown as { keys: [] })).toThrow(TypeError);
    expect(() => RemoteJwks.fromInline(null as unknown as { keys: [] })).toThrow(TypeError);
  });
});
