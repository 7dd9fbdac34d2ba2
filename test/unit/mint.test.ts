import { decodeProtectedHeader, exportJWK, generateKeyPair, jwtVerify } from 'jose';
import { describe, expect, it } from 'vitest';
import { mint, newJti } from '../../src/exchange/mint.ts';
import type { Grant } from '../../src/exchange/types.ts';
import type { SigningKey, SigningKeys } from '../../src/tokens/signing-keys.ts';

describe('newJti', () => {
  it('gives 144 random bits each time, never the same twice, across many refills of its pool', () => {
    const seen = new Set<string>();
    for (let i = 0; i < 20_000; i += 1) {
      const jti = newJti();
      expect(jti).toMatch(/^[A-Za-z0-9_-]{24}$/);
      expect(Buffer.from(jti, 'base64url')).toHaveLength(18);
      seen.add(jti);
    }
    expect(seen.size).toBe(20_000);
  });
});

describe('mint', () => {
  it('signs the RFC 9068 claim set with the active key, typ at+jwt and its kid', async () => {
    const { privateKey, publicKey } = await generateKeyPair('ES256', { extractable: true });
    const key: SigningKey = {
      kid: 'k1', alg: 'ES256', privateKey, publicKey,
      publicJwk: await exportJWK(publicKey), privateJwk: await exportJWK(privateKey),
    };
    const keys: SigningKeys = { active: new Map([['ES256', key]]), byKid: new Map([['k1', key]]), publicJwks: { keys: [key.publicJwk] } };
    const now = Math.floor(Date.now() / 1000);
    const grant = {
      audience: 'https://payments.example.com', scopes: ['payment.read', 'payment.list'], iat: now, exp: now + 60,
      sub: 'alice', subId: { format: 'iss_sub', iss: 'https://idp.example.com', sub: 'alice' },
      act: { sub: 'executor-agent', act: { sub: 'planner-agent' } }, taskId: 'invoice-run-42', signingAlg: 'ES256',
    } as unknown as Grant;

    const minted = await mint(grant, 'https://writ.example.com', 'executor-agent', keys);

    expect(minted.kid).toBe('k1');
    expect(decodeProtectedHeader(minted.jwt)).toEqual({ alg: 'ES256', typ: 'at+jwt', kid: 'k1' });
    const { payload } = await jwtVerify(minted.jwt, publicKey, {
      algorithms: ['ES256'], issuer: 'https://writ.example.com', audience: 'https://payments.example.com', typ: 'at+jwt',
    });
    expect(payload).toEqual({ ...minted.claims });
    expect(payload).toMatchObject({
      sub: 'alice', client_id: 'executor-agent', scope: 'payment.read payment.list', iat: now, exp: now + 60,
      act: { sub: 'executor-agent', act: { sub: 'planner-agent' } }, task_id: 'invoice-run-42',
    });
    expect(minted.claims.jti).toMatch(/^[A-Za-z0-9_-]{24}$/);
  });
});
