import { describe, it, expect } from 'vitest';
import fc from 'fast-check';
import { SignJWT, generateKeyPair } from 'jose';
import { ExchangeDenied, type ReasonCode } from '../../src/exchange/reasons.ts';
import { inspectCompactJws, type InspectOptions } from '../../src/tokens/jws-structure.ts';
import { StrictJsonError, parseStrictJson } from '../../src/tokens/strict-json.ts';

const b64 = (text: string): string => Buffer.from(text, 'utf8').toString('base64url');
const SIG = Buffer.alloc(64, 7).toString('base64url');
const GOOD_HEADER = '{"alg":"ES256","typ":"at+jwt","kid":"k1"}';
const GOOD_PAYLOAD = '{"iss":"https://idp.example.com","sub":"alice","aud":"https://writ.example.com","exp":2000000000,"iat":1700000000}';

/** A compact JWS from raw JSON texts; the signature is structurally fine but never verified here. */
function jws(header: string, payload: string = GOOD_PAYLOAD, sig: string = SIG): string {
  return `${b64(header)}.${b64(payload)}.${sig}`;
}

function denial(fn: () => unknown): ExchangeDenied {
  try {
    fn();
  } catch (err) {
    if (err instanceof ExchangeDenied) return err;
    throw err;
  }
  throw new Error('expected ExchangeDenied, nothing was thrown');
}

function expectReason(token: string, reason: ReasonCode, options?: InspectOptions): ExchangeDenied {
  const err = denial(() => inspectCompactJws(token, options));
  expect(err.reason).toBe(reason);
  return err;
}

describe('inspectCompactJws: accepted shape', () => {
  it('returns header and payload of a real signed JWT', async () => {
    const { privateKey } = await generateKeyPair('ES256');
    const token = await new SignJWT({ scope: 'a b' })
      .setProtectedHeader({ alg: 'ES256', typ: 'at+jwt', kid: 'k1' })
      .setIssuer('https://idp.example.com').setSubject('alice').setIssuedAt(1700000000).setExpirationTime(2000000000)
      .sign(privateKey);
    const { header, payload } = inspectCompactJws(token);
    expect(header).toEqual({ alg: 'ES256', typ: 'at+jwt', kid: 'k1' });
    expect(payload).toMatchObject({ iss: 'https://idp.example.com', sub: 'alice', scope: 'a b', iat: 1700000000 });
  });

  it('allows x5t and x5t#S256 thumbprint hints (never used to pick a key)', () => {
    expect(() => inspectCompactJws(jws('{"alg":"RS256","x5t":"abc","x5t#S256":"def"}'))).not.toThrow();
  });

  it('treats the same name in different objects as distinct members', () => {
    const payload = '{"sub":"a","act":{"sub":"b","act":{"sub":"c"}},"list":[{"sub":1},{"sub":2}]}';
    expect(inspectCompactJws(jws(GOOD_HEADER, payload)).payload).toEqual(JSON.parse(payload));
  });

  it('carries the role into every denial', () => {
    expect(expectReason(jws('{"alg":"none"}'), 'alg_not_allowed', { role: 'actor' }).role).toBe('actor');
    expect(expectReason('a.b', 'token_malformed', { role: 'subject' }).role).toBe('subject');
  });
});

