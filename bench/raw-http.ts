/**
 * A minimal HTTP/1.1 keep-alive client for the open-loop runs: requests are serialised once
 * and written straight to a socket, and a response is read as far as its status code and
 * Content-Length. node:http's client spent ~0.2 ms of CPU per request on this machine, on the
 * same two cores as the server under test, and its event-loop stalls (up to 18–28 ms) counted
 * as server latency in runs that measure from when each request was due.
 *
 * One request in flight per connection (no pipelining); servers under test answer with
 * Content-Length (Koa does for every body it sets). Anything else is reported as an error.
 */
import net from 'node:net';

export interface RawResponse {
  status: number;
}

const HEAD_END = Buffer.from('\r\n\r\n');

/** `Content-Length` of a response head (lower-cased header names), or undefined. */
function contentLength(head: string): number | undefined {
  const match = /\r\ncontent-length:[ \t]*(\d+)/i.exec(head);
  return match ? Number(match[1]) : undefined;
}

/** Serialises a request once: the bytes written for every use of it. */
export function serialiseRequest(options: {
  method: string;
  host: string;
  path: string;
  headers: Record<string, string>;
  body?: string;
}): Buffer {
  const body = options.body === undefined ? Buffer.alloc(0) : Buffer.from(options.body);
  const lines = [`${options.method} ${options.path} HTTP/1.1`, `host: ${options.host}`, 'connection: keep-alive'];
  for (const [name, value] of Object.entries(options.headers)) lines.push(`${name}: ${value}`);
  if (options.method !== 'GET' || body.length > 0) lines.push(`content-length: ${body.length}`);
  return Buffer.concat([Buffer.from(lines.join('\r\n') + '\r\n\r\n'), body]);
}

/** One keep-alive connection; `send` resolves with the status once the whole body is read. */
class Connection {
  private readonly socket: net.Socket;
  private buffer: Buffer = Buffer.alloc(0);
  private pending: { resolve: (r: RawResponse) => void; reject: (e: Error) => void; timer: NodeJS.Timeout } | undefined;
  readonly ready: Promise<void>;
  closed = false;
  /** `performance.now()` when it was last put back idle. */
  idleSince = 0;

  constructor(host: string, port: number) {
    this.socket = net.connect({ host, port, noDelay: true });
    this.ready = new Promise((resolve, reject) => {
      this.socket.once('connect', resolve);
      this.socket.once('error', reject);
    });
    this.socket.on('data', (chunk: Buffer) => this.onData(chunk));
    this.socket.on('error', (error) => this.fail(error));
    this.socket.on('close', () => this.fail(new Error('connection closed')));
  }

  /** Rejects if the response has not fully arrived within `timeoutMs` (the connection is then closed). */
  send(request: Buffer, timeoutMs: number): Promise<RawResponse> {
    if (this.closed) return Promise.reject(new Error('connection closed'));
    return new Promise((resolve, reject) => {
      this.pending = { resolve, reject, timer: setTimeout(() => this.fail(new Error('timeout')), timeoutMs) };
      this.socket.write(request);
    });
  }

  close(): void {
    this.fail(new Error('connection closed'));
  }

  /** Closes the connection for good; a request waiting on it fails with `error`. */
  private fail(error: Error): void {
    this.closed = true;
    this.socket.destroy();
    const pending = this.pending;
    this.pending = undefined;
    if (pending) {
      clearTimeout(pending.timer);
      pending.reject(error);
    }
  }

  private onData(chunk: Buffer): void {
    this.buffer = this.buffer.length === 0 ? chunk : Buffer.concat([this.buffer, chunk]);
    const end = this.buffer.indexOf(HEAD_END);
    if (end < 0) return;
    const head = this.buffer.subarray(0, end).toString('latin1');
    const length = contentLength(head);
    if (length === undefined) return this.fail(new Error('response without Content-Length'));
    if (this.buffer.length < end + 4 + length) return;
    if (this.buffer.length > end + 4 + length) return this.fail(new Error('bytes after the response'));
    this.buffer = Buffer.alloc(0);
    const pending = this.pending;
    this.pending = undefined;
    if (pending) {
      clearTimeout(pending.timer);
      pending.resolve({ status: Number(head.slice(9, 12)) });
    }
  }
}

/**
 * A connection idle this long is closed, not reused: a server closes one idle for its keep-alive
 * timeout (Node's default is 5 s), and a request written as that close arrives fails. In 30 s
 * open-loop runs the least recently used of 64 connections sat idle that long, and the floor got
 * 3 such errors in 30,000 requests.
 */
const MAX_IDLE_MS = 4_000;

/** Up to `maxConnections` keep-alive connections; a request waits for a free one. */
export class RawPool {
  private readonly idle: Connection[] = [];
  private readonly waiting: Array<{ resolve: (c: Connection) => void; reject: (e: unknown) => void }> = [];
  private readonly all = new Set<Connection>();

  private readonly host: string;
  private readonly port: number;
  private readonly maxConnections: number;

  constructor(host: string, port: number, maxConnections: number) {
    this.host = host;
    this.port = port;
    this.maxConnections = maxConnections;
  }

  async request(bytes: Buffer, timeoutMs = 10_000): Promise<RawResponse> {
    const connection = await this.acquire();
    try {
      const response = await connection.send(bytes, timeoutMs);
      this.release(connection);
      return response;
    } catch (error) {
      connection.close();
      this.retire(connection);
      throw error;
    }
  }

  destroy(): void {
    for (const connection of this.all) connection.close();
    this.all.clear();
  }

  private async acquire(): Promise<Connection> {
    // An idle connection the server has closed, or may be closing, is dropped, not reused.
    const now = performance.now();
    for (let idle = this.idle.pop(); idle; idle = this.idle.pop()) {
      if (!idle.closed && now - idle.idleSince < MAX_IDLE_MS) return idle;
      idle.close();
      this.all.delete(idle);
    }
    if (this.all.size < this.maxConnections) return this.open();
    return new Promise((resolve, reject) => this.waiting.push({ resolve, reject }));
  }

  private async open(): Promise<Connection> {
    const connection = new Connection(this.host, this.port);
    this.all.add(connection);
    try {
      await connection.ready;
    } catch (error) {
      this.all.delete(connection);
      throw error;
    }
    return connection;
  }

  private release(connection: Connection): void {
    if (connection.closed) return this.retire(connection);
    const next = this.waiting.shift();
    if (next) next.resolve(connection);
    else {
      connection.idleSince = performance.now();
      this.idle.push(connection);
    }
  }

  /** A connection went away: the next waiting request gets a new one. */
  private retire(connection: Connection): void {
    this.all.delete(connection);
    const next = this.waiting.shift();
    if (next) this.open().then(next.resolve, next.reject);
  }
}
