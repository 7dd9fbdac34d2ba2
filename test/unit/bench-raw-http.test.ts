import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { RawPool, serialiseRequest } from '../../bench/raw-http.ts';

// The open-loop runs of `npm run bench` (and so the p99 target) rest on this client: it must
// read each response whole, keep connections alive, and survive a server closing idle ones.

let server: http.Server | undefined;
let pool: RawPool | undefined;

afterEach(async () => {
  pool?.destroy();
  pool = undefined;
  await new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve()));
  server = undefined;
});

async function listen(handler: http.RequestListener, keepAliveTimeout?: number): Promise<number> {
  server = http.createServer(handler);
  if (keepAliveTimeout !== undefined) server.keepAliveTimeout = keepAliveTimeout;
  await new Promise<void>((resolve) => server!.listen(0, '127.0.0.1', resolve));
  return (server.address() as AddressInfo).port;
}

describe('bench raw HTTP client', () => {
  it('sends the serialised request and reads status and whole body, over one kept-alive connection', async () => {
    const seen: Array<{ method: string; url: string; body: string; auth: string | undefined; socket: unknown }> = [];
    const port = await listen((req, res) => {
      let body = '';
      req.setEncoding('utf8');
      req.on('data', (c: string) => (body += c));
      req.on('end', () => {
        seen.push({ method: req.method!, url: req.url!, body, auth: req.headers.authorization, socket: req.socket });
        // A body written in two chunks with a pause between: the client must wait for all of it.
        res.writeHead(body === 'deny' ? 400 : 200, { 'content-type': 'application/json', 'content-length': 2_000 });
        res.write('x'.repeat(1_000));
        setTimeout(() => res.end('y'.repeat(1_000)), 20);
      });
    });
    pool = new RawPool('127.0.0.1', port, 1);
    const request = (body: string): Buffer => serialiseRequest({
      method: 'POST', host: `127.0.0.1:${port}`, path: '/token', headers: { authorization: 'Basic abc' }, body,
    });
    expect(await pool.request(request('grant_type=x'))).toEqual({ status: 200 });
    expect(await pool.request(request('deny'))).toEqual({ status: 400 });
    expect(seen.map(({ method, url, body, auth }) => ({ method, url, body, auth }))).toEqual([
      { method: 'POST', url: '/token', body: 'grant_type=x', auth: 'Basic abc' },
      { method: 'POST', url: '/token', body: 'deny', auth: 'Basic abc' },
    ]);
    expect(seen[0]!.socket).toBe(seen[1]!.socket);
  });

  it('queues requests beyond its connections, and replaces a connection the server closed while idle', async () => {
    const sockets = new Set<unknown>();
    const port = await listen((req, res) => {
      sockets.add(req.socket);
      req.resume();
      req.on('end', () => setTimeout(() => res.end('ok'), 5));
    // Long enough that a busy machine does not close a connection between two requests of the
    // burst; short enough to wait out below.
    }, 400);
    pool = new RawPool('127.0.0.1', port, 2);
    const get = serialiseRequest({ method: 'GET', host: `127.0.0.1:${port}`, path: '/', headers: {} });
    const burst = await Promise.all(Array.from({ length: 6 }, () => pool!.request(get)));
    expect(burst.every((r) => r.status === 200)).toBe(true);
    expect(sockets.size).toBe(2);
    // Once the server has closed both idle connections (its keep-alive timeout), a request
    // gets a new connection rather than an error or a hang on a dead one.
    await vi.waitFor(async () => {
      const open = await new Promise<number>((resolve, reject) => server!.getConnections((e, n) => (e ? reject(e) : resolve(n))));
      expect(open).toBe(0);
    }, { timeout: 5_000, interval: 20 });
    expect(await pool.request(get)).toEqual({ status: 200 });
    expect(sockets.size).toBe(3);
  });

  it('reports a response it cannot frame, and a server that never answers, as errors', async () => {
    const port = await listen((req, res) => {
      req.resume();
      if (req.url === '/chunked') {
        res.write('no ');
        res.end('length');
      }
      // '/silent' never answers.
    });
    pool = new RawPool('127.0.0.1', port, 2);
    const get = (path: string): Buffer => serialiseRequest({ method: 'GET', host: `127.0.0.1:${port}`, path, headers: {} });
    await expect(pool.request(get('/chunked'))).rejects.toThrow('response without Content-Length');
    await expect(pool.request(get('/silent'), 100)).rejects.toThrow('timeout');
  });
});
