import { randomBytes } from 'node:crypto';
import { rmSync } from 'node:fs';
import { readdir } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Knex } from 'knex';
import knexFactory from 'knex';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { inject } from 'vitest';
import * as core from '../../migrations/20261122_001_core.ts';
import { GENESIS_HASH, eventHash, signCheckpoint, verifyCheckpoint, OCCURRED_AT_SQL, type ChainEvent } from '../../src/audit/chain.ts';
import { recordAudit } from '../../src/audit/event.ts';
import { AuditSealer } from '../../src/audit/sealer.ts';
import { searchAudit } from '../../src/audit/trace.ts';
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

type SealedRow = ChainEvent & { id: number; seq: number; hash: string; prev_hash: string; occurred_at: string };

/** Sealed events with their chain rows, in chain order. */
async function sealedRows(knex: Knex): Promise<SealedRow[]> {
  const result = await knex.raw(`SELECT e.id, ${OCCURRED_AT_SQL} AS occurred_at, e.type, e.outcome, e.reason, e.request_id, e.client_id, e.jti,
    e.parent_jti, e.task_id, e.subject, e.audience, e.policy_version, e.details, c.seq, c.prev_hash, c.hash
    FROM audit_chain c JOIN audit_events e ON e.id = c.event_id ORDER BY c.seq`) as { rows: Array<Record<string, unknown>> };
  return result.rows.map((r) => ({ ...r, id: Number(r.id), seq: Number(r.seq) })) as never;
}

const UNSEALED = 'NOT EXISTS (SELECT 1 FROM audit_chain c WHERE c.event_id = audit_events.id)';

async function unsealedCount(knex: Knex): Promise<number> {
  return Number((await knex('audit_events').whereRaw(UNSEALED).count<Array<{ count: string }>>('* as count'))[0]!.count);
}

