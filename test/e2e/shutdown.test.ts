import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { describe, expect, it } from 'vitest';
import { AT, PAYMENTS, SECRETS, TX, TestIdp, basicAuth, createTestDatabase, examplePolicyFor, freePort } from '../support/harness.ts';

const ROOT = path.resolve(import.meta.dirname, '../..');
const MAIN = path.join(ROOT, 'src/main.ts');

describe('SIGTERM under load', () => {
  it('finishes in-flight requests, refuses new ones, flushes the audit queue and exits 0', async () => {
    const idp = await TestIdp.create();
    const port = await freePort();
    const issuer = `http://localhost:${port}`;
    const dataDir = mkdtempSync(path.join(tmpdir(), 'writ-sigterm-'));
    const policyDir = mkdtempSync(path.join(tmpdir(), 'writ-sigterm-policy-'));
    writeFileSync(path.join(policyDir, 'example.yaml'), examplePolicyFor(idp));
    const databaseUrl = await createTestDatabase('sigterm');
    const env = {
      PATH: process.env.PATH ?? '', ...SECRETS, DATABASE_URL: databaseUrl, WRIT_ISSUER: issuer, PORT: String(port),
      WRIT_KEK: randomBytes(32).toString('base64'), WRIT_DATA_DIR: dataDir, LOG_LEVEL: 'warn', WRIT_METRICS_ADDR: '127.0.0.1:0',
    };
    const server = spawn(process.execPath, [MAIN, 'serve', '--apply', policyDir], { cwd: ROOT, env, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    server.stderr!.on('data', (d: Buffer) => { stderr += d; });
    const exited = new Promise<number | null>((resolve) => server.on('close', resolve));
    try {
      const url = `http://127.0.0.1:${port}`;
      const deadline = Date.now() + 30_000;
      while ((await fetch(`${url}/readyz`).catch(() => undefined))?.status !== 200) {
        if (Date.now() > deadline) throw new Error(`not ready: ${stderr}`);
        await new Promise((r) => setTimeout(r, 200));
      }
      const tokens = await Promise.all(Array.from({ length: 200 }, () => idp.token(issuer)));
      const exchange = (token: string) => fetch(`${url}/token`, {
        method: 'POST',
        headers: { authorization: basicAuth('planner-agent'), 'content-type': 'application/x-www-form-urlencoded' },
        body: new URLSearchParams({ grant_type: TX, subject_token: token, subject_token_type: AT, audience: PAYMENTS }),
      }).then(async (r) => ({ status: r.status, body: await r.json() as Record<string, unknown> }), () => ({ status: 0, body: {} as Record<string, unknown> }));
      const introspect = (token: string) => fetch(`${url}/token/introspection`, {
        method: 'POST',
        headers: { authorization: basicAuth('payments-api'), 'content-type': 'application/x-www-form-urlencoded' },
        body: new URLSearchParams({ token }),
      }).then((r) => r.status, () => 0);
      const first = await exchange(tokens[0]!);
      expect(first.status).toBe(200);
      // A load of exchanges and introspections, with SIGTERM in the middle of it.
      const load = tokens.slice(1).map((t, i) => (i % 2 === 0 ? exchange(t) : introspect(first.body.access_token as string).then((status) => ({ status, body: {} as Record<string, unknown> }))));
      await new Promise((r) => setTimeout(r, 30));
      server.kill('SIGTERM');
      const results = await Promise.all(load);
      const code = await exited;
      expect(code).toBe(0);
      // Every request either completed or was refused cleanly: none failed half way with a 5xx other than 503.
      for (const r of results) expect([0, 200, 503]).toContain(r.status);
      const granted = results.filter((r) => r.status === 200 && r.body.access_token).length + 1;
      const client = new pg.Client({ connectionString: databaseUrl });
      await client.connect();
      try {
        const { rows } = await client.query("SELECT count(*)::int AS n FROM audit_events WHERE type = 'exchange.granted'");
        expect(rows[0].n).toBe(granted);
        // Introspection events go through the batched writer: flushed before exit.
        const introspections = results.filter((r, i) => i % 2 === 1 && r.status === 200).length;
        const { rows: intro } = await client.query("SELECT count(*)::int AS n FROM audit_events WHERE type = 'introspection'");
        expect(intro[0].n).toBe(introspections);
      } finally {
        await client.end();
      }
      expect(stderr).toContain('SIGTERM');
    } finally {
      if (server.exitCode === null) server.kill('SIGKILL');
      rmSync(dataDir, { recursive: true, force: true });
      rmSync(policyDir, { recursive: true, force: true });
    }
  }, 60_000);
});
