import type { InspectedJws } from './jws-structure.ts';
import type { VerificationKey } from './jwks-cache.ts';

interface Entry {
  /** The token, copied: the caller's string may be a slice of a whole request body. */
  token: string;
  /** Its header and claims, frozen: shared by every request that presents this token. */
  inspected: InspectedJws;
  key: VerificationKey;
  options: string;
  until: number;
  /** Used since it was last (re)inserted: spared once by eviction. */
  used: boolean;
}

/**
 * Tokens already verified, by exact token string.
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
 * re-checks the times against the current clock and runs every other check (alg and typ
 * policy, Writ's claim rules, revocation) as on a miss. The token's decoded structure is kept
 * too, since it is a pure function of the string: its header and claims are parsed once, and
 * every exchange made with the token shares one frozen claims object (which the lineage of
 * each minted token also holds).
 *
 * Only tokens that passed every check are kept, until `exp` plus the leeway, within a count and
 * a total length. Eviction spares a token used since it was last inserted once (second
 * chance), which approximates least-recently-used without touching the map on a hit.
 */
export class VerifiedSignatures {
  private readonly entries = new Map<string, Entry>();
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

  /**
   * The structure `inspectCompactJws` found in this very token string (with its default limits)
   * when it was kept, or undefined. Counts nothing and checks no key or clock: that is `has`.
   */
  structureOf(token: string): InspectedJws | undefined {
    return this.entries.get(token)?.inspected;
  }

  /** Whether `token` verified under this key and these options and is still kept (epoch seconds). */
  has(token: string, key: VerificationKey, options: string, now: number): boolean {
    const entry = this.entries.get(token);
    if (entry === undefined) return false;
    if (entry.until <= now) {
      this.remove(entry);
      return false;
    }
    if (entry.key !== key || entry.options !== options) return false;
    entry.used = true;
    return true;
  }

  /**
   * Keeps a token that passed every check until `until` (epoch seconds: its exp plus the
   * leeway). `inspected` must be what `inspectCompactJws(token)` returned with default limits;
   * it is frozen here, as every later request with this token shares it.
   */
  add(token: string, inspected: InspectedJws, key: VerificationKey, options: string, until: number): void {
    const previous = this.entries.get(token);
    if (previous !== undefined) this.remove(previous);
    if (token.length > this.maxChars) return;
    while (this.entries.size >= this.maxEntries || this.chars + token.length > this.maxChars) {
      if (!this.evictOne()) break;
    }
    const own = ownCopy(token);
    this.entries.set(own, { token: own, inspected: deepFreeze(inspected), key, options, until, used: false });
    this.chars += own.length;
  }

  /** Drops the oldest insertion not used since; a used one moves to the back instead, once. */
  private evictOne(): boolean {
    for (const entry of this.entries.values()) {
      this.entries.delete(entry.token);
      if (entry.used) {
        entry.used = false;
        this.entries.set(entry.token, entry);
        continue;
      }
      this.chars -= entry.token.length;
      return true;
    }
    return false;
  }

  private remove(entry: Entry): void {
    if (this.entries.delete(entry.token)) this.chars -= entry.token.length;
  }
}

/**
 * A flat copy of a token string. A string cut out of a larger one (a form parameter out of the
 * request body) keeps the larger one alive for as long as it is kept. A token that passed
 * inspection is base64url and dots, so the Latin-1 round trip is exact.
 */
function ownCopy(token: string): string {
  return Buffer.from(token, 'latin1').toString('latin1');
}

function deepFreeze<T>(value: T): T {
  if (value !== null && typeof value === 'object' && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const member of Object.values(value)) deepFreeze(member);
  }
  return value;
}
