import { spawn } from 'node:child_process';
import { cpSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import pg from 'pg';
import { describe, expect, it } from 'vitest';
import { SECRETS, createTestDatabase, freePort } from '../support/harness.ts';
import { MAIN, ROOT, runWrit } from '../support/cli.ts';
import { tempDirs } from '../support/temp-dirs.ts';

const KEK = Buffer.alloc(32, 7).toString('base64');
const EXAMPLE_CLIENTS = ['planner-agent', 'executor-agent', 'payments-api'];

/**
 * A directory whose files define nothing validates (a file of comments is a valid policy), and
 * applying it removed every client and deleted their stored secrets without a word.
 */
describe('a policy directory that defines no clients', () => {
  const tempDir = tempDirs('writ-policy-empty-');
  const fullDir = (): string => {
    const d = tempDir();
    cpSync(path.join(ROOT, 'policy/example.yaml'), path.join(d, 'example.yaml'));
    return d;
  };
  const emptyDir = (): string => {
    const d = tempDir();
    writeFileSync(path.join(d, 'nothing.yaml'), '# nothing\n');
    return d;
  };

  it('validate passes with a warning for no clients and no rules', async () => {
    const run = await runWrit(['policy', 'validate', emptyDir()], { WRIT_DATA_DIR: tempDir() });
    expect(run.code).toBe(0);
    expect(run.stderr).toContain('warning: the policy defines no clients');
    expect(run.stderr).toContain('warning: the policy defines no rules');
    expect(run.stdout).toContain('is valid: 0 issuer(s), 0 client(s)');
  });

  it('apply refuses to remove every client, names them and --allow-empty; the secrets stay', async () => {
    const databaseUrl = await createTestDatabase('policy_empty');
    const env = { ...SECRETS, DATABASE_URL: databaseUrl, WRIT_DATA_DIR: tempDir(), WRIT_KEK: KEK };
    expect((await runWrit(['policy', 'apply', fullDir()], env)).code).toBe(0);
    const empty = emptyDir();

    const refused = await runWrit(['policy', 'apply', empty], env);
    expect(refused.code).toBe(1);
    expect(refused.stdout).toBe('');
    expect(refused.stderr).toContain(`error: policy in ${empty} defines no clients: applying it would remove all 3 client(s) of policy version 1 (${EXAMPLE_CLIENTS.join(', ')}) and delete their stored secrets`);
    expect(refused.stderr).toContain(`policy not applied: to remove every client, run writ policy apply --allow-empty ${empty}`);
    const client = new pg.Client({ connectionString: databaseUrl });
    await client.connect();
    try {
      const state = async (): Promise<{ version: number; secrets: number }> => {
        const { rows: [v] } = await client.query('SELECT max(version)::int AS version FROM policy_versions');
        const { rows: [c] } = await client.query('SELECT count(*)::int AS n FROM client_credentials');
        return { version: v.version, secrets: c.n };
      };
      expect(await state()).toEqual({ version: 1, secrets: 3 });

      const allowed = await runWrit(['policy', 'apply', '--allow-empty', empty], env);
      expect(allowed.code, allowed.stderr).toBe(0);
      expect(allowed.stdout).toContain('applied policy version 2');
      expect(await state()).toEqual({ version: 2, secrets: 0 });

      // Nothing left to remove: applied with its warnings.
      const again = await runWrit(['policy', 'apply', empty], env);
      expect(again.code, again.stderr).toBe(0);
      expect(again.stderr).toContain('warning: the policy defines no clients');
    } finally {
      await client.end();
    }
  });

  it('apply through a running writ serve on the embedded database refuses the same way', async () => {
    const dataDir = tempDir();
    const port = await freePort();
    const env = { ...SECRETS, WRIT_DATA_DIR: dataDir, PORT: String(port), WRIT_ISSUER: `http://localhost:${port}`, LOG_LEVEL: 'warn', WRIT_METRICS_ADDR: '127.0.0.1:0' };
    const server = spawn(process.execPath, [MAIN, 'serve'], { cwd: ROOT, env: { PATH: process.env.PATH ?? '', ...env }, stdio: ['ignore', 'ignore', 'pipe'] });
    const exited = new Promise<number | null>((resolve) => server.on('close', resolve));
    try {
      await expect.poll(async () => (await fetch(`http://127.0.0.1:${port}/healthz`).catch(() => undefined))?.status, { timeout: 30_000, interval: 200 }).toBe(200);
      await expect.poll(() => { try { return JSON.parse(readFileSync(path.join(dataDir, 'serve.json'), 'utf8')).pid as number; } catch { return 0; } }, { timeout: 5000 }).toBe(server.pid);
      expect((await runWrit(['policy', 'apply', fullDir()], env)).code).toBe(0);
      const empty = emptyDir();
      const refused = await runWrit(['policy', 'apply', empty], env);
      expect(refused.code).toBe(1);
      expect(refused.stderr).toContain(`applying it would remove all 3 client(s) of policy version 1 (${EXAMPLE_CLIENTS.join(', ')})`);
      expect(refused.stderr).toContain('--allow-empty');
      const allowed = await runWrit(['policy', 'apply', '--allow-empty', empty], env);
      expect(allowed.code, allowed.stderr).toBe(0);
      expect(allowed.stdout).toContain('applied policy version 2');
    } finally {
      server.kill('SIGTERM');
    }
    expect(await exited).toBe(0);
  }, 90_000);
});
