import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import pg from 'pg';
import { AT, EXECUTOR_AUD, PAYMENTS, SECRETS, TX, TestIdp, basicAuth, createTestDatabase, examplePolicyFor, freePort } from '../support/harness.ts';

const ROOT = path.resolve(import.meta.dirname, '../..');
const MAIN = path.join(ROOT, 'src/main.ts');

function run(args: string[], env: Record<string, string>): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [MAIN, ...args], { cwd: ROOT, env: { PATH: process.env.PATH ?? '', ...env } });
    let out = '';
    child.stdout.on('data', (d: Buffer) => { out += d; });
    child.stderr.on('data', (d: Buffer) => { out += d; });
    child.on('close', (code) => resolve({ code, out }));
  });
}

/** Two Writ processes on one PostgreSQL database: policy changes made through one reach the other. */
describe('policy propagation between processes', () => {
  const servers: ChildProcess[] = [];
  const dirs: string[] = [];
  let env: Record<string, string>;
  let urlA: string;
  let urlB: string;
  let idp: TestIdp;
  let policyDir: string;
  let issuer: string;

  beforeAll(async () => {
    idp = await TestIdp.create();
    const [portA, portB] = [await freePort(), await freePort()];
    issuer = `http://localhost:${portA}`;
    env = {
      ...SECRETS,
      DATABASE_URL: await createTestDatabase('propagation'),
      WRIT_ISSUER: issuer,
      WRIT_KEK: randomBytes(32).toString('base64'),
      WRIT_DATA_DIR: mkdtempSync(path.join(tmpdir(), 'writ-prop-')),
      LOG_LEVEL: 'warn', WRIT_METRICS_ADDR: '127.0.0.1:0',
    };
    dirs.push(env.WRIT_DATA_DIR!);
    policyDir = mkdtempSync(path.join(tmpdir(), 'writ-prop-policy-'));
    dirs.push(policyDir);
    writeFileSync(path.join(policyDir, 'example.yaml'), examplePolicyFor(idp));
    const applied = await run(['policy', 'apply', policyDir, '-m', 'v1'], env);
    expect(applied.code, applied.out).toBe(0);
    for (const port of [portA, portB]) {
      servers.push(spawn(process.execPath, [MAIN, 'serve'], { cwd: ROOT, env: { PATH: process.env.PATH ?? '', ...env, PORT: String(port) }, stdio: 'ignore' }));
    }
    urlA = `http://127.0.0.1:${portA}`;
    urlB = `http://127.0.0.1:${portB}`;
    for (const url of [urlA, urlB]) {
      const deadline = Date.now() + 30_000;
      while ((await fetch(`${url}/readyz`).catch(() => undefined))?.status !== 200) {
        if (Date.now() > deadline) throw new Error(`${url} did not become ready`);
        await new Promise((r) => setTimeout(r, 200));
      }
    }
  }, 60_000);

  afterAll(async () => {
    for (const s of servers) s.kill('SIGTERM');
    await Promise.all(servers.map((s) => new Promise((r) => (s.exitCode !== null ? r(null) : s.on('close', r)))));
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  async function exchange(url: string, clientId: string, form: Record<string, string>) {
    const response = await fetch(`${url}/token`, {
      method: 'POST',
      headers: { authorization: basicAuth(clientId), 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ grant_type: TX, ...form }),
    });
    return { status: response.status, requestId: response.headers.get('x-request-id'), body: await response.json() as Record<string, unknown> };
  }

  async function auditVersion(requestId: string | null): Promise<number | null> {
    const client = new pg.Client({ connectionString: env.DATABASE_URL });
    await client.connect();
    try {
      const { rows } = await client.query('SELECT policy_version FROM audit_events WHERE request_id = $1', [requestId]);
      return rows[0]?.policy_version ?? null;
    } finally {
      await client.end();
    }
  }

  it('a rule removal and a client disablement applied through one process take effect on the other within 1 s', async () => {
    const before = await exchange(urlB, 'planner-agent', { subject_token: await idp.token(issuer), subject_token_type: AT, audience: PAYMENTS });
    expect(before.status).toBe(200);
    expect(await auditVersion(before.requestId)).toBe(1);

    // Remove the planner's direct rule for the payments API, through the CLI and database.
    const { readFileSync } = await import('node:fs');
    const text = readFileSync(path.join(policyDir, 'example.yaml'), 'utf8');
    const withoutRule = text.replace(/  - id: planner-reads-payments[\s\S]*?require_task: false\n/, '');
    expect(withoutRule).not.toContain('planner-reads-payments');
    writeFileSync(path.join(policyDir, 'example.yaml'), withoutRule);
    const v2 = await run(['policy', 'apply', policyDir, '-m', 'drop planner-reads-payments'], env);
    expect(v2.code, v2.out).toBe(0);
    let refused: Awaited<ReturnType<typeof exchange>> | undefined;
    await expect.poll(async () => {
      refused = await exchange(urlB, 'planner-agent', { subject_token: await idp.token(issuer), subject_token_type: AT, audience: PAYMENTS });
      return refused.status;
    }, { timeout: 1000, interval: 25 }).toBe(400);
    expect(refused!.body.error).toBe('invalid_target');
    expect(await auditVersion(refused!.requestId)).toBe(2);

    // Disable the executor; a token it holds and its exchanges die on the other process.
    const hop1 = await exchange(urlA, 'planner-agent', { subject_token: await idp.token(issuer), subject_token_type: AT, audience: EXECUTOR_AUD });
    expect(hop1.status).toBe(200);
    writeFileSync(path.join(policyDir, 'example.yaml'), withoutRule.replace('  - client_id: executor-agent\n    kind: agent\n', '  - client_id: executor-agent\n    kind: agent\n    enabled: false\n'));
    const v3 = await run(['policy', 'apply', policyDir, '-m', 'disable executor'], env);
    expect(v3.code, v3.out).toBe(0);
    await expect.poll(async () => (await exchange(urlB, 'executor-agent', { subject_token: hop1.body.access_token as string, subject_token_type: AT, audience: PAYMENTS })).body.error, { timeout: 1000, interval: 25 }).toBe('unauthorized_client');
  }, 60_000);
});
