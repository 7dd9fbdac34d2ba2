import {
  createHmac, generateKeyPairSync, randomBytes, sign as cryptoSign, constants, type KeyObject,
} from 'node:crypto';
import { decodeJwt } from 'jose';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import {
  AT, EXECUTOR_AUD, IDP, JWT_TYPE, PAYMENTS, TX, basicAuth, startTestWrit, type TestWrit,
} from '../support/harness.ts';
import { expectDenied, lineageCount } from '../support/expect.ts';

/**
 * Every JWT attack class (RFC 8725, RFC 7515/7519, docs/standards.md J1–J12, A1–A7), end to end over
 * HTTP against PostgreSQL: each forged token is presented as the subject token, and the
 * structural classes also as the actor token and as a Writ-issued parent. Each case asserts the
 * exact status and RFC error, that no token was minted (no body token, no lineage row, audit
 * row without jti) and the audit record's reason code.
 *
 * Tokens are signed over exact header and payload TEXT with node:crypto, so a case can send what
 * no JWT library produces (duplicate members, 1e400, floats, `alg` variants, embedded keys).
 */

const OTHER_IDP = 'https://other-idp.example.com';
const ENC = (text: string): string => Buffer.from(text, 'utf8').toString('base64url');

type Alg = 'ES256' | 'ES384' | 'RS256' | 'PS256' | 'EdDSA';

interface Key {
  alg: Alg;
  kid: string;
  privateKey: KeyObject;
  publicKey: KeyObject;
  jwk: Record<string, unknown>;
}

function makeKey(alg: Alg, kid: string): Key {
  const pair = alg === 'ES256' ? generateKeyPairSync('ec', { namedCurve: 'P-256' })
    : alg === 'ES384' ? generateKeyPairSync('ec', { namedCurve: 'P-384' })
      : alg === 'EdDSA' ? generateKeyPairSync('ed25519')
        : generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { alg, kid, ...pair, jwk: { ...pair.publicKey.export({ format: 'jwk' }), kid, alg, use: 'sig' } };
}

function signature(input: string, key: Key, alg: Alg = key.alg): Buffer {
  const data = Buffer.from(input);
  switch (alg) {
    case 'ES256': return cryptoSign('sha256', data, { key: key.privateKey, dsaEncoding: 'ieee-p1363' });
    case 'ES384': return cryptoSign('sha384', data, { key: key.privateKey, dsaEncoding: 'ieee-p1363' });
    case 'RS256': return cryptoSign('sha256', data, key.privateKey);
    case 'PS256': return cryptoSign('sha256', data, { key: key.privateKey, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 });
    case 'EdDSA': return cryptoSign(null, data, key.privateKey);
  }
}

/** A compact JWS over the exact header and payload text given. */
function signText(headerText: string, payloadText: string, key: Key, alg?: Alg): string {
  const input = `${ENC(headerText)}.${ENC(payloadText)}`;
  return `${input}.${signature(input, key, alg).toString('base64url')}`;
}

/** An HMAC "signature" with the given secret: the key-confusion attacker's token. */
function hmacText(headerText: string, payloadText: string, secret: string | Buffer, hash = 'sha256'): string {
  const input = `${ENC(headerText)}.${ENC(payloadText)}`;
  return `${input}.${createHmac(hash, secret).update(input).digest('base64url')}`;
}

/** Claims as JSON text: `set` replaces values, `raw` replaces a member's JSON text, undefined drops it. */
function claimsText(base: Record<string, unknown>, set: Record<string, unknown> = {}, raw: Record<string, string | undefined> = {}): string {
  const members = new Map<string, string | undefined>();
  for (const [k, v] of Object.entries({ ...base, ...set })) members.set(k, v === undefined ? undefined : JSON.stringify(v));
  for (const [k, v] of Object.entries(raw)) members.set(k, v);
  return `{${[...members].filter(([, v]) => v !== undefined).map(([k, v]) => `${JSON.stringify(k)}:${v}`).join(',')}}`;
}

function nested(depth: number): string {
  return `${'{"a":'.repeat(depth)}1${'}'.repeat(depth)}`;
}

interface Case {
  name: string;
  token: () => string;
  reason: string;
}

