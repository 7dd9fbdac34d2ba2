import { describe, it, expect, beforeAll } from 'vitest';
import { createHmac, webcrypto } from 'node:crypto';
import { SignJWT, exportJWK, exportSPKI, generateKeyPair, type CryptoKey, type JWK } from 'jose';
import { ExchangeDenied, type ReasonCode } from '../../src/exchange/reasons.ts';
import type { IssuerPolicy } from '../../src/policy/model.ts';
import { RemoteJwks, type KeyResolver } from '../../src/tokens/jwks-cache.ts';
import { VerifiedSignatures } from '../../src/tokens/verified-signatures.ts';
import { inspectCompactJws } from '../../src/tokens/jws-structure.ts';
import {
  peekIssuer, verifyUpstreamToken, verifyWritToken, type UpstreamVerifyOptions, type WritVerifyOptions,
} from '../../src/tokens/verify-jwt.ts';

const ISS = 'https://idp.example.com';
const SELF = 'https://writ.example.com';
const NOW = 1_750_000_000;

// ---------------------------------------------------------------------------------------------
// Real keys, real signatures. Tokens are signed over exact header and payload TEXT, so that the
// tests can send what no JWT library would produce (duplicate members, 1e400, floats ...).

type Alg = 'ES256' | 'RS256' | 'PS256' | 'EdDSA' | 'ES384';

interface TestKey {
  alg: Alg;
  kid: string;
  privateKey: CryptoKey;
  publicKey: CryptoKey;
  jwk: JWK;
}

async function makeKey(alg: Alg, kid: string): Promise<TestKey> {
  const { privateKey, publicKey } = await generateKeyPair(alg);
  return { alg, kid, privateKey, publicKey, jwk: { ...(await exportJWK(publicKey)), kid } };
}

const SIGN_PARAMS: Record<Alg, webcrypto.AlgorithmIdentifier | webcrypto.EcdsaParams | webcrypto.RsaPssParams> = {
  ES256: { name: 'ECDSA', hash: 'SHA-256' },
  ES384: { name: 'ECDSA', hash: 'SHA-384' },
  RS256: { name: 'RSASSA-PKCS1-v1_5' },
  PS256: { name: 'RSA-PSS', saltLength: 32 },
  EdDSA: { name: 'Ed25519' },
};

const b64 = (text: string): string => Buffer.from(text, 'utf8').toString('base64url');

async function signText(headerText: string, payloadText: string, key: TestKey): Promise<string> {
  const input = `${b64(headerText)}.${b64(payloadText)}`;
  const sig = await webcrypto.subtle.sign(SIGN_PARAMS[key.alg], key.privateKey as webcrypto.CryptoKey, new TextEncoder().encode(input));
  return `${input}.${Buffer.from(sig).toString('base64url')}`;
}

/** Claims as raw JSON snippets, so a test can override one with any text at all. */
type RawClaims = Record<string, string | undefined>;

function rawFrom(claims: Record<string, unknown>): RawClaims {
  return Object.fromEntries(Object.entries(claims).map(([k, v]) => [k, JSON.stringify(v)]));
}

function payloadText(base: Record<string, unknown>, raw: RawClaims = {}, set: Record<string, unknown> = {}): string {
  const merged: RawClaims = { ...rawFrom(base), ...rawFrom(set), ...raw };
  return `{${Object.entries(merged).filter(([, v]) => v !== undefined).map(([k, v]) => `${JSON.stringify(k)}:${v}`).join(',')}}`;
}

const upstreamClaims = (): Record<string, unknown> => ({
  iss: ISS, sub: 'alice', aud: SELF, iat: NOW - 10, exp: NOW + 300, jti: 'up-1', groups: ['finance'],
});

interface MakeToken {
  key?: TestKey;
  header?: Record<string, unknown>;
  headerText?: string;
  /** Claims to set (JSON values); `undefined` removes the claim. */
  set?: Record<string, unknown>;
  /** Claims as raw JSON text; `undefined` removes the claim. */
  raw?: RawClaims;
  payload?: string;
}

let es: TestKey;
let rs: TestKey;
let ps: TestKey;
let ed: TestKey;
let es384: TestKey;
let attacker: TestKey;
let writEs: TestKey;
let writRs: TestKey;
let writPs: TestKey;
let upstreamKeys: KeyResolver;
let writKeys: KeyResolver;

beforeAll(async () => {
  [es, rs, ps, ed, es384, attacker, writEs, writRs, writPs] = await Promise.all([
    makeKey('ES256', 'es'), makeKey('RS256', 'rs'), makeKey('PS256', 'ps'), makeKey('EdDSA', 'ed'), makeKey('ES384', 'es384'),
    makeKey('ES256', 'es'), // the attacker's key, published nowhere, claiming the same kid
    makeKey('ES256', 'writ-es'), makeKey('RS256', 'writ-rs'), makeKey('PS256', 'writ-ps'),
  ]);
  upstreamKeys = RemoteJwks.fromInline({ keys: [es.jwk, rs.jwk, ps.jwk, ed.jwk, es384.jwk] as Array<Record<string, unknown>> });
  writKeys = RemoteJwks.fromInline({ keys: [writEs.jwk, writRs.jwk, writPs.jwk] as Array<Record<string, unknown>> });
});

function upstreamToken(t: MakeToken = {}): Promise<string> {
  const key = t.key ?? es;
  const headerText = t.headerText ?? JSON.stringify(t.header ?? { alg: key.alg, typ: 'at+jwt', kid: key.kid });
  return signText(headerText, t.payload ?? payloadText(upstreamClaims(), t.raw, t.set), key);
}

function issuerPolicy(overrides: Partial<IssuerPolicy> = {}): IssuerPolicy {
  return {
    issuer: ISS,
    jwks_uri: 'https://idp.example.com/jwks.json',
    algorithms: ['ES256', 'RS256', 'PS256', 'EdDSA'],
    audience: 'self',
    token_types: ['access_token', 'jwt'],
    typ: ['at+jwt', 'application/at+jwt'],
    act: 'reject',
    max_token_age: 86_400,
    ...overrides,
  };
}

