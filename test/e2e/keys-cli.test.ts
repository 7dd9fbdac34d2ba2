import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase } from '../support/harness.ts';
import { runWrit } from '../support/cli.ts';

interface ListedKey { kid: string; alg: string; state: string; activates_at: string }

describe('writ keys on PostgreSQL (DATABASE_URL)', () => {
  let env: Record<string, string>;
  let dataDir: string;
  beforeAll(async () => {
    dataDir = mkdtempSync(path.join(tmpdir(), 'writ-keys-cli-'));
    env = { DATABASE_URL: await createTestDatabase('keys_cli'), WRIT_DATA_DIR: dataDir, WRIT_KEK: Buffer.alloc(32, 5).toString('base64') };
  });
  afterAll(() => rmSync(dataDir, { recursive: true, force: true }));

  const list = async (): Promise<ListedKey[]> => {
    const run = await runWrit(['keys', 'list', '--json'], env);
    expect(run.code, run.stderr).toBe(0);
    return (JSON.parse(run.stdout) as { keys: ListedKey[] }).keys;
  };

  it('rotates, lists and removes keys, and says why when it cannot', async () => {
    const now = await runWrit(['keys', 'rotate', '--now'], env);
    expect(now.code, now.stderr).toBe(0);
    expect(now.stderr).toContain('sign at once');
    const first = await list();
    expect(first.map((k) => [k.alg, k.state]).sort()).toEqual([['ES256', 'active'], ['PS256', 'active'], ['RS256', 'active']]);

    const scheduled = await runWrit(['keys', 'rotate', '--alg', 'RS256', '--activate-in', '2h'], env);
    expect(scheduled.code, scheduled.stderr).toBe(0);
    const pending = (await list()).find((k) => k.state === 'pending')!;
    expect(pending.alg).toBe('RS256');
    expect(Date.parse(pending.activates_at) - Date.now()).toBeGreaterThan(7_100_000);
    expect(scheduled.stdout).toContain(`RS256 ${pending.kid} is published now and signs from ${pending.activates_at}`);

    const again = await runWrit(['keys', 'rotate', '--alg', 'RS256'], env);
    expect([again.code, again.stderr]).toEqual([1, expect.stringContaining(`${pending.kid} is already scheduled`)]);

    const es = first.find((k) => k.alg === 'ES256')!;
    const removed = await runWrit(['keys', 'remove', es.kid], env);
    expect(removed.code, removed.stderr).toBe(0);
    const after = await list();
    expect(after.find((k) => k.kid === es.kid)!.state).toBe('removed');
    const replacement = after.find((k) => k.alg === 'ES256' && k.state === 'active')!;
    expect(removed.stdout).toContain(`ES256 now signs with ${replacement.kid}`);

    const text = await runWrit(['keys', 'list'], env);
    expect(text.stdout).toMatch(new RegExp(`RS256 +pending +${pending.kid} +signs from`));
    expect(text.stdout).toMatch(new RegExp(`ES256 +removed +${es.kid}`));

    for (const [args, message] of [
      [['keys', 'rotate', '--alg', 'HS256'], '--alg takes'],
      [['keys', 'rotate', '--activate-in', 'tomorrow'], '--activate-in takes'],
      [['keys', 'rotate', '--now', '--activate-in', '1h'], 'exclude each other'],
      [['keys', 'rotate', '--activate-in', '10s'], '--activate-in must be 0 (or --now) or from 5m'],
      [['keys', 'rotate', '--activate-in', '91d'], 'to 90d'],
      [['keys', 'spin'], 'unknown keys command'],
    ] as const) {
      const bad = await runWrit([...args], env);
      expect([bad.code, bad.stderr], args.join(' ')).toEqual([2, expect.stringContaining(message)]);
    }
    const unknown = await runWrit(['keys', 'remove', 'no-such-kid'], env);
    expect([unknown.code, unknown.stderr]).toEqual([1, expect.stringContaining('no signing key has kid no-such-kid')]);
  }, 120_000);
});
