import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import knexFactory from 'knex';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { auditCommitter, type AuditEvent } from '../../src/audit/event.ts';
import { GrantBatcher } from '../../src/exchange/grant-batcher.ts';
import { RECORD_GRANTS, recordGrant, recordGrants, type GrantRecord } from '../../src/exchange/record.ts';
import { isStorageError } from '../../src/exchange/service.ts';
import { migrate, openDatabase, type Database } from '../../src/store/db.ts';
import { retryOnConflict } from '../../src/store/retry.ts';
import { createTestDatabase, freePort } from '../support/harness.ts';

function grant(parentJti: string | null, n: number): GrantRecord {
  const jti = randomBytes(18).toString('base64url');
  const now = Math.floor(Date.now() / 1000);
  const common = {
    requestId: `req-${n}`, clientId: 'planner-agent', parentJti, taskId: 'task-1',
    subject: 'https://idp.example.com|alice', audience: 'https://payments.example.com', policyVersion: 1,
  };
  return {
    lineage: {
      jti, parentJti, clientId: 'planner-agent', audience: 'https://payments.example.com', scopes: ['payments:read'],
      root: { issuer: 'https://idp.example.com', sub: 'alice', claims: { email: 'alice@example.com' } },
      taskId: 'task-1', depth: parentJti ? 2 : 1, depthBound: 3, actors: ['planner-agent'], ruleId: 'r1',
      policyVersion: 1, iat: now, exp: now + 300,
    },
    granted: { ...common, type: 'exchange.granted', outcome: 'granted', jti, details: { rule: 'r1', n } },
    ...(parentJti ? {
      deniedIfParentRevoked: {
        ...common, type: 'exchange.denied', outcome: 'denied', reason: 'parent_revoked', details: { rule: 'r1', n },
      } satisfies AuditEvent,
    } : {}),
  };
}

const backends = [
  { backend: 'PostgreSQL', embedded: false },
  { backend: 'PGlite', embedded: true },
] as const;