function upstreamOpts(overrides: Partial<UpstreamVerifyOptions> = {}): UpstreamVerifyOptions {
  return {
    role: 'subject', declaredType: 'access_token', issuer: issuerPolicy(), keys: upstreamKeys, selfIssuer: SELF, now: NOW,
    ...overrides,
  };
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

/** Expects a denial, and that its detail contains no piece of the token. */
async function expectUpstream(token: string, reason: ReasonCode, overrides: Partial<UpstreamVerifyOptions> = {}): Promise<ExchangeDenied> {
  const opts = upstreamOpts(overrides);
  const err = await denial(verifyUpstreamToken(token, opts));
  expect(err.reason, err.message).toBe(reason);
  expect(err.role).toBe(opts.role);
  for (const segment of token.split('.')) {
    if (segment.length >= 8) expect(err.message).not.toContain(segment.slice(0, 16));
  }
  return err;
}

// ---------------------------------------------------------------------------------------------

describe('verifyUpstreamToken: accepted tokens', () => {
  it.each(['ES256', 'RS256', 'PS256', 'EdDSA'] as const)('verifies a good %s token', async (alg) => {
    const key = { ES256: es, RS256: rs, PS256: ps, EdDSA: ed }[alg];
    const token = await upstreamToken({ key });
    const result = await verifyUpstreamToken(token, upstreamOpts());
    expect(result).toEqual({
      issuer: ISS, sub: 'alice', iat: NOW - 10, exp: NOW + 300,
      claims: { iss: ISS, sub: 'alice', aud: SELF, iat: NOW - 10, exp: NOW + 300, jti: 'up-1', groups: ['finance'] },
    });
    expect(result.act).toBeUndefined();
  });

  it('verifies a token made by jose SignJWT too', async () => {
    const token = await new SignJWT({ groups: 'finance' })
      .setProtectedHeader({ alg: 'ES256', typ: 'at+jwt', kid: 'es' })
      .setIssuer(ISS).setSubject('bob').setAudience(SELF).setIssuedAt(NOW).setExpirationTime(NOW + 60)
      .sign(es.privateKey);
    expect((await verifyUpstreamToken(token, upstreamOpts())).sub).toBe('bob');
  });

  it('accepts an aud array that contains Writ', async () => {
    const token = await upstreamToken({ set: { aud: ['https://other.example.com', SELF] } });
    expect((await verifyUpstreamToken(token, upstreamOpts())).sub).toBe('alice');
  });

  it('accepts an explicit audience URL instead of self', async () => {
    const token = await upstreamToken({ set: { aud: 'https://sts.example.com' } });
    const issuer = issuerPolicy({ audience: 'https://sts.example.com' });
    expect((await verifyUpstreamToken(token, upstreamOpts({ issuer }))).sub).toBe('alice');
    await expectUpstream(await upstreamToken(), 'aud_mismatch', { issuer });
  });

  it('accepts every spelling of the at+jwt typ (RFC 7515 §4.1.9)', async () => {
    for (const typ of ['at+jwt', 'application/at+jwt', 'AT+JWT', 'Application/At+Jwt']) {
      const token = await upstreamToken({ header: { alg: 'ES256', typ, kid: 'es' } });
      expect((await verifyUpstreamToken(token, upstreamOpts())).sub).toBe('alice');
    }
  });

  it('accepts JWT typ only from an issuer configured for it', async () => {
    const issuer = issuerPolicy({ typ: ['JWT'] });
    for (const typ of ['JWT', 'jwt', 'application/jwt']) {
      const token = await upstreamToken({ header: { alg: 'ES256', typ, kid: 'es' } });
      expect((await verifyUpstreamToken(token, upstreamOpts({ issuer }))).sub).toBe('alice');
      await expectUpstream(token, 'typ_not_allowed');
    }
    await expectUpstream(await upstreamToken(), 'typ_not_allowed', { issuer });
  });

  it('accepts a token without kid when one key fits the algorithm', async () => {
    const token = await upstreamToken({ header: { alg: 'EdDSA', typ: 'at+jwt' }, key: ed });
    expect((await verifyUpstreamToken(token, upstreamOpts())).sub).toBe('alice');
  });

  it('returns the verified claims, unknown claims included but not interpreted', async () => {
    const token = await upstreamToken({ set: { 'https://example.com/role': 'admin', scope: 'a b' } });
    const { claims } = await verifyUpstreamToken(token, upstreamOpts());
    expect(claims['https://example.com/role']).toBe('admin');
    expect(claims.scope).toBe('a b');
  });
});

describe('verifyUpstreamToken: algorithm attacks', () => {
  it('refuses alg none in every spelling, signed or not', async () => {
    const payload = b64(payloadText(upstreamClaims()));
    for (const alg of ['none', 'None', 'NONE', 'nOnE']) {
      const header = b64(JSON.stringify({ alg, typ: 'at+jwt' }));
      await expectUpstream(`${header}.${payload}.`, 'alg_not_allowed');
      await expectUpstream(`${header}.${payload}.${Buffer.alloc(64, 1).toString('base64url')}`, 'alg_not_allowed');
      await expectUpstream(`${header}.${payload}.`, 'alg_not_allowed', { issuer: issuerPolicy({ algorithms: ['none', alg] }) });
    }
  });

  it('refuses HS256 signed with the RSA public key bytes (key confusion), even if misconfigured to allow it', async () => {
    const pem = await exportSPKI(rs.publicKey);
    for (const secret of [pem, Buffer.from(pem), JSON.stringify(rs.jwk), rs.jwk.n!]) {
      const input = `${b64(JSON.stringify({ alg: 'HS256', typ: 'at+jwt', kid: 'rs' }))}.${b64(payloadText(upstreamClaims()))}`;
      const sig = createHmac('sha256', secret).update(input).digest('base64url');
      await expectUpstream(`${input}.${sig}`, 'alg_not_allowed');
      await expectUpstream(`${input}.${sig}`, 'alg_not_allowed', { issuer: issuerPolicy({ algorithms: ['HS256', 'RS256'] }) });
    }
  });

  it("refuses an algorithm outside the issuer's list", async () => {
    const token = await upstreamToken({ key: es384 });
    await expectUpstream(token, 'alg_not_allowed');
    await expectUpstream(await upstreamToken(), 'alg_not_allowed', { issuer: issuerPolicy({ algorithms: ['RS256'] }) });
    // A misspelt or unknown algorithm in the policy enables nothing.
    await expectUpstream(await upstreamToken(), 'alg_not_allowed', { issuer: issuerPolicy({ algorithms: ['es256', 'ES256K'] }) });
  });

  it('never uses a key with an algorithm it does not fit', async () => {
    // Header claims RS256 but names the EC key.
    const token = await signText(JSON.stringify({ alg: 'RS256', typ: 'at+jwt', kid: 'es' }), payloadText(upstreamClaims()), rs);
    await expectUpstream(token, 'kid_unknown');
    // Header claims PS256 with the RSA key, but the signature is RS256.
    const ps256Header = JSON.stringify({ alg: 'PS256', typ: 'at+jwt', kid: 'rs' });
    await expectUpstream(await signText(ps256Header, payloadText(upstreamClaims()), rs), 'signature_invalid');
  });

  it('refuses a signature by another key claiming the same kid', async () => {
    await expectUpstream(await upstreamToken({ key: attacker }), 'signature_invalid');
  });

  it('refuses tampered payloads and borrowed or zeroed signatures', async () => {
    const token = await upstreamToken();
    const [h, , s] = token.split('.');
    const tampered = b64(payloadText(upstreamClaims(), {}, { sub: 'admin' }));
    await expectUpstream(`${h}.${tampered}.${s}`, 'signature_invalid');
    // CVE-2022-21449 "psychic signatures": r = s = 0.
    await expectUpstream(`${h}.${token.split('.')[1]}.${Buffer.alloc(64).toString('base64url')}`, 'signature_invalid');
    // Truncated signature.
    await expectUpstream(`${h}.${token.split('.')[1]}.${s!.slice(0, 40)}`, 'signature_invalid');
  });

  it('treats kid injection strings as unknown keys', async () => {
    for (const kid of ['../../etc/passwd', "' OR '1'='1' --", '"; DROP TABLE keys; --', '../../../dev/null', 'es\u0000']) {
      await expectUpstream(await upstreamToken({ header: { alg: 'ES256', typ: 'at+jwt', kid } }), 'kid_unknown');
    }
  });
});

describe('verifyUpstreamToken: header and structure attacks', () => {
  it('refuses headers that carry or point at keys', async () => {
    for (const extra of [
      { jku: 'https://evil.example/jwks' }, { x5u: 'https://evil.example/cert.pem' },
      { jwk: attacker.jwk }, { x5c: ['MIIBszCCAVmgAwIBAgIU'] },
    ]) {
      const token = await upstreamToken({ header: { alg: 'ES256', typ: 'at+jwt', kid: 'es', ...extra } });
      await expectUpstream(token, 'header_not_allowed');
    }
  });

  it('refuses crit, zip and b64', async () => {
    await expectUpstream(await upstreamToken({ header: { alg: 'ES256', typ: 'at+jwt', kid: 'es', crit: ['exp'], exp: 1 } }), 'crit_unsupported');
    await expectUpstream(await upstreamToken({ header: { alg: 'ES256', typ: 'at+jwt', kid: 'es', zip: 'DEF' } }), 'header_not_allowed');
    await expectUpstream(await upstreamToken({ header: { alg: 'ES256', typ: 'at+jwt', kid: 'es', b64: false } }), 'header_not_allowed');
  });

  it('refuses JWE', async () => {
    const jwe = `${b64('{"alg":"RSA-OAEP-256","enc":"A256GCM","kid":"rs"}')}.AAAA.AAAAAAAAAAAAAAAA.AAAA.AAAAAAAAAAAAAAAAAAAAAA`;
    await expectUpstream(jwe, 'token_malformed');
  });

  it('refuses validly signed tokens with duplicate members', async () => {
    const claims = upstreamClaims();
    const dupSub = `{"iss":"${ISS}","sub":"alice","aud":"${SELF}","iat":${NOW - 10},"exp":${NOW + 300},"sub":"admin"}`;
    await expectUpstream(await upstreamToken({ payload: dupSub }), 'duplicate_member');
    const dupIss = payloadText(claims).replace('{', '{"iss":"https://evil.example",');
    await expectUpstream(await upstreamToken({ payload: dupIss }), 'duplicate_member');
    const escaped = payloadText(claims).replace('{', '{"\\u0073ub":"admin",');
    await expectUpstream(await upstreamToken({ payload: escaped }), 'duplicate_member');
    await expectUpstream(await upstreamToken({ headerText: '{"alg":"ES256","typ":"at+jwt","kid":"es","kid":"rs"}' }), 'duplicate_member');
  });

  it('refuses oversized tokens', async () => {
    const token = await upstreamToken({ set: { pad: 'x'.repeat(8000) } });
    await expectUpstream(token, 'token_too_large');
    await expectUpstream(await upstreamToken(), 'token_too_large', { limits: { maxLength: 100 } });
  });
});

describe('verifyUpstreamToken: time claims', () => {
  it('refuses non-integer, non-finite and non-numeric times', async () => {
    const cases: RawClaims[] = [
      { exp: `"${NOW + 300}"` }, { exp: 'null' }, { exp: 'true' }, { exp: '"NaN"' }, { exp: '{}' }, { exp: `[${NOW + 300}]` },
      { exp: `${NOW + 300}.5` }, { exp: '1e400' }, { exp: '-1e400' }, { exp: '1e20' }, { exp: '9007199254740993' },
      { iat: `"${NOW}"` }, { iat: `${NOW - 10}.25` }, { iat: '-5' }, { iat: '1e400' },
      { nbf: '"yesterday"' }, { nbf: `${NOW - 100}.5` },
    ];
    for (const raw of cases) await expectUpstream(await upstreamToken({ raw }), 'claim_invalid');
  });

  it('accepts integer times written with an exponent', async () => {
    const token = await upstreamToken({ raw: { iat: `${(NOW - 10) / 10}e1` } });
    expect((await verifyUpstreamToken(token, upstreamOpts())).iat).toBe(NOW - 10);
  });

  it('refuses an iat in the future beyond the leeway, and accepts it within', async () => {
    await expectUpstream(await upstreamToken({ set: { iat: NOW + 61 } }), 'token_not_yet_valid');
    expect((await verifyUpstreamToken(await upstreamToken({ set: { iat: NOW + 60 } }), upstreamOpts())).iat).toBe(NOW + 60);
    await expectUpstream(await upstreamToken({ set: { iat: NOW + 5 } }), 'token_not_yet_valid', { leeway: 0 });
  });

  it('applies nbf with the leeway', async () => {
    await expectUpstream(await upstreamToken({ set: { nbf: NOW + 61 } }), 'token_not_yet_valid');
    await verifyUpstreamToken(await upstreamToken({ set: { nbf: NOW + 60 } }), upstreamOpts());
  });

  it('refuses expired tokens beyond the leeway and accepts them within', async () => {
    await expectUpstream(await upstreamToken({ set: { iat: NOW - 600, exp: NOW - 61 } }), 'token_expired');
    await expectUpstream(await upstreamToken({ set: { iat: NOW - 600, exp: NOW - 60 } }), 'token_expired');
    const within = await verifyUpstreamToken(await upstreamToken({ set: { iat: NOW - 600, exp: NOW - 30 } }), upstreamOpts());
    expect(within.exp).toBe(NOW - 30);
    await expectUpstream(await upstreamToken({ set: { iat: NOW - 600, exp: NOW - 1 } }), 'token_expired', { leeway: 0 });
  });

  it("refuses tokens older than the issuer's max_token_age", async () => {
    await expectUpstream(await upstreamToken({ set: { iat: NOW - 86_401, exp: NOW + 10 } }), 'token_too_old');
    const issuer = issuerPolicy({ max_token_age: 3600 });
    await expectUpstream(await upstreamToken({ set: { iat: NOW - 3601, exp: NOW + 10 } }), 'token_too_old', { issuer });
    await verifyUpstreamToken(await upstreamToken({ set: { iat: NOW - 3600, exp: NOW + 10 } }), upstreamOpts({ issuer }));
  });

  it('refuses lifetimes over 24 h (O3) and exp not after iat', async () => {
    await expectUpstream(await upstreamToken({ set: { iat: NOW - 10, exp: NOW - 10 + 86_401 } }), 'claim_invalid');
    await verifyUpstreamToken(await upstreamToken({ set: { iat: NOW - 10, exp: NOW - 10 + 86_400 } }), upstreamOpts());
    await expectUpstream(await upstreamToken({ set: { iat: NOW + 30, exp: NOW + 30 } }), 'claim_invalid');
  });
});

describe('verifyUpstreamToken: iss, aud, sub and required claims', () => {
  it('refuses a wrong or mistyped iss', async () => {
    for (const iss of ['https://evil.example.com', `${ISS}/`, 'https://IDP.example.com', [ISS], 7]) {
      await expectUpstream(await upstreamToken({ set: { iss } }), 'issuer_untrusted');
    }
  });

  it('refuses a token not addressed to Writ', async () => {
    for (const aud of ['https://payments.example.com', `${SELF}/`, [], ['https://a.example', 'https://b.example'], '', 5]) {
      await expectUpstream(await upstreamToken({ set: { aud } }), 'aud_mismatch');
    }
  });

  it.each(['iss', 'sub', 'aud', 'exp', 'iat'])('refuses a token without %s', async (claim) => {
    await expectUpstream(await upstreamToken({ set: { [claim]: undefined } }), 'claim_missing');
  });

  it('requires sub to be a string of 1..255 characters', async () => {
    for (const sub of ['', 42, null, ['alice'], { id: 'alice' }, 'a'.repeat(256)]) {
      await expectUpstream(await upstreamToken({ set: { sub } }), 'claim_invalid');
    }
    await verifyUpstreamToken(await upstreamToken({ set: { sub: 'a'.repeat(255) } }), upstreamOpts());
  });
});

describe('verifyUpstreamToken: forbidden and delegation claims', () => {
  it('refuses nonce, at_hash, c_hash and cnf in an access token', async () => {
    for (const set of [{ nonce: 'n-0S6_WzA2Mj' }, { at_hash: 'HK6E_P6Dh8Y93mRNtsDB1Q' }, { c_hash: 'LDktKdoQak3Pk0cnXxCltA' }, { cnf: { jkt: '0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I' } }]) {
      await expectUpstream(await upstreamToken({ set }), 'forbidden_claim');
    }
  });

  it('refuses an upstream act unless the issuer preserves it', async () => {
    const token = await upstreamToken({ set: { act: { sub: 'upstream-agent', iss: ISS } } });
    await expectUpstream(token, 'upstream_act');
    const result = await verifyUpstreamToken(token, upstreamOpts({ issuer: issuerPolicy({ act: 'preserve' }) }));
    expect(result.act).toEqual({ sub: 'upstream-agent', iss: ISS });
  });

  it('keeps only identity members of a preserved act, nested chains included', async () => {
    const act = { sub: 'a1', client_id: 'c1', exp: 1, aud: 'x', act: { sub: 'a2', iss: 'https://other.example', act: { sub: 'a3' } } };
    const token = await upstreamToken({ set: { act } });
    const result = await verifyUpstreamToken(token, upstreamOpts({ issuer: issuerPolicy({ act: 'preserve' }) }));
    expect(result.act).toEqual({ sub: 'a1', client_id: 'c1', act: { sub: 'a2', iss: 'https://other.example', act: { sub: 'a3' } } });
    expect(result.claims.act).toEqual(act);
  });

  it('refuses a malformed or too deep preserved act', async () => {
    const issuer = issuerPolicy({ act: 'preserve' });
    const nest = (depth: number): Record<string, unknown> => (depth === 1 ? { sub: 'a1' } : { sub: `a${depth}`, act: nest(depth - 1) });
    for (const act of ['agent', ['a'], {}, { sub: 1 }, { sub: '' }, { sub: 'a', iss: 5 }, { sub: 'a', act: 'b' }, { sub: 'a', act: { iss: ISS } }, nest(11)]) {
      await expectUpstream(await upstreamToken({ set: { act } }), 'claim_invalid', { issuer });
    }
    const ten = await verifyUpstreamToken(await upstreamToken({ set: { act: nest(10) } }), upstreamOpts({ issuer }));
    expect(ten.act?.sub).toBe('a10');
  });

  it('checks the shape of may_act', async () => {
    await verifyUpstreamToken(await upstreamToken({ set: { may_act: { sub: 'planner-agent', iss: SELF } } }), upstreamOpts());
    await verifyUpstreamToken(await upstreamToken({ set: { may_act: { sub: 'planner-agent' } } }), upstreamOpts());
    for (const may_act of ['planner-agent', ['planner-agent'], { iss: SELF }, { sub: 5 }, { sub: 'p', iss: 1 }, null]) {
      await expectUpstream(await upstreamToken({ set: { may_act } }), 'claim_invalid');
    }
  });
});

describe('verifyUpstreamToken: a claim name JSON.parse misreads (nodejs/node#63785)', () => {
  it('never acts on claims the JOSE library read differently: may_act written with an escape is kept or the token refused', async () => {
    const claims = payloadText(upstreamClaims());
    const escaped = claims.replace(/}$/, ',"ma\\u0079_act":{"sub":"planner-agent"}}');
    // Anyone can prime V8's JSON.parse: the same names, then the escaped name's raw text up to
    // its length as a literal name. V8 then reads "ma\u0079_act" as "ma\\u007": may_act is gone.
    JSON.parse(claims.replace(/}$/, ',"ma\\\\u007":1}'));
    let verified;
    try {
      verified = await verifyUpstreamToken(await upstreamToken({ payload: escaped }), upstreamOpts());
    } catch (err) {
      expect(err).toBeInstanceOf(ExchangeDenied);
      expect((err as ExchangeDenied).reason).toBe('token_malformed');
      return;
    }
    // Read correctly (a V8 without the bug): the restriction is there.
    expect(verified.claims.may_act).toEqual({ sub: 'planner-agent' });
  });

  it('accepts escaped claim names when nothing primed the parser, read as written', async () => {
    const escaped = payloadText(upstreamClaims()).replace('"groups"', '"gr\\u006fups"').replace(/}$/, ',"https:\\/\\/idp.example.com\\/tenant":"t1"}');
    const verified = await verifyUpstreamToken(await upstreamToken({ payload: escaped }), upstreamOpts());
    expect(verified.claims.groups).toEqual(['finance']);
    expect(verified.claims['https://idp.example.com/tenant']).toBe('t1');
  });
});

