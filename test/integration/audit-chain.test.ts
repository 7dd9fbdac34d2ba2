import { randomBytes } from 'node:crypto';
import { rmSync } from 'node:fs';
import path from 'node:path';
import type { Knex } from 'knex';
import knexFactory from 'knex';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { inject } from 'vitest';
import * as core from '../../migrations/20261122_001_core.ts';
import { eventHash, verifyCheckpoint, OCCURRED_AT_SQL, type ChainEvent } from '../../src/audit/chain.ts';
import { recordAudit } from '../../src/audit/event.ts';
import { AuditSealer } from '../../src/audit/sealer.ts';
import { verifyAuditChain, type VerifyReport } from '../../src/audit/verify.ts';
import { createLogger } from '../../src/log.ts';
import { migrate, openDatabase, type Database } from '../../src/store/db.ts';
import { deriveKeys } from '../../src/tokens/kek.ts';
import { AT, EXECUTOR_AUD, PAYMENTS, basicAuth, createTestDatabase, startTestWrit, type TestWrit } from '../support/harness.ts';

const backends = [
  { backend: 'PostgreSQL', embedded: false },
  { backend: 'PGlite', embedded: true },
] as const;

function captureLogger(lines: string[]) {
  return createLogger('info', { write: (s: string) => { lines.push(s); } });
}

/** Runs `fn` as a superuser in a transaction that is always rolled back. */
async function tampered<T>(knex: Knex, fn: (trx: Knex.Transaction) => Promise<T>, options: { bypassTriggers?: boolean } = { bypassTriggers: true }): Promise<T> {
  const trx = await knex.transaction();
  try {
    if (options.bypassTriggers !== false) await trx.raw('SET LOCAL session_replication_role = replica');
    return await fn(trx);
  } finally {
    await trx.rollback();
  }
}

async function sealedRows(knex: Knex): Promise<Array<ChainEvent & { id: number; seq: number; hash: string; prev_hash: string; occurred_at: string }>> {
  const result = await knex.raw(`SELECT id, ${OCCURRED_AT_SQL} AS occurred_at, type, outcome, reason, request_id, client_id, jti, parent_jti,
    task_id, subject, audience, policy_version, details, seq, prev_hash, hash FROM audit_events WHERE seq IS NOT NULL ORDER BY seq`) as { rows: Array<Record<string, unknown>> };
  return result.rows.map((r) => ({ ...r, id: Number(r.id), seq: Number(r.seq) })) as never;
}

function kinds(report: VerifyReport): string[] {
  return report.problems.map((p) => p.kind);
}

