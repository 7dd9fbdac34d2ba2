import { createHash } from 'node:crypto';
import { readFileSync, readdirSync } from 'node:fs';
import path from 'node:path';
import type { Knex } from 'knex';
import { describe, expect, it } from 'vitest';
import { eventHash } from '../../src/audit/chain.ts';
import { AuditSealer } from '../../src/audit/sealer.ts';
import { RetentionError, retainAudit } from '../../src/audit/retention.ts';
import { verifyAuditChain } from '../../src/audit/verify.ts';
import { createLogger } from '../../src/log.ts';
import { migrate, openDatabase, type Database } from '../../src/store/db.ts';
import { deriveKeys, seal } from '../../src/tokens/kek.ts';
import { runWrit } from '../support/cli.ts';
import { createTestDatabase } from '../support/harness.ts';
import { tempDirs } from '../support/temp-dirs.ts';

const KEK = Buffer.alloc(32, 3);
const KEY = deriveKeys(KEK).auditCheckpoint;
const DAY = 86_400_000;

function monthStart(monthsBack: number): Date {
  const now = new Date();
  return new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth() - monthsBack, 1));
}

const partitionOf = (d: Date): string => `audit_events_y${d.getUTCFullYear()}m${String(d.getUTCMonth() + 1).padStart(2, '0')}`;

/** Events written at `at` (a past month for the ones retention will take). */
async function write(knex: Knex, at: Date, n: number, tag: string): Promise<void> {
  for (let i = 0; i < n; i += 1) {
    await knex('audit_events').insert({ type: 'introspection', outcome: 'inactive', details: JSON.stringify({ tag, i }), occurred_at: new Date(at.getTime() + i * 1000) });
  }
}

async function partitionExists(knex: Knex, name: string): Promise<boolean> {
  return (await knex.raw(`SELECT to_regclass(?) AS t`, [name])).rows[0].t !== null;
}

/** Runs `fn` as a superuser with the append-only triggers off, and commits: real tampering. */
async function tamper(knex: Knex, fn: (trx: Knex.Transaction) => Promise<unknown>): Promise<void> {
  await knex.transaction(async (trx) => {
    await trx.raw('SET LOCAL session_replication_role = replica');
    await fn(trx);
  });
}

