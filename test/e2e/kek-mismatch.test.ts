import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import knexFactory, { type Knex } from 'knex';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, freePort } from '../support/harness.ts';
import { runWrit } from '../support/cli.ts';

/**
 * Two instances (or a command and an instance) on one database with different key-encryption
 * keys: the second must refuse to run rather than publish no keys, hash client secrets the
 * other does not recognise, and seal audit checkpoints under a key nobody else can verify.
 * Without WRIT_KEK each data dir has its own development key, which is how this happens.
 */
describe('a WRIT_KEK that is not the database’s own', () => {
  const dirs: string[] = [];
  let databaseUrl: string;
  let knex: Knex;
  const kek = (fill: number): string => Buffer.alloc(32, fill).toString('base64');
  const dataDir = (): string => {
    const dir = mkdtempSync(path.join(tmpdir(), 'writ-kek-'));
    dirs.push(dir);
    return dir;
  };

  beforeAll(async () => {
    databaseUrl = await createTestDatabase('kek_mismatch');
    knex = knexFactory({ client: 'pg', connection: databaseUrl, pool: { min: 0, max: 1 } });
    // The database is set up under one key: its signing keys are sealed with it.
    const first = await runWrit(['keys', 'rotate', '--now'], { DATABASE_URL: databaseUrl, WRIT_DATA_DIR: dataDir(), WRIT_KEK: kek(1) });
    expect(first.code, first.stderr).toBe(0);
  });
  afterAll(async () => {
    await knex?.destroy();
    for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
  });

  const counts = async (): Promise<Record<string, number>> => {
    const [keys, checkpoints, events] = await Promise.all(['signing_keys', 'audit_checkpoints', 'audit_events']
      .map(async (table) => Number((await knex(table).count<Array<{ count: string }>>('* as count'))[0]!.count)));
    return { keys: keys!, checkpoints: checkpoints!, events: events! };
  };

  it('writ serve with another data dir’s development key exits 78 and writes nothing', async () => {
    const before = await counts();
    const port = await freePort();
    // No WRIT_KEK: development mode generates a key into this fresh data dir.
    const run = await runWrit(['serve'], {
      DATABASE_URL: databaseUrl, WRIT_DATA_DIR: dataDir(), PORT: String(port), WRIT_ISSUER: `http://localhost:${port}`,
      WRIT_METRICS_ADDR: '127.0.0.1:0', LOG_LEVEL: 'warn',
    }, 20_000); // killed, and the test failed, if it serves instead
    expect(run.code, run.stdout + run.stderr).toBe(78);
    expect(run.stderr).toContain('WRIT_KEK opens none of the');
    // Warned first: on PostgreSQL the data dir's development key is this trap.
    expect(run.stdout).toContain('WRIT_KEK is not set: signing keys on this PostgreSQL are sealed with the development key');
    expect(await counts()).toEqual(before);
  });

  it.each<[string, string[]]>([
    ['keys rotate', ['keys', 'rotate', '--now']],
    ['policy apply', ['policy', 'apply', 'policy/', '-m', 'x']],
    ['audit verify', ['audit', 'verify']],
    ['admin bootstrap', ['admin', 'bootstrap', '--client-id', 'ops-admin']],
  ])('writ %s with another key exits 78 and writes nothing', async (_name, args) => {
    const before = await counts();
    const run = await runWrit(args, {
      DATABASE_URL: databaseUrl, WRIT_DATA_DIR: dataDir(), WRIT_KEK: kek(2),
      PLANNER_SECRET: 'p'.repeat(40), EXECUTOR_SECRET: 'e'.repeat(40), PAYMENTS_API_SECRET: 's'.repeat(40),
    });
    expect(run.code, run.stdout + run.stderr).toBe(78);
    expect(run.stderr).toContain('it is not the key-encryption key this database was set up with');
    expect(await counts()).toEqual(before);
  });

  it.each<[string, string[]]>([
    ['keys list', ['keys', 'list']],
    ['policy history', ['policy', 'history']],
    ['audit search', ['audit', 'search', '--since', '2000-01-01']],
  ])('writ %s, which uses no key derived from it, runs with any WRIT_KEK', async (_name, args) => {
    const run = await runWrit(args, { DATABASE_URL: databaseUrl, WRIT_DATA_DIR: dataDir(), WRIT_KEK: kek(2) });
    expect(run.code, run.stdout + run.stderr).toBe(0);
  });

  it('on a new database the first command to store anything fixes the key: policy apply, then serve with another', async () => {
    const fresh = await createTestDatabase('kek_first');
    const secrets = { PLANNER_SECRET: 'p'.repeat(40), EXECUTOR_SECRET: 'e'.repeat(40), PAYMENTS_API_SECRET: 's'.repeat(40) };
    const applied = await runWrit(['policy', 'apply', 'policy/', '-m', 'first'], { DATABASE_URL: fresh, WRIT_DATA_DIR: dataDir(), WRIT_KEK: kek(3), ...secrets });
    expect(applied.code, applied.stdout + applied.stderr).toBe(0);
    const port = await freePort();
    const run = await runWrit(['serve'], {
      DATABASE_URL: fresh, WRIT_DATA_DIR: dataDir(), WRIT_KEK: kek(4), PORT: String(port), WRIT_ISSUER: `http://localhost:${port}`,
      WRIT_METRICS_ADDR: '127.0.0.1:0', LOG_LEVEL: 'warn',
    }, 20_000);
    expect(run.code, run.stdout + run.stderr).toBe(78);
    const second = await runWrit(['admin', 'bootstrap', '--client-id', 'ops-admin'], { DATABASE_URL: fresh, WRIT_DATA_DIR: dataDir(), WRIT_KEK: kek(4) });
    expect(second.code, second.stdout + second.stderr).toBe(78);
  });

  it('on a new database, a policy that does not apply stores nothing (no signing keys either), and retain refuses', async () => {
    const fresh = await createTestDatabase('kek_nothing');
    const broken = dataDir();
    writeFileSync(path.join(broken, 'bad.yaml'), 'audiences:\n  - audience: https://a.example.com\n    scopes: [read]\n    max_ttl: 60\n    colour: blue\n');
    const applied = await runWrit(['policy', 'apply', broken, '-m', 'broken'], { DATABASE_URL: fresh, WRIT_DATA_DIR: dataDir(), WRIT_KEK: kek(5) });
    expect(applied.code, applied.stdout + applied.stderr).toBe(1);
    const other = knexFactory({ client: 'pg', connection: fresh, pool: { min: 0, max: 1 } });
    try {
      expect(await other.schema.hasTable('signing_keys') ? Number((await other('signing_keys').count<Array<{ count: string }>>('* as count'))[0]!.count) : 0).toBe(0);
    } finally {
      await other.destroy();
    }
    const retained = await runWrit(['audit', 'retain', '--before', '2026-06', '--archive', dataDir()], { DATABASE_URL: fresh, WRIT_DATA_DIR: dataDir(), WRIT_KEK: kek(5) });
    expect(retained.code, retained.stdout + retained.stderr).toBe(78);
    expect(retained.stderr).toContain('no signing keys yet');
  });

  it('the database’s own key still works', async () => {
    const run = await runWrit(['audit', 'verify'], { DATABASE_URL: databaseUrl, WRIT_DATA_DIR: dataDir(), WRIT_KEK: kek(1) });
    expect(run.code, run.stdout + run.stderr).toBe(0);
  });
});
