import { describe, expect, it } from 'vitest';
import { killSwitchTime, killSwitchWarnings } from '../../src/revocation/kill-switch.ts';

describe('killSwitchTime: the before of a kill switch (API and CLI)', () => {
  const now = new Date('2026-12-05T10:00:00Z');

  it('defaults to now, and takes ISO 8601 times up to now, and up to a minute ahead (clock skew) as now', () => {
    expect(killSwitchTime(undefined, now)).toEqual(now);
    expect(killSwitchTime('2026-12-05T09:00:00Z', now)).toEqual(new Date('2026-12-05T09:00:00Z'));
    expect(killSwitchTime('2026-12-05T10:30:00+01:00', now)).toEqual(new Date('2026-12-05T09:30:00Z'));
    expect(killSwitchTime('2026-12-05', now)).toEqual(new Date('2026-12-05T00:00:00Z'));
    expect(killSwitchTime('2026-12-05T10:00:59Z', now)).toEqual(now);
  });

  it('refuses what is not an ISO time, and any time in the future: a mark cannot be moved back', () => {
    for (const bad of ['1', '0', 'yesterday', '2026-12-05 09:00', '12/05/2026', '2026-13-01T00:00:00Z', '2026-12-05T10:02:00Z', '2062-01-01T00:00:00Z']) {
      expect(killSwitchTime(bad, now), bad).toEqual({ error: expect.any(String) });
    }
  });
});

describe('killSwitchWarnings: a kill switch naming nothing in the current policy', () => {
  const known = { clients: ['planner-agent'], rules: ['planner-ledger'], issuers: ['https://idp.example.com'] };

  it('warns of a client, rule or issuer the policy does not name, and of nothing else', () => {
    expect(killSwitchWarnings(known, 'client', 'planer-agent')).toEqual([expect.stringContaining('no client "planer-agent" in the current policy')]);
    expect(killSwitchWarnings(known, 'rule', 'no-such-rule')).toEqual([expect.stringContaining('no rule "no-such-rule"')]);
    expect(killSwitchWarnings(known, 'issuer', 'https://idp.exmaple.com')).toEqual([expect.stringContaining('no issuer "https://idp.exmaple.com"')]);
    expect(killSwitchWarnings(known, 'client', 'planner-agent')).toEqual([]);
    expect(killSwitchWarnings(known, 'rule', 'planner-ledger')).toEqual([]);
    expect(killSwitchWarnings(known, 'issuer', 'https://idp.example.com')).toEqual([]);
    // Subjects are listed nowhere: no warning either way.
    expect(killSwitchWarnings(known, 'subject', 'https://idp.example.com|nobody')).toEqual([]);
  });
});
