import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { PUBLISHED_STATES, scheduleKeys, type StoredKeyTimes } from '../../src/tokens/key-schedule.ts';
import type { SigningAlg } from '../../src/policy/model.ts';

const T0 = Date.parse('2026-12-01T00:00:00Z');
const MIN = 60_000;
const RETAIN = 16 * MIN; // WRIT_MAX_TTL 900 s + 60 s leeway

function key(kid: string, alg: SigningAlg, created: number, activates: number, removed: number | null = null): StoredKeyTimes {
  return { kid, alg, createdAt: new Date(T0 + created), activatesAt: new Date(T0 + activates), removedAt: removed === null ? null : new Date(T0 + removed) };
}

function states(keys: StoredKeyTimes[], at: number): Record<string, string> {
  return Object.fromEntries(scheduleKeys(keys, new Date(T0 + at), RETAIN).keys.map((k) => [k.kid, k.state]));
}

describe('scheduleKeys', () => {
  const rotation = [key('old', 'ES256', 0, 0), key('new', 'ES256', 10 * MIN, 70 * MIN)];

  it('publishes a new key before it signs, then retires the old one for the longest token life', () => {
    expect(states(rotation, 10 * MIN)).toEqual({ old: 'active', new: 'pending' });
    expect(states(rotation, 70 * MIN - 1)).toEqual({ old: 'active', new: 'pending' });
    expect(states(rotation, 70 * MIN)).toEqual({ old: 'retired', new: 'active' });
    expect(states(rotation, 70 * MIN + RETAIN - 1)).toEqual({ old: 'retired', new: 'active' });
    expect(states(rotation, 70 * MIN + RETAIN)).toEqual({ old: 'expired', new: 'active' });
  });

  it('names the next moment a state changes, and none when nothing will', () => {
    const at = (t: number) => scheduleKeys(rotation, new Date(T0 + t), RETAIN).nextChange?.getTime();
    expect(at(20 * MIN)).toBe(T0 + 70 * MIN);
    expect(at(70 * MIN)).toBe(T0 + 70 * MIN + RETAIN);
    expect(at(70 * MIN + RETAIN)).toBeUndefined();
  });

  it('gives the superseded key the time its successor activated and the end of its publication', () => {
    const old = scheduleKeys(rotation, new Date(T0 + 80 * MIN), RETAIN).keys.find((k) => k.kid === 'old')!;
    expect(old.supersededAt?.getTime()).toBe(T0 + 70 * MIN);
    expect(old.publishedUntil?.getTime()).toBe(T0 + 70 * MIN + RETAIN);
  });

  it('keeps each algorithm on its own schedule', () => {
    const keys = [...rotation, key('rsa', 'RS256', 0, 0), key('pss', 'PS256', 0, 0)];
    expect(states(keys, 75 * MIN)).toEqual({ old: 'retired', new: 'active', rsa: 'active', pss: 'active' });
  });

  it('never publishes a removed key, and never hands signing or more time back to the key before it', () => {
    const removedActive = [key('old', 'ES256', 0, 0), key('new', 'ES256', 0, 10 * MIN, 20 * MIN)];
    // Nothing signs until a replacement takes the removed key's place (removeKey makes one).
    expect(states(removedActive, 25 * MIN)).toEqual({ old: 'retired', new: 'removed' });
    const replaced = [...removedActive, key('fresh', 'ES256', 20 * MIN, 10 * MIN)];
    expect(states(replaced, 25 * MIN)).toEqual({ old: 'retired', new: 'removed', fresh: 'active' });
    expect(states(replaced, 10 * MIN + RETAIN)).toEqual({ old: 'expired', new: 'removed', fresh: 'active' });
    const old = scheduleKeys(replaced, new Date(T0 + 25 * MIN), RETAIN).keys.find((k) => k.kid === 'old')!;
    expect(old.publishedUntil?.getTime()).toBe(T0 + 10 * MIN + RETAIN);
    // A key long expired stays expired when the key after it is removed.
    const late = 10 * MIN + RETAIN + 5 * MIN;
    const chain = [key('ancient', 'ES256', 0, 0), key('k1', 'ES256', 0, 10 * MIN), key('k2', 'ES256', 0, late, late + MIN), key('k3', 'ES256', late + MIN, late)];
    expect(states(chain, late + 2 * MIN)).toEqual({ ancient: 'expired', k1: 'retired', k2: 'removed', k3: 'active' });
    expect(states([key('pending', 'ES256', 0, 60 * MIN, 5 * MIN)], 1 * MIN)).toEqual({ pending: 'removed' });
    // A scheduled key removed before its time: the key in force goes on signing past that time.
    const withdrawn = [key('current', 'ES256', 0, 0), key('scheduled', 'ES256', 0, 60 * MIN, 5 * MIN)];
    expect(states(withdrawn, 61 * MIN)).toEqual({ current: 'active', scheduled: 'removed' });
    expect(scheduleKeys(withdrawn, new Date(T0 + 10 * MIN), RETAIN).nextChange).toBeNull();
  });

  it('breaks a tie in activation by creation time, then kid, the same way on every instance', () => {
    const tie = [key('b', 'ES256', 0, 0), key('a', 'ES256', 0, 0), key('c', 'ES256', 1, 0)];
    expect(states(tie, MIN)).toEqual({ a: 'retired', b: 'retired', c: 'active' });
    expect(states([...tie].reverse(), MIN)).toEqual({ a: 'retired', b: 'retired', c: 'active' });
  });

  const order = (a: StoredKeyTimes, b: StoredKeyTimes): number => a.activatesAt.getTime() - b.activatesAt.getTime()
    || a.createdAt.getTime() - b.createdAt.getTime() || (a.kid < b.kid ? -1 : 1);
  const stored = fc.array(fc.record({
    alg: fc.constantFrom<SigningAlg>('ES256', 'RS256', 'PS256'), created: fc.integer({ min: 0, max: 100 }), delay: fc.integer({ min: 0, max: 100 }), removed: fc.option(fc.integer({ min: 0, max: 300 })),
  }), { maxLength: 8 }).map((rows) => rows.map((r, i) => key(`k${i}`, r.alg, r.created * MIN, (r.created + r.delay) * MIN, r.removed === null ? null : r.removed * MIN)));
  const stateAt = (keys: StoredKeyTimes[], kid: string, t: number) => scheduleKeys(keys, new Date(t), RETAIN).keys.find((k) => k.kid === kid)!.state;

  it('for any stored keys, signs with the last key due, unless that one was removed', () => {
    fc.assert(fc.property(stored, fc.integer({ min: 0, max: 400 }), (keys, minute) => {
      const now = T0 + minute * MIN;
      const schedule = scheduleKeys(keys, new Date(now), RETAIN);
      expect(schedule.keys).toHaveLength(keys.length);
      for (const a of ['ES256', 'RS256', 'PS256'] as const) {
        // Keys removed before their time never signed, and take no part.
        const lastDue = keys.filter((k) => k.alg === a && k.activatesAt.getTime() <= now && !(k.removedAt && k.removedAt < k.activatesAt)).sort(order).at(-1);
        const active = schedule.keys.filter((k) => k.alg === a && k.state === 'active').map((k) => k.kid);
        expect(active).toEqual(lastDue && !lastDue.removedAt ? [lastDue.kid] : []);
      }
      for (const k of schedule.keys) {
        if (k.removedAt) expect(k.state).toBe('removed');
        if (k.state === 'pending') expect(k.activatesAt.getTime()).toBeGreaterThan(now);
      }
      if (schedule.nextChange) expect(schedule.nextChange.getTime()).toBeGreaterThan(now);
    }), { numRuns: 1000 });
  });

  it('for any stored keys, keeps a key published while a token it signed can be alive, and no longer', () => {
    fc.assert(fc.property(stored, fc.integer({ min: 0, max: 400 }), fc.integer({ min: 0, max: 40 }), (keys, minute, later) => {
      const m = T0 + minute * MIN;
      const n = m + later * MIN;
      for (const k of keys) {
        // Signed at m, a token lives until m + RETAIN at most: its key must still be published at n.
        if (stateAt(keys, k.kid, m) === 'active' && !k.removedAt && n < m + RETAIN) expect(PUBLISHED_STATES.has(stateAt(keys, k.kid, n))).toBe(true);
        const now = scheduleKeys(keys, new Date(n), RETAIN).keys.find((x) => x.kid === k.kid)!;
        // Retired only if it signed within the last RETAIN: active just before it was superseded, and that recently.
        if (now.state === 'retired') {
          expect(stateAt(keys, k.kid, now.supersededAt!.getTime() - 1)).toBe('active');
          expect(now.supersededAt!.getTime()).toBeGreaterThan(n - RETAIN);
        }
        if (now.state === 'expired') expect(['retired', 'expired']).toContain(stateAt(keys, k.kid, n - RETAIN));
      }
    }), { numRuns: 300 });
  });
});
