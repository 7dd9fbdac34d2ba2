import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { AT, PAYMENTS, SECRETS, TX, TestIdp, basicAuth, createTestDatabase, examplePolicyFor, freePort } from '../support/harness.ts';

const ROOT = path.resolve(import.meta.dirname, '../..');
const MAIN = path.join(ROOT, 'src/main.ts');
const FORM = 'application/x-www-form-urlencoded';

/** Processes whose parent is `pid` (the workers of a `writ serve` primary). */
function childrenOf(pid: number): number[] {
  const found: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (ppid === pid) found.push(Number(entry));
    } catch {
      // gone meanwhile
    }
  }
  return found;
}

async function until<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 15_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe().catch(() => undefined);
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

describe('writ serve with WRIT_WORKERS=2', () => {
  // Whatever happens to the test (a timeout skips its finally), no server process outlives it.
  const started: number[] = [];
  afterAll(() => {
    for (const pid of started) {
      for (const child of childrenOf(pid)) {
        try { process.kill(child, 'SIGKILL'); } catch { /* gone */ }
      }
      try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
    }
  });

  it('serves from two worker processes on one port, shares revocations and metrics, replaces a dead worker and drains on SIGTERM', async () => {
    const idp = await TestIdp.create();
    const port = await freePort();
    const metricsPort = await freePort();
    const issuer = `http://localhost:${port}`;
    const dataDir = mkdtempSync(path.join(tmpdir(), 'writ-workers-'));
    const policyDir = mkdtempSync(path.join(tmpdir(), 'writ-workers-policy-'));
    writeFileSync(path.join(policyDir, 'example.yaml'), examplePolicyFor(idp));
    const databaseUrl = await createTestDatabase('workers');
    const env = {
      PATH: process.env.PATH ?? '', ...SECRETS, DATABASE_URL: databaseUrl, WRIT_ISSUER: issuer, PORT: String(port),
      WRIT_KEK: randomBytes(32).toString('base64'), WRIT_DATA_DIR: dataDir, LOG_LEVEL: 'info',
      WRIT_METRICS_ADDR: `127.0.0.1:${metricsPort}`, WRIT_WORKERS: '2',
    };
    const server = spawn(process.execPath, [MAIN, 'serve', '--apply', policyDir], { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
    started.push(server.pid!);
    let output = '';
    server.stdout!.on('data', (d: Buffer) => { output += d; });
    server.stderr!.on('data', (d: Buffer) => { output += d; });
    const exited = new Promise<number | null>((resolve) => server.on('close', resolve));
    const url = `http://127.0.0.1:${port}`;
    // A new connection per request, so that the primary hands requests to both workers in turn.
    const post = (pathname: string, auth: string, form: Record<string, string>) => fetch(`${url}${pathname}`, {
      method: 'POST',
      headers: { authorization: auth, 'content-type': FORM, connection: 'close' },
      body: new URLSearchParams(form),
      signal: AbortSignal.timeout(10_000),
    }).then(async (r) => {
      const text = await r.text();
      return { status: r.status, body: (text ? JSON.parse(text) : {}) as Record<string, unknown> };
    });
    const exchange = async () => post('/token', basicAuth('planner-agent'), {
      grant_type: TX, subject_token: await idp.token(issuer), subject_token_type: AT, audience: PAYMENTS, scope: 'payment.read',
    });
    const introspect = (token: string) => post('/token/introspection', basicAuth('payments-api'), { token });
    try {
      await until('ready', async () => ((await fetch(`${url}/readyz`, { signal: AbortSignal.timeout(5_000) })).status === 200 && output.includes('"writ serving"') ? true : undefined), 30_000);
      const workers = childrenOf(server.pid!);
      expect(workers).toHaveLength(2);
      // The primary prepared the database once: one set of signing keys, the policy applied once.
      expect(output.match(/"worker serving"/g)).toHaveLength(2);

      const granted = await Promise.all(Array.from({ length: 12 }, () => exchange()));
      for (const g of granted) expect(g.status).toBe(200);
      const token = granted[0]!.body.access_token as string;
      for (let i = 0; i < 4; i += 1) expect((await introspect(token)).body.active).toBe(true);

      // Revoked through one worker, inactive on both within the propagation bound.
      expect((await post('/token/revocation', basicAuth('planner-agent'), { token })).status).toBe(200);
      await until('revocation on every worker', async () => {
        const answers = await Promise.all(Array.from({ length: 6 }, () => introspect(token)));
        return answers.every((a) => a.body.active === false) ? true : undefined;
      }, 2_000);

      // The primary's /metrics sums both workers' counters.
      const metrics = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`, { signal: AbortSignal.timeout(10_000) })).text();
      expect(metrics).toMatch(/writ_exchanges_total\{outcome="granted"[^}]*\} 12\b/);
      expect(metrics).toMatch(/writ_policy_version 1\b/);

      // A worker that dies is replaced; the other keeps serving meanwhile (connections the
      // primary handed to the dying worker before it noticed are lost with it).
      process.kill(workers[0]!, 'SIGKILL');
      await until('the primary to notice', async () => (output.includes('worker died') ? true : undefined));
      expect((await exchange()).status).toBe(200);
      const replaced = await until('a replacement worker', async () => {
        const now = childrenOf(server.pid!);
        return now.length === 2 && !now.includes(workers[0]!) ? now : undefined;
      });
      expect(replaced).toContain(workers[1]);
      await until('the replacement to serve', async () => (output.match(/"worker serving"/g)?.length === 3 ? true : undefined));
      for (let i = 0; i < 4; i += 1) expect((await exchange()).status).toBe(200);

      server.kill('SIGTERM');
      expect(await exited, output).toBe(0);
      for (const pid of replaced) expect(() => process.kill(pid, 0)).toThrow();
    } finally {
      if (server.exitCode === null) server.kill('SIGKILL');
      rmSync(dataDir, { recursive: true, force: true });
      rmSync(policyDir, { recursive: true, force: true });
    }
  }, 90_000);
});