describe('inspectCompactJws: segments and encoding', () => {
  it('refuses tokens over the size cap before anything else', () => {
    const big = jws(GOOD_HEADER, JSON.stringify({ sub: 'a', pad: 'x'.repeat(9000) }));
    expectReason(big, 'token_too_large');
    expectReason(jws(GOOD_HEADER), 'token_too_large', { maxLength: 50 });
    // Not even a well-formed prefix is needed: length alone decides.
    expectReason('!'.repeat(8193), 'token_too_large');
    expect(() => inspectCompactJws(jws(GOOD_HEADER, JSON.stringify({ pad: 'x'.repeat(5000) })))).not.toThrow();
  });

  it('refuses JWE (5 segments) and other segment counts', () => {
    expectReason(`${b64('{"alg":"RSA-OAEP","enc":"A256GCM"}')}.a.b.c.d`, 'token_malformed');
    expectReason('a.b', 'token_malformed');
    expectReason('a.b.c.d', 'token_malformed');
    expectReason(`${jws(GOOD_HEADER)}.`, 'token_malformed');
    expectReason('', 'token_malformed');
  });

  it('refuses empty header, payload or signature segments', () => {
    expectReason(`.${b64(GOOD_PAYLOAD)}.${SIG}`, 'token_malformed');
    expectReason(`${b64(GOOD_HEADER)}..${SIG}`, 'token_malformed');
    expectReason(`${b64(GOOD_HEADER)}.${b64(GOOD_PAYLOAD)}.`, 'token_malformed');
  });

  it('accepts only unpadded, canonical base64url', () => {
    const h = b64(GOOD_HEADER);
    const p = b64(GOOD_PAYLOAD);
    expectReason(`${h}.${p}.${SIG}=`, 'token_malformed');
    expectReason(`${h}=.${p}.${SIG}`, 'token_malformed');
    const std = Buffer.from('{"alg":"ES256","x":"\u00ff\u00fe>?"}').toString('base64');
    expect(std).toMatch(/[+/]/);
    expectReason(`${std}.${p}.${SIG}`, 'token_malformed');
    expectReason(`${h}.${p}.${SIG.slice(0, 10)}+${SIG.slice(11)}`, 'token_malformed');
    expectReason(`${h} .${p}.${SIG}`, 'token_malformed');
    expectReason(`${h}.${p}.${SIG}\n`, 'token_malformed');
    expectReason(`${h}.${p.slice(0, 8)}\t${p.slice(8)}.${SIG}`, 'token_malformed');
    // Length 1 mod 4 cannot be base64url at all.
    expectReason(`${h}.${p}.${SIG}AAA`, 'token_malformed');
    // Non-zero trailing bits: "QR" decodes to the same byte as "QQ" — a second spelling.
    expect(Buffer.from('QR', 'base64url')).toEqual(Buffer.from('QQ', 'base64url'));
    expectReason(`${h}.${p}.QR`, 'token_malformed');
    expect(() => inspectCompactJws(`${h}.${p}.QQ`)).not.toThrow();
  });

  it('requires UTF-8 JSON objects, with no byte-order mark', () => {
    const p = b64(GOOD_PAYLOAD);
    expectReason(`${Buffer.from([0x7b, 0xff, 0x7d]).toString('base64url')}.${p}.${SIG}`, 'token_malformed');
    expectReason(`${b64(`\ufeff${GOOD_HEADER}`)}.${p}.${SIG}`, 'token_malformed');
    expectReason(jws('["ES256"]'), 'token_malformed');
    expectReason(jws('"ES256"'), 'token_malformed');
    expectReason(jws(GOOD_HEADER, '["sub"]'), 'token_malformed');
    expectReason(jws(GOOD_HEADER, 'null'), 'token_malformed');
    expectReason(jws(GOOD_HEADER, '{"sub":"a",}'), 'token_malformed');
    expectReason(jws(GOOD_HEADER, "{'sub':'a'}"), 'token_malformed');
    expectReason(jws(GOOD_HEADER, '{"exp":NaN}'), 'token_malformed');
    expectReason(jws(GOOD_HEADER, 'eyJ'), 'token_malformed');
  });

  it('caps JSON nesting depth', () => {
    const nested = (depth: number): string => '{"a":'.repeat(depth - 1) + '{}' + '}'.repeat(depth - 1);
    expect(() => inspectCompactJws(jws(GOOD_HEADER, nested(32)))).not.toThrow();
    expectReason(jws(GOOD_HEADER, nested(33)), 'token_malformed');
    expectReason(jws(GOOD_HEADER, `{"a":${'['.repeat(40)}${']'.repeat(40)}}`), 'token_malformed');
    expectReason(jws(GOOD_HEADER, nested(5)), 'token_malformed', { maxDepth: 4 });
  });
});

