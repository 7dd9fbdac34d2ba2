import { describe, expect, it } from 'vitest';
import { VerifiedTokenCache } from '../../src/http/introspection.ts';
import type { WritTokenClaims } from '../../src/tokens/verify-jwt.ts';

const claims = (jti: string, exp: number): WritTokenClaims => ({
  iss: 'https://writ.example.com', sub: 'alice', sub_id: { format: 'iss_sub', iss: 'https://idp.example.com', sub: 'alice' },
  aud: 'https://payments.example.com', client_id: 'executor-agent', scope: 'payment.read', iat: exp - 60, exp, jti,
  act: { sub: 'executor-agent' }, raw: {},
});

describe('verified-token cache for introspection', () => {
  it('returns claims only for the exact token string and only until the token expires', () => {
    const cache = new VerifiedTokenCache();
    cache.set('a.b.c', claims('j1', 1000), cache.generation);
    expect(cache.get('a.b.c', 999)?.jti).toBe('j1');
    expect(cache.get('a.b.c ', 999)).toBeUndefined();
    expect(cache.get('a.b.C', 999)).toBeUndefined();
    expect(cache.get('a.b.c', 1000)).toBeUndefined();
    // Expired entries are dropped, not revived.
    expect(cache.get('a.b.c', 10)).toBeUndefined();
  });

  it('stays within its size, dropping the oldest first', () => {
    const cache = new VerifiedTokenCache(2);
    cache.set('t1', claims('j1', 1000), cache.generation);
    cache.set('t2', claims('j2', 1000), cache.generation);
    cache.set('t3', claims('j3', 1000), cache.generation);
    expect(cache.get('t1', 0)).toBeUndefined();
    expect(cache.get('t2', 0)?.jti).toBe('j2');
    expect(cache.get('t3', 0)?.jti).toBe('j3');
  });

  it('drops everything when the key set changes, and never keeps a verification that began before', () => {
    const cache = new VerifiedTokenCache();
    cache.set('t1', claims('j1', 1000), cache.generation);
    const before = cache.generation;
    cache.clear();
    expect(cache.get('t1', 0)).toBeUndefined();
    // A verification under way during the change finishes afterwards: it is not cached.
    cache.set('t2', claims('j2', 1000), before);
    expect(cache.get('t2', 0)).toBeUndefined();
    cache.set('t2', claims('j2', 1000), cache.generation);
    expect(cache.get('t2', 0)?.jti).toBe('j2');
  });
});
