import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { deriveKeys, hashClientSecret, open, seal, verifyClientSecret } from '../../src/tokens/kek.ts';

describe('keys derived from WRIT_KEK', () => {
  const kek = randomBytes(32);
  const keys = deriveKeys(kek);

  it('derives a different key for each purpose, deterministically', () => {
    const all = Object.values(keys).map((k) => k.toString('hex'));
    expect(new Set(all).size).toBe(all.length);
    expect(deriveKeys(kek).keyEncryption.equals(keys.keyEncryption)).toBe(true);
    expect(deriveKeys(randomBytes(32)).keyEncryption.equals(keys.keyEncryption)).toBe(false);
  });

  it('seals signing keys so that only the same KEK and row can open them', () => {
    const sealed = seal(keys.keyEncryption, '{"d":"secret"}', 'signing-key:a');
    expect(sealed).not.toContain('secret');
    expect(open(keys.keyEncryption, sealed, 'signing-key:a')).toBe('{"d":"secret"}');
    expect(() => open(keys.keyEncryption, sealed, 'signing-key:b')).toThrow();
    expect(() => open(deriveKeys(randomBytes(32)).keyEncryption, sealed, 'signing-key:a')).toThrow();
    const [v, iv, body, tag] = sealed.split('.');
    const flipped = Buffer.from(body!, 'base64url');
    flipped[0]! ^= 1;
    expect(() => open(keys.keyEncryption, [v, iv, flipped.toString('base64url'), tag].join('.'), 'signing-key:a')).toThrow();
  });

  it('hashes client secrets bound to the client, and verifies them', () => {
    const secret = randomBytes(32).toString('base64url');
    const stored = hashClientSecret(keys.clientSecret, 'planner-agent', secret);
    expect(stored).not.toContain(secret);
    expect(verifyClientSecret(keys.clientSecret, 'planner-agent', secret, stored)).toBe(true);
    expect(verifyClientSecret(keys.clientSecret, 'planner-agent', `${secret}x`, stored)).toBe(false);
    expect(verifyClientSecret(keys.clientSecret, 'executor-agent', secret, stored)).toBe(false);
    expect(verifyClientSecret(deriveKeys(randomBytes(32)).clientSecret, 'planner-agent', secret, stored)).toBe(false);
    expect(verifyClientSecret(keys.clientSecret, 'planner-agent', secret, stored.slice(1))).toBe(false);
  });
});
