import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, freePort } from '../support/harness.ts';
import { MAIN, ROOT, runWrit } from '../support/cli.ts';

/** Long enough for a start on a migrated database, far shorter than "never". */
const EXIT_WITHIN_MS = 10_000;

function occupy(): Promise<{ server: Server; port: number }> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve({ server, port: (server.address() as { port: number }).port }));
  });
}

/** Runs `writ serve`; its exit code (null: still running after EXIT_WITHIN_MS, then killed) and stderr. */
function serveUntilExit(env: Record<string, string>): Promise<{ code: number | null; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [MAIN, 'serve'], { cwd: ROOT, env: { PATH: process.env.PATH ?? '', ...env }, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, EXIT_WITHIN_MS);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code: timedOut ? null : code, stderr });
    });
  });
}

describe('writ serve when an address it listens on is taken', () => {
  let env: Record<string, string>;
  let dataDir: string;
  beforeAll(async () => {
    dataDir = mkdtempSync(path.join(tmpdir(), 'writ-listen-'));
    env = {
      DATABASE_URL: await createTestDatabase('listen_failure'),
      WRIT_KEK: randomBytes(32).toString('base64'),
      WRIT_DATA_DIR: dataDir,
      // One issuer for both runs on this database, whatever port each listens on.
      WRIT_ISSUER: 'http://localhost:4000',
      LOG_LEVEL: 'warn',
    };
    // Migrated up front, so that the time to exit is the start alone.
    expect((await runWrit(['migrate'], env)).code).toBe(0);
  });
  afterAll(() => rmSync(dataDir, { recursive: true, force: true }));

  it.each([
    { setting: 'PORT', taken: 'api' },
    { setting: 'WRIT_METRICS_ADDR', taken: 'metrics' },
  ] as const)('$setting: exits 1, naming the address and the setting', async ({ setting, taken: which }) => {
    const taken = await occupy();
    const free = await freePort();
    const [port, metricsPort] = which === 'api' ? [taken.port, free] : [free, taken.port];
    try {
      const run = await serveUntilExit({ ...env, PORT: String(port), WRIT_METRICS_ADDR: `127.0.0.1:${metricsPort}` });
      expect(run.code, run.stderr).toBe(1);
      expect(run.stderr).toContain(`127.0.0.1:${taken.port}`);
      expect(run.stderr).toContain(setting);
      expect(run.stderr).toContain('EADDRINUSE');
    } finally {
      taken.server.close();
    }
  }, 30_000);
});
