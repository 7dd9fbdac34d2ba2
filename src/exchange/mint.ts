import { randomFillSync } from 'node:crypto';
import { CompactSign } from 'jose';
import type { SigningKeys } from '../tokens/signing-keys.ts';
import { ExchangeDenied } from './reasons.ts';
import type { ActClaim, Grant, SubIdClaim } from './types.ts';

/** The RFC 9068 claim set of docs/DESIGN.md §5. */
export interface AccessTokenClaims {
  iss: string;
  sub: string;
  aud: string;
  iat: number;
  exp: number;
  jti: string;
  client_id: string;
  scope: string;
  sub_id: SubIdClaim;
  act: ActClaim;
  task_id?: string;
}

export interface MintedToken {
  jwt: string;
  claims: AccessTokenClaims;
  kid: string;
}

const JTI_BYTES = 18;
/**
 * CSPRNG output for token ids, drawn a few kilobytes at a time: one call into the kernel's
 * generator cost ~16 µs per exchange when every jti made its own. Each byte is used once.
 */
const jtiPool = Buffer.alloc(JTI_BYTES * 256);
let jtiOffset = jtiPool.length;

/** 144 random bits, base64url: unique and unguessable. */
export function newJti(): string {
  if (jtiOffset + JTI_BYTES > jtiPool.length) {
    randomFillSync(jtiPool);
    jtiOffset = 0;
  }
  const jti = jtiPool.toString('base64url', jtiOffset, jtiOffset + JTI_BYTES);
  jtiOffset += JTI_BYTES;
  return jti;
}

export function buildClaims(grant: Grant, issuer: string, clientId: string, jti: string): AccessTokenClaims {
  return {
    iss: issuer,
    sub: grant.sub,
    aud: grant.audience,
    iat: grant.iat,
    exp: grant.exp,
    jti,
    client_id: clientId,
    scope: grant.scopes.join(' '),
    sub_id: grant.subId,
    act: grant.act,
    ...(grant.taskId ? { task_id: grant.taskId } : {}),
  };
}

const encoder = new TextEncoder();

/** Signs with the audience's algorithm; header `typ: at+jwt` (RFC 9068 §2.1). */
export async function mint(grant: Grant, issuer: string, clientId: string, keys: SigningKeys): Promise<MintedToken> {
  const key = keys.active.get(grant.signingAlg);
  // Every algorithm has a key from the first start on; this instance may still fail to open one
  // (sealed under another WRIT_KEK): retry elsewhere, while /readyz reports it.
  if (!key) throw new ExchangeDenied('signing_key_unavailable', `no ${grant.signingAlg} signing key this instance can open`);
  const claims = buildClaims(grant, issuer, clientId, newJti());
  // JSON would write a NaN lifetime as null, a token that never expires: refuse it here too.
  if (!Number.isFinite(claims.iat) || !Number.isFinite(claims.exp) || claims.exp <= claims.iat) {
    throw new Error(`refusing to sign a token with iat ${claims.iat} and exp ${claims.exp}`);
  }
  // The claims are built and typed here, so jose's JWT layer (SignJWT) has nothing to check;
  // it would also deep-copy them (structuredClone) and keep the copy in a WeakMap per token.
  const jwt = await new CompactSign(encoder.encode(JSON.stringify(claims)))
    .setProtectedHeader({ alg: key.alg, typ: 'at+jwt', kid: key.kid })
    .sign(key.privateKey);
  return { jwt, claims, kid: key.kid };
}
