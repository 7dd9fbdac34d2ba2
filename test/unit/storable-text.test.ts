import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { storableJson, storableJsonText, storableText } from '../../src/store/text.ts';

/** Strings as requests and upstream tokens can carry them: any UTF-16 code units, NUL and lone surrogates included. */
const anyString = fc.string({ unit: fc.oneof(fc.constantFrom('\u0000', '\ud800', '\udbff', '\udc00', '\udfff', '\\', 'u', '"'), fc.string({ unit: 'binary', minLength: 1, maxLength: 1 }), fc.integer({ min: 0, max: 0xffff }).map((c) => String.fromCharCode(c))) });
const anyJson = fc.letrec<{ value: unknown }>((tie) => ({
  value: fc.oneof(
    { depthSize: 'small' },
    anyString,
    fc.integer(),
    fc.boolean(),
    fc.constant(null),
    fc.array(tie('value'), { maxLength: 4 }),
    fc.dictionary(fc.oneof(anyString, fc.constant('__proto__')), tie('value'), { maxKeys: 4 }),
  ),
})).value;

function strings(value: unknown, out: string[] = []): string[] {
  if (typeof value === 'string') out.push(value);
  else if (Array.isArray(value)) for (const v of value) strings(v, out);
  else if (value && typeof value === 'object') for (const [k, v] of Object.entries(value)) { out.push(k); strings(v, out); }
  return out;
}

describe('storableJsonText', () => {
  it('is JSON.stringify(storableJson(value)) for any JSON value', () => {
    fc.assert(fc.property(anyJson, (value) => {
      expect(storableJsonText(value)).toBe(JSON.stringify(storableJson(value)));
    }), { numRuns: 2_000 });
  });

  it('never yields a string PostgreSQL cannot store', () => {
    fc.assert(fc.property(anyJson, (value) => {
      for (const s of strings(JSON.parse(storableJsonText(value)))) {
        expect(s.isWellFormed()).toBe(true);
        expect(s.includes('\u0000')).toBe(false);
      }
    }), { numRuns: 2_000 });
  });

  it('keeps a "__proto__" member, on the fast path and the copying one alike', () => {
    const parsed = JSON.parse('{"__proto__":{"admin":true},"sub":"alice"}') as Record<string, unknown>;
    expect(storableJsonText(parsed)).toBe('{"__proto__":{"admin":true},"sub":"alice"}');
    const odd = JSON.parse('{"__proto__":{"admin":true},"sub":"a\\u0000"}') as Record<string, unknown>;
    expect(storableJsonText(odd)).toBe('{"__proto__":{"admin":true},"sub":"a\uFFFD"}');
    expect(Object.getPrototypeOf(storableJson(odd))).toBe(Object.prototype);
  });

  it('leaves well-formed text as it is, an escaped backslash before "u0000" included', () => {
    const value = { path: 'C:\\u0000\\ud800', emoji: '😀', text: 'plain' };
    expect(storableJsonText(value)).toBe(JSON.stringify(value));
    expect(storableJsonText({ bad: 'a\u0000b', lone: '\ud800' })).toBe('{"bad":"a\uFFFDb","lone":"\uFFFD"}');
    expect(storableText('\udc00x\u0000')).toBe('\uFFFDx\uFFFD');
  });
});