describe.each(backends)('tamper-evident audit log on $backend', ({ embedded }) => {
  let t: TestWrit;
  let knex: Knex;
  let key: Buffer;
  let sealer: AuditSealer;
  const logLines: string[] = [];
  let hop1: string;

  async function sealAll(): Promise<void> {
    await t.writ.auditQueue.flush();
    while ((await sealer.sealOnce({ graceMs: 0, forceCheckpoint: true })) > 0) { /* until nothing is left */ }
  }

  beforeAll(async () => {
    t = await startTestWrit({ name: 'auditchain', embedded });
    // These tests seal by hand, step by step: the server's own background sealer would race them.
    await t.writ.auditSealer.stop();
    knex = t.writ.db.knex;
    key = t.writ.derived.auditCheckpoint;
    sealer = new AuditSealer(knex, {
      checkpointKey: key, logger: captureLogger(logLines), graceMs: 0, checkpointEvery: 1_000_000, checkpointIntervalMs: 3_600_000,
    });
  });
  afterAll(async () => {
    await t?.close();
    if (embedded && t) rmSync(t.config.dataDir, { recursive: true, force: true });
  });

  it('records grants, denials, rejections, introspections, revocations and policy applies, and seals them into a clean chain', async () => {
    const user = () => t.idp.token(t.issuer);
    for (let i = 0; i < 3; i += 1) {
      expect((await t.exchange('planner-agent', { subject_token: await user(), subject_token_type: AT, audience: PAYMENTS })).status).toBe(200);
    }
    const r1 = await t.exchange('planner-agent', { subject_token: await user(), subject_token_type: AT, audience: EXECUTOR_AUD, task_id: 'task-42' });
    expect(r1.status).toBe(200);
    hop1 = r1.body.access_token as string;
    const r2 = await t.exchange('executor-agent', { subject_token: hop1, subject_token_type: AT, audience: PAYMENTS });
    expect(r2.status).toBe(200);
    expect((await t.exchange('planner-agent', { subject_token: await user(), subject_token_type: AT, audience: PAYMENTS, scope: 'payment.transfer' })).status).toBe(400);
    expect((await t.post('/token', { grant_type: 'urn:ietf:params:oauth:grant-type:token-exchange', subject_token: 'x', subject_token_type: AT, audience: PAYMENTS }, basicAuth('planner-agent', 'wrong-secret'))).status).toBe(401);
    expect(await t.introspect('payments-api', r2.body.access_token as string)).toMatchObject({ active: true });
    expect((await t.post('/token/revocation', { token: hop1 }, basicAuth('planner-agent'))).status).toBe(200);

    await sealAll();
    const report = await verifyAuditChain(knex, key);
    expect(report.problems).toEqual([]);
    expect(report.ok).toBe(true);
    const total = Number((await knex('audit_events').count<Array<{ count: string }>>('* as count'))[0]!.count);
    expect(report.sealed).toMatchObject({ count: total, firstSeq: 1, lastSeq: total });
    expect(report.checkpoints.valid).toBeGreaterThanOrEqual(1);
    expect(report.checkpoints.lastSeq).toBe(total);
    expect(report.unsealed.count).toBe(0);

    const rows = await sealedRows(knex);
    expect(new Set(rows.map((r) => r.type))).toEqual(new Set([
      'policy.applied', 'exchange.granted', 'exchange.denied', 'token_endpoint.rejected', 'introspection', 'revocation',
    ]));
    const revocation = rows.find((r) => r.type === 'revocation')!;
    expect(revocation.details).toMatchObject({ revoked: 2, derived: 1 });
    // Tokens are named by jti only.
    expect(JSON.stringify(rows)).not.toContain(hop1);
    // The chain follows id order.
    expect(rows.map((r) => r.id)).toEqual([...rows.map((r) => r.id)].sort((a, b) => a - b));

    // Each checkpoint also goes to the log stream, signed.
    const logged = logLines.map((l) => JSON.parse(l) as { checkpoint?: { seq: number; hash: string; count: number; signature: string } }).filter((l) => l.checkpoint);
    const last = logged.at(-1)!.checkpoint!;
    expect(last).toMatchObject({ seq: total, count: total, hash: rows.at(-1)!.hash });
    expect(verifyCheckpoint(key, last)).toBe(true);
  });

  it('refuses the application any change or deletion of audit rows', async () => {
    const refused = /append-only|only the sealer/;
    await expect(knex('audit_events').where({ seq: 1 }).update({ details: JSON.stringify({ forged: true }) })).rejects.toThrow(refused);
    await expect(knex('audit_events').where({ seq: 1 }).update({ seq: 99 })).rejects.toThrow(refused);
    await expect(knex('audit_events').where({ seq: 2 }).delete()).rejects.toThrow(refused);
    await expect(knex('audit_events').whereRaw('false').delete()).rejects.toThrow(refused);
    await expect(knex.raw('TRUNCATE audit_events')).rejects.toThrow(refused);
    const partition = (await knex.raw(`SELECT tableoid::regclass::text AS p FROM audit_events WHERE seq = 1`) as { rows: Array<{ p: string }> }).rows[0]!.p;
    expect(partition).toMatch(/^audit_events_y\d{4}m\d{2}$/);
    await expect(knex.raw(`DELETE FROM ${partition}`)).rejects.toThrow(refused);
    await expect(knex.raw(`TRUNCATE ${partition}`)).rejects.toThrow(refused);
    // Unsealed rows cannot be changed either, nor sealed halfway, nor inserted pre-sealed.
    await recordAudit(knex, { type: 'key.generated', outcome: 'ok', details: { kid: 'k1' } });
    const fresh = await knex('audit_events').whereNull('seq').first<{ id: number }>('id');
    await expect(knex('audit_events').where({ id: fresh!.id }).update({ details: JSON.stringify({ kid: 'k2' }) })).rejects.toThrow(refused);
    await expect(knex('audit_events').where({ id: fresh!.id }).update({ seq: 1000 })).rejects.toThrow(refused);
    await expect(knex('audit_events').insert({ type: 'key.generated', outcome: 'ok', details: '{}', seq: 5000, hash: 'x', prev_hash: 'y', sealed_at: new Date() })).rejects.toThrow(refused);
    await expect(knex('audit_checkpoints').update({ signature: 'x' })).rejects.toThrow(refused);
    await expect(knex('audit_checkpoints').delete()).rejects.toThrow(refused);
    await expect(knex.raw('TRUNCATE audit_checkpoints')).rejects.toThrow(refused);
    await sealAll();
    expect((await verifyAuditChain(knex, key)).problems).toEqual([]);
  });

  it('names an altered event', async () => {
    const target = (await sealedRows(knex))[3]!;
    const report = await tampered(knex, async (trx) => {
      await trx.raw(`UPDATE audit_events SET details = details || '{"forged": true}'::jsonb WHERE seq = ?`, [target.seq]);
      return verifyAuditChain(trx, key);
    });
    expect(report.ok).toBe(false);
    expect(report.problems).toEqual([expect.objectContaining({ kind: 'altered', id: target.id, seq: target.seq })]);
    expect(report.first).toBe(report.problems[0]);
  });

  it('names a deleted event', async () => {
    const rows = await sealedRows(knex);
    const target = rows[4]!;
    const report = await tampered(knex, async (trx) => {
      await trx.raw('DELETE FROM audit_events WHERE seq = ?', [target.seq]);
      return verifyAuditChain(trx, key);
    });
    expect(report.problems).toEqual([expect.objectContaining({ kind: 'deleted', seq: target.seq, count: 1, afterId: rows[3]!.id, id: rows[5]!.id })]);
  });

  it('names the deletion of the first event', async () => {
    const rows = await sealedRows(knex);
    const report = await tampered(knex, async (trx) => {
      await trx.raw('DELETE FROM audit_events WHERE seq = 1');
      return verifyAuditChain(trx, key);
    });
    expect(report.problems).toEqual([expect.objectContaining({ kind: 'deleted', seq: 1, count: 1, id: rows[1]!.id })]);
  });

  it('names an inserted event: backdated or reusing an id below the head, which the sealer will not seal', async () => {
    const rows = await sealedRows(knex);
    const report = await tampered(knex, async (trx) => {
      const [backdated] = await trx('audit_events').insert({
        type: 'exchange.granted', outcome: 'granted', client_id: 'planner-agent', audience: PAYMENTS,
        occurred_at: new Date(Date.now() - 3_600_000), details: JSON.stringify({ rule: 'planner-reads-payments' }),
      }).returning('id') as Array<{ id: number }>;
      const [reused] = await trx('audit_events').insert({
        id: rows[2]!.id, type: 'exchange.granted', outcome: 'granted', client_id: 'planner-agent', details: '{}',
      }).returning('id') as Array<{ id: number }>;
      const lines: string[] = [];
      const inTrx = new AuditSealer(trx, { checkpointKey: key, logger: captureLogger(lines), graceMs: 0 });
      expect(await inTrx.sealOnce({ graceMs: 0 })).toBe(0);
      const r = await verifyAuditChain(trx, key);
      return { r, ids: [Number(reused!.id), Number(backdated!.id)] };
    }, { bypassTriggers: false });
    expect(report.r.problems.filter((p) => p.severity === 'error')).toEqual([
      expect.objectContaining({ kind: 'inserted', id: report.ids[0] }),
      expect.objectContaining({ kind: 'inserted', id: report.ids[1] }),
    ]);
  });

  it('names an event spliced into the sealed chain', async () => {
    const rows = await sealedRows(knex);
    const before = rows[1]!;
    const report = await tampered(knex, async (trx) => {
      await trx.raw('UPDATE audit_events SET seq = seq + 1 WHERE seq > ?', [before.seq]);
      const forged = {
        occurred_at: before.occurred_at, type: 'exchange.granted', outcome: 'granted', reason: null, request_id: 'forged',
        client_id: 'planner-agent', jti: 'forged-jti', parent_jti: null, task_id: null, subject: before.subject,
        audience: PAYMENTS, policy_version: 1, details: { rule: 'planner-reads-payments' },
      };
      const [{ id }] = await trx('audit_events').insert({ ...forged, details: JSON.stringify(forged.details) }).returning('id') as [{ id: number }];
      const seq = before.seq + 1;
      const hash = eventHash(before.hash, seq, { ...forged, id: Number(id) });
      await trx('audit_events').where({ id }).update({ seq, prev_hash: before.hash, hash, sealed_at: new Date() });
      return { r: await verifyAuditChain(trx, key), id: Number(id), seq };
    });
    expect(report.r.first).toMatchObject({ kind: 'inserted', id: report.id, seq: report.seq });
  });

  it('names a forged event appended to the chain with a made-up link', async () => {
    const rows = await sealedRows(knex);
    const head = rows.at(-1)!;
    const report = await tampered(knex, async (trx) => {
      const [{ id }] = await trx('audit_events').insert({
        type: 'revocation', outcome: 'revoked', details: '{}', seq: head.seq + 1, prev_hash: 'f'.repeat(64), hash: 'e'.repeat(64), sealed_at: new Date(),
      }).returning('id') as [{ id: number }];
      return { r: await verifyAuditChain(trx, key), id: Number(id) };
    });
    expect(report.r.problems).toEqual([expect.objectContaining({ kind: 'inserted', id: report.id, seq: head.seq + 1 })]);
  });

  it('names a truncated tail', async () => {
    const rows = await sealedRows(knex);
    const head = rows.at(-1)!;
    const report = await tampered(knex, async (trx) => {
      await trx.raw('DELETE FROM audit_events WHERE seq > ?', [head.seq - 2]);
      return verifyAuditChain(trx, key);
    });
    expect(report.problems).toEqual([expect.objectContaining({ kind: 'truncated', seq: head.seq - 1, count: 2 })]);
  });

  it('catches a tail deleted with its checkpoints through the checkpoints in the log stream', async () => {
    const rows = await sealedRows(knex);
    const checkpoints = await knex('audit_checkpoints').orderBy('seq') as Array<{ seq: number }>;
    expect(checkpoints.length).toBeGreaterThanOrEqual(2);
    const keep = Number(checkpoints[0]!.seq);
    const { withoutLog, withLog } = await tampered(knex, async (trx) => {
      await trx.raw('DELETE FROM audit_events WHERE seq > ?', [keep]);
      await trx.raw('DELETE FROM audit_checkpoints WHERE seq > ?', [keep]);
      const { checkpointsFromNdjson } = await import('../../src/audit/chain.ts');
      return {
        withoutLog: await verifyAuditChain(trx, key),
        withLog: await verifyAuditChain(trx, key, { externalCheckpoints: checkpointsFromNdjson(logLines.join('\n')) }),
      };
    });
    expect(withoutLog.ok).toBe(true);
    expect(withLog.problems).toEqual([expect.objectContaining({ kind: 'truncated', seq: keep + 1, count: rows.at(-1)!.seq - keep })]);
  });

  it('catches a change whose hashes were all recomputed, through the signed checkpoint', async () => {
    const rows = await sealedRows(knex);
    const report = await tampered(knex, async (trx) => {
      let prev = rows[2]!.prev_hash;
      for (const row of rows.slice(2)) {
        const details = row === rows[2] ? { ...(row.details as object), forged: true } : row.details;
        const hash = eventHash(prev, row.seq, { ...row, details });
        await trx('audit_events').where({ id: row.id }).update({ details: JSON.stringify(details), prev_hash: prev, hash });
        prev = hash;
      }
      return verifyAuditChain(trx, key);
    });
    expect(kinds(report)).not.toContain('altered');
    expect(report.first).toMatchObject({ kind: 'rewritten' });
  });

  it('names checkpoints whose signature does not verify', async () => {
    const report = await tampered(knex, async (trx) => {
      const last = await trx('audit_checkpoints').orderBy('id', 'desc').first<{ id: number }>('id');
      await trx('audit_checkpoints').where({ id: last!.id }).update({ signature: 'A'.repeat(43) });
      return { r: await verifyAuditChain(trx, key), id: Number(last!.id) };
    });
    expect(report.r.problems).toEqual([expect.objectContaining({ kind: 'bad_checkpoint', checkpointId: report.id })]);
    const otherKey = await verifyAuditChain(knex, deriveKeys(Buffer.alloc(32, 9)).auditCheckpoint);
    expect(new Set(kinds(otherKey))).toEqual(new Set(['bad_checkpoint']));
  });

  it('reports an unsealed tail as a warning', async () => {
    const report = await tampered(knex, async (trx) => {
      await recordAudit(trx, [{ type: 'key.generated', outcome: 'ok' }, { type: 'key.generated', outcome: 'ok' }]);
      return verifyAuditChain(trx, key);
    }, { bypassTriggers: false });
    expect(report.ok).toBe(true);
    expect(report.problems).toEqual([expect.objectContaining({ kind: 'unsealed_tail', severity: 'warning', count: 2 })]);
    expect(report.unsealed.count).toBe(2);
    // Nothing above was kept.
    expect((await verifyAuditChain(knex, key)).problems).toEqual([]);
  });

  it('seals 50 concurrent exchanges into one unbroken chain, in the background', async () => {
    // No grace: the in-flight markers alone keep the chain in id order here.
    const background = new AuditSealer(knex, { checkpointKey: key, logger: captureLogger([]), intervalMs: 20, checkpointEvery: 20, graceMs: 0 });
    background.start();
    try {
      // Slow writers commit long after later ids did; the sealer (without grace) must wait for them.
      const slow = Promise.all(Array.from({ length: 8 }, (_, i) => knex.transaction(async (trx) => {
        await recordAudit(trx, { type: 'key.generated', outcome: 'ok', details: { slow: i } });
        await trx.raw('SELECT pg_sleep(?)', [0.05 + (i % 4) * 0.08]);
      })));
      const results = await Promise.all(Array.from({ length: 50 }, async (_, i) => {
        const res = await t.exchange('planner-agent', { subject_token: await t.idp.token(t.issuer), subject_token_type: AT, audience: PAYMENTS, ...(i % 5 === 0 ? { scope: 'payment.transfer' } : {}) });
        if (res.status === 200 && i % 3 === 0) await t.introspect('payments-api', res.body.access_token as string);
        return res.status;
      }));
      await slow;
      expect(results.filter((s) => s === 200)).toHaveLength(40);
      await t.writ.auditQueue.flush();
      await expect.poll(async () => Number((await knex('audit_events').whereNull('seq').count<Array<{ count: string }>>('* as count'))[0]!.count), { timeout: 15_000, interval: 50 }).toBe(0);
      expect(background.lag()).toBe(0);
    } finally {
      await background.stop();
    }
    const report = await verifyAuditChain(knex, key);
    expect(report.problems).toEqual([]);
    const rows = await sealedRows(knex);
    expect(rows.map((r) => r.seq)).toEqual(rows.map((_, i) => i + 1));
    expect(rows.map((r) => r.id)).toEqual([...rows.map((r) => r.id)].sort((a, b) => a - b));
    expect(report.checkpoints.lastSeq).toBe(rows.length);
  }, 60_000);

  it.skipIf(embedded)('never seals past a transaction still in flight', async () => {
    const other = knexFactory({ client: 'pg', connection: t.databaseUrl!, pool: { min: 0, max: 2 } });
    const open: Knex.Transaction[] = [];
    await sealAll();
    try {
      const held = await other.transaction();
      open.push(held);
      const [{ id: heldId }] = await held('audit_events').insert({ type: 'key.generated', outcome: 'ok', details: '{}' }).returning('id') as [{ id: number }];
      await recordAudit(knex, { type: 'key.generated', outcome: 'ok', details: { after: true } });
      const later = await knex('audit_events').whereNull('seq').orderBy('id', 'desc').first<{ id: number }>('id');
      expect(Number(later!.id)).toBeGreaterThan(Number(heldId));
      expect(await sealer.sealOnce({ graceMs: 0 })).toBe(0);
      expect((await knex('audit_events').where({ id: later!.id }).first('seq')).seq).toBeNull();
      await held.commit();
      expect(await sealer.sealOnce({ graceMs: 0 })).toBe(2);
      const sealed = await knex('audit_events').whereIn('id', [heldId, later!.id]).orderBy('seq') as Array<{ id: number }>;
      expect(sealed.map((r) => Number(r.id))).toEqual([Number(heldId), Number(later!.id)]);

      // An aborted one leaves a gap in ids, not in the chain.
      const aborted = await other.transaction();
      open.push(aborted);
      await aborted('audit_events').insert({ type: 'key.generated', outcome: 'ok', details: '{}' });
      await recordAudit(knex, { type: 'key.generated', outcome: 'ok' });
      expect(await sealer.sealOnce({ graceMs: 0 })).toBe(0);
      await aborted.rollback();
      expect(await sealer.sealOnce({ graceMs: 0 })).toBe(1);
      expect((await verifyAuditChain(knex, key)).problems).toEqual([]);
    } finally {
      for (const trx of open) if (!trx.isCompleted()) await trx.rollback();
      await other.destroy();
    }
  });

  it('is not stopped by a forged checkpoint', async () => {
    const lines: string[] = [];
    const sealedNow = await tampered(knex, async (trx) => {
      await trx('audit_checkpoints').insert({ seq: 1_000_000, hash: 'f'.repeat(64), count: 1_000_000, signature: 'A'.repeat(43) });
      await recordAudit(trx, { type: 'key.generated', outcome: 'ok' });
      await trx.raw('SET LOCAL session_replication_role = origin');
      const inTrx = new AuditSealer(trx, { checkpointKey: key, logger: captureLogger(lines), graceMs: 0 });
      const n = await inTrx.sealOnce({ graceMs: 0 });
      const report = await verifyAuditChain(trx, key);
      expect(report.problems).toEqual([expect.objectContaining({ kind: 'bad_checkpoint', seq: 1_000_000 })]);
      return n;
    });
    expect(lines.some((l) => l.includes('invalid signature ignored'))).toBe(true);
    expect(sealedNow).toBe(1);
  });

  it('stops sealing when the chain is behind its last checkpoint', async () => {
    const lines: string[] = [];
    const sealedNow = await tampered(knex, async (trx) => {
      const inTrx = new AuditSealer(trx, { checkpointKey: key, logger: captureLogger(lines), graceMs: 0 });
      await inTrx.sealOnce({ forceCheckpoint: true });
      const head = (await sealedRows(trx)).at(-1)!;
      await trx.raw('DELETE FROM audit_events WHERE seq = ?', [head.seq]);
      await trx.raw('SET LOCAL session_replication_role = origin');
      await recordAudit(trx, { type: 'key.generated', outcome: 'ok' });
      return inTrx.sealOnce({ graceMs: 0 });
    });
    expect(sealedNow).toBe(0);
    expect(lines.some((l) => l.includes('behind its last signed checkpoint'))).toBe(true);
  });
});