describe.each(backends)('group commit of grants and refusals on $backend', ({ embedded }) => {
  let db: Database;
  let dataDir: string;

  beforeAll(async () => {
    dataDir = mkdtempSync(path.join(tmpdir(), 'writ-grants-'));
    db = await openDatabase({ databaseUrl: embedded ? undefined : await createTestDatabase('grants'), dataDir });
    await migrate(db);
  });
  afterAll(async () => {
    await db?.close();
    rmSync(dataDir, { recursive: true, force: true });
  });

  it('commits concurrent grants in shared statements, each decided as if alone', async () => {
    const sizes: number[] = [];
    const batcher = new GrantBatcher(db.knex, { maxInFlight: 1, isStorageError, onBatch: (n) => sizes.push(n) });
    const live = grant(null, 0);
    const revoked = grant(null, 1);
    expect(await batcher.record(live)).toBe(true);
    expect(await batcher.record(revoked)).toBe(true);
    await db.knex('token_lineage').where({ jti: revoked.lineage.jti }).update({ revoked_at: db.knex.fn.now() });
    sizes.length = 0;

    // The first goes alone (a slot is free); the rest queue behind it and share the next statement.
    const records = Array.from({ length: 30 }, (_, i) => grant([null, live.lineage.jti, revoked.lineage.jti][i % 3]!, 100 + i));
    const results = await Promise.all(records.map((r) => batcher.record(r)));

    expect(sizes).toEqual([1, 29]);
    expect(results).toEqual(records.map((_, i) => i % 3 !== 2));
    const lineage = await db.knex('token_lineage').whereIn('jti', records.map((r) => r.lineage.jti)).select('jti', 'parent_jti', 'scopes', 'root_claims', 'depth');
    expect(lineage.map((l) => l.jti).sort()).toEqual(records.filter((_, i) => i % 3 !== 2).map((r) => r.lineage.jti).sort());
    expect(lineage.find((l) => l.jti === records[1]!.lineage.jti)).toMatchObject({
      parent_jti: live.lineage.jti, scopes: ['payments:read'], root_claims: { email: 'alice@example.com' }, depth: 2,
    });
    const events = await db.knex('audit_events').whereIn('request_id', records.map((r) => r.granted.requestId!))
      .select('request_id', 'type', 'outcome', 'reason', 'jti', 'parent_jti', 'details');
    expect(events).toHaveLength(30);
    for (const [i, r] of records.entries()) {
      const e = events.find((x) => x.request_id === r.granted.requestId)!;
      if (i % 3 === 2) {
        expect(e).toMatchObject({ type: 'exchange.denied', outcome: 'denied', reason: 'parent_revoked', jti: null, parent_jti: revoked.lineage.jti });
      } else {
        expect(e).toMatchObject({ type: 'exchange.granted', outcome: 'granted', reason: null, jti: r.lineage.jti });
      }
      expect(e.details).toMatchObject({ n: 100 + i });
    }
  });

  it('a grant the database refuses fails alone; its neighbours in the batch still commit', async () => {
    const batcher = new GrantBatcher(db.knex, { maxInFlight: 1, isStorageError });
    const first = grant(null, 200);
    const clash = grant(null, 201);
    clash.lineage.jti = first.lineage.jti; // the primary key refuses it
    const records = [grant(null, 202), first, clash, grant(null, 203)];
    const settled = await Promise.allSettled(records.map((r) => batcher.record(r)));
    expect(settled.map((s) => s.status)).toEqual(['fulfilled', 'fulfilled', 'rejected', 'fulfilled']);
    expect(isStorageError((settled[2] as PromiseRejectedResult).reason)).toBe(false);
    const events = await db.knex('audit_events').whereIn('request_id', records.map((r) => r.granted.requestId!)).pluck('request_id');
    expect(events.sort()).toEqual(['req-200', 'req-202', 'req-203']);
  });

  it('stores what PostgreSQL cannot hold as U+FFFD, in a batch as alone', async () => {
    const batcher = new GrantBatcher(db.knex, { maxInFlight: 1, isStorageError });
    // Upstream claims and audit details are made storable before they are sent; the batch's
    // JSON is checked as a whole too, so a value that reached it unchecked cannot fail the batch.
    const odd = (n: number): GrantRecord => {
      const r = grant(null, n);
      r.lineage.root = { ...r.lineage.root, claims: { 'na\u0000me': 'x\ud800y', list: ['\u0000'] } };
      r.lineage.scopes = ['payments:\udc00read'];
      r.granted.details = { note: 'a\u0000b\ud83d' };
      return r;
    };
    const records = [odd(400), odd(401), odd(402)];
    expect(await Promise.all(records.map((r) => batcher.record(r)))).toEqual([true, true, true]);
    const lineage = await db.knex('token_lineage').whereIn('jti', records.map((r) => r.lineage.jti)).select('root_claims', 'scopes');
    expect(lineage).toHaveLength(3);
    for (const l of lineage) {
      expect(l.root_claims).toEqual({ 'na\uFFFDme': 'x\uFFFDy', list: ['\uFFFD'] });
      expect(l.scopes).toEqual(['payments:\uFFFDread']);
    }
    const details = await db.knex('audit_events').whereIn('request_id', ['req-400', 'req-401', 'req-402']).pluck('details');
    expect(details).toEqual([0, 1, 2].map(() => ({ note: 'a\uFFFDb\uFFFD' })));
  });

  it('refuses a chained grant that has no denial to record, before it joins a batch', async () => {
    const sizes: number[] = [];
    const batcher = new GrantBatcher(db.knex, { maxInFlight: 1, isStorageError, onBatch: (n) => sizes.push(n) });
    const parent = grant(null, 500);
    expect(await batcher.record(parent)).toBe(true);
    const child = grant(parent.lineage.jti, 501);
    delete child.deniedIfParentRevoked;
    await expect(batcher.record(child)).rejects.toThrow(/no denial/);
    const [first, second, bad] = [grant(null, 502), grant(parent.lineage.jti, 503), grant(parent.lineage.jti, 504)];
    delete bad.deniedIfParentRevoked;
    const settled = await Promise.allSettled([first, second, bad].map((r) => batcher.record(r)));
    expect(settled.map((s) => s.status)).toEqual(['fulfilled', 'fulfilled', 'rejected']);
    // The parent, then the first alone, then the second: the refused ones were never sent.
    expect(sizes).toEqual([1, 1, 1]);
    expect((await db.knex('token_lineage').whereIn('jti', [child, first, second, bad].map((r) => r.lineage.jti)).pluck('jti')).sort())
      .toEqual([first.lineage.jti, second.lineage.jti].sort());
  });

  it('a chained grant with no denial is refused by the statement builders too', async () => {
    const parent = grant(null, 510);
    expect(await recordGrant(db.knex, parent)).toBe(true);
    const child = grant(parent.lineage.jti, 511);
    delete child.deniedIfParentRevoked;
    await expect(recordGrant(db.knex, child)).rejects.toThrow(/no denial/);
    await expect(recordGrants(db.knex, [grant(null, 512), child])).rejects.toThrow(/no denial/);
    expect(await db.knex('audit_events').whereIn('request_id', ['req-511', 'req-512']).pluck('request_id')).toEqual([]);
  });

  const denial = (n: number, policyVersion: unknown = 1): AuditEvent => ({
    type: 'exchange.denied', outcome: 'denied', reason: 'no_rule', requestId: `deny-${embedded}-${n}`, clientId: 'flood-agent',
    subject: 'https://idp.example.com|alice', audience: 'https://payments.example.com', policyVersion: policyVersion as number, details: { n },
  });

  it('commits a burst of denials in shared statements, each answered only once its own row is in', async () => {
    const sizes: number[] = [];
    const refusals = auditCommitter(db.knex, { isStorageError, onBatch: (n) => sizes.push(n) });
    const events = Array.from({ length: 30 }, (_, i) => denial(i));
    await Promise.all(events.map(async (e) => {
      await refusals.write(e);
      // Answered: the row is there.
      expect(await db.knex('audit_events').where({ request_id: e.requestId }).first()).toMatchObject({ reason: 'no_rule', client_id: 'flood-agent' });
    }));
    expect(sizes).toEqual([1, 29]);

    // One the database refuses fails alone.
    const settled = await Promise.allSettled([denial(100), denial(101, 'not a number'), denial(102)].map((e) => refusals.write(e)));
    expect(settled.map((r) => r.status)).toEqual(['fulfilled', 'rejected', 'fulfilled']);
    expect(await db.knex('audit_events').whereIn('request_id', [100, 101, 102].map((n) => `deny-${embedded}-${n}`)).pluck('request_id'))
      .toEqual(expect.arrayContaining([`deny-${embedded}-100`, `deny-${embedded}-102`]));
  });
});

