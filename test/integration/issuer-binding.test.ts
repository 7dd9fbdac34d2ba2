import { randomBytes } from 'node:crypto';
import { rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { ConfigError, loadConfig, type Config } from '../../src/config.ts';
import { createLogger } from '../../src/log.ts';
import { createWrit, type Writ } from '../../src/server.ts';
import { migrate, openDatabase, type Database } from '../../src/store/db.ts';
import { checkIssuer, IssuerMismatch, storedIssuer } from '../../src/store/issuer-binding.ts';
import { runWrit } from '../support/cli.ts';
import { createTestDatabase } from '../support/harness.ts';
import { tempDirs } from '../support/temp-dirs.ts';

const KEK = Buffer.alloc(32, 11).toString('base64');
const ISSUER_A = 'http://localhost:4101';
const ISSUER_B = 'http://localhost:4102';

/** One database: PostgreSQL (its own) or an embedded one in a data dir of its own. */
interface Target {
  databaseUrl: string | undefined;
  dataDir: string;
}

const tempDir = tempDirs('writ-issuer-');

const silent = createLogger('silent');

describe.each([
  { kind: 'PostgreSQL', embedded: false },
  { kind: 'PGlite', embedded: true },
])('the issuer a database serves ($kind)', ({ embedded }) => {
  const target = async (name: string): Promise<Target> => {
    const dataDir = tempDir();
    return { databaseUrl: embedded ? undefined : await createTestDatabase(`issuer_${name}`), dataDir };
  };
  const env = (t: Target): Record<string, string> => ({
    WRIT_DATA_DIR: t.dataDir, WRIT_KEK: KEK, LOG_LEVEL: 'silent', ...(t.databaseUrl ? { DATABASE_URL: t.databaseUrl } : {}),
  });
  const configFor = (t: Target, issuer: string): Config => loadConfig({ ...env(t), WRIT_ISSUER: issuer, PORT: '0', HOST: '127.0.0.1' });
  const start = (t: Target, issuer: string, db?: Database): Promise<Writ> => createWrit(configFor(t, issuer), silent, { pollMs: 100, ...(db ? { db } : {}) });
  /** Reads the database with no instance on it (the embedded one opens in one place at a time). */
  const inspect = async <T>(t: Target, read: (db: Database) => Promise<T>): Promise<T> => {
    const db = await openDatabase({ databaseUrl: t.databaseUrl, dataDir: t.dataDir });
    try {
      return await read(db);
    } finally {
      await db.close();
    }
  };

  it('the first instance stores its issuer; one with another issuer is refused, naming both; the same issuer starts', async () => {
    const t = await target('refuse');
    const first = await start(t, ISSUER_A);
    try {
      expect(await storedIssuer(first.db.knex)).toBe(ISSUER_A);
      // PostgreSQL: beside the running instance; the embedded database holds one process, so after it.
      if (embedded) await first.close();
      const refused = await start(t, ISSUER_B).then(() => undefined, (err: unknown) => err);
      expect(refused).toBeInstanceOf(ConfigError);
      expect(refused).toBeInstanceOf(IssuerMismatch);
      const message = (refused as Error).message;
      expect(message).toContain(`WRIT_ISSUER is ${ISSUER_B}`);
      expect(message).toContain(`serves the issuer ${ISSUER_A}`);
      expect(message).toContain(`writ db issuer --set ${ISSUER_B}`);
      const same = await start(t, ISSUER_A);
      await same.close();
    } finally {
      await first.close().catch(() => undefined);
    }
    expect(await inspect(t, (db) => storedIssuer(db.knex))).toBe(ISSUER_A);
  });

  it('writ serve with another issuer exits 78 with the message', async () => {
    const t = await target('serve');
    await (await start(t, ISSUER_A)).close();
    const run = await runWrit(['serve'], { ...env(t), WRIT_ISSUER: ISSUER_B, PORT: '0', WRIT_METRICS_ADDR: '127.0.0.1:0', LOG_LEVEL: 'warn' }, 30_000);
    expect(run.code, run.stdout + run.stderr).toBe(78);
    expect(run.stderr).toContain(`configuration error: WRIT_ISSUER is ${ISSUER_B}, but this database serves the issuer ${ISSUER_A}`);
    if (embedded) return;
    // With worker processes the primary refuses before it forks any.
    const workers = await runWrit(['serve'], { ...env(t), WRIT_ISSUER: ISSUER_B, WRIT_WORKERS: '2', PORT: '0', WRIT_METRICS_ADDR: '127.0.0.1:0', LOG_LEVEL: 'warn' }, 30_000);
    expect(workers.code, workers.stdout + workers.stderr).toBe(78);
    expect(workers.stderr).toContain(`configuration error: WRIT_ISSUER is ${ISSUER_B}, but this database serves the issuer ${ISSUER_A}`);
  });

  it('writ serve --apply with another issuer is refused before it applies anything', async () => {
    const t = await target('apply');
    await (await start(t, ISSUER_A)).close();
    const versions = (): Promise<number> => inspect(t, async (db) => Number((await db.knex('policy_versions').count<Array<{ count: string }>>('* as count'))[0]!.count));
    const before = await versions();
    const secrets = { PLANNER_SECRET: 'p'.repeat(40), EXECUTOR_SECRET: 'e'.repeat(40), PAYMENTS_API_SECRET: 's'.repeat(40) };
    const run = await runWrit(['serve', '--apply', 'policy/'], { ...env(t), ...secrets, WRIT_ISSUER: ISSUER_B, PORT: '0', WRIT_METRICS_ADDR: '127.0.0.1:0', LOG_LEVEL: 'warn' }, 30_000);
    expect(run.code, run.stdout + run.stderr).toBe(78);
    expect(run.stderr).toContain(`WRIT_ISSUER is ${ISSUER_B}, but this database serves the issuer ${ISSUER_A}`);
    expect(run.stdout + run.stderr).not.toContain('applied policy version');
    expect(await versions()).toBe(before);
  });

  it('of two first starts at once with different issuers, exactly one wins', async () => {
    const t = await target('race');
    // Migrated first: only the issuer is left to race for, not knex's migration lock.
    await inspect(t, async (db) => void await migrate(db));
    // The embedded database opens once per process: both instances share it, as statements interleave.
    const shared = embedded ? await openDatabase({ databaseUrl: undefined, dataDir: t.dataDir }) : undefined;
    try {
      const outcomes = await Promise.allSettled([start(t, ISSUER_A, shared), start(t, ISSUER_B, shared)]);
      const started = outcomes.filter((o): o is PromiseFulfilledResult<Writ> => o.status === 'fulfilled').map((o) => o.value);
      const refused = outcomes.filter((o): o is PromiseRejectedResult => o.status === 'rejected').map((o) => o.reason as unknown);
      const stored = await storedIssuer((shared ?? started[0]!.db).knex);
      for (const w of started) await w.close();
      expect(started).toHaveLength(1);
      expect(refused).toHaveLength(1);
      expect(refused[0]).toBeInstanceOf(IssuerMismatch);
      expect(stored).toBe(started[0]!.config.issuer);
      expect((refused[0] as Error).message).toContain(`serves the issuer ${stored}`);
    } finally {
      await shared?.close();
    }
  });

  it.skipIf(embedded)('of eight bindings racing on separate connections, one stores its issuer and all read it back', async () => {
    const t = await target('race8');
    await inspect(t, async (db) => void await migrate(db));
    const dbs = await Promise.all(Array.from({ length: 8 }, () => openDatabase({ databaseUrl: t.databaseUrl, dataDir: t.dataDir, poolMax: 1 })));
    try {
      // Connections open before the race, so the inserts meet in PostgreSQL.
      await Promise.all(dbs.map((db) => db.knex.raw('SELECT 1')));
      const issuers = dbs.map((_, i) => `https://sts${i}.example.com`);
      const outcomes = await Promise.allSettled(dbs.map((db, i) => checkIssuer(db.knex, issuers[i]!)));
      const won = outcomes.flatMap((o, i) => (o.status === 'fulfilled' ? [{ issuer: issuers[i]!, stored: o.value.stored }] : []));
      expect(won).toHaveLength(1);
      expect(won[0]!.stored).toBe(true);
      for (const o of outcomes) if (o.status === 'rejected') expect(o.reason).toBeInstanceOf(IssuerMismatch);
      expect(await storedIssuer(dbs[0]!.knex)).toBe(won[0]!.issuer);
      const { rows } = await dbs[0]!.knex.raw<{ rows: Array<{ n: number }> }>('SELECT count(*)::int AS n FROM served_issuer');
      expect(rows[0]!.n).toBe(1);
    } finally {
      await Promise.all(dbs.map((db) => db.close()));
    }
  });

  it('writ db issuer prints it; --set changes it, warns, records the audit event; then the new issuer starts and the old is refused', async () => {
    const t = await target('cli');
    const none = await runWrit(['db', 'issuer'], { ...env(t), WRIT_ISSUER: ISSUER_A });
    if (embedded) {
      // No embedded database yet: the command makes none up.
      expect(none.code, none.stderr).toBe(78);
    } else {
      expect(none.code, none.stderr).toBe(1);
      expect(none.stderr).toContain('serves no issuer yet');
    }
    await (await start(t, ISSUER_A)).close();

    const shown = await runWrit(['db', 'issuer'], env(t));
    expect(shown.code, shown.stderr).toBe(0);
    expect(shown.stdout).toBe(`${ISSUER_A}\n`);

    const bad = await runWrit(['db', 'issuer', '--set', 'https://sts.example.com/writ'], env(t));
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain('--set: the issuer must be the root of its host');

    const unchanged = await runWrit(['db', 'issuer', '--set', ISSUER_A], env(t));
    expect(unchanged.code, unchanged.stderr).toBe(0);
    expect(unchanged.stdout).toContain('nothing changed');

    const set = await runWrit(['db', 'issuer', '--set', `${ISSUER_B}/`], { ...env(t), USER: 'issuer-test' });
    expect(set.code, set.stderr).toBe(0);
    expect(set.stdout).toContain(`the database now serves ${ISSUER_B} (was ${ISSUER_A})`);
    expect(set.stderr).toContain(`warning: tokens issued as ${ISSUER_A} stop being accepted by instances of ${ISSUER_B}`);
    expect((await runWrit(['db', 'issuer'], env(t))).stdout).toBe(`${ISSUER_B}\n`);

    const events = await inspect(t, (db) => db.knex('audit_events').where({ type: 'admin.action' }).whereRaw(`details->>'action' = 'issuer_changed'`));
    expect(events).toHaveLength(1);
    expect(events[0]).toMatchObject({ outcome: 'ok', client_id: 'cli:issuer-test' });
    const details = typeof events[0]!.details === 'string' ? JSON.parse(events[0]!.details as string) as unknown : events[0]!.details;
    expect(details).toEqual({ action: 'issuer_changed', old: ISSUER_A, new: ISSUER_B });

    await (await start(t, ISSUER_B)).close();
    await expect(start(t, ISSUER_A)).rejects.toThrow(`serves the issuer ${ISSUER_B}`);
  }, 60_000);

  it.skipIf(!embedded)('writ db issuer asks for writ serve to be stopped while it holds the embedded database', async () => {
    const t = await target('held');
    await (await start(t, ISSUER_A)).close();
    // A live process's record: what writ serve leaves in its data dir.
    writeFileSync(path.join(t.dataDir, 'serve.json'), JSON.stringify({ pid: process.pid, url: 'http://127.0.0.1:9', token: randomBytes(8).toString('hex') }));
    const run = await runWrit(['db', 'issuer', '--set', ISSUER_B], env(t));
    expect(run.code).toBe(1);
    expect(run.stderr).toContain(`writ serve (pid ${process.pid}) holds the embedded database`);
    rmSync(path.join(t.dataDir, 'serve.json'));
    expect(await inspect(t, (db) => storedIssuer(db.knex))).toBe(ISSUER_A);
  });
});
