import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { freePort } from '../support/harness.ts';
import { runWrit } from '../support/cli.ts';

const PASSWORD = 's3cretpw';

/** What an operator sees when DATABASE_URL leads nowhere: the cause, once, without a stack or the password. */
describe('a database that cannot be reached', () => {
  const dataDir = mkdtempSync(path.join(tmpdir(), 'writ-unreachable-'));
  afterAll(() => rmSync(dataDir, { recursive: true, force: true }));

  const expectClean = (output: string): void => {
    expect(output).not.toContain(PASSWORD);
    expect(output).not.toMatch(/^\s+at /m);
    expect(output).not.toMatch(/\\n\s+at /);
  };

  it('migrate, on a database that does not exist', async () => {
    // The test server trusts any password: the database is what is missing.
    const run = await runWrit(['migrate'], { DATABASE_URL: `postgres://postgres:${PASSWORD}@127.0.0.1:5432/writ_does_not_exist_${randomBytes(4).toString('hex')}`, WRIT_DATA_DIR: dataDir });
    // A database that is not there is a configuration error (78), named without its password.
    expect(run.code).toBe(78);
    expect(run.stderr).toMatch(/^writ: cannot use the database at DATABASE_URL \(127\.0\.0\.1:5432\/writ_does_not_exist_[0-9a-f]+\): database "writ_does_not_exist_[0-9a-f]+" does not exist\n$/);
    expectClean(run.stdout + run.stderr);
  });

  it('migrate, on a port nothing listens on', async () => {
    const port = await freePort();
    const run = await runWrit(['migrate'], { DATABASE_URL: `postgres://postgres:${PASSWORD}@127.0.0.1:${port}/x`, WRIT_DATA_DIR: dataDir });
    // One that does not answer may come back: unavailable (69), said once.
    expect(run.code).toBe(69);
    expect(run.stderr).toBe(`writ: cannot reach the database at DATABASE_URL (127.0.0.1:${port}/x): connect ECONNREFUSED 127.0.0.1:${port}\n`);
    expectClean(run.stdout + run.stderr);
  });

  it('serve logs the cause as one JSON line', async () => {
    const [dbPort, port, metricsPort] = [await freePort(), await freePort(), await freePort()];
    const run = await runWrit(['serve'], {
      DATABASE_URL: `postgres://postgres:${PASSWORD}@127.0.0.1:${dbPort}/x`, WRIT_DATA_DIR: dataDir, WRIT_KEK: randomBytes(32).toString('base64'),
      PORT: String(port), WRIT_ISSUER: `http://localhost:${port}`, WRIT_METRICS_ADDR: `127.0.0.1:${metricsPort}`,
    }, 30_000);
    expect(run.code).toBe(69);
    const warning = run.stdout.split('\n').filter(Boolean).map((l) => JSON.parse(l) as { msg: string; message?: string }).find((l) => l.msg === 'database');
    expect(warning?.message).toBe(`Acquire connection error: Error: connect ECONNREFUSED 127.0.0.1:${dbPort}`);
    expectClean(run.stdout + run.stderr);
  });
});
