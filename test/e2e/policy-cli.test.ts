import { mkdtempSync, readFileSync, rmSync, writeFileSync, mkdirSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SECRETS, createTestDatabase } from '../support/harness.ts';
import { ROOT, runWrit, type CliRun } from '../support/cli.ts';

const EXAMPLE = readFileSync(path.join(ROOT, 'policy/example.yaml'), 'utf8');
const NEW_PLANNER_SECRET = 'planner-rotated-0123456789abcdefghijklmn';
const KEK = Buffer.alloc(32, 9).toString('base64');

const outputs: string[] = [];

async function writ(args: string[], env: Record<string, string>, timeoutMs = 60_000): Promise<CliRun> {
  const run = await runWrit(args, env, timeoutMs);
  outputs.push(run.stdout, run.stderr);
  return run;
}

describe('writ policy diff|apply|history|export|rollback|report through the CLI', () => {
  const dirs: string[] = [];
  const tempDir = (): string => {
    const d = mkdtempSync(path.join(tmpdir(), 'writ-policy-cli-'));
    dirs.push(d);
    return d;
  };
  let jwks: Server;
  let jwksUri: string;
  let env: Record<string, string>;
  let v1Dir: string;
  let v2Dir: string;

  beforeAll(async () => {
    // The issuer's keys live at a jwks_uri that answers 404: valid policy, with a warning.
    jwks = createServer((_, res) => {
      res.writeHead(404);
      res.end();
    });
    await new Promise<void>((resolve) => jwks.listen(0, '127.0.0.1', resolve));
    jwksUri = `http://127.0.0.1:${(jwks.address() as { port: number }).port}/jwks.json`;
    env = {
      ...SECRETS,
      DATABASE_URL: await createTestDatabase('policy_cli'),
      WRIT_DATA_DIR: tempDir(),
      WRIT_KEK: KEK,
      WRIT_ISSUER: 'http://localhost:4999',
      USER: 'ci-user',
    };
    const v1 = EXAMPLE.replace('https://idp.example.com/.well-known/jwks.json', jwksUri);
    expect(v1).toContain(jwksUri);
    v1Dir = tempDir();
    writeFileSync(path.join(v1Dir, 'example.yaml'), v1);
    v2Dir = tempDir();
    expect(v1).toContain('    ttl: 120\n');
    writeFileSync(path.join(v2Dir, 'example.yaml'), v1.replace('    ttl: 120\n', '    ttl: 60\n'));
  });
  afterAll(async () => {
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
    await new Promise((resolve) => jwks?.close(resolve));
  });

  it('validate warns about the unreachable jwks_uri at its file and line, and still passes', async () => {
    const run = await writ(['policy', 'validate', v1Dir], env);
    expect(run.code).toBe(0);
    expect(run.stderr).toMatch(/example\.yaml:4:\d+: warning: issuers\[0\]\.jwks_uri: jwks_uri http:\/\/127\.0\.0\.1:\d+\/jwks\.json is unreachable: it answered HTTP 404/);
    expect(run.stdout).toContain('is valid');
  });

  it('diff before anything was applied shows everything added, secrets only as "set"', async () => {
    const run = await writ(['policy', 'diff', v1Dir], env);
    // The first command on the new database migrates it, and says so; nothing else on stderr.
    expect(run.stderr).toMatch(/^writ: migrated the database: [^\n]+_001_core\.ts[^\n]*\n$/);
    expect(run.code).toBe(0);
    expect(run.stdout).toContain('compared with no policy');
    expect(run.stdout).toContain('+ client planner-agent\n    + kind: agent\n    + auth: client_secret_basic\n');
    expect(run.stdout).toContain('    + secret: set (value not shown)');
    expect(run.stdout).toContain('9 added, 0 removed, 1 changed');
  });

  it('apply warns before applying, prints the diff it applied and the version', async () => {
    const run = await writ(['policy', 'apply', v1Dir, '-m', 'first policy'], env);
    expect(run.code).toBe(0);
    expect(run.stderr).toContain('is unreachable: it answered HTTP 404');
    expect(run.stdout).toContain('+ rule planner-reads-payments (position 1)');
    expect(run.stdout).toMatch(/applied policy version 1 \([0-9a-f]{12}\)\n$/);
  });

  it('diff of a changed directory names the changed secret and field, and nothing else', async () => {
    const run = await writ(['policy', 'diff', v2Dir], { ...env, PLANNER_SECRET: NEW_PLANNER_SECRET });
    expect(run.stderr).toBe('');
    expect(run.code).toBe(0);
    expect(run.stdout).toBe([
      `policy in ${v2Dir} compared with version 1 (${run.stdout.match(/version 1 \(([0-9a-f]{12})\)/)?.[1]}):`,
      '~ client planner-agent',
      '    ~ secret: changed (value not shown)',
      '~ rule planner-reads-payments',
      '    ~ ttl: 120 → 60',
      '0 added, 0 removed, 2 changed',
      '',
    ].join('\n'));
    // With the old secret in the environment only the ttl differs.
    const same = await writ(['policy', 'diff', v2Dir], env);
    expect(same.stdout).not.toContain('secret');
    expect(same.stdout).toContain('0 added, 0 removed, 1 changed');
  });

  it('apply v2, then history lists both with who and why', async () => {
    const applied = await writ(['policy', 'apply', v2Dir, '-m', 'tighten planner ttl'], { ...env, PLANNER_SECRET: NEW_PLANNER_SECRET });
    expect(applied.code).toBe(0);
    expect(applied.stdout).toContain('~ secret: changed (value not shown)');
    expect(applied.stdout).toContain('applied policy version 2');
    const history = await writ(['policy', 'history'], env);
    expect(history.code).toBe(0);
    const lines = history.stdout.trim().split('\n');
    expect(lines[0]).toBe('VERSION\tAPPLIED AT\tAPPLIED BY\tDIGEST\tMESSAGE');
    expect(lines[1]).toMatch(/^2\t\d{4}-\d\d-\d\dT[\d:.]+Z\tcli:ci-user\t[0-9a-f]{12}\ttighten planner ttl$/);
    expect(lines[2]).toMatch(/^1\t.*\tcli:ci-user\t[0-9a-f]{12}\tfirst policy$/);
  });

  it('export prints YAML without secrets that diffs cleanly against its own version', async () => {
    const exported = await writ(['policy', 'export'], env);
    expect(exported.code).toBe(0);
    expect(exported.stdout).toMatch(/^# Writ policy version 2 \(sha256 [0-9a-f]{64}\)/);
    expect(exported.stdout).not.toMatch(/^\s*-?\s*secret:/m);
    const dir = tempDir();
    writeFileSync(path.join(dir, 'policy.yaml'), exported.stdout);
    // No secrets in the environment at all: the export needs none, and every stored one is kept.
    const { PLANNER_SECRET: _p, EXECUTOR_SECRET: _e, PAYMENTS_API_SECRET: _a, ...bare } = env;
    const clean = await writ(['policy', 'diff', dir], bare);
    expect(clean.code).toBe(0);
    expect(clean.stdout).toContain('\nno changes\n');

    const out = path.join(tempDir(), 'v1.yaml');
    const toFile = await writ(['policy', 'export', '--version', '1', '--out', out], env);
    expect(toFile.code).toBe(0);
    expect(toFile.stdout).toBe('');
    expect(toFile.stderr).toContain(`wrote policy version 1 to ${out}`);
    expect(readFileSync(out, 'utf8')).toContain('ttl: 120');
    const missing = await writ(['policy', 'export', '--version', '9'], env);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toContain('there is no policy version 9');
  });

  it('rollback 1 prints the diff it applied and becomes version 3', async () => {
    const run = await writ(['policy', 'rollback', '1', '-m', 'revert ttl'], env);
    expect(run.stderr).toBe('');
    expect(run.code).toBe(0);
    expect(run.stdout).toContain('~ rule planner-reads-payments\n    ~ ttl: 60 → 120');
    expect(run.stdout).not.toContain('secret:');
    expect(run.stdout).toContain("applied policy version 3");
    const history = await writ(['policy', 'history', '--limit', '1'], env);
    expect(history.stdout.trim().split('\n').slice(1)).toEqual([expect.stringMatching(/^3\t.*\trevert ttl$/)]);
    const missing = await writ(['policy', 'rollback', '17'], env);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toContain('there is no policy version 17');
  });

  it('report lists what nobody used, as text or JSON', async () => {
    const text = await writ(['policy', 'report', '--days', '7'], env);
    expect(text.code).toBe(0);
    expect(text.stdout).toContain('Rules no exchange used (3):');
    expect(text.stdout).toContain('Capability matrix');
    const json = await writ(['policy', 'report', '--days', '7', '--json'], env);
    expect(json.code).toBe(0);
    const report = JSON.parse(json.stdout) as { policyVersion: number; days: number; unusedRules: unknown[]; capabilityMatrix: unknown[] };
    expect(report).toMatchObject({ policyVersion: 3, days: 7 });
    expect(report.unusedRules).toHaveLength(3);
    expect(report.capabilityMatrix).toHaveLength(2);
  });

  it('refuses bad arguments with usage, and database commands while writ serve holds the embedded database', async () => {
    expect((await writ(['policy', 'rollback', 'one'], env)).code).toBe(2);
    expect((await writ(['policy', 'report'], env)).code).toBe(2);
    expect((await writ(['policy', 'history', 'extra'], env)).code).toBe(2);
    const help = await writ(['policy', 'help'], env);
    expect(help.code).toBe(0);
    expect(help.stdout).toContain('rollback VERSION');

    const dataDir = tempDir();
    mkdirSync(dataDir, { recursive: true });
    // This test process stands in for a running `writ serve`.
    writeFileSync(path.join(dataDir, 'serve.json'), JSON.stringify({ pid: process.pid, url: 'http://127.0.0.1:9', token: 'x' }));
    const embedded = { ...SECRETS, WRIT_DATA_DIR: dataDir, WRIT_KEK: KEK };
    // These go through the server, which here does not answer: said so, never the database opened under it.
    for (const args of [['history'], ['export'], ['rollback', '1'], ['diff', v1Dir]]) {
      const run = await writ(['policy', ...args], embedded);
      expect(run.code, args.join(' ')).toBe(1);
      expect(run.stderr).toContain(`writ serve (pid ${process.pid}) holds the embedded database but does not answer`);
    }
    const report = await writ(['policy', 'report', '--days', '1'], embedded);
    expect(report.code).toBe(1);
    expect(report.stderr).toContain(`writ serve (pid ${process.pid}) holds the embedded database`);
    expect(report.stderr).toContain('stop writ serve or use DATABASE_URL');
  });

  it('works on the embedded database too (apply, rollback, history)', async () => {
    const embedded = { ...SECRETS, WRIT_DATA_DIR: tempDir(), WRIT_KEK: KEK, USER: 'ci-user' };
    expect((await writ(['policy', 'apply', v1Dir, '-m', 'one'], embedded)).code).toBe(0);
    expect((await writ(['policy', 'apply', v2Dir, '-m', 'two'], embedded)).code).toBe(0);
    const rolled = await writ(['policy', 'rollback', '1'], embedded);
    expect(rolled.stderr).toBe('');
    expect(rolled.code).toBe(0);
    expect(rolled.stdout).toContain('~ ttl: 60 → 120');
    const history = await writ(['policy', 'history'], embedded);
    expect(history.stdout).toMatch(/^3\t.*\trollback to version 1$/m);
    const report = await writ(['policy', 'report', '--days', '1', '--json'], embedded);
    expect(report.code).toBe(0);
    expect(JSON.parse(report.stdout)).toMatchObject({ policyVersion: 3, unusedRules: [{}, {}, {}] });
  }, 120_000);

  it('never prints a secret', () => {
    const all = outputs.join('\n');
    expect(all.length).toBeGreaterThan(0);
    for (const secret of [...Object.values(SECRETS), NEW_PLANNER_SECRET, KEK]) expect(all).not.toContain(secret);
  });
});
