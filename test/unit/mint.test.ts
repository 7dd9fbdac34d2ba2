import { SignJWT, decodeProtectedHeader, exportJWK, generateKeyPair, jwtVerify } from 'jose';
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

  it('never reuses bytes of the one before it (its pool is read in whole, separate slices)', () => {
    let previous = Buffer.from(newJti(), 'base64url');
    for (let i = 0; i < 2_000; i += 1) {
      const next = Buffer.from(newJti(), 'base64url');
      // A slice shifted by s bytes would repeat 18 - s of them; 8 or more repeated by chance is ~2^-64.
      for (let s = 1; s <= 10; s += 1) expect(previous.subarray(s).equals(next.subarray(0, 18 - s))).toBe(false);
      previous = next;
    }
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
    // Byte for byte what jose's SignJWT made of the same claims, up to the signature.
    const viaSignJwt = await new SignJWT({ ...minted.claims }).setProtectedHeader({ alg: 'ES256', typ: 'at+jwt', kid: 'k1' }).sign(privateKey);
    expect(minted.jwt.split('.').slice(0, 2)).toEqual(viaSignJwt.split('.').slice(0, 2));
  });

  it('leaves task_id out when the grant has none, and refuses a lifetime that is not a finite, positive span', async () => {
    const { privateKey } = await generateKeyPair('ES256', { extractable: true });
    const key = { kid: 'k1', alg: 'ES256', privateKey } as unknown as SigningKey;
    const keys = { active: new Map([['ES256', key]]), byKid: new Map(), publicJwks: { keys: [] } } as unknown as SigningKeys;
    const now = Math.floor(Date.now() / 1000);
    const grant = {
      audience: 'https://payments.example.com', scopes: ['payment.read'], iat: now, exp: now + 60, sub: 'alice',
      subId: { format: 'iss_sub', iss: 'https://idp.example.com', sub: 'alice' }, act: { sub: 'planner-agent' }, taskId: null, signingAlg: 'ES256',
    } as unknown as Grant;
    const minted = await mint(grant, 'https://writ.example.com', 'planner-agent', keys);
    expect(JSON.parse(Buffer.from(minted.jwt.split('.')[1]!, 'base64url').toString())).not.toHaveProperty('task_id');
    await expect(mint({ ...grant, exp: Number.NaN }, 'https://writ.example.com', 'planner-agent', keys)).rejects.toThrow(/refusing to sign/);
    await expect(mint({ ...grant, exp: now }, 'https://writ.example.com', 'planner-agent', keys)).rejects.toThrow(/refusing to sign/);
  });
});
