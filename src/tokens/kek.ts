import { createCipheriv, createDecipheriv, createHmac, createSecretKey, hkdfSync, randomBytes, timingSafeEqual, type KeyObject } from 'node:crypto';

/**
 * Keys derived from WRIT_KEK, one per purpose (HKDF-SHA-256, RFC 5869), so that a key used to
 * encrypt signing keys is never also used to hash client secrets or sign audit checkpoints.
 */
export interface DerivedKeys {
  keyEncryption: Buffer;
  clientSecret: Buffer;
  auditCheckpoint: Buffer;
  localAdmin: Buffer;
}

function derive(kek: Buffer, purpose: string): Buffer {
  return Buffer.from(hkdfSync('sha256', kek, Buffer.alloc(0), `writ/v1/${purpose}`, 32));
}

export function deriveKeys(kek: Buffer): DerivedKeys {
  return {
    keyEncryption: derive(kek, 'key-encryption'),
    clientSecret: derive(kek, 'client-secret'),
    auditCheckpoint: derive(kek, 'audit-checkpoint'),
    localAdmin: derive(kek, 'local-admin'),
  };
}

/** AES-256-GCM; the associated data binds a ciphertext to its row (e.g. the key id). */
export function seal(key: Buffer, plaintext: string, aad: string): string {
  const iv = randomBytes(12);
  const cipher = createCipheriv('aes-256-gcm', key, iv);
  cipher.setAAD(Buffer.from(aad));
  const body = Buffer.concat([cipher.update(plaintext, 'utf8'), cipher.final()]);
  return ['v1', iv.toString('base64url'), body.toString('base64url'), cipher.getAuthTag().toString('base64url')].join('.');
}

export function open(key: Buffer, sealed: string, aad: string): string {
  const [version, iv, body, tag] = sealed.split('.');
  if (version !== 'v1' || !iv || body === undefined || !tag) throw new Error('unrecognised sealed value');
  const decipher = createDecipheriv('aes-256-gcm', key, Buffer.from(iv, 'base64url'));
  decipher.setAAD(Buffer.from(aad));
  decipher.setAuthTag(Buffer.from(tag, 'base64url'));
  return Buffer.concat([decipher.update(Buffer.from(body, 'base64url')), decipher.final()]).toString('utf8');
}

/**
 * Client secrets are ≥ 32 random characters, so a keyed HMAC is as strong as a slow hash
 * against guessing and cheap enough for thousands of authentications a second. The client id
 * is bound in so a stored hash cannot be moved to another client.
 */
const hmacKeys = new WeakMap<Buffer, KeyObject>();

/** A KeyObject per key: HMAC with a raw Buffer re-imports the key on every call, several times slower. */
function hmacKey(key: Buffer): KeyObject {
  let k = hmacKeys.get(key);
  if (!k) {
    k = createSecretKey(key);
    hmacKeys.set(key, k);
  }
  return k;
}

export function hashClientSecret(key: Buffer, clientId: string, secret: string): string {
  return createHmac('sha256', hmacKey(key)).update(clientId).update('\0').update(secret).digest('base64url');
}

export function verifyClientSecret(key: Buffer, clientId: string, secret: string, stored: string): boolean {
  const presented = Buffer.from(hashClientSecret(key, clientId, secret));
  const expected = Buffer.from(stored);
  return presented.length === expected.length && timingSafeEqual(presented, expected);
}