describe('inspectCompactJws: duplicate member names (RFC 7519 §4, profile J12)', () => {
  it('refuses two "sub" or two "iss" in the payload', () => {
    expectReason(jws(GOOD_HEADER, '{"sub":"alice","sub":"admin"}'), 'duplicate_member');
    expectReason(jws(GOOD_HEADER, '{"iss":"https://evil.example","sub":"a","iss":"https://idp.example.com"}'), 'duplicate_member');
  });

  it('refuses duplicates in the header', () => {
    expectReason(jws('{"alg":"ES256","alg":"none"}'), 'duplicate_member');
    expectReason(jws('{"alg":"ES256","kid":"a","kid":"b"}'), 'duplicate_member');
  });

  it('compares names after unescaping', () => {
    expectReason(jws(GOOD_HEADER, '{"sub":"alice","\\u0073ub":"admin"}'), 'duplicate_member');
    expectReason(jws(GOOD_HEADER, '{"\\u0073\\u0075\\u0062":"a","s\\u0075b":"b"}'), 'duplicate_member');
    expectReason(jws(GOOD_HEADER, '{"a/b":1,"a\\/b":2}'), 'duplicate_member');
    expectReason(jws('{"alg":"ES256","\\u0061lg":"none"}'), 'duplicate_member');
  });

  it('refuses duplicates at any depth, including inside arrays', () => {
    expectReason(jws(GOOD_HEADER, '{"act":{"sub":"a","sub":"b"}}'), 'duplicate_member');
    expectReason(jws(GOOD_HEADER, '{"x":[1,{"y":[{"z":1,"z":2}]}]}'), 'duplicate_member');
  });

  it('never echoes the token or the duplicated name in the detail', () => {
    const token = jws(GOOD_HEADER, '{"secretname":"v","secretname":"w"}');
    const err = expectReason(token, 'duplicate_member');
    expect(err.message).not.toContain('secretname');
    for (const segment of token.split('.')) expect(err.message).not.toContain(segment);
  });
});

describe('inspectCompactJws: header rules', () => {
  it('refuses "none" in any spelling and every HS* algorithm', () => {
    for (const alg of ['none', 'None', 'NONE', 'nOnE']) {
      expectReason(`${b64(`{"alg":"${alg}"}`)}.${b64(GOOD_PAYLOAD)}.`, 'alg_not_allowed');
      expectReason(jws(`{"alg":"${alg}","typ":"JWT"}`), 'alg_not_allowed');
    }
    for (const alg of ['HS256', 'HS384', 'HS512', 'hs256']) expectReason(jws(`{"alg":"${alg}"}`), 'alg_not_allowed');
  });

  it('requires alg to be a non-empty string', () => {
    expectReason(jws('{"typ":"JWT"}'), 'token_malformed');
    expectReason(jws('{"alg":256}'), 'token_malformed');
    expectReason(jws('{"alg":["ES256"]}'), 'token_malformed');
    expectReason(jws('{"alg":""}'), 'token_malformed');
    expectReason(jws('{"alg":null}'), 'token_malformed');
  });

  it('refuses any crit (RFC 7515 §4.1.11)', () => {
    expectReason(jws('{"alg":"ES256","crit":["exp"],"exp":1}'), 'crit_unsupported');
    expectReason(jws('{"alg":"ES256","crit":[]}'), 'crit_unsupported');
    expectReason(jws('{"alg":"ES256","crit":["b64"],"b64":true}'), 'crit_unsupported');
  });

  it('refuses headers that carry or point at a key (RFC 8725 §3.10)', () => {
    expectReason(jws('{"alg":"RS256","jku":"https://evil.example/jwks"}'), 'header_not_allowed');
    expectReason(jws('{"alg":"RS256","x5u":"https://evil.example/cert"}'), 'header_not_allowed');
    expectReason(jws('{"alg":"ES256","jwk":{"kty":"EC","crv":"P-256","x":"a","y":"b"}}'), 'header_not_allowed');
    expectReason(jws('{"alg":"RS256","x5c":["MIIB"]}'), 'header_not_allowed');
  });

  it('refuses JWE, compression and unencoded-payload members', () => {
    expectReason(jws('{"alg":"ES256","zip":"DEF"}'), 'header_not_allowed');
    expectReason(jws('{"alg":"ES256","enc":"A256GCM"}'), 'header_not_allowed');
    expectReason(jws('{"alg":"ES256","b64":false}'), 'header_not_allowed');
    expectReason(jws('{"alg":"ES256","p2s":"abc","p2c":1000}'), 'header_not_allowed');
    expectReason(jws('{"alg":"ES256","cty":"JWT"}'), 'header_not_allowed');
  });

  it('requires kid and typ, when present, to be strings', () => {
    expectReason(jws('{"alg":"ES256","kid":7}'), 'token_malformed');
    expectReason(jws('{"alg":"ES256","kid":{"$ne":null}}'), 'token_malformed');
    expectReason(jws('{"alg":"ES256","typ":["at+jwt"]}'), 'token_malformed');
  });
});