describe('verifyUpstreamToken: declared token types (RFC 8693 §2.1, RFC 8725 §3.11)', () => {
  const idIssuer = (): IssuerPolicy => issuerPolicy({ token_types: ['access_token', 'jwt', 'id_token'] });
  const idToken = (header: Record<string, unknown>, set: Record<string, unknown> = {}): Promise<string> =>
    upstreamToken({ header: { alg: 'ES256', kid: 'es', ...header }, set: { nonce: 'n-1', auth_time: NOW - 20, ...set } });

  it('refuses a declared type the issuer does not allow', async () => {
    await expectUpstream(await idToken({}), 'token_type_mismatch', { declaredType: 'id_token' });
    await expectUpstream(await upstreamToken(), 'token_type_mismatch', { declaredType: 'jwt', issuer: issuerPolicy({ token_types: ['access_token'] }) });
  });

  it('accepts an id_token with no typ or typ JWT, nonce included', async () => {
    for (const header of [{}, { typ: 'JWT' }, { typ: 'jwt' }, { typ: 'application/jwt' }]) {
      const result = await verifyUpstreamToken(await idToken(header), upstreamOpts({ declaredType: 'id_token', issuer: idIssuer() }));
      expect(result.claims.nonce).toBe('n-1');
    }
  });

  it('refuses an access token declared as an id_token', async () => {
    for (const typ of ['at+jwt', 'application/at+jwt', 'AT+JWT', 'logout+jwt', 'dpop+jwt']) {
      await expectUpstream(await idToken({ typ }), 'token_type_mismatch', { declaredType: 'id_token', issuer: idIssuer() });
    }
  });

  it('refuses an id_token declared as an access token', async () => {
    await expectUpstream(await idToken({ typ: 'JWT' }), 'typ_not_allowed', { issuer: idIssuer() });
    await expectUpstream(await idToken({}), 'typ_not_allowed', { issuer: idIssuer() });
    // Even from an issuer that sends typ JWT on access tokens, the nonce gives it away.
    await expectUpstream(await idToken({ typ: 'JWT' }), 'forbidden_claim', { issuer: issuerPolicy({ typ: ['JWT'], token_types: ['access_token', 'jwt', 'id_token'] }) });
  });

  it('still refuses at_hash, c_hash and cnf in an id_token', async () => {
    for (const set of [{ at_hash: 'x' }, { c_hash: 'y' }, { cnf: { jkt: 'z' } }]) {
      await expectUpstream(await idToken({}, set), 'forbidden_claim', { declaredType: 'id_token', issuer: idIssuer() });
    }
  });

  it('refuses a missing or wrong typ for access tokens', async () => {
    await expectUpstream(await upstreamToken({ header: { alg: 'ES256', kid: 'es' } }), 'typ_not_allowed');
    for (const typ of ['JWT', 'jwt', 'at+jwt2', 'application/at+jwt+x', 'text/at+jwt', 'secevent+jwt']) {
      await expectUpstream(await upstreamToken({ header: { alg: 'ES256', kid: 'es', typ } }), 'typ_not_allowed');
    }
  });
});

