import { existsSync, readdirSync } from 'node:fs';
import path from 'node:path';
import knexFactory, { type Knex } from 'knex';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase } from '../support/harness.ts';
import { runWrit } from '../support/cli.ts';
import { tempDirs } from '../support/temp-dirs.ts';

/**
 * Which database a CLI command acts on. A command run without DATABASE_URL, or from another
 * directory, must not quietly act on a new, empty embedded database and report success (a kill
 * switch that revokes nothing); and one Writ's commands must still run on a database that a
 * newer Writ has migrated, during a rolling upgrade.
 */
describe('the database a CLI command acts on', () => {
  const dataDir = tempDirs('writ-clidb-');
  const KEK = Buffer.alloc(32, 7).toString('base64');

  describe('no DATABASE_URL and no embedded database in the data dir', () => {
    it.each([
      ['revoke', '--client', 'planner-agent'],
      ['keys', 'list'],
      ['audit', 'verify'],
    ])('writ %s … exits 78, names the missing database and creates none', async (...args) => {
      const dir = dataDir();
      const run = await runWrit(args, { WRIT_DATA_DIR: dir });
      expect(run.code, run.stderr).toBe(78);
      expect(run.stderr).toContain('no Writ database');
      expect(run.stderr).toContain('DATABASE_URL');
      expect(run.stdout).not.toMatch(/revoked/);
      expect(existsSync(path.join(dir, 'pgdata'))).toBe(false);
    });

    it('a command that sets a database up creates one, and says so', async () => {
      const dir = dataDir();
      const run = await runWrit(['keys', 'rotate', '--now'], { WRIT_DATA_DIR: dir });
      expect(run.code, run.stderr).toBe(0);
      expect(run.stderr).toContain(`creating a new embedded database in ${dir}`);
      expect(run.stderr).toMatch(/migrated the database: 2\d+_001/);
      // Then the others find it.
      const revoked = await runWrit(['revoke', '--client', 'planner-agent'], { WRIT_DATA_DIR: dir });
      expect(revoked.code, revoked.stderr).toBe(0);
      expect(revoked.stderr).not.toContain('creating');
    });

    it('in production not even a setting-up command creates one', async () => {
      const dir = dataDir();
      const run = await runWrit(['keys', 'rotate', '--now'], { WRIT_DATA_DIR: dir, WRIT_ENV: 'production', WRIT_ISSUER: 'https://sts.example.com', WRIT_KEK: KEK });
      expect(run.code, run.stderr).toBe(78);
      expect(run.stderr).toContain('in production only writ serve creates one');
      expect(readdirSync(dir)).toEqual([]);
    });
  });

  describe('on PostgreSQL', () => {
    let databaseUrl: string;
    let knex: Knex;
    beforeAll(async () => {
      databaseUrl = await createTestDatabase('cli_database');
      knex = knexFactory({ client: 'pg', connection: databaseUrl, pool: { min: 0, max: 1 } });
    });
    afterAll(async () => {
      await knex?.destroy();
    });
    const env = (): Record<string, string> => ({ DATABASE_URL: databaseUrl, WRIT_DATA_DIR: dataDir(), WRIT_KEK: KEK });

    it('a command that migrates says which migrations it applied', async () => {
      const run = await runWrit(['keys', 'list'], env());
      expect(run.code, run.stderr).toBe(0);
      expect(run.stderr).toMatch(/migrated the database: .*_010_revocation_only_forward\.ts/);
      const again = await runWrit(['keys', 'list'], env());
      expect(again.stderr).not.toContain('migrated');
    });

    it('a database a newer Writ migrated: commands run on it without migrating, and say so', async () => {
      await knex('knex_migrations').insert({ name: '29990101_001_from_a_newer_writ.ts', batch: 99, migration_time: new Date() });
      try {
        const list = await runWrit(['keys', 'list'], env());
        expect(list.code, list.stderr).toBe(0);
        expect(list.stderr).toContain('migrated by a newer Writ (29990101_001_from_a_newer_writ.ts)');
        const migrate = await runWrit(['migrate'], env());
        expect(migrate.code, migrate.stderr).toBe(0);
        expect(migrate.stdout).toContain('migrated by a newer Writ');
        // One that also lacks a migration of this Writ's cannot be used: refused, nothing run.
        const [last] = await knex('knex_migrations').where('name', 'like', '%_010_%').select('name');
        await knex('knex_migrations').where({ name: last.name }).del();
        try {
          const refused = await runWrit(['keys', 'list'], env());
          expect(refused.code, refused.stderr).toBe(78);
          expect(refused.stderr).toContain('migrated by another version of Writ');
          expect(refused.stderr).toContain(last.name);
          expect(Number((await knex('knex_migrations').where({ name: last.name }).count<Array<{ count: string }>>('* as count'))[0]!.count)).toBe(0);
        } finally {
          await knex('knex_migrations').insert({ name: last.name, batch: 1, migration_time: new Date() });
        }
      } finally {
        await knex('knex_migrations').where({ name: '29990101_001_from_a_newer_writ.ts' }).del();
      }
    });
  });
});