// ---------------------------------------------------------------------------------------------
// The strict JSON scanner against JSON.parse.

type Tree =
  | { kind: 'leaf'; value: string | number | boolean | null }
  | { kind: 'arr'; items: Tree[] }
  | { kind: 'obj'; entries: Array<[KeyChar[], Tree]> };
/** One character of a member name, and whether to write it as a \uXXXX escape. */
type KeyChar = [string, boolean];

const { tree: treeArb } = fc.letrec<{ tree: Tree; arr: Tree; obj: Tree }>((tie) => ({
  tree: fc.oneof({ depthSize: 'small', withCrossShrink: true },
    fc.oneof(fc.string(), fc.integer(), fc.double({ noNaN: true, noDefaultInfinity: true }), fc.boolean(), fc.constant(null))
      .map((value): Tree => ({ kind: 'leaf', value })),
    tie('arr'), tie('obj')),
  arr: fc.array(tie('tree'), { maxLength: 4 }).map((items): Tree => ({ kind: 'arr', items })),
  obj: fc.array(
    fc.tuple(
      // A small alphabet so that collisions (duplicates) are frequent, with characters that
      // must be escaped and a surrogate pair among them.
      fc.array(fc.tuple(fc.constantFrom('a', 'b', 's', '"', '\\', '/', '\n', '\u0000', 'é', '😀', '_'), fc.boolean()), { maxLength: 3 }),
      tie('tree'),
    ),
    { maxLength: 4 },
  ).map((entries): Tree => ({ kind: 'obj', entries })),
}));

function escapeUnit(unit: number, upper: boolean): string {
  const hex = unit.toString(16).padStart(4, '0');
  return `\\u${upper ? hex.toUpperCase() : hex}`;
}

function writeKey(chars: KeyChar[]): string {
  let out = '"';
  for (const [ch, escape] of chars) {
    for (let i = 0; i < ch.length; i++) {
      const unit = ch.charCodeAt(i);
      if (escape || unit < 0x20 || ch === '"' || ch === '\\') out += escapeUnit(unit, escape);
      else out += ch[i];
    }
  }
  return `${out}"`;
}

function write(t: Tree, ws: string): string {
  switch (t.kind) {
    case 'leaf': return JSON.stringify(t.value);
    case 'arr': return `[${ws}${t.items.map((x) => write(x, ws)).join(`${ws},${ws}`)}${ws}]`;
    case 'obj': return `{${ws}${t.entries.map(([k, v]) => `${writeKey(k)}${ws}:${ws}${write(v, ws)}`).join(`,${ws}`)}${ws}}`;
  }
}

/** Independent oracle: any object with two entries whose names decode to the same string. */
function hasDuplicate(t: Tree): boolean {
  if (t.kind === 'leaf') return false;
  if (t.kind === 'arr') return t.items.some(hasDuplicate);
  const names = t.entries.map(([k]) => k.map(([c]) => c).join(''));
  return new Set(names).size !== names.length || t.entries.some(([, v]) => hasDuplicate(v));
}

function strictOutcome(text: string, maxDepth = 1000): { ok: true; value: unknown } | { ok: false; kind: string } {
  try {
    return { ok: true, value: parseStrictJson(text, maxDepth) };
  } catch (err) {
    if (err instanceof StrictJsonError) return { ok: false, kind: err.kind };
    throw err;
  }
}

/**
 * The reference: JSON.parse decides validity, but the value is read independently. V8's
 * JSON.parse can misread an escaped member name after an earlier parse saw a similar one
 * (nodejs/node#63785), so it cannot be the oracle for values. Here each string token is read
 * by JSON.parse on its own, as a top-level string (not a member name), and objects are built
 * with defineProperty, as JSON.parse builds them.
 */
