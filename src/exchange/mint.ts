import { randomBytes } from 'node:crypto';
import { SignJWT } from 'jose';
import type { SigningKeys } from '../tokens/signing-keys.ts';
import type { ActClaim, Grant, SubIdClaim } from './types.ts';

/** The RFC 9068 claim set of DESIGN.md §5. */
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

export function newJti(): string {
  return randomBytes(18).toString('base64url');
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

/** Signs with the audience's algorithm; header `typ: at+jwt` (RFC 9068 §2.1). */
export async function mint(grant: Grant, issuer: string, clientId: string, keys: SigningKeys): Promise<MintedToken> {
  const key = keys.active.get(grant.signingAlg);
  if (!key) throw new Error(`no active ${grant.signingAlg} signing key`);
  const claims = buildClaims(grant, issuer, clientId, newJti());
  const jwt = await new SignJWT({ ...claims })
    .setProtectedHeader({ alg: key.alg, typ: 'at+jwt', kid: key.kid })
    .sign(key.privateKey);
  return { jwt, claims, kid: key.kid };
}