describe('verifyUpstreamToken: roles and key errors', () => {
  it('labels every denial with the role', async () => {
    const err = await expectUpstream(await upstreamToken({ key: attacker }), 'signature_invalid', { role: 'actor' });
    expect(err.role).toBe('actor');
    await expectUpstream('x.y', 'token_malformed', { role: 'actor' });
    await expectUpstream(await upstreamToken({ header: { alg: 'ES256', typ: 'at+jwt', kid: 'nope' } }), 'kid_unknown', { role: 'actor' });
  });

  it('passes jwks_unavailable through (503), with the role', async () => {
    const down: KeyResolver = { getKey: () => Promise.reject(new ExchangeDenied('jwks_unavailable', 'JWKS could not be fetched')) };
    const err = await expectUpstream(await upstreamToken(), 'jwks_unavailable', { keys: down, role: 'actor' });
    expect(err.error).toBe('temporarily_unavailable');
  });

  it('fails closed when the key resolver breaks unexpectedly', async () => {
    const broken: KeyResolver = { getKey: () => Promise.reject(new Error('boom with secret stuff')) };
    const err = await expectUpstream(await upstreamToken(), 'jwks_unavailable', { keys: broken });
    expect(err.message).not.toContain('secret');
  });

  it('fails closed when the resolver hands back a key of the wrong kind', async () => {
    const wrong: KeyResolver = { getKey: async () => rs.publicKey };
    await expectUpstream(await upstreamToken(), 'signature_invalid', { keys: wrong });
  });

  it('never checks keys it does not need: structural failures do not reach the resolver', async () => {
    let calls = 0;
    const counting: KeyResolver = { getKey: async () => { calls++; return es.publicKey; } };
    await expectUpstream(await upstreamToken({ header: { alg: 'ES256', typ: 'at+jwt', kid: 'es', jku: 'https://evil.example' } }), 'header_not_allowed', { keys: counting });
    await expectUpstream(await upstreamToken({ key: es384 }), 'alg_not_allowed', { keys: counting });
    await expectUpstream(await upstreamToken({ header: { alg: 'ES256', typ: 'JWT', kid: 'es' } }), 'typ_not_allowed', { keys: counting });
    expect(calls).toBe(0);
  });
});