function referenceValue(text: string): unknown {
  const token = /[ \t\n\r]*(?:([{}[\],:])|("(?:[^"\\]|\\.)*")|(true|false|null)|(-?[0-9][0-9.eE+-]*))/y;
  const next = (): RegExpExecArray => {
    const m = token.exec(text);
    if (!m) throw new Error(`reference reader lost at ${token.lastIndex}`);
    return m;
  };
  const value = (m: RegExpExecArray): unknown => {
    if (m[2] !== undefined) return JSON.parse(m[2]) as string;
    if (m[3] !== undefined) return JSON.parse(m[3]) as unknown;
    if (m[4] !== undefined) return Number(m[4]);
    if (m[1] === '[') {
      const items: unknown[] = [];
      for (let t = next(); t[1] !== ']'; t = next()) {
        if (t[1] === ',') t = next();
        items.push(value(t));
      }
      return items;
    }
    const object: Record<string, unknown> = {};
    for (let t = next(); t[1] !== '}'; t = next()) {
      if (t[1] === ',') t = next();
      const name = JSON.parse(t[2]!) as string;
      next(); // :
      Object.defineProperty(object, name, { value: value(next()), writable: true, enumerable: true, configurable: true });
    }
    return object;
  };
  return value(next());
}

function parseOutcome(text: string): { ok: true; value: unknown } | { ok: false } {
  try {
    JSON.parse(text);
  } catch {
    return { ok: false };
  }
  return { ok: true, value: referenceValue(text) };
}

