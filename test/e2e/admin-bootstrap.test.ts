import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { basicAuth, createTestDatabase, freePort } from '../support/harness.ts';
import { MAIN, ROOT, runWrit, type CliRun } from '../support/cli.ts';
import { tempDirs } from '../support/temp-dirs.ts';

const KEK = Buffer.alloc(32, 5).toString('base64');
const SCOPES = 'writ:policy.read writ:policy.write writ:audit.read writ:revoke writ:keys';
const ROTATED = 'already existed: its secret was replaced (rotated), and the old secret no longer works';

const secretOf = (run: CliRun): string => /^client_secret: (\S+)$/m.exec(run.stdout)![1]!;

/** Re-running `writ admin bootstrap` for an existing id replaces its secret: the output has to say so. */
describe('writ admin bootstrap for an admin client that already exists', () => {
  const tempDir = tempDirs('writ-bootstrap-');

  it('on PostgreSQL: the first run creates, the second says the secret was rotated', async () => {
    const env = { DATABASE_URL: await createTestDatabase('bootstrap_again'), WRIT_DATA_DIR: tempDir(), WRIT_KEK: KEK };
    const first = await runWrit(['admin', 'bootstrap', '--client-id', 'ops-admin'], env);
    expect(first.code, first.stderr).toBe(0);
    expect(first.stdout.split('\n')[0]).toBe(`admin client ops-admin (${SCOPES})`);
    const second = await runWrit(['admin', 'bootstrap', '--client-id', 'ops-admin'], env);
    expect(second.code, second.stderr).toBe(0);
    expect(second.stdout.split('\n')[0]).toBe(`admin client ops-admin (${SCOPES}) ${ROTATED}`);
    expect(secretOf(second)).not.toBe(secretOf(first));
    // Another id is a new client.
    const other = await runWrit(['admin', 'bootstrap', '--client-id', 'ops-other', '--scope', 'writ:audit.read'], env);
    expect(other.stdout.split('\n')[0]).toBe('admin client ops-other (writ:audit.read)');
  });

  it('through a running writ serve on the embedded database, where the old secret is then refused', async () => {
    const dataDir = tempDir();
    const port = await freePort();
    const env = { WRIT_DATA_DIR: dataDir, PORT: String(port), WRIT_ISSUER: `http://localhost:${port}`, LOG_LEVEL: 'warn', WRIT_METRICS_ADDR: '127.0.0.1:0' };
    const server = spawn(process.execPath, [MAIN, 'serve'], { cwd: ROOT, env: { PATH: process.env.PATH ?? '', ...env }, stdio: ['ignore', 'ignore', 'pipe'] });
    const exited = new Promise<number | null>((resolve) => server.on('close', resolve));
    try {
      await expect.poll(async () => (await fetch(`http://127.0.0.1:${port}/healthz`).catch(() => undefined))?.status, { timeout: 30_000, interval: 200 }).toBe(200);
      await expect.poll(() => { try { return JSON.parse(readFileSync(path.join(dataDir, 'serve.json'), 'utf8')).pid as number; } catch { return 0; } }, { timeout: 5000 }).toBe(server.pid);
      const first = await runWrit(['admin', 'bootstrap', '--client-id', 'ops-admin'], env);
      expect(first.code, first.stderr).toBe(0);
      expect(first.stdout.split('\n')[0]).toBe(`admin client ops-admin (${SCOPES})`);
      expect(first.stderr).not.toContain('existed');
      const second = await runWrit(['admin', 'bootstrap', '--client-id', 'ops-admin'], env);
      expect(second.code, second.stderr).toBe(0);
      expect(second.stdout.split('\n')[0]).toBe(`admin client ops-admin (${SCOPES}) ${ROTATED}`);
      const token = (secret: string): Promise<number> => fetch(`http://127.0.0.1:${port}/token`, {
        method: 'POST',
        headers: { authorization: basicAuth('ops-admin', secret), 'content-type': 'application/x-www-form-urlencoded' },
        body: new URLSearchParams({ grant_type: 'client_credentials', scope: 'writ:audit.read' }),
      }).then((r) => r.status);
      expect(await token(secretOf(first))).toBe(401);
      expect(await token(secretOf(second))).toBe(200);
    } finally {
      server.kill('SIGTERM');
    }
    expect(await exited).toBe(0);
  }, 90_000);
});
