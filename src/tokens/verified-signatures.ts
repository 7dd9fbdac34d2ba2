import type { VerificationKey } from './jwks-cache.ts';

/**
 * Signatures already verified, by exact token string.
 *
 * An agent presents the same subject token for tool after tool, and checking its ECDSA or RSA
 * signature is the largest single cost of an exchange. Whether a signature verifies is a pure
 * function of the signed bytes, the signature and the key, so the answer is kept — and used
 * only for the very same token string, verified with the very same key object (a key that
 * changed or left its key set, by a refetch or by policy, is another object or none, so
 * nothing verified under it is reused) under the same verification options (algorithms,
 * issuer, audience, required claims, leeway).
 *
 * Only the signature and the registered claims jose compares are skipped on a hit; the caller
 * re-checks the times against the current clock and runs every other check (structure, alg and
 * typ policy, Writ's claim rules, revocation) as on a miss. Only tokens that passed every check
 * are kept, until `exp` plus the leeway, within a count and a total length (the least recently
 * used go first).
 */
export class VerifiedSignatures {
  private readonly entries = new Map<string, { key: VerificationKey; options: string; until: number }>();
  private readonly maxEntries: number;
  private readonly maxChars: number;
  private chars = 0;
  hits = 0;
  misses = 0;

  constructor(options: { maxEntries?: number; maxChars?: number } = {}) {
    this.maxEntries = options.maxEntries ?? 10_000;
    // Tokens may be up to 8 KiB; typical ones are under 1 KiB.
    this.maxChars = options.maxChars ?? 16 * 1024 * 1024;
  }

  get size(): number {
    return this.entries.size;
  }

  /** Whether `token` verified under this key and these options and is still kept (epoch seconds). Counts nothing. */
  has(token: string, key: VerificationKey, options: string, now: number): boolean {
    const entry = this.entries.get(token);
    if (entry === undefined) return false;
    if (entry.until <= now) {
      this.remove(token);
      return false;
    }
    if (entry.key !== key || entry.options !== options) return false;
    // Most recently used last: Map keeps insertion order.
    this.entries.delete(token);
    this.entries.set(token, entry);
    return true;
  }

  /** Keeps a token that passed every check until `until` (epoch seconds: its exp plus the leeway). */
  add(token: string, key: VerificationKey, options: string, until: number): void {
    this.remove(token);
    if (token.length > this.maxChars) return;
    while (this.entries.size >= this.maxEntries || this.chars + token.length > this.maxChars) {
      const oldest = this.entries.keys().next();
      if (oldest.done) break;
      this.remove(oldest.value);
    }
    this.entries.set(token, { key, options, until });
    this.chars += token.length;
  }

  private remove(token: string): void {
    if (this.entries.delete(token)) this.chars -= token.length;
  }
}
