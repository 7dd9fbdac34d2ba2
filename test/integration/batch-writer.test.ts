import { randomUUID } from 'node:crypto';
import { createServer, type AddressInfo, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import knexFactory from 'knex';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BatchedAuditWriter } from '../../src/audit/batch-writer.ts';
import type { AuditEvent } from '../../src/audit/event.ts';
import { createLogger } from '../../src/log.ts';
import { migrate, openDatabase, type Database } from '../../src/store/db.ts';
import { createTestDatabase } from '../support/harness.ts';

function capturingLogger(): { logger: ReturnType<typeof createLogger>; lines: Array<Record<string, unknown>> } {
  const lines: Array<Record<string, unknown>> = [];
  const logger = createLogger('info', { write: (line: string) => { lines.push(JSON.parse(line) as Record<string, unknown>); } });
  return { logger, lines };
}

const event = (requestId: string): AuditEvent => ({ type: 'token_endpoint.rejected', outcome: 'rejected', reason: 'client_auth_failed', requestId, details: {} });

describe('BatchedAuditWriter at shutdown', () => {
  let db: Database;
  beforeAll(async () => {
    db = await openDatabase({ databaseUrl: await createTestDatabase('batchwriter'), dataDir: tmpdir() });
    await migrate(db);
  });
  afterAll(async () => db?.close());

  it('writes what its holders add at close, before the last flush', async () => {
    const { logger } = capturingLogger();
    const writer = new BatchedAuditWriter(db.knex, logger);
    const late = randomUUID();
    writer.onClose(() => writer.enqueue(event(late)));
    writer.enqueue(event(randomUUID()));
    await writer.close();
    expect(await db.knex('audit_events').where({ request_id: late }).first()).toBeTruthy();
  });

  it('with PostgreSQL gone, close tries once, says what was lost, and leaves no retry behind', async () => {
    const gone = knexFactory({ client: 'pg', connection: 'postgres://postgres@127.0.0.1:1/none', pool: { min: 0, max: 1 }, acquireConnectionTimeout: 500 });
    const { logger, lines } = capturingLogger();
    const writer = new BatchedAuditWriter(gone, logger);
    writer.enqueue(event(randomUUID()));
    writer.enqueue(event(randomUUID()));
    const started = Date.now();
    await writer.close();
    expect(Date.now() - started).toBeLessThan(3000);
    expect(lines.filter((l) => l.msg === 'audit events could not be written before shutdown').map((l) => l.events)).toEqual([2]);
    const logged = lines.length;
    // A retry armed after close would keep a stopping process alive and log every second.
    await new Promise((r) => setTimeout(r, 1500));
    expect(lines.length).toBe(logged);
    expect(writer.pending).toBe(0);
    await gone.destroy();
  });

  it('a flush already waiting on a PostgreSQL that stopped answering when close comes rejects nowhere else', async () => {
    // Accepts connections and never answers: the timer's flush waits for its connection.
    const sockets = new Set<Socket>();
    const silent = createServer((socket) => { sockets.add(socket); });
    await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r));
    const unhandled: unknown[] = [];
    const onUnhandled = (reason: unknown): void => { unhandled.push(reason); };
    process.on('unhandledRejection', onUnhandled);
    const port = (silent.address() as AddressInfo).port;
    const gone = knexFactory({ client: 'pg', connection: `postgres://postgres@127.0.0.1:${port}/none`, pool: { min: 0, max: 1 }, acquireConnectionTimeout: 500 });
    const { logger, lines } = capturingLogger();
    const writer = new BatchedAuditWriter(gone, logger, { intervalMs: 10 });
    writer.enqueue(event(randomUUID()));
    // The timer's flush is under way, waiting for a connection, when close starts.
    await new Promise((r) => setTimeout(r, 100));
    await writer.close();
    expect(lines.filter((l) => l.msg === 'audit events could not be written before shutdown').map((l) => l.events)).toEqual([1]);
    await new Promise((r) => setTimeout(r, 200));
    process.off('unhandledRejection', onUnhandled);
    expect(unhandled).toEqual([]);
    for (const socket of sockets) socket.destroy();
    silent.close();
    await gone.destroy();
  });
});