describe('JWT attacks over HTTP', () => {
  let t: TestWrit;
  let es: Key;
  let rs: Key;
  let other: Key;
  let attacker: Key;
  let attackerRsa: Key;
  let es384: Key;
  let ed: Key;
  let before: number;

  beforeAll(async () => {
    es = makeKey('ES256', 'es-1');
    rs = makeKey('RS256', 'rs-1');
    other = makeKey('ES256', 'other-1');
    attacker = makeKey('ES256', 'es-1');
    attackerRsa = makeKey('RS256', 'rs-1');
    es384 = makeKey('ES384', 'es384-1');
    ed = makeKey('EdDSA', 'ed-1');
    t = await startTestWrit({ name: 'attacks_jwt', applyExample: false });
    await t.apply([{
      name: 'jwt-attacks.yaml',
      text: JSON.stringify({
        issuers: [
          { issuer: IDP, jwks: { keys: [es.jwk, rs.jwk] }, algorithms: ['RS256', 'ES256'], audience: 'self', token_types: ['access_token', 'jwt'] },
          { issuer: OTHER_IDP, jwks: { keys: [other.jwk] }, algorithms: ['ES256'], audience: 'self' },
        ],
        clients: [
          { client_id: 'planner-agent', kind: 'agent', auth: 'client_secret_basic', secret: '${PLANNER_SECRET}', actor_identities: [{ issuer: IDP, sub: 'bot-7' }] },
          { client_id: 'executor-agent', kind: 'agent', auth: 'client_secret_basic', secret: '${EXECUTOR_SECRET}', audiences: [EXECUTOR_AUD] },
          { client_id: 'payments-api', kind: 'resource_server', auth: 'client_secret_basic', secret: '${PAYMENTS_API_SECRET}', audiences: [PAYMENTS] },
        ],
        audiences: [
          { audience: PAYMENTS, scopes: ['payment.read', 'payment.transfer'], max_ttl: 300 },
          { audience: EXECUTOR_AUD, scopes: ['payment.read'], max_ttl: 600 },
        ],
        rules: [
          { id: 'planner-reads-payments', actor: 'planner-agent', subject: { issuer: IDP, claims: { groups: 'finance' } }, audience: PAYMENTS, scopes: ['payment.read'], ttl: 120, max_depth: 2 },
          { id: 'planner-reads-payments-other-idp', actor: 'planner-agent', subject: { issuer: OTHER_IDP }, audience: PAYMENTS, scopes: ['payment.read'], ttl: 120, max_depth: 2 },
          { id: 'planner-delegates-to-executor', actor: 'planner-agent', subject: { issuer: IDP, claims: { groups: 'finance' } }, audience: EXECUTOR_AUD, scopes: ['payment.read'], ttl: 300, max_depth: 2 },
          { id: 'executor-reads-payments', actor: 'executor-agent', subject: { issuer: 'self', after: ['planner-agent'] }, audience: PAYMENTS, scopes: ['payment.read'], ttl: 60, max_depth: 2 },
        ],
      }),
    }]);
  });
  afterAll(async () => {
    if (!t) return;
    // Across the whole file, every token Writ minted is a positive control's: none came from a forgery.
    const granted = await t.writ.db.knex('audit_events').where({ type: 'exchange.granted' }).count<Array<{ count: number }>>('* as count');
    expect(Number(granted[0]!.count)).toBe(await lineageCount(t));
    await t.close();
  });
  beforeEach(async () => {
    before = await lineageCount(t);
  });

  const now = (): number => Math.floor(Date.now() / 1000);
  const HEADER = (): Record<string, unknown> => ({ alg: 'ES256', typ: 'at+jwt', kid: 'es-1' });
  const CLAIMS = (): Record<string, unknown> => ({
    iss: IDP, sub: 'alice', aud: t.issuer, iat: now(), exp: now() + 300, jti: randomBytes(8).toString('hex'), groups: ['finance'],
  });
  /** A user token with header/claims overrides, signed by `key` (the IdP's ES256 key by default). */
  const user = (o: { header?: Record<string, unknown>; set?: Record<string, unknown>; raw?: Record<string, string | undefined>; key?: Key; alg?: Alg } = {}): string =>
    signText(JSON.stringify({ ...HEADER(), ...o.header }), claimsText(CLAIMS(), o.set, o.raw), o.key ?? es, o.alg);
  const headerRaw = (headerText: string, o: { set?: Record<string, unknown>; key?: Key } = {}): string =>
    signText(headerText, claimsText(CLAIMS(), o.set), o.key ?? es);
  const unsigned = (header: Record<string, unknown>, sig = ''): string => `${ENC(JSON.stringify(header))}.${ENC(claimsText(CLAIMS()))}.${sig}`;

  const asPlanner = (form: Record<string, string>) => t.post('/token', { grant_type: TX, audience: PAYMENTS, ...form }, basicAuth('planner-agent'));
  const asSubject = (token: string) => asPlanner({ subject_token: token, subject_token_type: AT });

  async function denied(res: Awaited<ReturnType<TestWrit['post']>>, reason: string, role?: 'subject' | 'actor'): Promise<void> {
    await expectDenied(t, res, 'invalid_request', reason);
    expect(await lineageCount(t)).toBe(before);
    if (role) {
      const [row] = await t.auditRows({ request_id: res.headers.get('x-request-id') });
      expect((row!.details as Record<string, unknown>).token).toBe(role);
    }
  }

  it('positive controls: the raw signer makes tokens Writ accepts (ES256, RS256, the jwt token type, the other issuer)', async () => {
    expect((await asSubject(user())).status).toBe(200);
    expect((await asSubject(user({ header: { alg: 'RS256', kid: 'rs-1' }, key: rs }))).status).toBe(200);
    expect((await asPlanner({ subject_token: user(), subject_token_type: JWT_TYPE })).status).toBe(200);
    expect((await asSubject(user({ header: { kid: 'other-1' }, set: { iss: OTHER_IDP }, key: other }))).status).toBe(200);
  });

  // -------------------------------------------------------------------------------------------
  // Classes, as subject token

  const algNone: Case[] = [
    ...['none', 'None', 'NONE', 'nOnE', 'NoNe'].map((alg) => ({ name: `alg "${alg}", empty signature`, token: () => unsigned({ alg, typ: 'at+jwt' }), reason: 'alg_not_allowed' })),
    { name: 'alg "none" with the kid of a real key', token: () => unsigned({ alg: 'none', typ: 'at+jwt', kid: 'es-1' }), reason: 'alg_not_allowed' },
    { name: 'alg "none" carrying a real ES256 signature', token: () => { const [h, p, s] = user().split('.'); void h; return `${ENC(JSON.stringify({ alg: 'none', typ: 'at+jwt' }))}.${p}.${s}`; }, reason: 'alg_not_allowed' },
    { name: 'alg "none " (trailing space)', token: () => unsigned({ alg: 'none ', typ: 'at+jwt' }, 'AAAA'), reason: 'alg_not_allowed' },
    { name: 'alg missing', token: () => unsigned({ typ: 'at+jwt', kid: 'es-1' }, 'AAAA'), reason: 'token_malformed' },
    { name: 'alg empty string', token: () => unsigned({ alg: '', typ: 'at+jwt' }, 'AAAA'), reason: 'token_malformed' },
    { name: 'alg null', token: () => unsigned({ alg: null, typ: 'at+jwt' }, 'AAAA'), reason: 'token_malformed' },
    { name: 'alg as an array', token: () => unsigned({ alg: ['ES256'], typ: 'at+jwt' }, 'AAAA'), reason: 'token_malformed' },
  ];

  const keyConfusion: Case[] = [
    { name: 'HS256 keyed with the RSA public key (PEM)', token: () => hmacText(JSON.stringify({ alg: 'HS256', typ: 'at+jwt', kid: 'rs-1' }), claimsText(CLAIMS()), rs.publicKey.export({ type: 'spki', format: 'pem' })), reason: 'alg_not_allowed' },
    { name: 'HS256 keyed with the EC public JWK text', token: () => hmacText(JSON.stringify({ alg: 'HS256', typ: 'at+jwt', kid: 'es-1' }), claimsText(CLAIMS()), JSON.stringify(es.jwk)), reason: 'alg_not_allowed' },
    { name: 'HS384 keyed with the RSA modulus', token: () => hmacText(JSON.stringify({ alg: 'HS384', typ: 'at+jwt', kid: 'rs-1' }), claimsText(CLAIMS()), String(rs.jwk.n), 'sha384'), reason: 'alg_not_allowed' },
    { name: 'HS512 keyed with the RSA public key (DER)', token: () => hmacText(JSON.stringify({ alg: 'HS512', typ: 'at+jwt' }), claimsText(CLAIMS()), rs.publicKey.export({ type: 'spki', format: 'der' }), 'sha512'), reason: 'alg_not_allowed' },
    { name: 'lower-case "hs256"', token: () => hmacText(JSON.stringify({ alg: 'hs256', typ: 'at+jwt' }), claimsText(CLAIMS()), 'secret'), reason: 'alg_not_allowed' },
    { name: 'RS256 header naming the EC key (kid es-1), RSA-signed by the attacker', token: () => user({ header: { alg: 'RS256', kid: 'es-1' }, key: attackerRsa }), reason: 'kid_unknown' },
    { name: 'ES256 header naming the RSA key (kid rs-1)', token: () => user({ header: { kid: 'rs-1' }, key: attacker }), reason: 'kid_unknown' },
    { name: 'PS256 with the issuer’s own RSA key (not in its algorithms)', token: () => user({ header: { alg: 'PS256', kid: 'rs-1' }, key: rs, alg: 'PS256' }), reason: 'alg_not_allowed' },
    { name: 'ES384 (not in the issuer’s algorithms)', token: () => user({ header: { alg: 'ES384', kid: 'es384-1' }, key: es384 }), reason: 'alg_not_allowed' },
    { name: 'EdDSA (not in the issuer’s algorithms)', token: () => user({ header: { alg: 'EdDSA', kid: 'ed-1' }, key: ed }), reason: 'alg_not_allowed' },
    { name: 'ES256 signed by an attacker key that reuses the real kid', token: () => user({ key: attacker }), reason: 'signature_invalid' },
    { name: 'RS256 signed by an attacker key that reuses the real kid', token: () => user({ header: { alg: 'RS256', kid: 'rs-1' }, key: attackerRsa }), reason: 'signature_invalid' },
    { name: 'psychic signature (r = s = 0, CVE-2022-21449)', token: () => `${user().split('.').slice(0, 2).join('.')}.${Buffer.alloc(64).toString('base64url')}`, reason: 'signature_invalid' },
    { name: 'r = s = n (curve order)', token: () => { const n = Buffer.from('ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551', 'hex'); return `${user().split('.').slice(0, 2).join('.')}.${Buffer.concat([n, n]).toString('base64url')}`; }, reason: 'signature_invalid' },
    { name: 'DER-encoded ECDSA signature', token: () => { const input = user().split('.').slice(0, 2).join('.'); return `${input}.${cryptoSign('sha256', Buffer.from(input), es.privateKey).toString('base64url')}`; }, reason: 'signature_invalid' },
    { name: 'truncated signature', token: () => { const [h, p, s] = user().split('.'); return `${h}.${p}.${s!.slice(0, 40)}`; }, reason: 'signature_invalid' },
  ];

  const kidInjection: Case[] = [
    ...['../../../../../../dev/null', "' OR '1'='1", "es-1' --", 'es-1\u0000', 'es-1 ', 'ES-1', ' es-1', 'https://evil.example.com/jwks.json',
      'file:///etc/passwd', '__proto__', 'constructor', 'toString', 'es-1\nrs-1', '*', '%', 'k'.repeat(2048)]
      .map((kid) => ({ name: `kid ${JSON.stringify(kid.length > 40 ? `${kid.slice(0, 10)}…(${kid.length})` : kid)} (real key’s signature)`, token: () => user({ header: { kid } }), reason: 'kid_unknown' })),
    { name: 'kid as a number', token: () => user({ header: { kid: 1 } }), reason: 'token_malformed' },
    { name: 'kid as an object', token: () => user({ header: { kid: { $ne: null } } }), reason: 'token_malformed' },
    { name: 'kid as an array', token: () => user({ header: { kid: ['es-1'] } }), reason: 'token_malformed' },
    { name: 'kid null', token: () => user({ header: { kid: null } }), reason: 'token_malformed' },
  ];

  const keyHeaders: Case[] = [
    { name: 'jku pointing at an attacker JWKS', token: () => user({ header: { jku: 'https://evil.example.com/jwks.json' }, key: attacker }), reason: 'header_not_allowed' },
    { name: 'jku pointing at the issuer’s own host', token: () => user({ header: { jku: `${IDP}/.well-known/jwks.json` } }), reason: 'header_not_allowed' },
    { name: 'x5u', token: () => user({ header: { x5u: 'https://evil.example.com/cert.pem' }, key: attacker }), reason: 'header_not_allowed' },
    { name: 'jwk: the attacker’s key embedded, token signed with it', token: () => user({ header: { jwk: attacker.jwk, kid: undefined }, key: attacker }), reason: 'header_not_allowed' },
    { name: 'jwk: the issuer’s own public key embedded', token: () => user({ header: { jwk: es.jwk } }), reason: 'header_not_allowed' },
    { name: 'x5c: a certificate chain', token: () => user({ header: { x5c: ['MIIBszCCAVmgAwIBAgIUZm9yZ2VkIGNlcnRpZmljYXRl'] }, key: attacker }), reason: 'header_not_allowed' },
  ];

  const crit: Case[] = [
    { name: 'crit naming an unknown extension that is present', token: () => user({ header: { crit: ['http://example.invalid/UNDEFINED'], 'http://example.invalid/UNDEFINED': true } }), reason: 'crit_unsupported' },
    { name: 'crit naming a registered name (exp)', token: () => user({ header: { crit: ['exp'], exp: now() + 60 } }), reason: 'crit_unsupported' },
    { name: 'crit empty', token: () => user({ header: { crit: [] } }), reason: 'crit_unsupported' },
    { name: 'crit naming a member that is absent', token: () => user({ header: { crit: ['ext'] } }), reason: 'crit_unsupported' },
    { name: 'crit with b64:false (RFC 7797 unencoded payload)', token: () => user({ header: { crit: ['b64'], b64: false } }), reason: 'crit_unsupported' },
    { name: 'crit not an array', token: () => user({ header: { crit: 'exp' } }), reason: 'crit_unsupported' },
  ];

  const jweAndNesting: Case[] = [
    { name: 'compact JWE (RSA-OAEP-256 / A256GCM), five segments', token: () => [ENC(JSON.stringify({ alg: 'RSA-OAEP-256', enc: 'A256GCM', kid: 'rs-1' })), randomBytes(256).toString('base64url'), randomBytes(12).toString('base64url'), randomBytes(64).toString('base64url'), randomBytes(16).toString('base64url')].join('.'), reason: 'token_malformed' },
    { name: 'compact JWE with alg "dir" and an empty key segment', token: () => [ENC(JSON.stringify({ alg: 'dir', enc: 'A128CBC-HS256' })), '', randomBytes(16).toString('base64url'), randomBytes(64).toString('base64url'), randomBytes(16).toString('base64url')].join('.'), reason: 'token_malformed' },
    { name: 'JWS with an "enc" member (JWE/JWS confusion)', token: () => user({ header: { enc: 'A256GCM' } }), reason: 'header_not_allowed' },
    { name: 'JWS with zip: DEF', token: () => user({ header: { zip: 'DEF' } }), reason: 'header_not_allowed' },
    { name: 'JWS with PBES2 parameters', token: () => user({ header: { p2s: 'c2FsdA', p2c: 100000000 } }), reason: 'header_not_allowed' },
    { name: 'JWS with b64:false and no crit', token: () => user({ header: { b64: false } }), reason: 'header_not_allowed' },
    { name: 'nested JWT: cty "JWT" around an inner signed token', token: () => signText(JSON.stringify({ ...HEADER(), cty: 'JWT' }), user(), es), reason: 'header_not_allowed' },
    { name: 'nested JWT without cty: the payload is a JWS, not a claims set', token: () => signText(JSON.stringify(HEADER()), user(), es), reason: 'token_malformed' },
    { name: 'payload is a JSON array', token: () => signText(JSON.stringify(HEADER()), JSON.stringify([CLAIMS()]), es), reason: 'token_malformed' },
    { name: 'payload is a JSON string', token: () => signText(JSON.stringify(HEADER()), JSON.stringify('alice'), es), reason: 'token_malformed' },
    { name: 'JWS JSON serialization (flattened)', token: () => { const [h, p, s] = user().split('.'); return JSON.stringify({ protected: h, payload: p, signature: s }); }, reason: 'token_malformed' },
    { name: 'two segments', token: () => user().split('.').slice(0, 2).join('.'), reason: 'token_malformed' },
    { name: 'four segments', token: () => `${user()}.${ENC('x')}`, reason: 'token_malformed' },
    { name: 'empty payload segment (detached content)', token: () => { const [h, , s] = user().split('.'); return `${h}..${s}`; }, reason: 'token_malformed' },
    { name: 'padded base64url', token: () => { const [h, p, s] = user().split('.'); return `${h}==.${p}.${s}`; }, reason: 'token_malformed' },
    { name: 'standard base64 alphabet (+ and /)', token: () => { const [h, p, s] = user().split('.'); return `${h}.${p}.${s!.replace(/-/g, '+').replace(/_/g, '/')}${/[-_]/.test(s!) ? '' : '+/'}`; }, reason: 'token_malformed' },
    { name: 'whitespace inside a segment', token: () => { const [h, p, s] = user().split('.'); return `${h}.${p!.slice(0, 10)} ${p!.slice(10)}.${s}`; }, reason: 'token_malformed' },
    { name: 'header that is not JSON', token: () => `${ENC('{alg:ES256}')}.${ENC(claimsText(CLAIMS()))}.AAAA`, reason: 'token_malformed' },
    { name: 'header that is not UTF-8', token: () => `${Buffer.from([0x7b, 0xff, 0xfe, 0x7d]).toString('base64url')}.${ENC(claimsText(CLAIMS()))}.AAAA`, reason: 'token_malformed' },
  ];

  const duplicates: Case[] = [
    { name: 'duplicate sub in the claims (alice, then admin)', token: () => user({ raw: { sub: '"alice","sub":"admin"' } }), reason: 'duplicate_member' },
    { name: 'duplicate iss in the claims', token: () => user({ raw: { iss: `"${IDP}","iss":"${OTHER_IDP}"` } }), reason: 'duplicate_member' },
    { name: 'duplicate aud in the claims', token: () => user({ raw: { aud: `"https://evil.example.com","aud":"${t.issuer}"` } }), reason: 'duplicate_member' },
    { name: 'duplicate exp in the claims (short, then far future)', token: () => user({ raw: { exp: `${now() + 60},"exp":${now() + 80000}` } }), reason: 'duplicate_member' },
    { name: 'duplicate written with an escape ("\\u0073ub")', token: () => user({ raw: { sub: '"alice","\\u0073ub":"admin"' } }), reason: 'duplicate_member' },
    { name: 'duplicate inside a nested object (may_act.sub)', token: () => user({ raw: { may_act: '{"sub":"planner-agent","sub":"executor-agent"}' } }), reason: 'duplicate_member' },
    { name: 'duplicate alg in the header (ES256, then none)', token: () => headerRaw('{"alg":"ES256","typ":"at+jwt","kid":"es-1","alg":"none"}'), reason: 'duplicate_member' },
    { name: 'duplicate kid in the header', token: () => headerRaw('{"alg":"ES256","typ":"at+jwt","kid":"other","kid":"es-1"}'), reason: 'duplicate_member' },
    { name: 'duplicate typ in the header', token: () => headerRaw('{"alg":"ES256","typ":"JWT","kid":"es-1","typ":"at+jwt"}'), reason: 'duplicate_member' },
  ];

  const sizeBombs: Case[] = [
    { name: 'token over 8 KiB (padding claim)', token: () => user({ set: { pad: 'x'.repeat(9000) } }), reason: 'token_too_large' },
    { name: 'token of 40 KiB', token: () => user({ set: { pad: 'x'.repeat(40_000) } }), reason: 'token_too_large' },
    { name: 'payload JSON nested 40 deep', token: () => user({ raw: { deep: nested(40) } }), reason: 'token_malformed' },
    { name: 'payload arrays nested 200 deep', token: () => user({ raw: { deep: `${'['.repeat(200)}${']'.repeat(200)}` } }), reason: 'token_malformed' },
    { name: 'header JSON nested 40 deep', token: () => headerRaw(`{"alg":"ES256","typ":"at+jwt","kid":"es-1","x":${nested(40)}}`), reason: 'token_malformed' },
    { name: 'sub of 256 characters', token: () => user({ set: { sub: 'a'.repeat(256) } }), reason: 'claim_invalid' },
    { name: 'a number of 400 digits', token: () => user({ raw: { big: `1${'0'.repeat(400)}` } }), reason: 'token_malformed_or_accepted' },
  ];

  const times: Case[] = [
    { name: 'exp 61 s ago (beyond the 60 s leeway)', token: () => user({ set: { iat: now() - 600, exp: now() - 61 } }), reason: 'token_expired' },
    { name: 'exp an hour ago', token: () => user({ set: { iat: now() - 7200, exp: now() - 3600 } }), reason: 'token_expired' },
    { name: 'exp 30 s ago (within the leeway, but no lifetime left to grant)', token: () => user({ set: { iat: now() - 600, exp: now() - 30 } }), reason: 'token_expired' },
    { name: 'exp now (no lifetime left)', token: () => user({ set: { iat: now() - 60, exp: now() } }), reason: 'token_expired' },
    { name: 'nbf 2 min in the future', token: () => user({ set: { nbf: now() + 120 } }), reason: 'token_not_yet_valid' },
    { name: 'iat 2 min in the future', token: () => user({ set: { iat: now() + 120, exp: now() + 600 } }), reason: 'token_not_yet_valid' },
    { name: 'exp as a string', token: () => user({ set: { exp: String(now() + 300) } }), reason: 'claim_invalid' },
    { name: 'exp with a fraction', token: () => user({ raw: { exp: `${now() + 300}.5` } }), reason: 'claim_invalid' },
    { name: 'exp 1e400 (Infinity once parsed)', token: () => user({ raw: { exp: '1e400' } }), reason: 'claim_invalid' },
    { name: 'exp -1e400 (-Infinity once parsed)', token: () => user({ raw: { exp: '-1e400' } }), reason: 'claim_invalid' },
    { name: 'exp negative', token: () => user({ set: { exp: -1 } }), reason: 'claim_invalid' },
    { name: 'exp beyond 2^53', token: () => user({ raw: { exp: '9007199254740993' } }), reason: 'claim_invalid' },
    { name: 'exp null', token: () => user({ raw: { exp: 'null' } }), reason: 'claim_invalid' },
    { name: 'exp as an array', token: () => user({ raw: { exp: `[${now() + 300}]` } }), reason: 'claim_invalid' },
    { name: 'iat as a string', token: () => user({ set: { iat: String(now()) } }), reason: 'claim_invalid' },
    { name: 'nbf 1e400', token: () => user({ raw: { nbf: '1e400' } }), reason: 'claim_invalid' },
    { name: 'exp missing', token: () => user({ set: { exp: undefined } }), reason: 'claim_missing' },
    { name: 'iat missing', token: () => user({ set: { iat: undefined } }), reason: 'claim_missing' },
    { name: 'sub missing', token: () => user({ set: { sub: undefined } }), reason: 'claim_missing' },
    { name: 'iat at the epoch (older than max_token_age)', token: () => user({ set: { iat: 0 } }), reason: 'token_too_old' },
    { name: 'lifetime over 24 h', token: () => user({ set: { iat: now(), exp: now() + 90_000 } }), reason: 'claim_invalid' },
    { name: 'exp equal to iat', token: () => { const n = now(); return user({ set: { iat: n + 30, exp: n + 30 } }); }, reason: 'claim_invalid' },
    { name: 'exp before iat', token: () => user({ set: { iat: now(), exp: now() - 10 } }), reason: 'claim_invalid' },
  ];

  const audienceIssuer: Case[] = [
    { name: 'aud is a resource server', token: () => user({ set: { aud: PAYMENTS } }), reason: 'aud_mismatch' },
    { name: 'aud is the IdP itself', token: () => user({ set: { aud: IDP } }), reason: 'aud_mismatch' },
    { name: 'aud is Writ with a trailing slash', token: () => user({ set: { aud: `${t.issuer}/` } }), reason: 'aud_mismatch' },
    { name: 'aud is Writ in upper case', token: () => user({ set: { aud: t.issuer.toUpperCase() } }), reason: 'aud_mismatch' },
    { name: 'aud is an array without Writ', token: () => user({ set: { aud: [PAYMENTS, 'https://other-sts.example.com'] } }), reason: 'aud_mismatch' },
    { name: 'aud is an empty array', token: () => user({ set: { aud: [] } }), reason: 'aud_mismatch' },
    { name: 'aud missing', token: () => user({ set: { aud: undefined } }), reason: 'claim_missing' },
    { name: 'iss with a trailing slash', token: () => user({ set: { iss: `${IDP}/` } }), reason: 'issuer_untrusted' },
    { name: 'iss with an upper-case host', token: () => user({ set: { iss: 'https://IDP.example.com' } }), reason: 'issuer_untrusted' },
    { name: 'iss missing', token: () => user({ set: { iss: undefined } }), reason: 'issuer_untrusted' },
    { name: 'iss as an array', token: () => user({ set: { iss: [IDP] } }), reason: 'issuer_untrusted' },
    { name: 'iss untrusted', token: () => user({ set: { iss: 'https://evil.example.com' }, key: attacker }), reason: 'issuer_untrusted' },
    { name: 'iss is the other trusted issuer, signed with this IdP’s key and kid (J7)', token: () => user({ set: { iss: OTHER_IDP } }), reason: 'kid_unknown' },
    { name: 'iss is the other trusted issuer, its kid, this IdP’s key', token: () => user({ header: { kid: 'other-1' }, set: { iss: OTHER_IDP } }), reason: 'signature_invalid' },
    { name: 'iss is this IdP, signed with the other issuer’s key and kid', token: () => user({ header: { kid: 'other-1' }, key: other }), reason: 'kid_unknown' },
    { name: 'iss is Writ itself, signed with the IdP’s key', token: () => user({ set: { iss: t.issuer, client_id: 'planner-agent', scope: 'payment.read', sub_id: { format: 'iss_sub', iss: IDP, sub: 'alice' }, act: { sub: 'planner-agent' } } }), reason: 'kid_unknown' },
    { name: 'typ JWT (an ID-token-like JWT) declared as an access token', token: () => user({ header: { typ: 'JWT' } }), reason: 'typ_not_allowed' },
    { name: 'typ missing', token: () => user({ header: { typ: undefined } }), reason: 'typ_not_allowed' },
    ...['dpop+jwt', 'logout+jwt', 'secevent+jwt', 'client-authentication+jwt', 'at+jwt; charset=utf-8'].map((typ) => ({ name: `typ ${typ}`, token: () => user({ header: { typ } }), reason: 'typ_not_allowed' })),
    { name: 'typ as a number', token: () => user({ header: { typ: 1 } }), reason: 'token_malformed' },
    { name: 'nonce (an ID token presented as an access token)', token: () => user({ set: { nonce: 'n-0S6_WzA2Mj' } }), reason: 'forbidden_claim' },
    { name: 'at_hash', token: () => user({ set: { at_hash: 'HK6E_P6Dh8Y93mRNtsDB1Q' } }), reason: 'forbidden_claim' },
    { name: 'cnf (a sender-constrained token laundered as bearer)', token: () => user({ set: { cnf: { jkt: '0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I' } } }), reason: 'forbidden_claim' },
  ];

  const substitution: Case[] = [
    { name: 'payload edited (sub alice → admin), original signature kept', token: () => { const [h, , s] = user().split('.'); return `${h}.${ENC(claimsText(CLAIMS(), { sub: 'admin' }))}.${s}`; }, reason: 'signature_invalid' },
    { name: 'payload edited (groups → finance) on a non-finance user’s token', token: () => { const [h, , s] = user({ set: { groups: ['hr'] } }).split('.'); return `${h}.${ENC(claimsText(CLAIMS()))}.${s}`; }, reason: 'signature_invalid' },
    { name: 'signature transplanted from another valid token', token: () => { const [h, p] = user({ set: { sub: 'mallory' } }).split('.'); return `${h}.${p}.${user().split('.')[2]}`; }, reason: 'signature_invalid' },
    { name: 'header edited (kid → rs-1) on a valid token', token: () => { const [, p, s] = user().split('.'); return `${ENC(JSON.stringify({ ...HEADER(), kid: 'rs-1' }))}.${p}.${s}`; }, reason: 'kid_unknown' },
    { name: 'a client assertion (private_key_jwt shape) as the subject', token: () => signText(JSON.stringify({ alg: 'ES256', kid: 'es-1' }), JSON.stringify({ iss: 'planner-agent', sub: 'planner-agent', aud: t.issuer, iat: now(), exp: now() + 60, jti: 'a' }), attacker), reason: 'issuer_untrusted' },
  ];

  const classes: Array<[string, Case[]]> = [
    ['alg none and its variants', algNone],
    ['HS/RS key confusion and algorithm substitution', keyConfusion],
    ['kid injection', kidInjection],
    ['jku / x5u / jwk / x5c headers', keyHeaders],
    ['crit', crit],
    ['JWE, nested tokens and serialization tricks', jweAndNesting],
    ['duplicate members', duplicates],
    ['size bombs', sizeBombs.filter((c) => c.reason !== 'token_malformed_or_accepted')],
    ['time-claim edges', times],
    ['audience and issuer confusion, explicit typing', audienceIssuer],
    ['token substitution', substitution],
  ];

  describe.each(classes)('subject token: %s', (_name, cases) => {
    it.each(cases)('$name → $reason', async (c) => {
      await denied(await asSubject(c.token()), c.reason);
    });
  });

  it('subject token: a 400-digit number in a claim no check reads is parsed without harm, and granted', async () => {
    const res = await asSubject(user({ raw: { big: `1${'0'.repeat(400)}` } }));
    expect(res.status).toBe(200);
    expect(typeof res.body.access_token).toBe('string');
  });

  it('an access token declared as an id_token, and an id_token-typed token, are kept apart (X5, J10)', async () => {
    await denied(await asPlanner({ subject_token: user(), subject_token_type: 'urn:ietf:params:oauth:token-type:id_token' }), 'token_type_mismatch', 'subject');
    await denied(await asPlanner({ subject_token: user({ header: { typ: 'JWT' }, set: { nonce: 'n' } }), subject_token_type: 'urn:ietf:params:oauth:token-type:id_token' }), 'token_type_mismatch', 'subject');
  });

  // -------------------------------------------------------------------------------------------
  // The same classes in the actor token position (planner-agent may present bot-7's tokens)

  const actorToken = (o: Parameters<typeof user>[0] = {}): string => user({ ...o, set: { sub: 'bot-7', groups: undefined, ...o.set } });
  const actorCases: Case[] = [
    { name: 'alg none', token: () => `${ENC(JSON.stringify({ alg: 'none', typ: 'at+jwt' }))}.${ENC(claimsText(CLAIMS(), { sub: 'bot-7' }))}.`, reason: 'alg_not_allowed' },
    { name: 'HS256 keyed with the RSA public key', token: () => hmacText(JSON.stringify({ alg: 'HS256', typ: 'at+jwt' }), claimsText(CLAIMS(), { sub: 'bot-7' }), rs.publicKey.export({ type: 'spki', format: 'pem' })), reason: 'alg_not_allowed' },
    { name: 'kid injection', token: () => actorToken({ header: { kid: "' OR 1=1 --" } }), reason: 'kid_unknown' },
    { name: 'embedded jwk', token: () => actorToken({ header: { jwk: attacker.jwk }, key: attacker }), reason: 'header_not_allowed' },
    { name: 'jku', token: () => actorToken({ header: { jku: 'https://evil.example.com/jwks' } }), reason: 'header_not_allowed' },
    { name: 'crit', token: () => actorToken({ header: { crit: ['x'], x: 1 } }), reason: 'crit_unsupported' },
    { name: 'JWE', token: () => [ENC(JSON.stringify({ alg: 'dir', enc: 'A256GCM' })), '', 'AAAA', 'AAAA', 'AAAA'].join('.'), reason: 'token_malformed' },
    { name: 'duplicate sub (bot-7, then bot-8)', token: () => user({ set: { groups: undefined }, raw: { sub: '"bot-8","sub":"bot-7"' } }), reason: 'duplicate_member' },
    { name: 'over 8 KiB', token: () => actorToken({ set: { pad: 'x'.repeat(9000) } }), reason: 'token_too_large' },
    { name: 'expired', token: () => actorToken({ set: { iat: now() - 600, exp: now() - 120 } }), reason: 'token_expired' },
    { name: 'exp 1e400', token: () => actorToken({ raw: { exp: '1e400' } }), reason: 'claim_invalid' },
    { name: 'not addressed to Writ', token: () => actorToken({ set: { aud: PAYMENTS } }), reason: 'aud_mismatch' },
    { name: 'forged with an attacker key', token: () => actorToken({ key: attacker }), reason: 'signature_invalid' },
    { name: 'from an untrusted issuer', token: () => actorToken({ set: { iss: 'https://evil.example.com' }, key: attacker }), reason: 'issuer_untrusted' },
    { name: 'payload edited (sub → bot-7) on another identity’s token', token: () => { const [h, , s] = actorToken({ set: { sub: 'bot-8' } }).split('.'); return `${h}.${ENC(claimsText(CLAIMS(), { sub: 'bot-7', groups: undefined }))}.${s}`; }, reason: 'signature_invalid' },
  ];

  it('actor token: positive control (bot-7 may act for planner-agent)', async () => {
    const res = await asPlanner({ subject_token: user(), subject_token_type: AT, actor_token: actorToken(), actor_token_type: AT });
    expect(res.status).toBe(200);
    expect(decodeJwt(res.body.access_token as string).act).toEqual({ sub: 'bot-7', iss: IDP, client_id: 'planner-agent' });
  });

  it.each(actorCases)('actor token: $name → $reason', async (c) => {
    await denied(await asPlanner({ subject_token: user(), subject_token_type: AT, actor_token: c.token(), actor_token_type: AT }), c.reason);
  });

  it('the audit record names the actor token when its signature, key or claims fail', async () => {
    for (const c of actorCases.filter((a) => ['kid_unknown', 'token_expired', 'aud_mismatch', 'signature_invalid', 'issuer_untrusted'].includes(a.reason))) {
      await denied(await asPlanner({ subject_token: user(), subject_token_type: AT, actor_token: c.token(), actor_token_type: AT }), c.reason, 'actor');
    }
  });

  // Regression: a structurally bad actor token (alg none, HS256, jku/jwk, crit, JWE, duplicate
  // members, > 8 KiB) was audited without `details.token = 'actor'`, so its record could not be
  // told from a bad subject token's.
  it('the audit record names the actor token for structural failures too', async () => {
    for (const c of actorCases.filter((a) => ['alg_not_allowed', 'header_not_allowed', 'crit_unsupported', 'token_malformed', 'duplicate_member', 'token_too_large'].includes(a.reason))) {
      await denied(await asPlanner({ subject_token: user(), subject_token_type: AT, actor_token: c.token(), actor_token_type: AT }), c.reason, 'actor');
    }
  });

  // -------------------------------------------------------------------------------------------
  // Forgeries of Writ's own tokens (the subject of a chained exchange)

  describe('Writ-issued subject tokens', () => {
    let parent: string;
    beforeAll(async () => {
      const res = await t.post('/token', { grant_type: TX, subject_token: user(), subject_token_type: AT, audience: EXECUTOR_AUD }, basicAuth('planner-agent'));
      expect(res.status).toBe(200);
      parent = res.body.access_token as string;
    });
    const asExecutor = (token: string) => t.post('/token', { grant_type: TX, subject_token: token, subject_token_type: AT, audience: PAYMENTS }, basicAuth('executor-agent'));
    const parts = (): { header: Record<string, unknown>; claims: Record<string, unknown>; h: string; p: string; s: string } => {
      const [h, p, s] = parent.split('.') as [string, string, string];
      return { header: JSON.parse(Buffer.from(h, 'base64url').toString()), claims: JSON.parse(Buffer.from(p, 'base64url').toString()), h, p, s };
    };
    const reheader = (edit: Record<string, unknown>): string => { const { header, p, s } = parts(); return `${ENC(JSON.stringify({ ...header, ...edit }))}.${p}.${s}`; };
    const reclaim = (edit: Record<string, unknown>): string => { const { claims, h, s } = parts(); return `${h}.${ENC(JSON.stringify({ ...claims, ...edit }))}.${s}`; };

    const writCases: Case[] = [
      { name: 'alg none on a Writ token', token: () => `${ENC(JSON.stringify({ alg: 'none', typ: 'at+jwt' }))}.${parts().p}.`, reason: 'alg_not_allowed' },
      { name: 'HS256 keyed with Writ’s published public key', token: () => { const { claims } = parts(); return hmacText(JSON.stringify({ alg: 'HS256', typ: 'at+jwt', kid: parts().header.kid }), JSON.stringify(claims), JSON.stringify(parts().header)); }, reason: 'alg_not_allowed' },
      { name: 'forged with an attacker key under Writ’s kid', token: () => signText(JSON.stringify(parts().header), JSON.stringify(parts().claims), attacker), reason: 'signature_invalid' },
      { name: 'kid of the upstream IdP’s key', token: () => signText(JSON.stringify({ ...parts().header, kid: 'es-1' }), JSON.stringify(parts().claims), es), reason: 'kid_unknown' },
      { name: 'scope edited to payment.transfer', token: () => reclaim({ scope: 'payment.transfer' }), reason: 'signature_invalid' },
      { name: 'act edited to drop planner-agent', token: () => reclaim({ act: { sub: 'executor-agent' } }), reason: 'signature_invalid' },
      { name: 'exp extended by a day', token: () => reclaim({ exp: (parts().claims.exp as number) + 86_400 }), reason: 'signature_invalid' },
      { name: 'typ changed to JWT', token: () => reheader({ typ: 'JWT' }), reason: 'typ_not_allowed' },
      { name: 'jku added', token: () => reheader({ jku: 'https://evil.example.com/jwks' }), reason: 'header_not_allowed' },
      { name: 'crit added', token: () => reheader({ crit: ['exp'] }), reason: 'crit_unsupported' },
      { name: 'duplicate sub appended', token: () => { const { h, p, s } = parts(); const text = Buffer.from(p, 'base64url').toString(); return `${h}.${ENC(`${text.slice(0, -1)},"sub":"mallory"}`)}.${s}`; }, reason: 'duplicate_member' },
    ];
    it.each(writCases)('$name → $reason', async (c) => {
      await denied(await asExecutor(c.token()), c.reason);
    });
    it('positive control: the untouched parent is exchanged', async () => {
      expect((await asExecutor(parent)).status).toBe(200);
    });
  });
});
