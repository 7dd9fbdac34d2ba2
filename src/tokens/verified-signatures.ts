import type { VerificationKey } from './jwks-cache.ts';

/**
 * Signatures already verified, by exact token string.
 *
 * An agent presents the same subject token for tool after tool, and checking its ECDSA or RSA
 * signature is the largest single cost of an exchange. Whether a signature verifies is a pure
 * function of the signed bytes, the signature and the key, so the answer is kept — and used
 * only for the very same token string, verified with the very same key object (a key set that
 * is refetched or changed by policy yields new key objects, so nothing verified under a key
 * that has since gone is ever reused) under the same verification options (algorithms,
 * issuer, audience, required claims, leeway).
 *
 * Only the signature and the registered claims jose compares are skipped on a hit; the caller
 * re-checks the times against the current clock (`stillInTime`) and runs every other check
 * (structure, alg and typ policy, Writ's claim rules, revocation) as on a miss. Only successes
 * are kept, until the token's `exp`; the oldest go first when it is full.
 */
export class VerifiedSignatures {
  private readonly entries = new Map<string, { key: VerificationKey; options: string; exp: number }>();
  private readonly max: number;
  hits = 0;
  misses = 0;

  constructor(max = 10_000) {
    this.max = max;
  }

  get size(): number {
    return this.entries.size;
  }

  /** Whether `token` verified under this key and these options, and has not expired (epoch seconds). */
  has(token: string, key: VerificationKey, options: string, now: number): boolean {
    const entry = this.entries.get(token);
    if (entry === undefined) {
      this.misses += 1;
      return false;
    }
    if (entry.exp <= now) {
      this.entries.delete(token);
      this.misses += 1;
      return false;
    }
    if (entry.key !== key || entry.options !== options) {
      this.misses += 1;
      return false;
    }
    this.hits += 1;
    return true;
  }

  add(token: string, key: VerificationKey, options: string, exp: number): void {
    if (!this.entries.has(token) && this.entries.size >= this.max) {
      const oldest = this.entries.keys().next();
      if (!oldest.done) this.entries.delete(oldest.value);
    }
    this.entries.set(token, { key, options, exp });
  }
}
