import { randomBytes } from 'node:crypto';
import { readdirSync, rmSync } from 'node:fs';
import pg from 'pg';
import type { TestProject } from 'vitest/node';

declare module 'vitest' {
  export interface ProvidedContext {
    /** A database created for this run alone; tests make their own schemas or databases from it. */
    adminDatabaseUrl: string;
    runId: string;
  }
}

const ADMIN_URL = process.env.WRIT_TEST_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';

/**
 * Each run gets its own prefix; every database a test creates under it is dropped at the end,
 * and every data dir the harness made for it (`/tmp/writ-test-<runId>-…`) removed.
 */
export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const runId = `writ_test_${Date.now().toString(36)}_${randomBytes(3).toString('hex')}`;
  project.provide('adminDatabaseUrl', ADMIN_URL);
  project.provide('runId', runId);
  return async () => {
    const client = new pg.Client({ connectionString: ADMIN_URL });
    await client.connect();
    try {
      const { rows } = await client.query<{ datname: string }>(
        'SELECT datname FROM pg_database WHERE datname LIKE $1', [`${runId}%`],
      );
      for (const { datname } of rows) {
        await client.query(`DROP DATABASE IF EXISTS "${datname}" WITH (FORCE)`);
      }
    } finally {
      await client.end();
    }
    for (const name of readdirSync('/tmp')) {
      if (name.startsWith(`writ-test-${runId}-`)) rmSync(`/tmp/${name}`, { recursive: true, force: true });
    }
  };
}
