import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { writeFileSync, readFileSync, cpSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { SECRETS, freePort } from '../support/harness.ts';
import { MAIN, ROOT, runWrit } from '../support/cli.ts';
import { tempDirs } from '../support/temp-dirs.ts';


const writ = runWrit;

describe('the writ command', () => {
  const tempDir = tempDirs('writ-cli-');

  it('demo: starts on the embedded database with the example policy and walks the chain', async () => {
    const port = await freePort();
    const dataDir = tempDir();
    const run = await writ(['demo', '--exit'], { WRIT_DATA_DIR: dataDir, PORT: String(port), WRIT_ISSUER: `http://localhost:${port}` });
    expect(run.stderr).toBe('');
    expect(run.code).toBe(0);
    // Started here without Writ's node flags: advice on them is for `writ serve`, not the walk-through.
    expect(run.stdout).not.toContain('was started without');
    expect(run.stdout).toContain('applied policy version 1');
    expect(run.stdout).toContain('chain: alice → planner-agent → executor-agent → https://payments.example.com');
    expect(run.stdout).toMatch(/payments-api introspects the executor's token → \{"active":true,.*"act":\{"sub":"executor-agent","act":\{"sub":"planner-agent"\}\}/);
    expect(run.stdout).toContain('400 invalid_scope');
    expect(run.stdout).toContain('introspects the executor\'s again → {"active":false}');
    // Secrets the demo generated never reach its output.
    const state = JSON.parse(readFileSync(path.join(dataDir, 'demo-state.json'), 'utf8')) as { secrets: Record<string, string> };
    for (const secret of Object.values(state.secrets)) expect(run.stdout + run.stderr).not.toContain(secret);
  }, 90_000);

  it('demo: keeps serving, and the exchange it prints for the reader works as printed', async () => {
    const dataDir = tempDir();
    const port = await freePort();
    const child = spawn(process.execPath, [MAIN, 'demo'], { cwd: ROOT, env: { PATH: process.env.PATH ?? '', WRIT_DATA_DIR: dataDir, PORT: String(port), WRIT_ISSUER: `http://localhost:${port}` } });
    let out = '';
    child.stdout!.on('data', (d: Buffer) => { out += d.toString(); });
    const exited = new Promise<number | null>((resolve) => child.on('close', resolve));
    try {
      await expect.poll(() => out, { timeout: 60_000, interval: 200 }).toContain('After Ctrl-C');
      // The printed command, run as printed: its secret read from the file it names, the token
      // from the file it names, sent to the URL it names.
      const secretFile = /require\('([^']+)'\)\.secrets\.PLANNER_SECRET/.exec(out)![1]!;
      const tokenFile = /subject_token=\$\(cat ([^)]+)\)/.exec(out)![1]!;
      const url = /curl -s -u "planner-agent:\$SECRET" (\S+)/.exec(out)![1]!;
      const secret = (JSON.parse(readFileSync(secretFile, 'utf8')) as { secrets: Record<string, string> }).secrets.PLANNER_SECRET!;
      const form = new URLSearchParams({
        grant_type: /-d grant_type=(\S+)/.exec(out)![1]!,
        subject_token_type: /-d subject_token_type=(\S+)/.exec(out)![1]!,
        subject_token: readFileSync(tokenFile, 'utf8').trim(),
        audience: /-d audience=(\S+)/.exec(out)![1]!,
        scope: /-d scope=(\S+)/.exec(out)![1]!,
      });
      const res = await fetch(url, { method: 'POST', body: form, headers: { authorization: `Basic ${Buffer.from(`planner-agent:${secret}`).toString('base64')}` } });
      expect(res.status).toBe(200);
      expect(((await res.json()) as { scope: string }).scope).toBe('payment.read');
      expect(out).not.toContain(secret);
      // RFC 8414 §3.3: the printed discovery URL is the issuer's own, which its metadata names.
      const discovery = /Discovery: (\S+)/.exec(out)![1]!;
      const metadata = await (await fetch(discovery)).json() as { issuer: string };
      expect(`${metadata.issuer}/.well-known/oauth-authorization-server`).toBe(discovery);
    } finally {
      child.kill('SIGINT');
    }
    expect(await exited).toBe(0);
  }, 90_000);

  it('policy validate: the example is valid; a broken file names file, line and field', async () => {
    const ok = await writ(['policy', 'validate', 'policy'], { ...SECRETS, WRIT_DATA_DIR: tempDir() });
    expect(ok.code).toBe(0);
    expect(ok.stdout).toContain('valid: 1 issuer(s), 3 client(s), 2 audience(s), 3 rule(s)');
    const dir = tempDir();
    writeFileSync(path.join(dir, 'bad.yaml'), 'audiences:\n  - audience: https://a.example.com\n    scopes: [read]\n    max_ttl: 60\n    colour: blue\n');
    const bad = await writ(['policy', 'validate', dir], { WRIT_DATA_DIR: tempDir() });
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/bad\.yaml:5:\d+: error: .*colour/);
  });

  it('keeps working while writ serve holds the embedded database', async () => {
    const dataDir = tempDir();
    const port = await freePort();
    const env = { ...SECRETS, WRIT_DATA_DIR: dataDir, PORT: String(port), WRIT_ISSUER: `http://localhost:${port}`, LOG_LEVEL: 'warn', WRIT_METRICS_ADDR: '127.0.0.1:0', USER: 'cli-e2e' };
    const policyDir = tempDir();
    cpSync(path.join(ROOT, 'policy/example.yaml'), path.join(policyDir, 'example.yaml'));
    const server: ChildProcess = spawn(process.execPath, [MAIN, 'serve'], { cwd: ROOT, env: { PATH: process.env.PATH ?? '', ...env } });
    let serverErr = '';
    server.stderr!.on('data', (d: Buffer) => { serverErr += d.toString(); });
    const exited = new Promise<number | null>((resolve) => server.on('close', resolve));
    try {
      await expect.poll(async () => (await fetch(`http://127.0.0.1:${port}/healthz`).catch(() => undefined))?.status, { timeout: 30_000, interval: 200 }).toBe(200);
      await expect.poll(() => { try { return JSON.parse(readFileSync(path.join(dataDir, 'serve.json'), 'utf8')).pid as number; } catch { return 0; } }, { timeout: 5000 }).toBe(server.pid);
      const applied = await writ(['policy', 'apply', policyDir, '-m', 'from the CLI'], env);
      // The example's IdP does not exist: its jwks_uri is reported unreachable, a warning only.
      expect(applied.stderr).not.toMatch(/: error:/);
      expect(applied.code).toBe(0);
      expect(applied.stdout).toContain('applied policy version 1');
      const metadata = await (await fetch(`http://127.0.0.1:${port}/.well-known/oauth-authorization-server`)).json() as Record<string, unknown>;
      expect(metadata.issuer).toBe(`http://localhost:${port}`);
      // So do diff, history, export and rollback.
      const diff = await writ(['policy', 'diff', policyDir], env);
      expect([diff.code, diff.stdout]).toEqual([0, expect.stringContaining('compared with version 1')]);
      const exported = await writ(['policy', 'export'], env);
      expect([exported.code, exported.stdout]).toEqual([0, expect.stringContaining('# Writ policy version 1')]);
      // Version 1 is in force: a rollback to it, or the same files again, add no version.
      const rolled = await writ(['policy', 'rollback', '1', '-m', 'again'], env);
      expect([rolled.code, rolled.stdout], rolled.stderr).toEqual([0, expect.stringContaining("unchanged: version 1's policy is the one in force")]);
      const reapplied = await writ(['policy', 'apply', policyDir, '-m', 'the same again'], env);
      expect([reapplied.code, reapplied.stdout], reapplied.stderr).toEqual([0, expect.stringContaining('unchanged: policy version 1')]);
      const history = await writ(['policy', 'history'], env);
      expect(history.stdout.split('\n').filter((l) => /^\d/.test(l)).map((l) => l.split('\t')[0])).toEqual(['1']);
      const missing = await writ(['policy', 'rollback', '9'], env);
      expect([missing.code, missing.stderr]).toEqual([1, expect.stringContaining('there is no policy version 9')]);
      expect((await writ(['policy', 'history'], env)).stdout).toMatch(/^1\t\S+\tcli:cli-e2e\t/m);
      // Key rotation goes through the server too, and the server publishes the new key at once.
      const listed = await writ(['keys', 'list', '--json'], env);
      expect(listed.code, listed.stderr).toBe(0);
      expect((JSON.parse(listed.stdout) as { keys: Array<{ state: string }> }).keys.map((k) => k.state)).toEqual(['active', 'active', 'active']);
      const rotated = await writ(['keys', 'rotate', '--alg', 'ES256', '--activate-in', '1h'], env);
      expect(rotated.code, rotated.stderr).toBe(0);
      const kid = /^ES256 (\S+) is published now/.exec(rotated.stdout)![1]!;
      const published = async (): Promise<string[]> => ((await (await fetch(`http://127.0.0.1:${port}/jwks`)).json()) as { keys: Array<{ kid: string }> }).keys.map((k) => k.kid);
      expect(await published()).toContain(kid);
      expect((await writ(['keys', 'remove', kid], env)).code).toBe(0);
      expect(await published()).not.toContain(kid);
      // The record names the CLI's user, as when the CLI opens the database itself.
      const { token } = JSON.parse(readFileSync(path.join(dataDir, 'serve.json'), 'utf8')) as { token: string };
      const removals = await (await fetch(`http://127.0.0.1:${port}/admin/v1/audit/events?type=key.removed`, { headers: { authorization: `Bearer ${token}` } })).json() as { events: Array<{ client_id: string }> };
      expect(removals.events.map((e) => e.client_id)).toEqual(['cli:cli-e2e']);
      const migrated = await writ(['migrate'], env);
      expect(migrated.code).toBe(0);
      expect(migrated.stdout).toContain('nothing to do');
      const second = await writ(['serve'], env);
      expect(second.code).toBe(1);
      expect(second.stderr).toContain('already holds');
    } finally {
      server.kill('SIGTERM');
    }
    expect(await exited).toBe(0);
    expect(serverErr).toContain('SIGTERM');
  }, 90_000);

  it('refuses to start in production without WRIT_KEK or with a plain-http issuer', async () => {
    const noKek = await writ(['migrate'], { WRIT_ENV: 'production', WRIT_ISSUER: 'https://writ.example.com', WRIT_DATA_DIR: tempDir() });
    expect(noKek.code).toBe(78);
    expect(noKek.stderr).toContain('WRIT_KEK is required in production');
    const http = await writ(['migrate'], { WRIT_ENV: 'production', WRIT_ISSUER: 'http://writ.example.com', WRIT_KEK: randomBytes(32).toString('base64'), WRIT_DATA_DIR: tempDir() });
    expect(http.code).toBe(78);
    expect(http.stderr).toContain('https');
  });
});
