import { randomUUID } from 'node:crypto';
import { exportJWK, generateKeyPair, importJWK, type CryptoKey, type JWK } from 'jose';
import type { Knex } from 'knex';
import type { SigningAlg } from '../policy/model.ts';
import { open, seal } from './kek.ts';

export const SIGNING_ALGS: readonly SigningAlg[] = ['ES256', 'RS256', 'PS256'];

export interface SigningKey {
  kid: string;
  alg: SigningAlg;
  privateKey: CryptoKey;
  publicKey: CryptoKey;
  publicJwk: JWK;
  privateJwk: JWK;
}

export interface SigningKeys {
  /** The active key for each algorithm: each key is used with exactly one algorithm (RFC 8725 §3.1). */
  active: ReadonlyMap<SigningAlg, SigningKey>;
  /** Every published key (active and recently retired), looked up by kid to verify Writ's tokens. */
  byKid: ReadonlyMap<string, SigningKey>;
  publicJwks: { keys: JWK[] };
}

interface KeyRow {
  kid: string;
  alg: string;
  public_jwk: JWK;
  private_jwk_enc: string;
  status: string;
}

async function generate(alg: SigningAlg): Promise<{ kid: string; publicJwk: JWK; privateJwk: JWK }> {
  const { publicKey, privateKey } = await generateKeyPair(alg, { extractable: true, modulusLength: 2048 });
  const kid = `${alg.toLowerCase()}-${randomUUID()}`;
  const publicJwk = { ...(await exportJWK(publicKey)), kid, alg, use: 'sig' };
  const privateJwk = { ...(await exportJWK(privateKey)), kid, alg, use: 'sig' };
  return { kid, publicJwk, privateJwk };
}

async function hydrate(row: KeyRow, encryptionKey: Buffer): Promise<SigningKey> {
  const alg = row.alg as SigningAlg;
  const privateJwk = JSON.parse(open(encryptionKey, row.private_jwk_enc, `signing-key:${row.kid}`)) as JWK;
  return {
    kid: row.kid,
    alg,
    privateKey: await importJWK(privateJwk, alg) as CryptoKey,
    publicKey: await importJWK(row.public_jwk, alg) as CryptoKey,
    publicJwk: row.public_jwk,
    privateJwk,
  };
}

/**
 * Loads the signing keys, generating (once, across every instance sharing the database) an
 * active key for each algorithm that has none. Private parts are stored sealed under the
 * key-encryption key derived from WRIT_KEK.
 */
export async function ensureSigningKeys(knex: Knex, encryptionKey: Buffer): Promise<SigningKeys> {
  await knex.transaction(async (trx) => {
    // Serialise key generation between instances starting together.
    await trx.raw('SELECT pg_advisory_xact_lock(7369657)');
    const present = new Set((await trx('signing_keys').where({ status: 'active' }).select('alg')).map((r: { alg: string }) => r.alg));
    for (const alg of SIGNING_ALGS) {
      if (present.has(alg)) continue;
      const key = await generate(alg);
      await trx('signing_keys').insert({
        kid: key.kid,
        alg,
        public_jwk: JSON.stringify(key.publicJwk),
        private_jwk_enc: seal(encryptionKey, JSON.stringify(key.privateJwk), `signing-key:${key.kid}`),
        status: 'active',
      });
    }
  });
  const rows = await knex<KeyRow>('signing_keys').whereIn('status', ['active', 'retired']).orderBy('created_at', 'asc');
  const byKid = new Map<string, SigningKey>();
  const active = new Map<SigningAlg, SigningKey>();
  for (const row of rows) {
    const key = await hydrate(row, encryptionKey);
    byKid.set(key.kid, key);
    if (row.status === 'active') active.set(key.alg, key);
  }
  // ES256 first: oidc-provider picks the first matching key, and ES256 is Writ's default.
  const ordered = [...byKid.values()].sort((a, b) => SIGNING_ALGS.indexOf(a.alg) - SIGNING_ALGS.indexOf(b.alg));
  return { active, byKid, publicJwks: { keys: ordered.map((k) => k.publicJwk) } };
}