describe('strict JSON scanner (property tests against JSON.parse)', () => {
  it('agrees with JSON.parse on every JSON.stringify output', () => {
    fc.assert(fc.property(fc.jsonValue(), (value) => {
      const text = JSON.stringify(value);
      expect(parseStrictJson(text, 1000)).toEqual(referenceValue(text));
    }), { numRuns: 500 });
  });

  it('rejects exactly the texts with duplicate names, and otherwise returns what JSON.parse does', () => {
    fc.assert(fc.property(treeArb, fc.constantFrom('', ' ', '\n\t ', '\r\n'), (t, ws) => {
      const text = `${ws}${write(t, ws)}${ws}`;
      const reference = parseOutcome(text);
      expect(reference.ok).toBe(true); // the generator only writes valid JSON
      const strict = strictOutcome(text);
      if (hasDuplicate(t)) {
        expect(strict).toEqual({ ok: false, kind: 'duplicate_member' });
      } else {
        expect(strict.ok).toBe(true);
        if (strict.ok && reference.ok) expect(strict.value).toEqual(reference.value);
      }
    }), { numRuns: 2000 });
  });

  it('accepts and rejects arbitrary (mutated) texts exactly like JSON.parse, modulo duplicates', () => {
    const mutated = fc.tuple(fc.jsonValue(), fc.nat(), fc.nat({ max: 3 }), fc.string({ maxLength: 2 }))
      .map(([value, at, cut, insert]) => {
        const text = JSON.stringify(value);
        const i = text.length === 0 ? 0 : at % text.length;
        return text.slice(0, i) + insert + text.slice(i + cut);
      });
    const grammarChars = fc.string({ unit: fc.constantFrom(...'{}[],:"\\/-+.0123456789eEtrufalsn ubfnrt\t\n\r x'.split('')), maxLength: 30 });
    fc.assert(fc.property(fc.oneof(mutated, grammarChars, fc.string(), fc.string({ unit: 'binary' })), (text) => {
      const reference = parseOutcome(text);
      const strict = strictOutcome(text);
      if (!reference.ok) {
        expect(strict).toEqual({ ok: false, kind: 'syntax' });
      } else if (strict.ok) {
        expect(strict.value).toEqual(reference.value);
      } else {
        // JSON.parse accepted it: the only acceptable reason to refuse is a real duplicate.
        expect(strict.kind).toBe('duplicate_member');
      }
    }), { numRuns: 5000 });
  });

  it('reads escaped member names as written, even after another text primed JSON.parse to misread them', () => {
    // Earlier texts with names ending in a backslash (anyone can send one, e.g. as a token header).
    JSON.parse('{"k":1,"au\\\\":1}');
    JSON.parse('{"iss":"x","sub":"y","ma\\\\":1}');
    JSON.parse('[{"x":1,"\\u005C":2}]');
    expect(parseStrictJson('{"k":1,"au\\u0064":"writ"}')).toEqual({ k: 1, aud: 'writ' });
    expect(parseStrictJson('{"iss":"x","sub":"y","ma\\u0079_act":{"sub":"planner"}}')).toEqual({ iss: 'x', sub: 'y', may_act: { sub: 'planner' } });
    expect(parseStrictJson('[{"x":1,"\\u0061":2},{"x":1,"\\u002F":3}]')).toEqual([{ x: 1, a: 2 }, { x: 1, '/': 3 }]);
    // What the builder makes is what JSON.parse makes of the same value: plain own data members.
    const built = parseStrictJson('{"\\u005f_proto__":{"admin":true},"n":-0,"big":1e400,"s":"\\ud800"}') as Record<string, unknown>;
    expect(Object.getPrototypeOf(built)).toBe(Object.prototype);
    expect(Object.getOwnPropertyDescriptor(built, '__proto__')).toEqual({ value: { admin: true }, writable: true, enumerable: true, configurable: true });
    expect(Object.is(built.n, -0)).toBe(true);
    expect(built.big).toBe(Infinity);
    expect(built.s).toBe('\ud800');
  });

  it('handles escapes, surrogates and numbers exactly like JSON.parse', () => {
    const samples = [
      '"\\ud83d\\ude00"', '"\\uD800"', '"\\udc00x"', '"\\u00e9"', '"\\b\\f\\n\\r\\t\\/\\\\\\""',
      '-0', '0.5e-3', '1E+2', '-1.0', '1e400', '123456789012345678901234567890',
      '01', '1.', '.5', '+1', '-', '1e', '0x10', '"\\x41"', '"\\u12"', '"\u0001"', '"\u007f"', 'tru', 'nulll',
      '{"a":1}x', ' [ ] ', '{"":1,"":2}', '{"\\u0000":1,"\\u0000":2}', '{"\\ud83d\\ude00":1,"😀":2}',
    ];
    for (const text of samples) {
      const reference = parseOutcome(text);
      const strict = strictOutcome(text);
      if (reference.ok && strict.ok) expect(strict.value).toEqual(reference.value);
      else if (reference.ok) expect(strict).toEqual({ ok: false, kind: 'duplicate_member' });
      else expect(strict.ok).toBe(false);
    }
    expect(strictOutcome('{"\\ud83d\\ude00":1,"😀":2}')).toEqual({ ok: false, kind: 'duplicate_member' });
  });

  it('refuses nesting deeper than the cap without recursing further', () => {
    expect(strictOutcome('['.repeat(100000), 32)).toEqual({ ok: false, kind: 'too_deep' });
    expect(strictOutcome(`${'['.repeat(32)}${']'.repeat(32)}`, 32).ok).toBe(true);
  });

  it('reads large and adversarial inputs whole (how its time grows: npm run bench, bench/strict-json.ts)', () => {
    const members = Array.from({ length: 100_000 }, (_, i) => `"k${i}":${i}`).join(',');
    const escapes = `"${'\\u0061'.repeat(200_000)}"`;
    const longKeys = `{${Array.from({ length: 2000 }, (_, i) => `"${'a'.repeat(500)}${i}":0`).join(',')}}`;
    const object = strictOutcome(`{${members}}`);
    expect(object.ok && Object.keys(object.value as object).length).toBe(100_000);
    expect(strictOutcome(escapes)).toEqual({ ok: true, value: 'a'.repeat(200_000) });
    const keys = strictOutcome(longKeys);
    expect(keys.ok && Object.keys(keys.value as object).length).toBe(2000);
    // One repeated member at the end of the long keys is still found.
    expect(strictOutcome(`${longKeys.slice(0, -1)},"${'a'.repeat(500)}0":1}`)).toEqual({ ok: false, kind: 'duplicate_member' });
  });
});
