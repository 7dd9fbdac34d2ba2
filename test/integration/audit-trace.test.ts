import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { decodeJwt } from 'jose';
import Koa from 'koa';
import type { Knex } from 'knex';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { eventHash, verifyCheckpoint } from '../../src/audit/chain.ts';
import { AuditSealer } from '../../src/audit/sealer.ts';
import { AuditQueryError, exportAudit, formatTraceTree, searchAudit, traceToken, type AuditEventView } from '../../src/audit/trace.ts';
import { adminAuditRoutes } from '../../src/http/admin-audit.ts';
import { killSwitch } from '../../src/revocation/kill-switch.ts';
import { createLogger } from '../../src/log.ts';
import { AT, EXECUTOR_AUD, IDP, PAYMENTS, basicAuth, startTestWrit, type TestWrit } from '../support/harness.ts';
import { runWrit, type CliRun } from '../support/cli.ts';


function writCli(args: string[], env: Record<string, string>): Promise<CliRun> {
  return runWrit(args, env);
}

describe('audit trace, search and export (PostgreSQL)', () => {
  let t: TestWrit;
  let knex: Knex;
  let hop1: string;
  let hop2: string;
  let sibling: string;
  const jti = (token: string): string => decodeJwt(token).jti!;
  const alice = `${IDP}|alice`;

  beforeAll(async () => {
    t = await startTestWrit({ name: 'audittrace' });
    // Some tests seal by hand and count checkpoints: the server's background sealer would race them.
    await t.writ.auditSealer.stop();
    knex = t.writ.db.knex;
    const r1 = await t.exchange('planner-agent', { subject_token: await t.idp.token(t.issuer), subject_token_type: AT, audience: EXECUTOR_AUD, task_id: 'task-7' });
    expect(r1.status).toBe(200);
    hop1 = r1.body.access_token as string;
    const r2 = await t.exchange('executor-agent', { subject_token: hop1, subject_token_type: AT, audience: PAYMENTS });
    expect(r2.status).toBe(200);
    hop2 = r2.body.access_token as string;
    const r3 = await t.exchange('executor-agent', { subject_token: hop1, subject_token_type: AT, resource: PAYMENTS, scope: 'payment.read' });
    expect(r3.status).toBe(200);
    sibling = r3.body.access_token as string;
    // Someone else's token, and a denial.
    expect((await t.exchange('planner-agent', { subject_token: await t.idp.token(t.issuer, { sub: 'bob' }), subject_token_type: AT, audience: PAYMENTS })).status).toBe(200);
    expect((await t.exchange('planner-agent', { subject_token: await t.idp.token(t.issuer), subject_token_type: AT, audience: PAYMENTS, scope: 'payment.transfer' })).status).toBe(400);
    expect(await t.introspect('payments-api', hop2)).toMatchObject({ active: true });
    expect((await t.post('/token/revocation', { token: sibling }, basicAuth('executor-agent'))).status).toBe(200);
    await t.writ.auditQueue.flush();
  });
  afterAll(async () => t?.close());

  /** Chains every event so far (in small passes, so that several checkpoints are signed). */
  async function sealAll(): Promise<void> {
    await t.writ.auditQueue.flush();
    const sealer = new AuditSealer(knex, { checkpointKey: t.writ.derived.auditCheckpoint, logger: createLogger('silent'), graceMs: 0, batchSize: 4 });
    while ((await sealer.sealOnce({ forceCheckpoint: true })) > 0) { /* all */ }
  }

  it('traces a leaf from the human subject through every agent hop', async () => {
    const trace = await traceToken(knex, jti(hop2));
    expect(trace).toBeDefined();
    expect(trace!.root).toEqual({ issuer: IDP, sub: 'alice' });
    expect(trace!.ancestry_incomplete).toBe(false);
    expect(trace!.ancestry).toEqual([
      expect.objectContaining({
        jti: jti(hop1), parent_jti: null, client_id: 'planner-agent', actors: ['planner-agent'], audience: EXECUTOR_AUD,
        scopes: ['payment.read'], rule_id: 'planner-delegates-to-executor', policy_version: 1, task_id: 'task-7', depth: 1, revoked: false,
        // Until its grant event is chained, a hop's lineage row cannot be checked against it.
        record: 'unsealed', record_differs: [],
      }),
      expect.objectContaining({
        jti: jti(hop2), parent_jti: jti(hop1), client_id: 'executor-agent', actors: ['planner-agent', 'executor-agent'], audience: PAYMENTS,
        scopes: ['payment.read'], rule_id: 'executor-reads-payments', depth: 2, revoked: false,
        record: 'unsealed', record_differs: [],
      }),
    ]);
    expect(trace!.ancestry[1]!.request_id).toBeTruthy();
    expect(trace!.ancestry[1]!.iat).toBe(new Date(decodeJwt(hop2).iat! * 1000).toISOString());
    expect(trace!.descendants).toEqual([]);
    const text = formatTraceTree(trace!);
    const lines = text.split('\n');
    expect(lines[0]).toBe(`alice  (${IDP})`);
    expect(lines[1]).toMatch(/^└─ planner-agent → https:\/\/agents\.example\.com\/executor {2}\[payment\.read\] {2}rule planner-delegates-to-executor \(v1\)/);
    expect(lines[2]).toMatch(/^ {3}└─ executor-agent → https:\/\/payments\.example\.com {2}\[payment\.read\] {2}rule executor-reads-payments/);
    expect(lines[2]).toContain(`jti ${jti(hop2)}`);
    expect(lines[2]).toMatch(/◀$/);
  });

  it('traces the root token with the tree of tokens derived from it', async () => {
    const trace = await traceToken(knex, jti(hop1));
    expect(trace!.ancestry.map((h) => h.jti)).toEqual([jti(hop1)]);
    expect(trace!.descendants.map((d) => [d.jti, d.client_id, d.revoked])).toEqual([
      [jti(hop2), 'executor-agent', false],
      [jti(sibling), 'executor-agent', true],
    ]);
    expect(trace!.descendants[1]!.revoked_at).toBeTruthy();
    const lines = formatTraceTree(trace!).split('\n');
    expect(lines).toHaveLength(4);
    expect(lines[1]).toMatch(/^└─ planner-agent .*◀$/);
    expect(lines[2]).toMatch(new RegExp(`^ {3}├─ executor-agent .*jti ${jti(hop2)}$`));
    expect(lines[3]).toMatch(new RegExp(`^ {3}└─ executor-agent .*jti ${jti(sibling)} {2}REVOKED`));
    expect(await traceToken(knex, 'no-such-jti')).toBeUndefined();
  });

  it('searches by subject, actor, audience, task, type and time, newest first, with keyset pagination', async () => {
    const all = await searchAudit(knex, { subject: alice, limit: 500 });
    expect(all.next_cursor).toBeNull();
    expect(all.events.length).toBeGreaterThanOrEqual(6);
    expect(all.events.every((e) => e.subject === alice)).toBe(true);
    // Nothing of this has been sealed yet (the background sealer is stopped): no place in the chain.
    expect(all.events.every((e) => e.seq === null && e.prev_hash === null && e.hash === null)).toBe(true);
    expect(all.events.map((e) => e.id)).toEqual([...all.events.map((e) => e.id)].sort((a, b) => b - a));
    expect((await searchAudit(knex, { subject: `${IDP}|bob` })).events.map((e) => [e.type, e.client_id])).toEqual([['exchange.granted', 'planner-agent']]);

    const pages: AuditEventView[][] = [];
    let cursor: string | undefined;
    do {
      const page = await searchAudit(knex, { subject: alice, limit: 2, ...(cursor ? { cursor } : {}) });
      pages.push(page.events);
      cursor = page.next_cursor ?? undefined;
    } while (cursor);
    expect(pages.every((p) => p.length <= 2)).toBe(true);
    expect(pages.flat().map((e) => e.id)).toEqual(all.events.map((e) => e.id));

    const byActor = await searchAudit(knex, { actor: 'executor-agent' });
    const types = byActor.events.map((e) => `${e.type}:${e.client_id}`);
    expect(types).toEqual(expect.arrayContaining(['exchange.granted:executor-agent', 'revocation:executor-agent', 'introspection:payments-api']));
    expect(byActor.events.some((e) => e.client_id === 'planner-agent' && e.jti === jti(hop1))).toBe(false);

    const task = await searchAudit(knex, { taskId: 'task-7', type: 'exchange.granted' });
    expect(task.events.map((e) => e.jti).sort()).toEqual([jti(hop1), jti(hop2), jti(sibling)].sort());
    const payments = await searchAudit(knex, { audience: PAYMENTS, type: 'exchange.denied' });
    expect(payments.events.map((e) => e.reason)).toEqual(['scope_not_allowed']);
    expect(payments.events[0]!.details).toMatchObject({ requested_scope: ['payment.transfer'] });

    expect((await searchAudit(knex, { since: new Date(Date.now() + 60_000) })).events).toEqual([]);
    expect((await searchAudit(knex, { until: new Date(Date.now() - 3_600_000) })).events).toEqual([]);
    expect((await searchAudit(knex, { since: new Date(Date.now() - 3_600_000), subject: alice, limit: 500 })).events).toHaveLength(all.events.length);
    await expect(searchAudit(knex, { limit: 0 })).rejects.toThrow(AuditQueryError);
    await expect(searchAudit(knex, { limit: 501 })).rejects.toThrow(AuditQueryError);
    await expect(searchAudit(knex, { cursor: '1; drop' })).rejects.toThrow(AuditQueryError);
  });

  it('exports NDJSON with the signed checkpoints, enough to re-verify the chain offline', async () => {
    await sealAll();
    const lines: string[] = [];
    const counts = await exportAudit(knex, new Date('2000-01-01T00:00:00Z'), (line) => { lines.push(line); }, { batchSize: 4 });
    const parsed = lines.map((l) => JSON.parse(l) as Record<string, unknown>);
    const events = parsed.filter((p) => !('checkpoint' in p)) as unknown as AuditEventView[];
    const checkpoints = parsed.filter((p) => 'checkpoint' in p).map((p) => p.checkpoint as { seq: number; hash: string; count: number; signature: string });
    const total = Number((await knex('audit_events').count<Array<{ count: string }>>('* as count'))[0]!.count);
    expect(counts).toEqual({ events: total, checkpoints: checkpoints.length });
    expect(events).toHaveLength(total);
    expect(checkpoints.length).toBeGreaterThanOrEqual(2);
    expect(events.map((e) => e.id)).toEqual([...events.map((e) => e.id)].sort((a, b) => a - b));
    // Offline: the chain recomputes from the export alone, and each checkpoint follows the event it vouches for.
    let prev = '0'.repeat(64);
    for (const e of events) {
      expect(e.prev_hash).toBe(prev);
      expect(eventHash(prev, e.seq!, e)).toBe(e.hash);
      prev = e.hash!;
    }
    for (const c of checkpoints) {
      expect(verifyCheckpoint(t.writ.derived.auditCheckpoint, c)).toBe(true);
      const at = parsed.findIndex((p) => (p as { checkpoint?: { seq: number } }).checkpoint?.seq === c.seq);
      expect((parsed[at - 1] as unknown as AuditEventView).seq).toBe(c.seq);
      expect(c.hash).toBe(events.find((e) => e.seq === c.seq)!.hash);
    }
    expect(JSON.stringify(parsed)).not.toContain(hop1);
    // Search shows each event's place in the chain as the export does.
    const viewed = (await searchAudit(knex, { subject: alice, limit: 500 })).events;
    expect(viewed.length).toBeGreaterThanOrEqual(6);
    for (const e of viewed) expect(e).toEqual(events.find((x) => x.id === e.id));
    // A later start: only newer events, with the checkpoint anchoring the first of them.
    const from = events[5]!;
    const tail: string[] = [];
    await exportAudit(knex, new Date(from.occurred_at), (line) => { tail.push(line); });
    const tailEvents = tail.map((l) => JSON.parse(l) as Record<string, unknown>).filter((p) => !('checkpoint' in p));
    expect(tailEvents.length).toBeLessThanOrEqual(total - 5);
    expect(tailEvents.length).toBeGreaterThan(0);
  });

  it('shows where a lineage row no longer agrees with the sealed grant event', async () => {
    await sealAll();
    expect((await traceToken(knex, jti(hop2)))!.ancestry.map((h) => [h.record, h.record_differs])).toEqual([['matches', []], ['matches', []]]);
    // As a superuser with the triggers off (writ db grants leaves the serving role no such
    // update), in a transaction that is rolled back.
    const trx = await knex.transaction();
    try {
      await trx.raw('SET LOCAL session_replication_role = replica');
      await trx('token_lineage').where({ jti: jti(hop2) }).update({
        client_id: 'innocent-agent', actors: JSON.stringify(['planner-agent', 'innocent-agent']), scopes: JSON.stringify(['payment.read', 'payment.transfer']),
      });
      const trace = await traceToken(trx, jti(hop2));
      expect(trace!.ancestry.map((h) => [h.client_id, h.record, h.record_differs])).toEqual([
        ['planner-agent', 'matches', []],
        ['innocent-agent', 'differs', ['client_id', 'scopes', 'actors']],
      ]);
      expect(formatTraceTree(trace!).split('\n')[2]).toContain('CHANGED SINCE GRANTED (client_id, scopes, actors; the audit event differs)');
      const fromRoot = await traceToken(trx, jti(hop1));
      expect(fromRoot!.descendants.find((d) => d.jti === jti(hop2))).toMatchObject({ record: 'differs', record_differs: ['client_id', 'scopes', 'actors'] });
      // The actors alone, too: who acted along the chain is part of the record.
      await trx('token_lineage').where({ jti: jti(hop2) }).update({ client_id: 'executor-agent', scopes: JSON.stringify(['payment.read']), actors: JSON.stringify(['executor-agent']) });
      expect((await traceToken(trx, jti(hop2)))!.ancestry[1]).toMatchObject({ record: 'differs', record_differs: ['actors'] });
    } finally {
      await trx.rollback();
    }
  });

  it('serves trace and search through the admin API under writ:audit.read', async () => {
    const app = new Koa();
    app.use(adminAuditRoutes({
      knex,
      authorize: async (ctx, scope) => {
        expect(scope).toBe('writ:audit.read');
        const auth = ctx.get('authorization');
        if (auth === 'Bearer reader') return true;
        if (auth === '') {
          ctx.status = 401;
          ctx.set('WWW-Authenticate', 'Bearer');
          ctx.body = { error: 'invalid_token' };
        }
        return false;
      },
    }));
    app.use((ctx) => {
      ctx.status = 404;
      ctx.body = { error: 'not_found' };
    });
    const server = app.listen(0, '127.0.0.1');
    await new Promise((resolve) => server.once('listening', resolve));
    const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    const get = async (p: string, auth: string | null = 'Bearer reader', method = 'GET') => {
      const res = await fetch(`${base}${p}`, { method, headers: auth ? { authorization: auth } : {} });
      return { status: res.status, headers: res.headers, body: await res.json().catch(() => null) as Record<string, unknown> | null };
    };
    try {
      const trace = await get(`/admin/v1/audit/trace/${jti(hop2)}`);
      expect(trace.status).toBe(200);
      expect(trace.headers.get('cache-control')).toBe('no-store');
      expect(trace.body).toEqual(JSON.parse(JSON.stringify(await traceToken(knex, jti(hop2)))));
      expect((await get('/admin/v1/audit/trace/unknown-jti')).status).toBe(404);
      expect((await get('/admin/v1/audit/trace/bad%20jti')).status).toBe(400);

      const page = await get(`/admin/v1/audit/events?subject=${encodeURIComponent(alice)}&limit=2`);
      expect(page.status).toBe(200);
      expect((page.body!.events as unknown[]).length).toBe(2);
      const next = await get(`/admin/v1/audit/events?subject=${encodeURIComponent(alice)}&limit=2&cursor=${page.body!.next_cursor as string}`);
      expect((next.body!.events as Array<{ id: number }>)[0]!.id).toBeLessThan((page.body!.events as Array<{ id: number }>)[1]!.id);
      const byTask = await get('/admin/v1/audit/events?task_id=task-7&type=exchange.granted&since=2000-01-01');
      expect((byTask.body!.events as unknown[]).length).toBe(3);
      for (const bad of ['limit=0', 'limit=501', 'limit=x', 'since=yesterday', 'cursor=-1', 'bogus=1', 'subject=a&subject=b', 'actor=']) {
        const res = await get(`/admin/v1/audit/events?${bad}`);
        expect({ bad, status: res.status, error: res.body?.error }).toEqual({ bad, status: 400, error: 'invalid_request' });
      }

      const anonymous = await get('/admin/v1/audit/events', null);
      expect(anonymous.status).toBe(401);
      expect(anonymous.headers.get('www-authenticate')).toBe('Bearer');
      expect((await get('/admin/v1/audit/events', 'Bearer someone-else')).status).toBe(403);
      expect((await get(`/admin/v1/audit/trace/${jti(hop2)}`, 'Bearer someone-else')).status).toBe(403);
      expect((await get('/admin/v1/audit/events', 'Bearer reader', 'POST')).status).toBe(405);
      expect((await get('/admin/v1/audit/other')).status).toBe(404);
    } finally {
      await new Promise((resolve) => server.close(resolve));
    }
  });

  it('writ audit trace, search, verify and export on the command line', async () => {
    const dataDir = mkdtempSync(path.join(tmpdir(), 'writ-audit-cli-'));
    try {
      const env = { DATABASE_URL: t.databaseUrl!, WRIT_KEK: Buffer.alloc(32, 7).toString('base64'), WRIT_DATA_DIR: dataDir, LOG_LEVEL: 'warn' };
      const tree = await writCli(['audit', 'trace', jti(hop1)], env);
      expect(tree.stderr).toBe('');
      expect(tree.code).toBe(0);
      expect(tree.stdout).toContain('alice  (https://idp.example.com)');
      expect(tree.stdout).toContain(`├─ executor-agent → https://payments.example.com`);
      expect(tree.stdout).toContain('REVOKED');

      const json = await writCli(['audit', 'trace', jti(hop2), '--json'], env);
      expect(JSON.parse(json.stdout)).toMatchObject({ jti: jti(hop2), root: { sub: 'alice' }, ancestry: [{ jti: jti(hop1) }, { jti: jti(hop2) }] });
      const missing = await writCli(['audit', 'trace', 'nope'], env);
      expect(missing.code).toBe(1);
      expect(missing.stderr).toContain('no token with jti nope');
      // One jti in 32 begins with '-'; it is still a jti, not an option.
      const dashed = await writCli(['audit', 'trace', '-mZ3x9'], env);
      expect(dashed.stderr).toContain('no token with jti -mZ3x9');
      expect(dashed.code).toBe(1);
      expect((await writCli(['audit', 'trace', '--json', '--', '-mZ3x9'], env)).stderr).toContain('no token with jti -mZ3x9');

      const search = await writCli(['audit', 'search', '--subject', alice, '--limit', '2'], env);
      expect(search.code).toBe(0);
      expect(search.stdout.trim().split('\n')).toHaveLength(3);
      expect(search.stdout).toMatch(/more: --cursor \d+/);
      const searchJson = JSON.parse((await writCli(['audit', 'search', '--task', 'task-7', '--type', 'exchange.granted', '--json'], env)).stdout) as { events: unknown[] };
      expect(searchJson.events).toHaveLength(3);
      expect((await writCli(['audit', 'search', '--limit', '0'], env)).code).toBe(2);

      const sealer = new AuditSealer(knex, { checkpointKey: t.writ.derived.auditCheckpoint, logger: createLogger('silent'), graceMs: 0 });
      while ((await sealer.sealOnce({ forceCheckpoint: true })) > 0) { /* all */ }
      const verify = await writCli(['audit', 'verify'], env);
      expect(verify.stdout).toMatch(/^audit chain OK: \d+ sealed event\(s\)/);
      expect(verify.code).toBe(0);
      // Another key cannot check the checkpoints: it is refused as not this database's, rather
      // than reporting every checkpoint's signature as tampered with.
      const wrongKey = await writCli(['audit', 'verify'], { ...env, WRIT_KEK: Buffer.alloc(32, 1).toString('base64') });
      expect(wrongKey.code).toBe(78);
      expect(wrongKey.stderr).toContain('it is not the key-encryption key this database was set up with');

      const exported = await writCli(['audit', 'export', '--since', '2000-01-01'], env);
      expect(exported.code).toBe(0);
      const lines = exported.stdout.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
      expect(lines.some((l) => 'checkpoint' in l)).toBe(true);
      expect(lines.filter((l) => l.type === 'exchange.granted').length).toBeGreaterThanOrEqual(4);
      expect(exported.stderr).toMatch(/exported \d+ event\(s\) and \d+ checkpoint\(s\)/);
      expect((await writCli(['audit', 'export'], env)).code).toBe(2);

      // The embedded database held by a running server: say so instead of failing obscurely.
      const held = mkdtempSync(path.join(tmpdir(), 'writ-audit-held-'));
      try {
        writeFileSync(path.join(held, 'serve.json'), JSON.stringify({ pid: process.pid, url: 'http://127.0.0.1:1', token: 'x' }));
        const blocked = await writCli(['audit', 'verify'], { WRIT_DATA_DIR: held, LOG_LEVEL: 'warn' });
        expect(blocked.code).toBe(1);
        expect(blocked.stderr).toContain(`held by a running writ serve (pid ${process.pid})`);
        expect(blocked.stderr).toContain('DATABASE_URL');
      } finally {
        rmSync(held, { recursive: true, force: true });
      }
    } finally {
      rmSync(dataDir, { recursive: true, force: true });
    }
  }, 120_000);

  it('shows tokens a kill switch or an ended task made inactive, as introspection sees them', async () => {
    const user = await t.idp.token(t.issuer, { sub: 'carol' });
    const a = await t.exchange('planner-agent', { subject_token: user, subject_token_type: AT, audience: EXECUTOR_AUD, task_id: 'task-carol' });
    const b = await t.exchange('executor-agent', { subject_token: a.body.access_token as string, subject_token_type: AT, audience: PAYMENTS });
    const other = await t.exchange('planner-agent', { subject_token: await t.idp.token(t.issuer, { sub: 'dave' }), subject_token_type: AT, audience: PAYMENTS });
    expect([a.status, b.status, other.status]).toEqual([200, 200, 200]);
    const before = await traceToken(knex, jti(b.body.access_token as string));
    expect(before!.ancestry.map((h) => [h.revoked, h.inactive_reason])).toEqual([[false, null], [false, null]]);
    // A revoke-before mark on carol covers every token of her chains issued before it.
    await killSwitch(knex, { kind: 'subject', value: `${IDP}|carol`, notBefore: new Date(), revokedBy: 'test' });
    const marked = await traceToken(knex, jti(a.body.access_token as string));
    expect(marked!.ancestry.map((h) => [h.revoked, h.inactive_reason, h.revoked_at])).toEqual([[true, 'kill_switch', null]]);
    expect(marked!.descendants.map((h) => [h.revoked, h.inactive_reason, h.revoked_at])).toEqual([[true, 'kill_switch', null]]);
    expect(await t.introspect('payments-api', b.body.access_token as string)).toEqual({ active: false });
    expect(formatTraceTree(marked!)).toContain('INACTIVE (kill switch)');
    // Ending the task marks its tokens' lineage rows too (revoked_at); the reason told is the task.
    expect((await t.post('/task/revocation', { task_id: 'task-carol' }, basicAuth('planner-agent'))).status).toBe(200);
    const ended = await traceToken(knex, jti(a.body.access_token as string));
    expect(ended!.ancestry.map((h) => [h.inactive_reason, h.revoked_at !== null])).toEqual([['task_ended', true]]);
    // A task's mark alone (a row of it committed after the task ended) still reads as ended.
    const late = await t.exchange('planner-agent', { subject_token: await t.idp.token(t.issuer, { sub: 'erin' }), subject_token_type: AT, audience: EXECUTOR_AUD, task_id: 'task-erin' });
    expect(late.status).toBe(200);
    await knex('revocations').insert({ kind: 'task', value: 'task-erin', revoked_by: 'test' });
    expect((await traceToken(knex, jti(late.body.access_token as string)))!.ancestry.map((h) => [h.revoked, h.inactive_reason])).toEqual([[true, 'task_ended']]);
    expect((await traceToken(knex, jti(other.body.access_token as string)))!.ancestry.map((h) => h.revoked)).toEqual([false]);
  });
});