describe.each(backends)('migration 002 on $backend', ({ embedded }) => {
  const dirs: string[] = [];
  afterAll(() => {
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  it('partitions the existing events, keeps their ids, and the sealer then chains them', async () => {
    const dataDir = path.join('/tmp', `writ-test-${inject('runId')}-mig-${randomBytes(3).toString('hex')}`);
    dirs.push(dataDir);
    const databaseUrl = embedded ? undefined : await createTestDatabase('auditmig');
    const db: Database = await openDatabase({ databaseUrl, dataDir });
    try {
      const onlyCore: Knex.MigrationSource<string> = {
        getMigrations: async () => ['20261122_001_core.ts'],
        getMigrationName: (n) => n,
        getMigration: async () => core,
      };
      await db.knex.migrate.latest({ migrationSource: onlyCore });
      const yearAgo = new Date(Date.now() - 365 * 86_400_000);
      await db.knex('audit_events').insert([
        { type: 'policy.applied', outcome: 'applied', occurred_at: yearAgo, details: '{"digest":"a"}' },
        { type: 'exchange.granted', outcome: 'granted', jti: 'j1', details: '{}' },
        { type: 'introspection', outcome: 'active', jti: 'j1', details: '{}' },
      ]);
      await db.knex('audit_events').insert({ type: 'introspection', outcome: 'inactive', details: '{}' });
      expect(await migrate(db)).toContain('20261122_002_audit_chain.ts');

      const rows = await db.knex.raw('SELECT id, type, tableoid::regclass::text AS part FROM audit_events ORDER BY id') as { rows: Array<{ id: number; type: string; part: string }> };
      expect(rows.rows.map((r) => [Number(r.id), r.type])).toEqual([[1, 'policy.applied'], [2, 'exchange.granted'], [3, 'introspection'], [4, 'introspection']]);
      expect(rows.rows[0]!.part).toBe('audit_events_default');
      const month = new Date().toISOString().slice(0, 7).replace('-', 'm');
      expect(rows.rows[1]!.part).toBe(`audit_events_y${month}`);
      const partitions = await db.knex.raw(`SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'audit_events'::regclass ORDER BY 1`) as { rows: Array<{ relname: string }> };
      expect(partitions.rows.length).toBe(8);

      await recordAudit(db.knex, { type: 'key.generated', outcome: 'ok' });
      expect(Number((await db.knex('audit_events').max<Array<{ max: number }>>('id as max'))[0]!.max)).toBe(5);
      const key = deriveKeys(Buffer.alloc(32, 3)).auditCheckpoint;
      const sealer = new AuditSealer(db.knex, { checkpointKey: key, logger: createLogger('silent'), graceMs: 0 });
      expect(await sealer.ensurePartitions()).toBe(0);
      expect(await sealer.sealOnce({ forceCheckpoint: true })).toBe(5);
      expect((await verifyAuditChain(db.knex, key)).problems).toEqual([]);
    } finally {
      await db.close();
    }
  }, 60_000);
});
