import { describe, expect, it } from 'vitest';
import { RefusalHold } from '../../src/http/refusal-hold.ts';

describe('RefusalHold', () => {
  const at = (ms: { now: number }) => ({ now: () => ms.now, random: () => 0.5 });

  it('answers a first refusal at once and holds the next ones until the time given, plus a spread', () => {
    const clock = { now: 10_000 };
    const hold = new RefusalHold(at(clock));
    expect(hold.plan('token:a', 2)).toBe(0);
    clock.now += 300;
    // Told to retry at 12,000; back at 10,300: held 1,700 ms, plus half of the one-second spread.
    expect(hold.plan('token:a', 2)).toBe(2200);
    // Another caller is not affected.
    expect(hold.plan('token:b', 2)).toBe(0);
  });

  it('never holds a caller that waited as told', () => {
    const clock = { now: 0 };
    const hold = new RefusalHold(at(clock));
    expect(hold.plan('k', 1)).toBe(0);
    clock.now += 1000;
    expect(hold.plan('k', 1)).toBe(0);
    clock.now += 1500;
    expect(hold.plan('k', 3)).toBe(0);
  });

  it('caps a hold, and closes instead of holding beyond the limit of held refusals', async () => {
    const clock = { now: 0 };
    const hold = new RefusalHold({ ...at(clock), maxHoldMs: 1500, maxHeld: 1 });
    expect(hold.plan('k', 60)).toBe(0);
    expect(hold.plan('k', 60)).toBe(1500);
    const held = hold.hold(20);
    expect(hold.holding).toBe(1);
    expect(hold.plan('k', 60)).toBe('close');
    await held;
    expect(hold.holding).toBe(0);
    expect(hold.plan('k', 60)).toBe(1500);
  });

  it('stays bounded in memory', () => {
    const clock = { now: 0 };
    const hold = new RefusalHold({ ...at(clock), maxKeys: 100 });
    for (let i = 0; i < 1000; i += 1) hold.plan(`k${i}`, 60);
    expect((hold as unknown as { retryAt: Map<string, number> }).retryAt.size).toBeLessThanOrEqual(100);
  });
});
