import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { describe, expect, it } from 'vitest';
import { AT, PAYMENTS, SECRETS, TX, TestIdp, basicAuth, createTestDatabase, examplePolicyFor, freePort } from '../support/harness.ts';

const ROOT = path.resolve(import.meta.dirname, '../..');
const MAIN = path.join(ROOT, 'src/main.ts');

interface RawResponse { status: number; headers: Record<string, string>; body: Record<string, unknown> }

/** The HTTP/1.1 responses in what a connection received, interim 100 Continue left out. */
function parseResponses(raw: Buffer): RawResponse[] {
  const responses: RawResponse[] = [];
  let rest = raw;
  while (rest.length > 0) {
    const end = rest.indexOf('\r\n\r\n');
    if (end < 0) throw new Error(`truncated response head: ${JSON.stringify(rest.toString())}`);
    const [statusLine, ...lines] = rest.subarray(0, end).toString('latin1').split('\r\n');
    const status = Number(/^HTTP\/1\.1 (\d{3}) /.exec(statusLine!)?.[1]);
    const headers = Object.fromEntries(lines.map((l) => [l.slice(0, l.indexOf(':')).toLowerCase(), l.slice(l.indexOf(':') + 1).trim()]));
    rest = rest.subarray(end + 4);
    if (status === 100) continue;
    let body: Buffer;
    if (headers['content-length'] !== undefined) {
      const length = Number(headers['content-length']);
      if (rest.length < length) throw new Error('truncated response body');
      body = rest.subarray(0, length);
      rest = rest.subarray(length);
    } else if (headers['transfer-encoding'] === 'chunked') {
      const chunks: Buffer[] = [];
      for (;;) {
        const lineEnd = rest.indexOf('\r\n');
        const size = parseInt(rest.subarray(0, lineEnd).toString(), 16);
        rest = rest.subarray(lineEnd + 2);
        if (size === 0) {
          rest = rest.subarray(rest.indexOf('\r\n') + 2);
          break;
        }
        chunks.push(rest.subarray(0, size));
        rest = rest.subarray(size + 2);
      }
      body = Buffer.concat(chunks);
    } else {
      throw new Error(`response without a length: ${statusLine}`);
    }
    responses.push({ status, headers, body: body.length ? JSON.parse(body.toString()) as Record<string, unknown> : {} });
  }
  return responses;
}

/**
 * A request the server has accepted and is still in: its head is sent with `Expect:
 * 100-continue` and its body held back. Node answers 100 Continue and emits the request to Writ
 * in the same tick, so once the 100 arrives Writ has taken the request in (and passed its
 * draining check); it cannot finish until the body is sent.
 */
function heldRequest(port: number, target: string, auth: string, form: Record<string, string>) {
  const body = new URLSearchParams(form).toString();
  const socket = connect(port, '127.0.0.1');
  let received = Buffer.alloc(0);
  let onData = (): void => undefined;
  socket.on('data', (d: Buffer) => {
    received = Buffer.concat([received, d]);
    onData();
  });
  socket.setTimeout(20_000, () => socket.destroy(new Error('no answer within 20 s')));
  const closed = new Promise<{ error: Error | undefined; received: Buffer }>((resolve) => {
    let error: Error | undefined;
    socket.on('error', (err) => { error = err; });
    socket.on('close', () => resolve({ error, received }));
  });
  const continued = new Promise<void>((resolve, reject) => {
    onData = () => { if (received.toString('latin1').startsWith('HTTP/1.1 100 Continue\r\n\r\n')) resolve(); };
    void closed.then(({ error }) => reject(new Error(`closed before 100 Continue: ${error?.message ?? received.toString()}`)));
  });
  socket.write(`POST ${target} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nAuthorization: ${auth}\r\n`
    + `Content-Type: application/x-www-form-urlencoded\r\nContent-Length: ${Buffer.byteLength(body)}\r\nExpect: 100-continue\r\n\r\n`);
  return {
    continued,
    /** Sends the held body, then `next` (a whole request) on the same connection. */
    finish(next: string): void { socket.write(body + next); },
    closed,
  };
}

