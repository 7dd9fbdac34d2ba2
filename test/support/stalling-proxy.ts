import { createConnection, createServer, type Socket } from 'node:net';

/**
 * A TCP relay in front of PostgreSQL that can stop passing bytes without closing anything: a
 * server that hangs, or a network path that goes dark, as opposed to one that refuses or resets.
 * Bytes sent while stalled are held (neither side's socket is read) and flow once resumed.
 */
export interface StallingProxy {
  /** The database URL with host and port replaced by the proxy's. */
  url: string;
  stall(): void;
  resume(): void;
  close(): Promise<void>;
}

export async function startStallingProxy(databaseUrl: string): Promise<StallingProxy> {
  const target = new URL(databaseUrl);
  const pairs = new Set<[Socket, Socket]>();
  let stalled = false;

  // pipe() resumes its source whenever the destination drains, so a stall takes the pipes apart.
  const connect = ([a, b]: [Socket, Socket]): void => {
    a.pipe(b);
    b.pipe(a);
  };
  const disconnect = ([a, b]: [Socket, Socket]): void => {
    a.unpipe(b);
    b.unpipe(a);
    a.pause();
    b.pause();
  };

  const server = createServer((client) => {
    const upstream = createConnection({ host: target.hostname, port: Number(target.port || 5432) });
    const pair: [Socket, Socket] = [client, upstream];
    pairs.add(pair);
    for (const socket of pair) {
      socket.on('error', () => undefined);
      socket.on('close', () => {
        pairs.delete(pair);
        client.destroy();
        upstream.destroy();
      });
    }
    if (stalled) disconnect(pair);
    else connect(pair);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  if (!address || typeof address === 'string') throw new Error('proxy has no port');
  const url = new URL(databaseUrl);
  url.hostname = '127.0.0.1';
  url.port = String(address.port);

  return {
    url: url.href,
    stall() {
      stalled = true;
      for (const pair of pairs) disconnect(pair);
    },
    resume() {
      stalled = false;
      for (const pair of pairs) connect(pair);
    },
    async close() {
      for (const pair of pairs) for (const socket of pair) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
