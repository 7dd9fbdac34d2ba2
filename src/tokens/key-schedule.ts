import type { SigningAlg } from '../policy/model.ts';

/** A signing key as its schedule is stored: the private part is not needed to decide its state. */
export interface StoredKeyTimes {
  kid: string;
  alg: SigningAlg;
  createdAt: Date;
  activatesAt: Date;
  removedAt: Date | null;
}

/**
 * - `pending`: published so resource servers learn it before it signs anything.
 * - `active`: the key its algorithm signs with.
 * - `retired`: superseded, still published while a token it signed can be alive.
 * - `expired`: superseded longer ago than any token lives; no longer published.
 * - `removed`: withdrawn by an operator; never published or accepted again.
 */
export type KeyState = 'pending' | 'active' | 'retired' | 'expired' | 'removed';

export interface ScheduledKey extends StoredKeyTimes {
  state: KeyState;
  /** When the next key of its algorithm took over (retired and expired keys). */
  supersededAt: Date | null;
  /** The end of its publication, once known: superseded time plus the longest token life. */
  publishedUntil: Date | null;
}

export interface KeySchedule {
  keys: ScheduledKey[];
  /** The next moment a state changes by the clock alone, if any. */
  nextChange: Date | null;
}

/** Keys in publication states: the JWKS, and what Writ accepts on its own tokens. */
export const PUBLISHED_STATES: ReadonlySet<KeyState> = new Set(['pending', 'active', 'retired']);

function byActivation(a: StoredKeyTimes, b: StoredKeyTimes): number {
  return a.activatesAt.getTime() - b.activatesAt.getTime()
    || a.createdAt.getTime() - b.createdAt.getTime()
    || (a.kid < b.kid ? -1 : a.kid > b.kid ? 1 : 0);
}

/**
 * Each key's state at `now`, from its stored times alone, so every instance reading the same
 * rows signs with the same key and publishes the same set without coordinating.
 *
 * `retainMs` is how long a token signed just before its key was superseded can stay valid:
 * the longest minted lifetime plus the clock leeway. A retired key stays published that long
 * after its last use (docs/standards.md O4).
 */
export function scheduleKeys(keys: readonly StoredKeyTimes[], now: Date, retainMs: number): KeySchedule {
  const t = now.getTime();
  const out: ScheduledKey[] = [];
  let next = Infinity;
  const byAlg = new Map<SigningAlg, StoredKeyTimes[]>();
  for (const key of keys) {
    // A key removed before it ever signed never superseded anything: it leaves the order.
    if (key.removedAt && key.removedAt.getTime() < key.activatesAt.getTime()) {
      out.push({ ...key, state: 'removed', supersededAt: null, publishedUntil: null });
      continue;
    }
    const list = byAlg.get(key.alg) ?? [];
    list.push(key);
    byAlg.set(key.alg, list);
  }
  for (const list of byAlg.values()) {
    list.sort(byActivation);
    // The key that signs is the last one whose activation has come; each earlier key was
    // superseded when the key after it activated. A key removed after it began signing keeps
    // its place in this order: removing it must not hand signing back to the key before it,
    // nor prolong that key's publication. If the last key due was removed, nothing of this algorithm signs (removal
    // puts a replacement in the same place, so this is only ever seen if one was not made).
    let due = -1;
    for (let i = 0; i < list.length; i += 1) if (list[i]!.activatesAt.getTime() <= t) due = i;
    list.forEach((key, i) => {
      if (key.removedAt) {
        out.push({ ...key, state: 'removed', supersededAt: null, publishedUntil: null });
      } else if (i > due) {
        next = Math.min(next, key.activatesAt.getTime());
        out.push({ ...key, state: 'pending', supersededAt: null, publishedUntil: null });
      } else if (i === due) {
        out.push({ ...key, state: 'active', supersededAt: null, publishedUntil: null });
      } else {
        const supersededAt = list[i + 1]!.activatesAt;
        const until = supersededAt.getTime() + retainMs;
        if (until > t) next = Math.min(next, until);
        out.push({ ...key, state: until > t ? 'retired' : 'expired', supersededAt, publishedUntil: new Date(until) });
      }
    });
  }
  return { keys: out, nextChange: Number.isFinite(next) ? new Date(next) : null };
}
