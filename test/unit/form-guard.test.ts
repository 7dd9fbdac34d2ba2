import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { countParameters } from '../../src/http/form-guard.ts';

describe('countParameters', () => {
  it('counts the non-empty &-separated parts of any body, as splitting it would', () => {
    const body = fc.array(fc.oneof(fc.constant('&'), fc.constant('='), fc.string({ maxLength: 6 }), fc.string({ unit: 'binary', maxLength: 3 })), { maxLength: 30 }).map((parts) => parts.join(''));
    fc.assert(fc.property(body, (text) => {
      const bytes = Buffer.from(text, 'utf8');
      expect(countParameters(bytes)).toBe(bytes.toString('latin1').split('&').filter((p) => p !== '').length);
    }), { numRuns: 5_000 });
  });

  it('counts as the form guard must: empty parts are not parameters', () => {
    expect(countParameters(Buffer.from(''))).toBe(0);
    expect(countParameters(Buffer.from('&&&'))).toBe(0);
    expect(countParameters(Buffer.from('a=1'))).toBe(1);
    expect(countParameters(Buffer.from('&a=1&&b&'))).toBe(2);
    expect(countParameters(Buffer.from(Array.from({ length: 201 }, (_, i) => `x${i}=1`).join('&')))).toBe(201);
  });
});
