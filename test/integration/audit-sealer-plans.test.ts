import { tmpdir } from 'node:os';
import type { Knex } from 'knex';
import knexFactory from 'knex';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { recordAudit, type AuditEvent } from '../../src/audit/event.ts';
import { AuditSealer } from '../../src/audit/sealer.ts';
import { createLogger } from '../../src/log.ts';
import { migrate, openDatabase, type Database } from '../../src/store/db.ts';
import { deriveKeys } from '../../src/tokens/kek.ts';
import { createTestDatabase } from '../support/harness.ts';

/**
 * The sealer runs five times a second beside the exchanges, on the same cores. Its reads are
 * bounded index range scans, which parallel workers only slow down: each pass would launch
 * them anew. PostgreSQL is made to plan every statement it can in parallel here (as its
 * estimates did on its own once the events table was large), and auto_explain hands each
 * statement's plan back to the connection as a notice (loading it takes a superuser, as the
 * test database's owner is here).
 */
describe('audit sealer query plans (PostgreSQL)', () => {
  let db: Database;
  let url: string;
  let observed: Knex;
  const plans: string[] = [];

  beforeAll(async () => {
    url = await createTestDatabase('sealer_plans');
    db = await openDatabase({ databaseUrl: url, dataDir: tmpdir() });
    await migrate(db);
    const events: AuditEvent[] = Array.from({ length: 300 }, (_, i) => ({
      type: 'exchange.granted', outcome: 'granted', requestId: `r${i}`, clientId: 'planner-agent', jti: `jti-${i}`,
      subject: 'https://idp.example|alice', audience: 'https://payments.example', details: { n: i },
    }));
    await recordAudit(db.knex, events);
    observed = knexFactory({
      client: 'pg',
      connection: url,
      pool: {
        min: 1,
        max: 1,
        afterCreate: (conn: pg.Client, done: (err: Error | null, conn: pg.Client) => void) => {
          conn.on('notice', (notice) => { if (notice.message) plans.push(notice.message); });
          conn.query(`
            LOAD 'auto_explain';
            SET auto_explain.log_min_duration = 0;
            SET auto_explain.log_level = notice;
            SET parallel_setup_cost = 0;
            SET parallel_tuple_cost = 0;
            SET min_parallel_table_scan_size = 0;
            SET min_parallel_index_scan_size = 0;
            SELECT set_config(name, 'on', false) FROM pg_settings WHERE name IN ('force_parallel_mode', 'debug_parallel_query');
          `).then(() => done(null, conn), (err: Error) => done(err, conn));
        },
      },
    });
  });

  afterAll(async () => {
    await observed?.destroy();
    await db?.close();
  });

  it('plans no parallel workers for any statement of a sealing pass', async () => {
    // The same session plans a plain read of the events in parallel: the settings above work.
    plans.length = 0;
    await observed.raw('SELECT count(*) FROM audit_events');
    expect(plans.join('\n')).toMatch(/Gather/);

    plans.length = 0;
    const sealer = new AuditSealer(observed, {
      checkpointKey: deriveKeys(Buffer.alloc(32, 7)).auditCheckpoint,
      logger: createLogger('silent'),
    });
    expect(await sealer.sealOnce({ graceMs: 0, forceCheckpoint: true })).toBe(300);
    // Every statement of the pass was planned and reported, the candidate read among them.
    expect(plans.some((p) => /min\(y\.id\)/.test(p))).toBe(true);
    expect(plans.filter((p) => /Gather|Workers/.test(p))).toEqual([]);
    const chained = await db.knex('audit_chain').count<Array<{ count: string }>>('* as count');
    expect(Number(chained[0]!.count)).toBe(300);

    // The setting ended with the pass: the pooled connection plans in parallel again.
    plans.length = 0;
    await observed.raw('SELECT count(*) FROM audit_events');
    expect(plans.join('\n')).toMatch(/Gather/);
  });
});
