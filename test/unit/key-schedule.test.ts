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

  it('never publishes a removed key, and lets the key before it sign again only if nothing replaced it', () => {
    const removedActive = [key('old', 'ES256', 0, 0), key('new', 'ES256', 0, 10 * MIN, 20 * MIN)];
    expect(states(removedActive, 30 * MIN)).toEqual({ old: 'active', new: 'removed' });
    const replaced = [...removedActive, key('fresh', 'ES256', 20 * MIN, 20 * MIN)];
    expect(states(replaced, 30 * MIN)).toEqual({ old: 'retired', new: 'removed', fresh: 'active' });
    expect(states([key('pending', 'ES256', 0, 60 * MIN, 5 * MIN)], 1 * MIN)).toEqual({ pending: 'removed' });
  });

  it('breaks a tie in activation by creation time, then kid, the same way on every instance', () => {
    const tie = [key('b', 'ES256', 0, 0), key('a', 'ES256', 0, 0), key('c', 'ES256', 1, 0)];
    expect(states(tie, MIN)).toEqual({ a: 'retired', b: 'retired', c: 'active' });
    expect(states([...tie].reverse(), MIN)).toEqual({ a: 'retired', b: 'retired', c: 'active' });
  });

  it('holds for any stored keys: one active key per algorithm that has one due, published exactly while a token can be alive', () => {
    const alg = fc.constantFrom<SigningAlg>('ES256', 'RS256', 'PS256');
    const stored = fc.array(fc.record({
      alg, created: fc.integer({ min: 0, max: 100 }), delay: fc.integer({ min: 0, max: 100 }), removed: fc.option(fc.integer({ min: 0, max: 300 })),
    }), { maxLength: 8 }).map((rows) => rows.map((r, i) => key(`k${i}`, r.alg, r.created * MIN, (r.created + r.delay) * MIN, r.removed === null ? null : r.removed * MIN)));
    fc.assert(fc.property(stored, fc.integer({ min: 0, max: 400 }), (keys, minute) => {
      const now = T0 + minute * MIN;
      const schedule = scheduleKeys(keys, new Date(now), RETAIN);
      expect(schedule.keys).toHaveLength(keys.length);
      for (const a of ['ES256', 'RS256', 'PS256'] as const) {
        const live = keys.filter((k) => k.alg === a && !k.removedAt);
        const due = live.filter((k) => k.activatesAt.getTime() <= now);
        const active = schedule.keys.filter((k) => k.alg === a && k.state === 'active');
        expect(active).toHaveLength(due.length > 0 ? 1 : 0);
        // The active key is the latest one due.
        if (active[0]) for (const k of due) expect(k.activatesAt.getTime()).toBeLessThanOrEqual(active[0].activatesAt.getTime());
      }
      for (const k of schedule.keys) {
        if (k.removedAt) expect(k.state).toBe('removed');
        if (k.state === 'pending') expect(k.activatesAt.getTime()).toBeGreaterThan(now);
        if (k.state === 'retired' || k.state === 'expired') {
          expect(k.supersededAt!.getTime()).toBeLessThanOrEqual(now);
          expect(k.state === 'retired').toBe(now < k.supersededAt!.getTime() + RETAIN);
        }
        if (PUBLISHED_STATES.has(k.state)) expect(k.removedAt).toBeNull();
      }
      if (schedule.nextChange) expect(schedule.nextChange.getTime()).toBeGreaterThan(now);
    }), { numRuns: 1000 });
  });
});
