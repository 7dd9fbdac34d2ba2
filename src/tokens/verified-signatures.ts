import { inspectedUnderDefaults, type InspectedJws } from './jws-structure.ts';
import type { VerificationKey } from './jwks-cache.ts';

interface Entry {
  /** Its header and claims, frozen: shared by every later request that presents this token. */
  inspected: InspectedJws;
  key: VerificationKey;
  options: string;
  until: number;
  /** What it counts against `maxSize`. */
  size: number;
  /** Used since it was last (re)inserted: spared once by eviction. */
  used: boolean;
}

/**
 * What a kept token is counted as: its characters, and for its decoded structure a fixed
 * amount per JSON object or array in it, about what V8 spends on an empty one. A token's
 * strings and numbers take about what its characters do; its objects can take far more
 * (8 KiB of `{}` decode to ~130 KB).
 */
const BYTES_PER_OBJECT = 64;

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
 * too, since it is a pure function of the string: a caller that looks it up (`structureOf`)
 * does not decode and parse the token again, and shares one frozen claims object with every
 * other exchange made with it.
 *
 * Tokens are kept once their signature and Writ's claim rules passed, until `exp` plus the
 * leeway, within a count and a total size. Eviction spares a token used since it was last
 * inserted once (second chance), which approximates least-recently-used without touching the
 * map on a hit.
 */
export class VerifiedSignatures {
  private readonly entries = new Map<string, Entry>();
  private readonly maxEntries: number;
  private readonly maxSize: number;
  private totalSize = 0;
  hits = 0;
  misses = 0;

  constructor(options: { maxEntries?: number; maxSize?: number } = {}) {
    this.maxEntries = options.maxEntries ?? 10_000;
    // Tokens may be up to 8 KiB; typical ones are under 1 KiB and decode to a few objects.
    this.maxSize = options.maxSize ?? 16 * 1024 * 1024;
    if (!(this.maxEntries >= 1) || !(this.maxSize >= 1)) throw new RangeError('the cache must hold at least one token');
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
      this.remove(token, entry);
      return false;
    }
    if (entry.key !== key || entry.options !== options) return false;
    entry.used = true;
    return true;
  }

  /**
   * Keeps a token that verified until `until` (epoch seconds: its exp plus the leeway), with the
   * structure `inspectCompactJws(token)` returned under its default limits — anything else is
   * not kept. The structure is frozen here, as every later request with this token shares it.
   */
  add(token: string, inspected: InspectedJws, key: VerificationKey, options: string, until: number): void {
    const previous = this.entries.get(token);
    if (previous !== undefined) this.remove(token, previous);
    if (!inspectedUnderDefaults(inspected)) return;
    const size = token.length + BYTES_PER_OBJECT * freezeAndCount(inspected);
    if (size > this.maxSize) return;
    while (this.entries.size >= this.maxEntries || this.totalSize + size > this.maxSize) {
      if (!this.evictOne()) break;
    }
    // The map's key is a copy: the caller's string may be a slice of a whole request body.
    this.entries.set(ownCopy(token), { inspected, key, options, until, size, used: false });
    this.totalSize += size;
  }

  /** Drops the oldest insertion not used since; a used one moves to the back instead, once. */
  private evictOne(): boolean {
    for (const [token, entry] of this.entries) {
      this.entries.delete(token);
      if (entry.used) {
        entry.used = false;
        this.entries.set(token, entry);
        continue;
      }
      this.totalSize -= entry.size;
      return true;
    }
    return false;
  }

  private remove(token: string, entry: Entry): void {
    if (this.entries.delete(token)) this.totalSize -= entry.size;
  }
}

/**
 * A flat copy of a token string. A string cut out of a larger one (a form parameter out of the
 * request body) keeps the larger one alive for as long as it is kept. An inspected token is
 * base64url and dots, so the Latin-1 round trip is exact.
 */
function ownCopy(token: string): string {
  return Buffer.from(token, 'latin1').toString('latin1');
}

/** Freezes every object and array in `value`; returns how many there are. */
function freezeAndCount(value: unknown): number {
  if (value === null || typeof value !== 'object') return 0;
  Object.freeze(value);
  let count = 1;
  for (const member of Object.values(value)) count += freezeAndCount(member);
  return count;
}