// ---------------------------------------------------------------------------------------------

const writClaims = (): Record<string, unknown> => ({
  iss: SELF,
  sub: 'idp|alice',
  sub_id: { format: 'iss_sub', iss: ISS, sub: 'alice' },
  aud: 'https://payments.example.com',
  client_id: 'planner-agent',
  scope: 'payment.read payment.transfer',
  iat: NOW - 5,
  exp: NOW + 120,
  jti: 'jti-1',
  act: { sub: 'planner-agent' },
  task_id: 'task-42',
});

function writToken(t: MakeToken = {}): Promise<string> {
  const key = t.key ?? writEs;
  const headerText = t.headerText ?? JSON.stringify(t.header ?? { alg: key.alg, typ: 'at+jwt', kid: key.kid });
  return signText(headerText, t.payload ?? payloadText(writClaims(), t.raw, t.set), key);
}

async function expectWrit(token: string, reason: ReasonCode, overrides: Partial<WritVerifyOptions> = {}): Promise<ExchangeDenied> {
  const err = await denial(verifyWritToken(token, { selfIssuer: SELF, keys: writKeys, now: NOW, ...overrides }));
  expect(err.reason, err.message).toBe(reason);
  expect(err.role).toBe(overrides.role ?? 'subject');
  return err;
}