describe('the grants statement under a cached generic plan (PostgreSQL)', () => {
  let db: Database;
  beforeAll(async () => {
    db = await openDatabase({ databaseUrl: await createTestDatabase('grantplan'), dataDir: tmpdir() });
    await migrate(db);
  });
  afterAll(async () => db?.close());

  it('looks each parent up by primary key, not by scanning token_lineage', async () => {
    // PostgreSQL caches one generic plan per connection; "jti = ANY(array)" planned that way
    // became a sequential scan of the whole table on every chained grant (seen in the bench).
    await db.knex.raw(`INSERT INTO token_lineage (jti, client_id, audience, scopes, root_issuer, root_sub, root_claims,
        depth, depth_bound, actors, rule_id, policy_version, iat, exp)
      SELECT 'p' || g, 'c', 'a', '[]', 'i', 's', '{}', 1, 3, '[]', 'r', 1, now(), now() + interval '5 minutes'
      FROM generate_series(1, 5000) g`);
    await db.knex.raw('ANALYZE token_lineage');
    const plan = await db.knex.transaction(async (trx) => {
      await trx.raw('SET LOCAL plan_cache_mode = force_generic_plan');
      await trx.raw(`PREPARE probe_grants AS ${RECORD_GRANTS.text.replace(/\?/g, '\\?')}`);
      const parameters = new Set(RECORD_GRANTS.text.match(/\$\d+/g));
      const nulls = [...parameters].map(() => 'NULL').join(', ');
      const { rows } = await trx.raw<{ rows: Array<{ 'QUERY PLAN': string }> }>(`EXPLAIN EXECUTE probe_grants(${nulls})`);
      await trx.raw('DEALLOCATE probe_grants');
      return rows.map((r) => r['QUERY PLAN']).join('\n');
    });
    expect(plan).toMatch(/Index Scan using token_lineage_pkey on token_lineage/);
    expect(plan).not.toMatch(/Seq Scan on token_lineage/);
  });
});

describe('group commit when PostgreSQL is gone', () => {
  it('fails every waiting grant with the storage error, without retrying each alone', async () => {
    const knex = knexFactory({
      client: 'pg',
      connection: { host: '127.0.0.1', port: await freePort(), user: 'postgres', database: 'none' },
      pool: { min: 0, max: 2 },
      acquireConnectionTimeout: 500,
      log: { warn: () => {}, error: () => {}, debug: () => {}, deprecate: () => {} },
    });
    try {
      const sizes: number[] = [];
      const batcher = new GrantBatcher(knex, { maxInFlight: 1, isStorageError, onBatch: (n) => sizes.push(n) });
      const started = Date.now();
      const settled = await Promise.allSettled([0, 1, 2, 3].map((n) => batcher.record(grant(null, 300 + n))));
      expect(settled.every((s) => s.status === 'rejected' && isStorageError(s.reason))).toBe(true);
      expect(sizes).toEqual([1, 3]);
      // Two statements' worth of waiting at most: a lost database is not retried grant by grant.
      expect(Date.now() - started).toBeLessThan(5_000);
    } finally {
      await knex.destroy();
    }
  });
});

describe('a transaction that loses a deadlock runs again', () => {
  let db: Database;
  beforeAll(async () => {
    db = await openDatabase({ databaseUrl: await createTestDatabase('deadlock'), dataDir: tmpdir() });
    await db.knex.raw('CREATE TABLE pair (id int PRIMARY KEY, v int NOT NULL)');
    await db.knex('pair').insert([{ id: 1, v: 0 }, { id: 2, v: 0 }]);
  });
  afterAll(async () => db?.close());

  it('both sides of a real deadlock finish when each retries', async () => {
    let attempts = 0;
    // Two transactions take the same two rows in opposite orders; a barrier makes them meet.
    let arrived = 0;
    let release!: () => void;
    const bothHoldOne = new Promise<void>((resolve) => { release = resolve; });
    const side = (first: number, second: number) => retryOnConflict(() => db.knex.transaction(async (trx) => {
      attempts += 1;
      await trx('pair').where({ id: first }).increment('v', 1);
      if (++arrived === 2) release();
      await bothHoldOne;
      await trx('pair').where({ id: second }).increment('v', 1);
    }));
    await Promise.all([side(1, 2), side(2, 1)]);
    expect(attempts).toBe(3); // one of them was PostgreSQL's victim once
    expect(await db.knex('pair').orderBy('id').pluck('v')).toEqual([2, 2]);
  });
});