/** As a superuser with the triggers off: sealed events and their chain rows, where `where` holds for the chain row. */
async function deleteSealed(trx: Knex.Transaction, where: string, bindings: readonly number[]): Promise<void> {
  await trx.raw(`DELETE FROM audit_events WHERE id IN (SELECT event_id FROM audit_chain WHERE ${where})`, bindings);
  await trx.raw(`DELETE FROM audit_chain WHERE ${where}`, bindings);
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
      'key.generated', 'policy.applied', 'exchange.granted', 'exchange.denied', 'token_endpoint.rejected', 'introspection', 'revocation',
    ]));
    const revocation = rows.find((r) => r.type === 'revocation')!;
    expect(revocation.details).toMatchObject({ revoked: 2, derived: 1 });
    // Tokens are named by jti only.
    expect(JSON.stringify(rows)).not.toContain(hop1);
    // The chain follows id order.
    expect(rows.map((r) => r.id)).toEqual([...rows.map((r) => r.id)].sort((a, b) => a - b));
    // Each event as the API and the export show it carries its place in the chain.
    const page = await searchAudit(knex, { limit: 500 });
    expect(page.events.map((e) => [e.id, e.seq, e.prev_hash, e.hash])).toEqual(rows.map((r) => [r.id, r.seq, r.prev_hash, r.hash]).reverse());

    // Each checkpoint also goes to the log stream, signed.
    const logged = logLines.map((l) => JSON.parse(l) as { checkpoint?: { seq: number; hash: string; count: number; signature: string } }).filter((l) => l.checkpoint);
    const last = logged.at(-1)!.checkpoint!;
    expect(last).toMatchObject({ seq: total, count: total, hash: rows.at(-1)!.hash });
    expect(verifyCheckpoint(key, last)).toBe(true);
  });

  it('refuses the application any change or deletion of audit rows', async () => {
    const refused = /append-only/;
    const [first, second] = await sealedRows(knex);
    await expect(knex('audit_events').where({ id: first!.id }).update({ details: JSON.stringify({ forged: true }) })).rejects.toThrow(refused);
    await expect(knex('audit_events').where({ id: first!.id }).update({ type: 'key.generated' })).rejects.toThrow(refused);
    await expect(knex('audit_events').whereRaw('false').update({ type: 'key.generated' })).rejects.toThrow(refused);
    await expect(knex('audit_events').where({ id: second!.id }).delete()).rejects.toThrow(refused);
    await expect(knex('audit_events').whereRaw('false').delete()).rejects.toThrow(refused);
    await expect(knex.raw('TRUNCATE audit_events')).rejects.toThrow(refused);
    const partition = (await knex.raw('SELECT tableoid::regclass::text AS p FROM audit_events WHERE id = ?', [first!.id]) as { rows: Array<{ p: string }> }).rows[0]!.p;
    expect(partition).toMatch(/^audit_events_y\d{4}m\d{2}$/);
    await expect(knex.raw(`UPDATE ${partition} SET outcome = outcome`)).rejects.toThrow(refused);
    await expect(knex.raw(`DELETE FROM ${partition}`)).rejects.toThrow(refused);
    await expect(knex.raw(`TRUNCATE ${partition}`)).rejects.toThrow(refused);
    // Unsealed rows cannot be changed either.
    await recordAudit(knex, { type: 'key.generated', outcome: 'ok', details: { kid: 'k1' } });
    const fresh = await knex('audit_events').whereRaw(UNSEALED).first<{ id: number }>('id');
    await expect(knex('audit_events').where({ id: fresh!.id }).update({ details: JSON.stringify({ kid: 'k2' }) })).rejects.toThrow(refused);
    // The chain only grows: its rows cannot be changed or deleted, nor a seq or an event sealed twice.
    await expect(knex('audit_chain').where({ seq: first!.seq }).update({ hash: 'x' })).rejects.toThrow(refused);
    await expect(knex('audit_chain').where({ seq: first!.seq }).update({ event_id: fresh!.id })).rejects.toThrow(refused);
    await expect(knex('audit_chain').whereRaw('false').update({ hash: 'x' })).rejects.toThrow(refused);
    await expect(knex('audit_chain').where({ seq: second!.seq }).delete()).rejects.toThrow(refused);
    await expect(knex('audit_chain').whereRaw('false').delete()).rejects.toThrow(refused);
    await expect(knex.raw('TRUNCATE audit_chain')).rejects.toThrow(refused);
    await expect(knex('audit_chain').insert({ seq: first!.seq, event_id: fresh!.id, prev_hash: 'x', hash: 'y' })).rejects.toThrow(/duplicate key/);
    await expect(knex('audit_chain').insert({ seq: 1_000_000, event_id: first!.id, prev_hash: 'x', hash: 'y' })).rejects.toThrow(/duplicate key/);
    await expect(knex('audit_checkpoints').update({ signature: 'x' })).rejects.toThrow(refused);
    await expect(knex('audit_checkpoints').delete()).rejects.toThrow(refused);
    await expect(knex.raw('TRUNCATE audit_checkpoints')).rejects.toThrow(refused);
    await sealAll();
    expect((await verifyAuditChain(knex, key)).problems).toEqual([]);
  });

  it('names an altered event', async () => {
    const target = (await sealedRows(knex))[3]!;
    const report = await tampered(knex, async (trx) => {
      await trx.raw(`UPDATE audit_events SET details = details || '{"forged": true}'::jsonb WHERE id = ?`, [target.id]);
      return verifyAuditChain(trx, key);
    });
    expect(report.ok).toBe(false);
    expect(report.problems).toEqual([expect.objectContaining({ kind: 'altered', id: target.id, seq: target.seq })]);
    expect(report.first).toBe(report.problems[0]);
  });

  it('names a chain row whose hash or prev_hash was altered', async () => {
    const rows = await sealedRows(knex);
    const target = rows[3]!;
    const hash = await tampered(knex, async (trx) => {
      await trx.raw('UPDATE audit_chain SET hash = ? WHERE seq = ?', ['a'.repeat(64), target.seq]);
      return verifyAuditChain(trx, key);
    });
    expect(hash.problems).toEqual([expect.objectContaining({ kind: 'seal_altered', id: target.id, seq: target.seq })]);
    const prev = await tampered(knex, async (trx) => {
      await trx.raw('UPDATE audit_chain SET prev_hash = ? WHERE seq = ?', ['b'.repeat(64), target.seq]);
      return verifyAuditChain(trx, key);
    });
    expect(prev.problems).toEqual([expect.objectContaining({ kind: 'seal_altered', id: target.id, seq: target.seq })]);
    // At the head nothing links to the row; its signed checkpoint tells the row from the event.
    const head = rows.at(-1)!;
    const atHead = await tampered(knex, async (trx) => {
      await trx.raw('UPDATE audit_chain SET hash = ? WHERE seq = ?', ['c'.repeat(64), head.seq]);
      return verifyAuditChain(trx, key);
    });
    expect(atHead.problems).toEqual([expect.objectContaining({ kind: 'seal_altered', id: head.id, seq: head.seq })]);
  });

  it('names a deleted event', async () => {
    const rows = await sealedRows(knex);
    const target = rows[4]!;
    const report = await tampered(knex, async (trx) => {
      await deleteSealed(trx, 'seq = ?', [target.seq]);
      return verifyAuditChain(trx, key);
    });
    expect(report.problems).toEqual([expect.objectContaining({ kind: 'deleted', seq: target.seq, count: 1, afterId: rows[3]!.id, id: rows[5]!.id })]);
  });

  it('names a deleted event whose chain row was kept, and the sealer stops at a head without its event', async () => {
    const rows = await sealedRows(knex);
    const report = await tampered(knex, async (trx) => {
      await trx.raw('DELETE FROM audit_events WHERE id IN (?, ?)', [rows[4]!.id, rows[5]!.id]);
      return verifyAuditChain(trx, key);
    });
    expect(report.problems).toEqual([expect.objectContaining({ kind: 'deleted', seq: rows[4]!.seq, count: 2, id: rows[4]!.id })]);

    const head = rows.at(-1)!;
    const lines: string[] = [];
    const { r, sealedNow } = await tampered(knex, async (trx) => {
      await trx.raw('DELETE FROM audit_events WHERE id = ?', [head.id]);
      await trx.raw('SET LOCAL session_replication_role = origin');
      await recordAudit(trx, { type: 'key.generated', outcome: 'ok' });
      const inTrx = new AuditSealer(trx, { checkpointKey: key, logger: captureLogger(lines), graceMs: 0 });
      return { sealedNow: await inTrx.sealOnce({ graceMs: 0 }), r: await verifyAuditChain(trx, key) };
    });
    expect(sealedNow).toBe(0);
    expect(lines.some((l) => l.includes('event is missing'))).toBe(true);
    expect(r.problems).toEqual([
      expect.objectContaining({ kind: 'deleted', seq: head.seq, count: 1, id: head.id }),
      expect.objectContaining({ kind: 'unsealed_tail', count: 1 }),
    ]);
  });

  it('names an event whose chain row was deleted', async () => {
    const rows = await sealedRows(knex);
    const report = await tampered(knex, async (trx) => {
      await trx.raw('DELETE FROM audit_chain WHERE seq IN (?, ?)', [rows[4]!.seq, rows[5]!.seq]);
      return verifyAuditChain(trx, key);
    });
    expect(report.problems).toEqual([expect.objectContaining({ kind: 'seal_deleted', seq: rows[4]!.seq, count: 2, id: rows[4]!.id, afterId: rows[3]!.id })]);
    const firstRow = await tampered(knex, async (trx) => {
      await trx.raw('DELETE FROM audit_chain WHERE seq = 1');
      return verifyAuditChain(trx, key);
    });
    expect(firstRow.problems).toEqual([expect.objectContaining({ kind: 'seal_deleted', seq: 1, count: 1, id: rows[0]!.id })]);
    // The event changed as well: it no longer bridges the gap, so it is a deletion and an unsealed event below the head.
    const altered = await tampered(knex, async (trx) => {
      await trx.raw('DELETE FROM audit_chain WHERE seq = ?', [rows[4]!.seq]);
      await trx.raw(`UPDATE audit_events SET outcome = 'forged' WHERE id = ?`, [rows[4]!.id]);
      return verifyAuditChain(trx, key);
    });
    expect(altered.problems).toEqual([
      expect.objectContaining({ kind: 'deleted', seq: rows[4]!.seq, count: 1, afterId: rows[3]!.id, id: rows[5]!.id }),
      expect.objectContaining({ kind: 'inserted', id: rows[4]!.id }),
    ]);
  });

  it('names the deletion of the first event', async () => {
    const rows = await sealedRows(knex);
    const report = await tampered(knex, async (trx) => {
      await deleteSealed(trx, 'seq = 1', []);
      return verifyAuditChain(trx, key);
    });
    expect(report.problems).toEqual([expect.objectContaining({ kind: 'deleted', seq: 1, count: 1, id: rows[1]!.id })]);
  });

  it('names an inserted event: backdated, below the head, or reusing a sealed id, which the sealer will not seal', async () => {
    const rows = await sealedRows(knex);
    const report = await tampered(knex, async (trx) => {
      const [backdated] = await trx('audit_events').insert({
        type: 'exchange.granted', outcome: 'granted', client_id: 'planner-agent', audience: PAYMENTS,
        occurred_at: new Date(Date.now() - 3_600_000), details: JSON.stringify({ rule: 'planner-reads-payments' }),
      }).returning('id') as Array<{ id: number }>;
      const [reused] = await trx('audit_events').insert({
        id: rows[2]!.id, type: 'exchange.granted', outcome: 'granted', client_id: 'planner-agent', details: '{}',
      }).returning('id') as Array<{ id: number }>;
      // Every id below the head is taken; one below them all is as good.
      const [below] = await trx('audit_events').insert({
        id: 0, type: 'exchange.granted', outcome: 'granted', client_id: 'planner-agent', details: '{}',
      }).returning('id') as Array<{ id: number }>;
      const lines: string[] = [];
      const inTrx = new AuditSealer(trx, { checkpointKey: key, logger: captureLogger(lines), graceMs: 0 });
      expect(await inTrx.sealOnce({ graceMs: 0 })).toBe(0);
      const r = await verifyAuditChain(trx, key);
      return { r, ids: [Number(reused!.id), Number(below!.id), Number(backdated!.id)] };
    }, { bypassTriggers: false });
    expect(report.r.problems.filter((p) => p.severity === 'error')).toEqual([
      expect.objectContaining({ kind: 'inserted', id: report.ids[0], seq: rows[2]!.seq }),
      expect.objectContaining({ kind: 'inserted', id: report.ids[1] }),
      expect.objectContaining({ kind: 'inserted', id: report.ids[2] }),
    ]);
  });

  it('seals only events older than the grace, in id order: a young event holds back older ones after it', async () => {
    const passes = await tampered(knex, async (trx) => {
      const inTrx = new AuditSealer(trx, { checkpointKey: key, logger: captureLogger([]), graceMs: 0 });
      while ((await inTrx.sealOnce({ graceMs: 0 })) > 0) { /* a clean head */ }
      const minuteAgo = new Date(Date.now() - 60_000);
      // Ids in this order: a minute old, just now, a minute old. (Inserted with the triggers off,
      // so that this open transaction leaves no in-flight marker, which would hold the sealer.)
      await trx('audit_events').insert({ type: 'key.generated', outcome: 'ok', details: '{}', occurred_at: minuteAgo });
      await trx('audit_events').insert({ type: 'key.generated', outcome: 'ok', details: '{}' });
      await trx('audit_events').insert({ type: 'key.generated', outcome: 'ok', details: '{}', occurred_at: minuteAgo });
      const withGrace = [await inTrx.sealOnce({ graceMs: 30_000 }), await inTrx.sealOnce({ graceMs: 30_000 })];
      return [...withGrace, await inTrx.sealOnce({ graceMs: 0 }), (await verifyAuditChain(trx, key)).problems.length];
    });
    // The first alone; nothing while the young one is within the grace; then both, in order.
    expect(passes).toEqual([1, 0, 2, 0]);
  });

  it('leaves events sharing an id unsealed, and names them once the chain moves past', async () => {
    const lines: string[] = [];
    const { sealedNow, r, id } = await tampered(knex, async (trx) => {
      const [{ id: shared }] = await trx('audit_events').insert({ type: 'key.generated', outcome: 'ok', details: '{}' }).returning('id') as [{ id: number }];
      // Dated a moment earlier: the primary key is (id, occurred_at).
      await trx.raw(`INSERT INTO audit_events (id, occurred_at, type, outcome, details)
        SELECT id, occurred_at - interval '1 millisecond', type, outcome, '{"forged": true}' FROM audit_events WHERE id = ?`, [shared]);
      await recordAudit(trx, { type: 'key.generated', outcome: 'ok' });
      await trx.raw('SET LOCAL session_replication_role = origin');
      const inTrx = new AuditSealer(trx, { checkpointKey: key, logger: captureLogger(lines), graceMs: 0 });
      return { sealedNow: await inTrx.sealOnce({ graceMs: 0 }), r: await verifyAuditChain(trx, key), id: Number(shared) };
    });
    expect(sealedNow).toBe(1);
    expect(lines.some((l) => l.includes('share an id'))).toBe(true);
    expect(r.problems).toEqual([
      expect.objectContaining({ kind: 'inserted', id }),
      expect.objectContaining({ kind: 'inserted', id }),
    ]);
  });

  it('names an event spliced into the sealed chain', async () => {
    const rows = await sealedRows(knex);
    const before = rows[1]!;
    const report = await tampered(knex, async (trx) => {
      // Shifted in two steps: the primary key is checked row by row.
      await trx.raw('UPDATE audit_chain SET seq = seq + 1000000 WHERE seq > ?', [before.seq]);
      await trx.raw('UPDATE audit_chain SET seq = seq - 999999 WHERE seq > 1000000');
      const forged = {
        occurred_at: before.occurred_at, type: 'exchange.granted', outcome: 'granted', reason: null, request_id: 'forged',
        client_id: 'planner-agent', jti: 'forged-jti', parent_jti: null, task_id: null, subject: before.subject,
        audience: PAYMENTS, policy_version: 1, details: { rule: 'planner-reads-payments' },
      };
      const [{ id }] = await trx('audit_events').insert({ ...forged, details: JSON.stringify(forged.details) }).returning('id') as [{ id: number }];
      const seq = before.seq + 1;
      const hash = eventHash(before.hash, seq, { ...forged, id: Number(id) });
      await trx('audit_chain').insert({ seq, event_id: id, prev_hash: before.hash, hash });
      return { r: await verifyAuditChain(trx, key), id: Number(id), seq };
    });
    expect(report.r.first).toMatchObject({ kind: 'inserted', id: report.id, seq: report.seq });
  });

  it('names a forged event appended to the chain with a made-up link', async () => {
    const rows = await sealedRows(knex);
    const head = rows.at(-1)!;
    const report = await tampered(knex, async (trx) => {
      const [{ id }] = await trx('audit_events').insert({ type: 'revocation', outcome: 'revoked', details: '{}' }).returning('id') as [{ id: number }];
      await trx('audit_chain').insert({ seq: head.seq + 1, event_id: id, prev_hash: 'f'.repeat(64), hash: 'e'.repeat(64) });
      return { r: await verifyAuditChain(trx, key), id: Number(id) };
    });
    expect(report.r.problems).toEqual([expect.objectContaining({ kind: 'inserted', id: report.id, seq: head.seq + 1 })]);
  });

  it('names a truncated tail', async () => {
    const rows = await sealedRows(knex);
    const head = rows.at(-1)!;
    const report = await tampered(knex, async (trx) => {
      await deleteSealed(trx, 'seq > ?', [head.seq - 2]);
      return verifyAuditChain(trx, key);
    });
    expect(report.problems).toEqual([expect.objectContaining({ kind: 'truncated', seq: head.seq - 1, count: 2 })]);
    // Only the chain rows: the events are back to an unsealed tail, and the sealer will not reseal them past the checkpoint.
    const rowsOnly = await tampered(knex, async (trx) => {
      await trx.raw('DELETE FROM audit_chain WHERE seq > ?', [head.seq - 2]);
      await trx.raw('SET LOCAL session_replication_role = origin');
      const inTrx = new AuditSealer(trx, { checkpointKey: key, logger: captureLogger([]), graceMs: 0 });
      expect(await inTrx.sealOnce({ graceMs: 0 })).toBe(0);
      return verifyAuditChain(trx, key);
    });
    expect(rowsOnly.problems).toEqual([
      expect.objectContaining({ kind: 'truncated', seq: head.seq - 1, count: 2 }),
      expect.objectContaining({ kind: 'unsealed_tail', count: 2, id: rows.at(-2)!.id }),
    ]);
  });

  it('catches a tail deleted with its checkpoints through the checkpoints in the log stream', async () => {
    const rows = await sealedRows(knex);
    const checkpoints = await knex('audit_checkpoints').orderBy('seq') as Array<{ seq: number }>;
    expect(checkpoints.length).toBeGreaterThanOrEqual(2);
    const keep = Number(checkpoints[0]!.seq);
    const { withoutLog, withLog } = await tampered(knex, async (trx) => {
      await deleteSealed(trx, 'seq > ?', [keep]);
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
        if (row === rows[2]) await trx('audit_events').where({ id: row.id }).update({ details: JSON.stringify(details) });
        await trx('audit_chain').where({ seq: row.seq }).update({ prev_hash: prev, hash });
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
      await expect.poll(() => unsealedCount(knex), { timeout: 15_000, interval: 50 }).toBe(0);
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
      const later = await knex('audit_events').whereRaw(UNSEALED).orderBy('id', 'desc').first<{ id: number }>('id');
      expect(Number(later!.id)).toBeGreaterThan(Number(heldId));
      expect(await sealer.sealOnce({ graceMs: 0 })).toBe(0);
      expect(await knex('audit_chain').where({ event_id: later!.id }).first()).toBeUndefined();
      await held.commit();
      expect(await sealer.sealOnce({ graceMs: 0 })).toBe(2);
      const sealed = await knex('audit_chain').whereIn('event_id', [heldId, later!.id]).orderBy('seq') as Array<{ event_id: number }>;
      expect(sealed.map((r) => Number(r.event_id))).toEqual([Number(heldId), Number(later!.id)]);

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

  it('stops, rather than seal with no anchor, when forged checkpoints bury every valid one', async () => {
    const lines: string[] = [];
    const sealedNow = await tampered(knex, async (trx) => {
      await trx('audit_checkpoints').insert(Array.from({ length: 1001 }, () => ({ seq: 1_000_000, hash: 'f'.repeat(64), count: 1_000_000, signature: 'A'.repeat(43) })));
      await recordAudit(trx, { type: 'key.generated', outcome: 'ok' });
      await trx.raw('SET LOCAL session_replication_role = origin');
      return new AuditSealer(trx, { checkpointKey: key, logger: captureLogger(lines), graceMs: 0 }).sealOnce({ graceMs: 0 });
    });
    expect(sealedNow).toBe(0);
    expect(lines.some((l) => l.includes('bury any valid one'))).toBe(true);
  });

  it('stops sealing when the chain is behind its last checkpoint', async () => {
    const lines: string[] = [];
    const sealedNow = await tampered(knex, async (trx) => {
      const inTrx = new AuditSealer(trx, { checkpointKey: key, logger: captureLogger(lines), graceMs: 0 });
      await inTrx.sealOnce({ forceCheckpoint: true });
      const head = (await sealedRows(trx)).at(-1)!;
      await deleteSealed(trx, 'seq = ?', [head.seq]);
      await trx.raw('SET LOCAL session_replication_role = origin');
      await recordAudit(trx, { type: 'key.generated', outcome: 'ok' });
      return inTrx.sealOnce({ graceMs: 0 });
    });
    expect(sealedNow).toBe(0);
    expect(lines.some((l) => l.includes('behind a point already sealed or signed'))).toBe(true);
  });

  /** As a superuser: changes one sealed event and recomputes every chain row from it on, as no key is needed for that. */
  async function rewriteFrom(trx: Knex.Transaction, seq: number): Promise<void> {
    const rows = (await sealedRows(trx)).filter((r) => r.seq >= seq);
    let prev = rows[0]!.prev_hash;
    for (const row of rows) {
      const details = row.seq === seq ? { ...(row.details as object), rewritten: true } : row.details;
      if (row.seq === seq) await trx('audit_events').where({ id: row.id }).update({ details: JSON.stringify(details) });
      const hash = eventHash(prev, row.seq, { ...row, details });
      await trx('audit_chain').where({ seq: row.seq }).update({ prev_hash: prev, hash });
      prev = hash;
    }
  }

  async function checkpointCount(trx: Knex.Transaction): Promise<number> {
    return Number((await trx('audit_checkpoints').count<Array<{ count: string }>>('* as count'))[0]!.count);
  }

  it('signs no checkpoint over a rewritten chain whose checkpoints were deleted, while it remembers them', async () => {
    const lines: string[] = [];
    const outcome = await tampered(knex, async (trx) => {
      const inTrx = new AuditSealer(trx, { checkpointKey: key, logger: captureLogger(lines), graceMs: 0, checkpointIntervalMs: 0 });
      await recordAudit(trx, { type: 'key.generated', outcome: 'ok' });
      await inTrx.sealOnce({ forceCheckpoint: true });
      await rewriteFrom(trx, 2);
      await trx('audit_checkpoints').delete();
      await trx.raw('SET LOCAL session_replication_role = origin');
      await recordAudit(trx, { type: 'key.generated', outcome: 'ok' });
      const sealedNow = await inTrx.sealOnce({ forceCheckpoint: true });
      return { sealedNow, checkpoints: await checkpointCount(trx), report: await verifyAuditChain(trx, key) };
    });
    expect(outcome.sealedNow).toBe(0);
    expect(outcome.checkpoints).toBe(0);
    expect(lines.some((l) => l.includes('gone from the database'))).toBe(true);
    expect(lines.some((l) => l.includes('no longer matches a point already sealed or signed'))).toBe(true);
    // What the database alone shows: a chain without checkpoints, nothing signed over the change.
    expect(outcome.report.checkpoints.valid).toBe(0);
  });

  it('stops at a rewrite of what it sealed after the last checkpoint', async () => {
    const lines: string[] = [];
    const outcome = await tampered(knex, async (trx) => {
      const inTrx = new AuditSealer(trx, { checkpointKey: key, logger: captureLogger(lines), graceMs: 0, checkpointEvery: 1_000_000, checkpointIntervalMs: 3_600_000 });
      await inTrx.sealOnce({ forceCheckpoint: true });
      await recordAudit(trx, [{ type: 'key.generated', outcome: 'ok' }, { type: 'key.generated', outcome: 'ok' }]);
      expect(await inTrx.sealOnce()).toBe(2);
      const head = (await sealedRows(trx)).at(-1)!;
      await trx.raw('SET LOCAL session_replication_role = replica');
      await rewriteFrom(trx, head.seq - 1);
      await trx.raw('SET LOCAL session_replication_role = origin');
      await recordAudit(trx, { type: 'key.generated', outcome: 'ok' });
      return { sealedNow: await inTrx.sealOnce({ forceCheckpoint: true }), before: await checkpointCount(trx) };
    });
    expect(outcome.sealedNow).toBe(0);
    expect(lines.some((l) => l.includes('no longer matches a point already sealed or signed'))).toBe(true);
  });

  it('a new process stops at a rewrite below the last checkpoint, though the head has moved past it', async () => {
    const lines: string[] = [];
    const sealedNow = await tampered(knex, async (trx) => {
      const first = new AuditSealer(trx, { checkpointKey: key, logger: captureLogger([]), graceMs: 0, checkpointEvery: 1_000_000, checkpointIntervalMs: 3_600_000 });
      await first.sealOnce({ forceCheckpoint: true });
      await recordAudit(trx, { type: 'key.generated', outcome: 'ok' });
      expect(await first.sealOnce()).toBe(1);
      await trx.raw('SET LOCAL session_replication_role = replica');
      await rewriteFrom(trx, 2);
      await trx.raw('SET LOCAL session_replication_role = origin');
      await recordAudit(trx, { type: 'key.generated', outcome: 'ok' });
      // Forged checkpoints piled on top (the serving role may insert them) do not hide the genuine one.
      const head = (await sealedRows(trx)).at(-1)!.seq;
      await trx('audit_checkpoints').insert(Array.from({ length: 120 }, (_, i) => ({ seq: head - (i % 2), hash: 'f'.repeat(64), count: head - (i % 2), signature: 'A'.repeat(43) })));
      const restarted = new AuditSealer(trx, { checkpointKey: key, logger: captureLogger(lines), graceMs: 0 });
      return restarted.sealOnce({ forceCheckpoint: true });
    });
    expect(sealedNow).toBe(0);
    expect(lines.some((l) => l.includes('no longer matches a point already sealed or signed'))).toBe(true);
  });
});

const MIGRATIONS_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../migrations');

/** The migrations in migrations/ up to and including `last`, as `migrate` would run them. */
function migrationsUpTo(last: string): Knex.MigrationSource<string> {
  return {
    getMigrations: async () => (await readdir(MIGRATIONS_DIR)).filter((f) => /^\d.*\.ts$/.test(f) && f <= last).sort(),
    getMigrationName: (name) => name,
    getMigration: async (name) => import(path.join(MIGRATIONS_DIR, name)) as Promise<Knex.Migration>,
  };
}

/** Seals every event as the sealer did before migration 006: UPDATE-ing the chain columns of each row. */
async function sealInPlace(knex: Knex, key: Buffer): Promise<{ seq: number; hash: string }> {
  const { rows } = await knex.raw(`SELECT id, ${OCCURRED_AT_SQL} AS occurred_at, type, outcome, reason, request_id, client_id, jti, parent_jti,
    task_id, subject, audience, policy_version, details FROM audit_events ORDER BY id`) as { rows: Array<ChainEvent & { id: number }> };
  let prev = GENESIS_HASH;
  for (const [i, row] of rows.entries()) {
    const hash = eventHash(prev, i + 1, row);
    await knex('audit_events').where({ id: row.id }).update({ seq: i + 1, prev_hash: prev, hash, sealed_at: new Date() });
    prev = hash;
  }
  const fields = { seq: rows.length, hash: prev, count: rows.length };
  await knex('audit_checkpoints').insert({ ...fields, signature: signCheckpoint(key, fields) });
  return fields;
}

describe.each(backends)('migrations 002 and 006 on $backend', ({ embedded }) => {
  const dirs: string[] = [];
  afterAll(() => {
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  it('partitions the existing events and keeps their ids; the chain sealed in place moves to audit_chain and back', async () => {
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
      const [, before006] = await db.knex.migrate.latest({ migrationSource: migrationsUpTo('20261122_005_subject_task_revocations.ts') }) as [number, string[]];
      expect(before006).toContain('20261122_002_audit_chain.ts');

      const rows = await db.knex.raw('SELECT id, type, tableoid::regclass::text AS part FROM audit_events ORDER BY id') as { rows: Array<{ id: number; type: string; part: string }> };
      expect(rows.rows.map((r) => [Number(r.id), r.type])).toEqual([[1, 'policy.applied'], [2, 'exchange.granted'], [3, 'introspection'], [4, 'introspection']]);
      expect(rows.rows[0]!.part).toBe('audit_events_default');
      const month = new Date().toISOString().slice(0, 7).replace('-', 'm');
      expect(rows.rows[1]!.part).toBe(`audit_events_y${month}`);
      const partitions = await db.knex.raw(`SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'audit_events'::regclass ORDER BY 1`) as { rows: Array<{ relname: string }> };
      expect(partitions.rows.length).toBe(8);

      // Sealed in place, as the sealer of 002 did; then one more event, left unsealed.
      const key = deriveKeys(Buffer.alloc(32, 3)).auditCheckpoint;
      const checkpoint = await sealInPlace(db.knex, key);
      expect(checkpoint.seq).toBe(4);
      await recordAudit(db.knex, { type: 'key.generated', outcome: 'ok' });
      const inPlace = await chainColumns(db.knex);

      expect(await migrateTo006(db)).toEqual(['20261122_006_audit_chain_table.ts']);
      const chain = await db.knex('audit_chain').orderBy('seq') as Array<{ seq: number; event_id: number; prev_hash: string; hash: string }>;
      expect(chain.map((c) => [Number(c.seq), Number(c.event_id), c.prev_hash, c.hash])).toEqual(inPlace.filter((r) => r[1] !== null).map((r) => [r[1], r[0], r[2], r[3]]));
      const columns = await db.knex.raw(`SELECT column_name FROM information_schema.columns WHERE table_name = 'audit_events' AND column_name IN ('seq', 'prev_hash', 'hash', 'sealed_at')`) as { rows: unknown[] };
      expect(columns.rows).toEqual([]);
      const before = await verifyAuditChain(db.knex, key);
      expect(before.problems).toEqual([expect.objectContaining({ kind: 'unsealed_tail', count: 1, id: 5 })]);
      expect(before.sealed).toMatchObject({ count: 4, lastSeq: 4, headId: 4, headHash: checkpoint.hash });

      // The chain goes on from where the old layout left it.
      expect(Number((await db.knex('audit_events').max<Array<{ max: number }>>('id as max'))[0]!.max)).toBe(5);
      const sealer = new AuditSealer(db.knex, { checkpointKey: key, logger: createLogger('silent'), graceMs: 0 });
      expect(await sealer.ensurePartitions()).toBe(0);
      expect(await sealer.sealOnce({ forceCheckpoint: true })).toBe(1);
      const after = await verifyAuditChain(db.knex, key);
      expect(after.problems).toEqual([]);
      expect(after.sealed).toMatchObject({ count: 5, firstSeq: 1, lastSeq: 5, headId: 5 });

      // Down: the chain columns are filled from audit_chain, and sealed rows are frozen again.
      await db.knex.migrate.down({ migrationSource: migrationsUpTo('20261122_006_audit_chain_table.ts') });
      const restored = await chainColumns(db.knex);
      expect(restored.map((r) => r.slice(0, 2))).toEqual([[1, 1], [2, 2], [3, 3], [4, 4], [5, 5]]);
      expect(restored.slice(0, 4)).toEqual(inPlace.slice(0, 4));
      expect(await db.knex.raw(`SELECT to_regclass('audit_chain') AS t`) as { rows: Array<{ t: string | null }> }).toMatchObject({ rows: [{ t: null }] });
      await expect(db.knex('audit_events').where({ id: 1 }).update({ outcome: 'forged' })).rejects.toThrow(/append-only/);
      await expect(db.knex('audit_events').insert({ type: 'key.generated', outcome: 'ok', details: '{}', seq: 99 })).rejects.toThrow(/only the sealer/);

      // And up again.
      expect(await migrateTo006(db)).toEqual(['20261122_006_audit_chain_table.ts']);
      expect((await verifyAuditChain(db.knex, key)).problems).toEqual([]);
    } finally {
      await db.close();
    }
  }, 60_000);
});

async function migrateTo006(db: Database): Promise<string[]> {
  const [, applied] = await db.knex.migrate.latest({ migrationSource: migrationsUpTo('20261122_006_audit_chain_table.ts') }) as [number, string[]];
  return applied;
}

/** [id, seq, prev_hash, hash] of every event, by id, in the layout of 002. */
async function chainColumns(knex: Knex): Promise<Array<[number, number | null, string | null, string | null]>> {
  const { rows } = await knex.raw('SELECT id, seq, prev_hash, hash FROM audit_events ORDER BY id') as { rows: Array<{ id: number; seq: number | null; prev_hash: string | null; hash: string | null }> };
  return rows.map((r) => [Number(r.id), r.seq === null ? null : Number(r.seq), r.prev_hash, r.hash]);
}