describe('verifyWritToken', () => {
  it.each([['ES256', 'writ-es'], ['RS256', 'writ-rs'], ['PS256', 'writ-ps']] as const)('verifies a good %s token', async (_alg, kid) => {
    const key = { 'writ-es': writEs, 'writ-rs': writRs, 'writ-ps': writPs }[kid];
    const claims = await verifyWritToken(await writToken({ key }), { selfIssuer: SELF, keys: writKeys, now: NOW });
    expect(claims).toEqual({ ...writClaims(), raw: writClaims() });
  });

  it('accepts application/at+jwt and no task_id, and keeps nested act', async () => {
    const act = { sub: 'executor-agent', act: { sub: 'planner-agent' } };
    const token = await writToken({ header: { alg: 'ES256', typ: 'application/at+jwt', kid: 'writ-es' }, set: { task_id: undefined, act } });
    const claims = await verifyWritToken(token, { selfIssuer: SELF, keys: writKeys, now: NOW });
    expect(claims.task_id).toBeUndefined();
    expect('task_id' in claims).toBe(false);
    expect(claims.act).toEqual(act);
  });

  it('refuses a wrong or missing typ', async () => {
    for (const typ of ['JWT', 'jwt', 'application/jwt', 'dpop+jwt']) {
      await expectWrit(await writToken({ header: { alg: 'ES256', typ, kid: 'writ-es' } }), 'typ_not_allowed');
    }
    await expectWrit(await writToken({ header: { alg: 'ES256', kid: 'writ-es' } }), 'typ_not_allowed');
  });

  it('refuses a token from another issuer, even signed with a Writ key', async () => {
    await expectWrit(await writToken({ set: { iss: ISS } }), 'issuer_untrusted');
    await expectWrit(await writToken({ set: { iss: `${SELF}/` } }), 'issuer_untrusted');
  });

  it('refuses an upstream key and algorithms Writ does not sign with', async () => {
    await expectWrit(await writToken({ key: es, header: { alg: 'ES256', typ: 'at+jwt', kid: 'es' } }), 'kid_unknown');
    await expectWrit(await writToken({ key: attacker, header: { alg: 'ES256', typ: 'at+jwt', kid: 'writ-es' } }), 'signature_invalid');
    await expectWrit(await writToken({ key: ed }), 'alg_not_allowed');
    await expectWrit(await writToken({ key: es384 }), 'alg_not_allowed');
  });

  it.each(['act', 'jti', 'client_id', 'scope', 'sub_id', 'sub', 'aud', 'exp', 'iat', 'iss'])('refuses a token without %s', async (claim) => {
    await expectWrit(await writToken({ set: { [claim]: undefined } }), 'claim_missing');
  });

  it('refuses an aud array', async () => {
    await expectWrit(await writToken({ set: { aud: ['https://payments.example.com'] } }), 'claim_invalid');
    await expectWrit(await writToken({ set: { aud: ['https://payments.example.com', 'https://other.example'] } }), 'claim_invalid');
  });

  it('refuses malformed Writ claims', async () => {
    const bad: Array<Record<string, unknown>> = [
      { act: 'planner-agent' }, { act: {} }, { act: { sub: 7 } },
      { sub_id: 'alice' }, { sub_id: { format: 'opaque', iss: ISS, sub: 'alice' } }, { sub_id: { format: 'iss_sub', sub: 'alice' } },
      { scope: ['payment.read'] }, { scope: '' }, { scope: 'a  b' }, { scope: 'a "b"' },
      { client_id: '' }, { client_id: 5 }, { jti: '' }, { jti: 1 }, { sub: '' },
      { task_id: 'has space' }, { task_id: 'x'.repeat(129) }, { task_id: 12 },
    ];
    for (const set of bad) await expectWrit(await writToken({ set }), 'claim_invalid');
    await expectWrit(await writToken({ raw: { exp: `${NOW + 120}.5` } }), 'claim_invalid');
  });

  it('refuses cnf (no sender-constrained Writ tokens yet)', async () => {
    await expectWrit(await writToken({ set: { cnf: { jkt: 'abc' } } }), 'forbidden_claim');
  });

  it('applies time rules with no leeway by default', async () => {
    await expectWrit(await writToken({ set: { iat: NOW - 100, exp: NOW } }), 'token_expired');
    await expectWrit(await writToken({ set: { iat: NOW + 1 } }), 'token_not_yet_valid');
    await verifyWritToken(await writToken({ set: { iat: NOW + 1 } }), { selfIssuer: SELF, keys: writKeys, now: NOW, leeway: 5 });
  });

  it('refuses structural attacks like any other token', async () => {
    const dup = payloadText(writClaims()).replace('{', '{"aud":"https://admin.example.com",');
    await expectWrit(await writToken({ payload: dup }), 'duplicate_member');
    await expectWrit(await writToken({ header: { alg: 'ES256', typ: 'at+jwt', kid: 'writ-es', jwk: writEs.jwk } }), 'header_not_allowed');
    const none = `${b64('{"alg":"none","typ":"at+jwt"}')}.${b64(payloadText(writClaims()))}.`;
    await expectWrit(none, 'alg_not_allowed');
  });

  it('labels denials with the given role', async () => {
    await expectWrit(await writToken({ set: { jti: undefined } }), 'claim_missing', { role: 'actor' });
  });
});

