import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { parseOutcome, runInProcess } from '../../bench/load-process.ts';

// The flood target and the open-loop p99 of `npm run bench` are measured by load processes of
// their own: what they hand back must be the run they made.

let server: http.Server | undefined;

afterEach(async () => {
  await new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve()));
  server = undefined;
});

async function listen(handler: http.RequestListener): Promise<string> {
  server = http.createServer(handler);
  await new Promise<void>((resolve) => server!.listen(0, '127.0.0.1', resolve));
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

describe('bench load process', () => {
  it('runs a paced load and hands back every latency with the result', async () => {
    const bodies: string[] = [];
    const url = await listen((req, res) => {
      let body = '';
      req.on('data', (c: Buffer) => (body += c.toString()));
      req.on('end', () => {
        bodies.push(body);
        res.writeHead(body === 'b' ? 429 : 200, { 'content-length': 2 }).end('{}');
      });
    });
    const run = runInProcess({
      kind: 'open',
      serverPid: process.pid,
      options: { url, request: { method: 'POST', path: '/token', headers: { 'content-type': 'text/plain' }, bodies: ['a', 'b'] }, rate: 50, duration: 0.4, maxSockets: 4 },
    });
    await run.started;
    const { result, samples } = await run.done;
    expect(result.mode).toBe('open');
    expect(result.requests).toBe(20);
    expect(samples).toHaveLength(20);
    expect(samples.every((ms) => ms > 0 && ms < 5_000)).toBe(true);
    expect(result.non2xx).toBe(10);
    expect(result.offered).toBe(50);
    expect(bodies.sort()).toEqual([...Array<string>(10).fill('a'), ...Array<string>(10).fill('b')]);
  });

  it('keeps a closed loop with no 2xx answers a number (NaN), and its nulls null', async () => {
    const url = await listen((_req, res) => res.writeHead(429).end());
    const { result, samples } = await runInProcess({
      kind: 'closed',
      serverPid: process.pid,
      options: { url, request: { method: 'GET', path: '/', headers: {}, bodies: [] }, connections: 2, duration: 1 },
    }).done;
    expect(result.mode).toBe('closed');
    expect(result.requests).toBeGreaterThan(0);
    expect(result.non2xx).toBe(result.requests);
    expect(result.rps).toBe(0);
    expect(Number.isNaN(result.server_cpu_ms_per_request)).toBe(true);
    expect(result.offered).toBeNull();
    expect(samples).toEqual([]);
  });

  it('turns null back into NaN, except where null means "does not apply"', () => {
    const outcome = parseOutcome(JSON.stringify({
      result: { offered: null, rps: 0, server_cpu_ms_per_request: Number.NaN, latency_ms: { p50: null, p99: 3 }, cpu_percent: { kdamond: null, driver: 4 } },
      samples: [],
    }));
    const result = outcome.result as unknown as { offered: unknown; rps: unknown; server_cpu_ms_per_request: unknown; latency_ms: Record<string, unknown>; cpu_percent: Record<string, unknown> };
    expect(result.offered).toBeNull();
    expect(result.cpu_percent.kdamond).toBeNull();
    expect(result.server_cpu_ms_per_request).toBeNaN();
    expect(result.latency_ms.p50).toBeNaN();
    expect(result).toMatchObject({ rps: 0, latency_ms: { p99: 3 }, cpu_percent: { driver: 4 } });
    expect(() => parseOutcome('')).toThrow();
  });

  it('rejects with what the process said when the run fails, and still reports it started', async () => {
    const run = runInProcess({
      kind: 'open',
      serverPid: process.pid,
      options: { url: 'not a url', request: { method: 'GET', path: '/', headers: {}, bodies: [] }, rate: 10, duration: 0.1, maxSockets: 1 },
    });
    await expect(run.done).rejects.toThrow(/load process exited 1:[\s\S]*Invalid URL/);
    await expect(run.started).resolves.toBeUndefined();
  });

  it('can be stopped before its run ends', async () => {
    const url = await listen((_req, res) => res.writeHead(200, { 'content-length': 0 }).end());
    const run = runInProcess({
      kind: 'closed',
      serverPid: process.pid,
      options: { url, request: { method: 'GET', path: '/', headers: {}, bodies: [] }, connections: 1, duration: 30 },
    });
    await run.started;
    const stoppedAt = Date.now();
    run.stop();
    await expect(run.done).rejects.toThrow(/stopped by SIGTERM/);
    expect(Date.now() - stoppedAt).toBeLessThan(10_000);
  });
});
