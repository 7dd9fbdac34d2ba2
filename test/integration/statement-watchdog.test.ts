import { stat } from 'node:fs';
import pg from 'pg';
import { afterEach, describe, expect, inject, it } from 'vitest';
import { PostgresNotAnswering, StatementWatchdog, type StalledStatement } from '../../src/store/statement-watchdog.ts';

/** The watchdog on real connections; PostgreSQL's own pg_sleep stands in for a server that does not answer in time. */
describe('statement watchdog', () => {
  const open: Array<{ stop(): void } | pg.Client> = [];
  afterEach(async () => {
    for (const o of open.splice(0)) {
      if (o instanceof pg.Client) await o.end().catch(() => undefined);
      else o.stop();
    }
  });

  function setUp(probe: () => Promise<void> = async () => undefined) {
    const stalls: StalledStatement[] = [];
    let recoveries = 0;
    const watchdog = new StatementWatchdog({ limitMs: 300, intervalMs: 20, onStall: (s) => stalls.push(s), probe, onRecovery: () => { recoveries += 1; } });
    open.push(watchdog);
    const connect = async (): Promise<pg.Client> => {
      const client = new pg.Client({ connectionString: inject('adminDatabaseUrl') });
      client.on('error', () => undefined);
      open.push(client);
      await client.connect();
      watchdog.watch(client);
      return client;
    };
    return { watchdog, stalls, recoveries: () => recoveries, connect };
  }

  it('leaves connections alone whose statements are answered in time, results and SQL errors alike', async () => {
    const { watchdog, stalls, connect } = setUp();
    const client = await watchdog.open(connect);
    expect((await client.query('SELECT 1 AS one')).rows).toEqual([{ one: 1 }]);
    await expect(client.query('SELECT * FROM no_such_table')).rejects.toMatchObject({ code: '42P01' });
    // One that takes half the limit, and one that takes twice the limit but sends a notice
    // every 0.1 s: bytes back are an answer under way.
    await client.query('SELECT pg_sleep(0.15)');
    await client.query(`DO $$ BEGIN FOR i IN 1..6 LOOP PERFORM pg_sleep(0.1); RAISE NOTICE 'step %', i; END LOOP; END $$`);
    expect((await client.query({ name: 'watchdog-test', text: 'SELECT $1::int AS n', values: [3] })).rows).toEqual([{ n: 3 }]);
    // Each took a fraction of the limit, but the connection then sits idle well past it.
    await new Promise((r) => setTimeout(r, 500));
    expect(stalls).toEqual([]);
    expect(watchdog.stalled).toBe(false);
    expect((await client.query('SELECT 4 AS four')).rows).toEqual([{ four: 4 }]);
  });

  it('waits as long as it takes inside unlimited(), and does not blame PostgreSQL for a blocked event loop', async () => {
    const { watchdog, stalls, connect } = setUp();
    const client = await watchdog.open(connect);
    await watchdog.unlimited(() => client.query('SELECT pg_sleep(0.6)'));
    // The answer arrives while the event loop is busy for twice the limit: it was there to read.
    const answered = client.query('SELECT pg_sleep(0.1)');
    await new Promise((r) => setTimeout(r, 50)); // seen waiting by a check or two
    // Busy inside an I/O callback: the timers run next, before the socket is read again.
    await new Promise<void>((resolve) => stat('.', () => {
      const until = performance.now() + 700;
      while (performance.now() < until) { /* busy */ }
      resolve();
    }));
    await answered;
    await new Promise((r) => setTimeout(r, 100));
    expect(stalls).toEqual([]);
    expect((await client.query('SELECT 1 AS one')).rows).toEqual([{ one: 1 }]);
  });

  it('closes a connection whose statement goes unanswered past the limit, refuses until a probe is answered, then lets statements through', async () => {
    let answering = false;
    let probes = 0;
    const { watchdog, stalls, recoveries, connect } = setUp(async () => {
      probes += 1;
      if (!answering) throw new Error('still down');
    });
    const slow = await watchdog.open(connect);
    const idle = await watchdog.open(connect);
    const started = performance.now();
    await expect(slow.query('SELECT pg_sleep(5)')).rejects.toThrow(/Connection terminated/);
    const waited = performance.now() - started;
    // Not before the stall threshold; and not after pg_sleep(5) finished (it would have resolved).
    expect(waited).toBeGreaterThan(300);
    expect(stalls).toHaveLength(1);
    expect(watchdog.stalled).toBe(true);
    // The idle connection went with it: after a failover it would only stall again.
    await expect(idle.query('SELECT 1')).rejects.toThrow(/not queryable|terminated/);

    // No connection is opened for a server known to be stalled.
    await expect(watchdog.open(connect)).rejects.toBeInstanceOf(PostgresNotAnswering);
    await expect.poll(() => probes, { timeout: 2000, interval: 20 }).toBeGreaterThan(2);
    expect(watchdog.stalled).toBe(true);

    answering = true;
    await expect.poll(() => watchdog.stalled, { timeout: 2000, interval: 20 }).toBe(false);
    expect(recoveries()).toBe(1);
    expect((await (await watchdog.open(connect)).query('SELECT 2 AS two')).rows).toEqual([{ two: 2 }]);
    expect(stalls).toHaveLength(1);
  });
});