describe('peekIssuer', () => {
  it('reads iss without verifying, after the structural checks', async () => {
    expect(peekIssuer(await upstreamToken())).toBe(ISS);
    expect(peekIssuer(await upstreamToken({ key: attacker }))).toBe(ISS);
    expect(peekIssuer(await writToken())).toBe(SELF);
    expect(peekIssuer(await upstreamToken({ set: { iss: undefined } }))).toBeUndefined();
    expect(peekIssuer(await upstreamToken({ set: { iss: 42 } }))).toBeUndefined();
  });

  it('throws the structural denial instead of guessing', async () => {
    const dupIss = payloadText(upstreamClaims()).replace('{', `{"iss":"${SELF}",`);
    const err = await denial((async () => peekIssuer(await upstreamToken({ payload: dupIss }), { role: 'actor' }))());
    expect(err.reason).toBe('duplicate_member');
    expect(err.role).toBe('actor');
    expect(() => peekIssuer('not-a-token')).toThrow(ExchangeDenied);
    expect(() => peekIssuer(`${b64('{"alg":"none"}')}.${b64(`{"iss":"${ISS}"}`)}.`)).toThrow(ExchangeDenied);
  });
});

// ---------------------------------------------------------------------------------------------

describe('signatures verified before (VerifiedSignatures)', () => {
  it('verifies the same token once, and answers the second time exactly as the first', async () => {
    const signatures = new VerifiedSignatures();
    const token = await upstreamToken();
    const first = await verifyUpstreamToken(token, upstreamOpts({ signatures }));
    const second = await verifyUpstreamToken(token, upstreamOpts({ signatures, now: NOW + 30 }));
    expect(second).toEqual(first);
    expect([signatures.misses, signatures.hits, signatures.size]).toEqual([1, 1, 1]);
  });

  it('keeps the token\'s structure, shared by every later use and frozen so that no request can change it for another', async () => {
    const signatures = new VerifiedSignatures();
    const token = await upstreamToken({ set: { groups: ['payments'], address: { country: 'NL' } } });
    expect(signatures.structureOf(token)).toBeUndefined();
    const first = await verifyUpstreamToken(token, upstreamOpts({ signatures }));
    const structure = signatures.structureOf(token)!;
    expect(structure).toEqual(inspectCompactJws(token));
    const second = await verifyUpstreamToken(token, upstreamOpts({ signatures, now: NOW + 30, inspected: structure }));
    expect(second.claims).toBe(first.claims);
    expect(second.claims).toBe(structure.payload);
    for (const part of [structure.header, structure.payload, structure.payload.groups, structure.payload.address]) {
      expect(Object.isFrozen(part)).toBe(true);
    }
    expect(() => { (second.claims as { sub: string }).sub = 'mallory'; }).toThrow(TypeError);
    // The same claims signed again (ES256 signatures are randomised) are another token string:
    // verified on its own, sharing nothing with the first.
    const again = await upstreamToken({ set: { groups: ['payments'], address: { country: 'NL' } } });
    expect(again).not.toBe(token);
    expect(signatures.structureOf(again)).toBeUndefined();
    const third = await verifyUpstreamToken(again, upstreamOpts({ signatures }));
    expect(third.claims).toEqual(first.claims);
    expect(third.claims).not.toBe(first.claims);
    expect([signatures.misses, signatures.hits]).toEqual([2, 1]);
  });

  it('keeps only structures inspected under the default limits', async () => {
    const signatures = new VerifiedSignatures();
    const token = await upstreamToken();
    await verifyUpstreamToken(token, upstreamOpts({ signatures, limits: { maxLength: 4096 } }));
    expect(signatures.size).toBe(0);
    // Nor a structure that did not come from inspecting the token at all.
    const forged = { ...inspectCompactJws(token), payload: { ...inspectCompactJws(token).payload, sub: 'mallory' } };
    await verifyUpstreamToken(token, upstreamOpts({ signatures, inspected: forged }));
    expect(signatures.size).toBe(0);
    await verifyUpstreamToken(token, upstreamOpts({ signatures, inspected: inspectCompactJws(token) }));
    expect(signatures.structureOf(token)?.payload.sub).toBe('alice');
  });

  it('counts a token\'s decoded objects against its size, not only its characters', async () => {
    const plain = await upstreamToken();
    const nested = await upstreamToken({ set: { groups: Array.from({ length: 200 }, () => ({})) } });
    // Room for the plain token twice over, and for the nested one's characters, but not for its 200 objects.
    const signatures = new VerifiedSignatures({ maxSize: Math.max(plain.length * 2 + 64 * 10, nested.length + 64 * 20) });
    await verifyUpstreamToken(plain, upstreamOpts({ signatures }));
    await verifyUpstreamToken(nested, upstreamOpts({ signatures }));
    expect(signatures.structureOf(plain)).toBeDefined();
    expect(signatures.structureOf(nested)).toBeUndefined();
    expect(() => new VerifiedSignatures({ maxEntries: 0 })).toThrow(RangeError);
  });


  it('is used only for the exact token string: a borrowed signature still fails', async () => {
    const signatures = new VerifiedSignatures();
    const token = await upstreamToken();
    await verifyUpstreamToken(token, upstreamOpts({ signatures }));
    const [h, , s] = token.split('.');
    const forged = `${h}.${b64(payloadText(upstreamClaims(), {}, { sub: 'mallory' }))}.${s}`;
    await expectUpstream(forged, 'signature_invalid', { signatures });
    expect(signatures.hits).toBe(0);
  });

  it('never outlives the key: the same kid with other key material means verifying again, and failing', async () => {
    const signatures = new VerifiedSignatures();
    const token = await upstreamToken();
    await verifyUpstreamToken(token, upstreamOpts({ signatures }));
    // The issuer's key set now maps kid "es" to the attacker's key (a rotation, a policy change).
    const rotated = RemoteJwks.fromInline({ keys: [attacker.jwk] as Array<Record<string, unknown>> });
    await expectUpstream(token, 'signature_invalid', { signatures, keys: rotated });
    // And a kid that left the key set is unknown, whatever was verified under it.
    const without = RemoteJwks.fromInline({ keys: [rs.jwk] as Array<Record<string, unknown>> });
    await expectUpstream(token, 'kid_unknown', { signatures, keys: without });
    expect(signatures.hits).toBe(0);
  });

  it('checks the clock on every use: expiry beyond the leeway, and nbf when the clock went back', async () => {
    const signatures = new VerifiedSignatures();
    const token = await upstreamToken({ set: { nbf: NOW - 5 } });
    await verifyUpstreamToken(token, upstreamOpts({ signatures }));
    // Past exp but within the leeway: still accepted, as jose would.
    expect((await verifyUpstreamToken(token, upstreamOpts({ signatures, now: NOW + 330 }))).sub).toBe('alice');
    expect(signatures.hits).toBe(1);
    await expectUpstream(token, 'token_not_yet_valid', { signatures, now: NOW - 70 });
    await expectUpstream(token, 'token_expired', { signatures, now: NOW + 300 + 60 });
    expect(signatures.hits).toBe(1);
  });

  it('counts only under the same verification options: a changed audience or issuer policy still refuses', async () => {
    const signatures = new VerifiedSignatures();
    const token = await upstreamToken();
    await verifyUpstreamToken(token, upstreamOpts({ signatures }));
    await expectUpstream(token, 'aud_mismatch', { signatures, issuer: issuerPolicy({ audience: 'https://elsewhere.example.com' }) });
    await expectUpstream(token, 'alg_not_allowed', { signatures, issuer: issuerPolicy({ algorithms: ['RS256'] }) });
    await expectUpstream(token, 'token_too_old', { signatures, issuer: issuerPolicy({ max_token_age: 5 }) });
    await expectUpstream(token, 'token_type_mismatch', { signatures, declaredType: 'id_token' });
    expect(signatures.hits).toBe(1);
  });

  it('keeps only tokens that passed every check, not just the signature', async () => {
    const signatures = new VerifiedSignatures();
    await expectUpstream(await upstreamToken({ set: { iat: NOW - 600, exp: NOW - 61 } }), 'token_expired', { signatures });
    await expectUpstream(await upstreamToken({ key: attacker }), 'signature_invalid', { signatures });
    // Signed by the issuer and accepted by jose, refused by Writ's own rules afterwards.
    await expectUpstream(await upstreamToken({ set: { cnf: { jkt: 'x' } } }), 'forbidden_claim', { signatures });
    await expectUpstream(await upstreamToken({ set: { iat: NOW - 10, exp: NOW + 90_000 } }), 'claim_invalid', { signatures });
    expect(signatures.size).toBe(0);
  });

  it('stays within its count and total length, a token unused since it was kept going first', async () => {
    const signatures = new VerifiedSignatures({ maxEntries: 2 });
    const tokens = await Promise.all(['a', 'b', 'c'].map((jti) => upstreamToken({ set: { jti } })));
    await verifyUpstreamToken(tokens[0]!, upstreamOpts({ signatures }));
    await verifyUpstreamToken(tokens[1]!, upstreamOpts({ signatures }));
    await verifyUpstreamToken(tokens[0]!, upstreamOpts({ signatures })); // a used again: spared once, so b goes
    await verifyUpstreamToken(tokens[2]!, upstreamOpts({ signatures }));
    expect(signatures.size).toBe(2);
    await verifyUpstreamToken(tokens[0]!, upstreamOpts({ signatures }));
    await verifyUpstreamToken(tokens[1]!, upstreamOpts({ signatures }));
    expect([signatures.hits, signatures.misses]).toEqual([2, 4]);

    // As documented: a token's characters, and 64 for each object or array it decodes to.
    const objects = (v: unknown): number => (v !== null && typeof v === 'object' ? 1 + Object.values(v).reduce<number>((n, m) => n + objects(m), 0) : 0);
    const small = new VerifiedSignatures({ maxSize: (tokens[0]!.length + 64 * objects(inspectCompactJws(tokens[0]!))) * 2 + 10 });
    for (const t of tokens) await verifyUpstreamToken(t, upstreamOpts({ signatures: small }));
    expect(small.size).toBe(2);
  });

  it('serves Writ tokens the same way, with Writ\'s own claim rules still applied', async () => {
    const signatures = new VerifiedSignatures();
    const token = await writToken();
    const first = await verifyWritToken(token, { selfIssuer: SELF, keys: writKeys, now: NOW, signatures });
    expect(await verifyWritToken(token, { selfIssuer: SELF, keys: writKeys, now: NOW + 1, signatures })).toEqual(first);
    expect(signatures.hits).toBe(1);
    await expectWrit(token, 'token_expired', { signatures, now: NOW + 121 });
    await expectWrit(token, 'issuer_untrusted', { signatures, selfIssuer: 'https://other-writ.example.com' });
  });
});