describe.each([
  ['PostgreSQL', false],
  ['PGlite', true],
] as const)('audit retention on %s', (_name, embedded) => {
  const dir = tempDirs('writ-retention-');

  async function setup(): Promise<{ db: Database; databaseUrl: string | undefined; dataDir: string; sealer: AuditSealer }> {
    const databaseUrl = embedded ? undefined : await createTestDatabase('retention');
    const dataDir = dir();
    const db = await openDatabase({ databaseUrl, dataDir });
    await migrate(db);
    // A signing key sealed under KEK, as a served database has (the CLI checks WRIT_KEK against
    // it before it retains), stored without the audit event a real one brings.
    await db.knex('signing_keys').insert({
      kid: 'es256-retention', alg: 'ES256', public_jwk: JSON.stringify({ kty: 'EC' }),
      private_jwk_enc: seal(deriveKeys(KEK).keyEncryption, '{}', 'signing-key:es256-retention'), activates_at: new Date(),
    });
    await db.knex.raw('SELECT writ_audit_ensure_partitions(3, 1)');
    // Old months' events interleave with this month's by id, as events near a month's end can.
    const sealer = new AuditSealer(db.knex, { checkpointKey: KEY, logger: createLogger('silent'), graceMs: 0, backdateToleranceMs: 200 * DAY });
    return { db, databaseUrl, dataDir, sealer };
  }

  it('archives a sealed month, drops it, and verify takes exactly its events as archived', async () => {
    const { db, databaseUrl, dataDir, sealer } = await setup();
    try {
      // Two old months whose events interleave by id with each other and with this month's.
      const old = monthStart(2);
      const last = monthStart(1);
      await write(db.knex, new Date(old.getTime() + DAY), 3, 'old'); // 1-3
      await write(db.knex, new Date(Date.now() - 10_000), 1, 'now'); // 4
      await write(db.knex, new Date(last.getTime() + DAY), 1, 'last'); // 5
      await write(db.knex, new Date(old.getTime() + 2 * DAY), 2, 'old'); // 6-7
      await write(db.knex, new Date(last.getTime() + 2 * DAY), 1, 'last'); // 8
      await write(db.knex, new Date(Date.now() - 5_000), 2, 'now'); // 9-10
      expect(await sealer.sealOnce({ forceCheckpoint: true })).toBe(10);
      expect((await verifyAuditChain(db.knex, KEY)).ok).toBe(true);

      // Not this month, nor one that has not ended.
      const archive = dir();
      let results;
      if (databaseUrl) {
        const run = await runWrit(['audit', 'retain', '--before', monthStart(0).toISOString().slice(0, 7), '--archive', archive], {
          DATABASE_URL: databaseUrl, WRIT_DATA_DIR: dataDir, WRIT_KEK: KEK.toString('base64'), USER: 'auditor',
        });
        expect(run.code, run.stderr).toBe(0);
        expect(run.stdout).toContain(`${partitionOf(old)}: 5 event(s) archived to`);
        results = await db.knex('audit_retention').orderBy('id');
      } else {
        await retainAudit(db.knex, KEY, { before: monthStart(0), archiveDir: archive, by: 'cli:auditor' });
        results = await db.knex('audit_retention').orderBy('id');
      }
      expect(results.map((r: { partition: string }) => r.partition)).toEqual([partitionOf(monthStart(3)), partitionOf(monthStart(2)), partitionOf(monthStart(1))]);
      const marker = results.find((r: { partition: string }) => r.partition === partitionOf(old)) as Record<string, unknown>;
      expect(marker).toMatchObject({ retained_by: 'cli:auditor' });
      expect(Number(marker.events)).toBe(5);
      expect([Number(marker.first_event_id), Number(marker.last_event_id)]).toEqual([1, 7]);

      // Gone from the database; this month stays.
      expect(await partitionExists(db.knex, partitionOf(old))).toBe(false);
      expect((await db.knex('audit_events').whereRaw("details->>'tag' = 'now'")).length).toBe(3);
      expect(await db.knex('audit_events').whereRaw("details->>'tag' = 'last'")).toHaveLength(0);
      expect(await db.knex('audit_events').where({ type: 'audit.retained' })).toHaveLength(3);

      // The archive holds every event with its place in the chain and the checkpoint after it;
      // each recomputes its chain hash, and the file is the one the marker signed.
      const file = path.join(archive, `${partitionOf(old)}.ndjson`);
      const text = readFileSync(file, 'utf8');
      expect(createHash('sha256').update(text).digest('hex')).toBe(marker.archive_sha256);
      const lines = text.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
      expect(lines[0]).toEqual({ retention: expect.objectContaining({ partition: partitionOf(old), events: 5 }) });
      const events = lines.filter((l) => typeof l.id === 'number');
      expect(events.map((e) => e.id)).toEqual([1, 2, 3, 6, 7]);
      for (const e of events) expect(eventHash(e.prev_hash as string, e.seq as number, e as never)).toBe(e.hash);
      expect(lines.at(-1)).toEqual({ checkpoint: expect.objectContaining({ seq: 10 }) });
      expect(readdirSync(archive).sort()).toEqual([monthStart(3), monthStart(2), monthStart(1)].map((m) => `${partitionOf(m)}.ndjson`).sort());

      await sealer.sealOnce({ forceCheckpoint: true });
      const report = await verifyAuditChain(db.knex, KEY);
      expect(report.problems).toEqual([]);
      expect(report.retained).toEqual({ markers: 3, events: 7 });

      // A copy of a valid marker excuses nothing more, and is named.
      const copy = await db.knex('audit_retention').where({ partition: partitionOf(old) }).first() as Record<string, unknown>;
      await db.knex('audit_retention').insert({ ...copy, id: undefined });
      expect((await verifyAuditChain(db.knex, KEY)).problems.map((p) => p.kind)).toEqual(['bad_retention']);

      // An event deleted from this month, inside the retained id range: more gone than archived.
      await tamper(db.knex, (trx) => trx('audit_events').where({ id: 4 }).delete());
      const deleted = await verifyAuditChain(db.knex, KEY);
      expect(deleted.ok).toBe(false);
      expect(deleted.problems.map((p) => [p.kind, p.count])).toEqual([['bad_retention', undefined], ['deleted', 1]]);

      // A marker altered to excuse more: its signature no longer holds, and nothing is excused.
      await tamper(db.knex, (trx) => trx('audit_retention').where({ partition: partitionOf(old) }).update({ events: 6 }));
      const forged = await verifyAuditChain(db.knex, KEY);
      expect(forged.problems.map((p) => p.kind)).toEqual(expect.arrayContaining(['bad_retention', 'deleted']));
      expect(forged.retained.markers).toBe(2);
      // And retention refuses to go on over a chain that does not verify.
      await expect(retainAudit(db.knex, KEY, { before: monthStart(0), archiveDir: dir(), by: 'test' })).rejects.toThrow(/does not verify/);
    } finally {
      await db.close();
    }
  }, 60_000);

  it('keeps the month holding the newest sealed event, so the sealer can go on linking to it', async () => {
    const { db, sealer } = await setup();
    try {
      await write(db.knex, new Date(monthStart(1).getTime() + DAY), 3, 'head');
      await sealer.sealOnce({ forceCheckpoint: true });
      const archive = dir();
      await expect(retainAudit(db.knex, KEY, { before: monthStart(0), archiveDir: archive, by: 'test' })).rejects.toThrow(/newest sealed event/);
      expect(await partitionExists(db.knex, partitionOf(monthStart(1)))).toBe(true);
      expect(readdirSync(archive)).not.toContain(`${partitionOf(monthStart(1))}.ndjson`);
      // Sealing goes on, and once a later event is sealed the month can go.
      // (write() spaces its events a second apart: start them in the past, not the future.)
      await write(db.knex, new Date(Date.now() - 10_000), 2, 'now');
      expect(await sealer.sealOnce({ forceCheckpoint: true })).toBeGreaterThanOrEqual(2);
      // An archive directory that does not exist yet is made.
      const fresh = path.join(archive, 'not', 'yet');
      const results = await retainAudit(db.knex, KEY, { before: monthStart(0), archiveDir: fresh, by: 'test' });
      expect(results.find((r) => r.partition === partitionOf(monthStart(1)))).toMatchObject({ events: 3 });
      expect(readdirSync(fresh)).toContain(`${partitionOf(monthStart(1))}.ndjson`);
      await write(db.knex, new Date(Date.now() - 10_000), 1, 'after');
      expect(await sealer.sealOnce({ forceCheckpoint: true })).toBeGreaterThanOrEqual(1);
      expect((await verifyAuditChain(db.knex, KEY)).ok).toBe(true);
    } finally {
      await db.close();
    }
  }, 60_000);

  it('keeps a month with an unsealed event, and writes no archive for it', async () => {
    const { db } = await setup();
    try {
      await write(db.knex, new Date(monthStart(1).getTime() + DAY), 2, 'old');
      const archive = dir();
      await expect(retainAudit(db.knex, KEY, { before: monthStart(0), archiveDir: archive, by: 'test' })).rejects.toThrow(RetentionError);
      await expect(retainAudit(db.knex, KEY, { before: monthStart(0), archiveDir: archive, by: 'test' })).rejects.toThrow(/not sealed yet/);
      expect(await partitionExists(db.knex, partitionOf(monthStart(1)))).toBe(true);
      // The empty older months went; the unsealed one stopped the run and left no file behind.
      expect(readdirSync(archive)).not.toContain(`${partitionOf(monthStart(1))}.ndjson`);
      expect(await db.knex('audit_events').whereRaw("details->>'tag' = 'old'")).toHaveLength(2);
    } finally {
      await db.close();
    }
  }, 60_000);

  it('refuses a month holding an event that is not what the chain sealed, whatever the content', async () => {
    const { db, sealer } = await setup();
    try {
      const old = monthStart(1);
      await write(db.knex, new Date(old.getTime() + DAY), 3, 'old');
      await write(db.knex, new Date(Date.now() - 5_000), 2, 'now');
      await sealer.sealOnce({ forceCheckpoint: true });
      // Altered in place: verify already says so, and retention will not bury it.
      await tamper(db.knex, (trx) => trx('audit_events').where({ id: 2 }).update({ outcome: 'forged' }));
      const archive = dir();
      await expect(retainAudit(db.knex, KEY, { before: monthStart(0), archiveDir: archive, by: 'test' })).rejects.toThrow(RetentionError);
      expect(await partitionExists(db.knex, partitionOf(old))).toBe(true);
      expect(readdirSync(archive).filter((f) => f.startsWith(partitionOf(old)))).toEqual([]);
      expect(await db.knex('audit_retention')).toHaveLength(0);
    } finally {
      await db.close();
    }
  }, 60_000);

  it('leaves the month and no archive behind when the drop fails after the archive was written', async () => {
    const { db, sealer } = await setup();
    try {
      const old = monthStart(1);
      await write(db.knex, new Date(old.getTime() + DAY), 2, 'old');
      await sealer.sealOnce({ forceCheckpoint: true });
      await db.knex.raw(`CREATE FUNCTION test_refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'refused by test'; END $$`);
      await db.knex.raw('CREATE TRIGGER test_refuse BEFORE INSERT ON audit_retention FOR EACH ROW EXECUTE FUNCTION test_refuse()');
      const archive = dir();
      await expect(retainAudit(db.knex, KEY, { before: monthStart(0), archiveDir: archive, by: 'test' })).rejects.toThrow(/refused by test/);
      expect(readdirSync(archive)).toEqual([]);
      expect(await partitionExists(db.knex, partitionOf(old))).toBe(true);
      expect(await db.knex('audit_events').whereRaw("details->>'tag' = 'old'")).toHaveLength(2);
    } finally {
      await db.close();
    }
  }, 60_000);
});