function wholeRequest(port: number, target: string, auth: string, form: Record<string, string>): string {
  const body = new URLSearchParams(form).toString();
  return `POST ${target} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nAuthorization: ${auth}\r\n`
    + `Content-Type: application/x-www-form-urlencoded\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`;
}

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
      const planner = basicAuth('planner-agent');
      const paymentsApi = basicAuth('payments-api');
      const exchangeForm = (token: string) => ({ grant_type: TX, subject_token: token, subject_token_type: AT, audience: PAYMENTS });
      const exchange = (token: string) => fetch(`${url}/token`, {
        method: 'POST',
        headers: { authorization: planner, 'content-type': 'application/x-www-form-urlencoded' },
        body: new URLSearchParams(exchangeForm(token)),
      }).then(async (r) => ({ status: r.status, body: await r.json() as Record<string, unknown> }), () => ({ status: 0, body: {} as Record<string, unknown> }));
      const introspect = (token: string) => fetch(`${url}/token/introspection`, {
        method: 'POST',
        headers: { authorization: paymentsApi, 'content-type': 'application/x-www-form-urlencoded' },
        body: new URLSearchParams({ token }),
      }).then(async (r) => ({ status: r.status, body: await r.json() as Record<string, unknown> }), () => ({ status: 0, body: {} as Record<string, unknown> }));
      const first = await exchange(await idp.token(issuer));
      expect(first.status).toBe(200);
      const issued = first.body.access_token as string;

      // Requests the server has taken in and not finished: half exchanges, half introspections.
      const HELD = 20;
      const held = await Promise.all(Array.from({ length: HELD }, async (_, i) => (i % 2 === 0
        ? { kind: 'exchange' as const, request: heldRequest(port, '/token', planner, exchangeForm(await idp.token(issuer))) }
        : { kind: 'introspection' as const, request: heldRequest(port, '/token/introspection', paymentsApi, { token: issued }) })));
      await Promise.all(held.map((h) => h.request.continued));
      // And a load around them: workers that each send one request after another, on connections
      // of their own, until one is not answered 200. The signal comes once 100 have been answered 200.
      type Result = { kind: 'exchange' | 'introspection'; status: number; body: Record<string, unknown> };
      const results: Result[] = [];
      let loaded = (): void => undefined;
      const underLoad = new Promise<void>((resolve) => { loaded = resolve; });
      const worker = async (kind: Result['kind']): Promise<void> => {
        for (;;) {
          const r = kind === 'exchange' ? await exchange(await idp.token(issuer)) : await introspect(issued);
          results.push({ kind, ...r });
          if (results.filter((x) => x.status === 200).length >= 100) loaded();
          if (r.status !== 200) return;
        }
      };
      const workers = Array.from({ length: 10 }, (_, i) => worker(i % 2 === 0 ? 'exchange' : 'introspection'));
      // (Should every worker stop early, the checks below say why.)
      await Promise.race([underLoad, Promise.all(workers)]);
      server.kill('SIGTERM');
      // Writ prints this and starts draining (stops listening, refuses new requests) in one tick.
      await expect.poll(() => stderr, { timeout: 10_000, interval: 10 }).toContain('SIGTERM: finishing in-flight requests');

      // A new connection is refused (or reset, had it reached the backlog just before): no answer.
      const fresh = await new Promise<{ code: string | undefined; received: string }>((resolve) => {
        const socket = connect(port, '127.0.0.1');
        let received = '';
        let code: string | undefined;
        socket.on('connect', () => socket.write(wholeRequest(port, '/token', planner, exchangeForm(issued))));
        socket.on('data', (d: Buffer) => { received += d; });
        socket.on('error', (err: NodeJS.ErrnoException) => { code = err.code; });
        socket.on('close', () => resolve({ code, received }));
      });
      expect(fresh.received).toBe('');
      expect(['ECONNREFUSED', 'ECONNRESET']).toContain(fresh.code);

      // Each held request is now completed, and a new request follows it on the same connection.
      const nextTokens = await Promise.all(held.map(() => idp.token(issuer)));
      held.forEach((h, i) => h.request.finish(h.kind === 'exchange'
        ? wholeRequest(port, '/token', planner, exchangeForm(nextTokens[i]!))
        : wholeRequest(port, '/token/introspection', paymentsApi, { token: issued })));
      const answered = await Promise.all(held.map(async (h) => ({ kind: h.kind, ...await h.request.closed })));
      for (const a of answered) {
        const [inFlight, after, ...more] = parseResponses(a.received);
        // In flight at SIGTERM: finished, with a token (or the answer an introspection gets).
        expect(inFlight?.status).toBe(200);
        if (a.kind === 'exchange') expect(inFlight?.body.access_token).toEqual(expect.any(String));
        else expect(inFlight?.body.active).toBe(true);
        // Sent after it: refused cleanly, with no token, and the connection is closed.
        expect(after?.status).toBe(503);
        expect(after?.headers['retry-after']).toBe('1');
        expect(after?.body).toEqual({ error: 'temporarily_unavailable', error_description: 'shutting down' });
        expect(more).toEqual([]);
        expect(a.error).toBeUndefined();
      }

      await Promise.all(workers);
      const code = await exited;
      expect(code).toBe(0);
      expect(results.filter((r) => r.status === 200).length).toBeGreaterThanOrEqual(100);
      // The load around the signal: each request completed, was refused with a 503 and no token,
      // or found no server to connect to; none failed half way with another status.
      for (const r of results) {
        if (r.status === 200 && r.kind === 'exchange') expect(r.body.access_token).toEqual(expect.any(String));
        else if (r.status === 200) expect(r.body.active).toBe(true);
        else if (r.status === 503) expect([r.body.error, r.body.access_token]).toEqual(['temporarily_unavailable', undefined]);
        else expect(r.status).toBe(0);
      }

      const heldExchanges = held.filter((h) => h.kind === 'exchange').length;
      const granted = 1 + heldExchanges + results.filter((r) => r.kind === 'exchange' && r.status === 200).length;
      const introspections = HELD - heldExchanges + results.filter((r) => r.kind === 'introspection' && r.status === 200).length;
      const client = new pg.Client({ connectionString: databaseUrl });
      await client.connect();
      try {
        const { rows } = await client.query("SELECT count(*)::int AS n FROM audit_events WHERE type = 'exchange.granted'");
        expect(rows[0].n).toBe(granted);
        // Introspection events go through the batched writer; those of the held requests were
        // queued after SIGTERM, and were flushed before exit.
        const { rows: intro } = await client.query("SELECT count(*)::int AS n FROM audit_events WHERE type = 'introspection'");
        expect(intro[0].n).toBe(introspections);
      } finally {
        await client.end();
      }
    } finally {
      if (server.exitCode === null) server.kill('SIGKILL');
      rmSync(dataDir, { recursive: true, force: true });
      rmSync(policyDir, { recursive: true, force: true });
    }
  }, 60_000);
});
