import { tmpdir } from 'node:os';
import { createRemoteJWKSet, decodeProtectedHeader, jwtVerify } from 'jose';
import type { Knex } from 'knex';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { migrate, openDatabase } from '../../src/store/db.ts';
import { removeKey, rotateKeys } from '../../src/tokens/key-rotation.ts';
import { ensureSigningKeys, insertKey, KeyEncryptionKeyMismatch, loadKeySchedule } from '../../src/tokens/signing-keys.ts';
import { open } from '../../src/tokens/kek.ts';
import { AT, EXECUTOR_AUD, PAYMENTS, createTestDatabase, startTestWrit, type TestWrit } from '../support/harness.ts';
import { expectDenied } from '../support/expect.ts';

const kidOf = (token: string): string => decodeProtectedHeader(token).kid!;

async function hop1(t: TestWrit): Promise<string> {
  const res = await t.exchange('planner-agent', { subject_token: await t.idp.token(t.issuer), subject_token_type: AT, audience: EXECUTOR_AUD });
  expect(res.status).toBe(200);
  return res.body.access_token as string;
}

/** The executor presents a Writ token it received: the chained exchange verifies Writ's own signature. */
const chained = (t: TestWrit, token: string) => t.exchange('executor-agent', { subject_token: token, subject_token_type: AT, audience: PAYMENTS });

async function publishedKids(t: TestWrit): Promise<string[]> {
  const res = await fetch(`${t.url}/jwks`);
  return ((await res.json()) as { keys: Array<{ kid: string }> }).keys.map((k) => k.kid);
}

const rotate = (t: TestWrit, activateInSeconds: number) => rotateKeys(t.writ.db.knex, t.writ.derived.keyEncryption, { algs: ['ES256'], activateInSeconds, by: 'test' });

/**
 * A rotation announced the shortest allowed time ahead (the JWKS cache age), then the clock
 * moved on by bringing its stored activation to `seconds` from now, as if time had passed.
 */
async function rotateIn(t: TestWrit, seconds: number) {
  const [next] = await rotate(t, 300);
  const { rows } = await t.writ.db.knex.raw<{ rows: Array<{ activates_at: Date }> }>(
    `UPDATE signing_keys SET activates_at = now() + make_interval(secs => ?) WHERE kid = ? RETURNING activates_at`, [seconds, next!.kid]);
  await t.writ.keys.reload();
  return { ...next!, activatesAt: rows[0]!.activates_at };
}

const remove = (t: TestWrit, kid: string) => removeKey(t.writ.db.knex, t.writ.derived.keyEncryption, { kid, by: 'test' });

async function listed(t: TestWrit): Promise<Map<string, { state: string; publishedUntil: number | undefined; activatesAt: number }>> {
  await t.writ.keys.reload();
  return new Map(t.writ.keys.schedule().keys.map((k) => [k.kid, { state: k.state, publishedUntil: k.publishedUntil?.getTime(), activatesAt: k.activatesAt.getTime() }]));
}

describe.each([
  ['PostgreSQL', false],
  ['PGlite', true],
] as const)('signing key rotation on %s', (_name, embedded) => {
  let t: TestWrit;
  beforeAll(async () => {
    t = await startTestWrit({ name: 'key-rotation', embedded });
  });
  afterAll(async () => t?.close());

  it('publishes the new key before it signs, switches at its time, and keeps accepting the old key\'s tokens', async () => {
    const before = await hop1(t);
    const oldKid = kidOf(before);
    const next = await rotateIn(t, 2);

    // Published at once, not yet signing.
    expect(await publishedKids(t)).toEqual(expect.arrayContaining([oldKid, next!.kid]));
    expect(kidOf(await hop1(t))).toBe(oldKid);

    // Each instance switches on its own clock at the stored time, with no further signal.
    await expect.poll(async () => kidOf(await hop1(t)), { timeout: 4000, interval: 100 }).toBe(next!.kid);
    expect(Date.now()).toBeGreaterThanOrEqual(next!.activatesAt.getTime());

    // The superseded key stays published and accepted while its tokens live.
    expect(await publishedKids(t)).toEqual(expect.arrayContaining([oldKid, next!.kid]));
    expect((await chained(t, before)).status).toBe(200);
    expect(await t.introspect('executor-agent', before)).toMatchObject({ active: true });

    const generated = await t.auditRows({ type: 'key.generated' });
    expect(generated.at(-1)).toMatchObject({ client_id: 'test', details: expect.objectContaining({ kid: next!.kid, alg: 'ES256', reason: 'rotation' }) });

    // Once the longest token life Writ allows (24 h, whatever WRIT_MAX_TTL says now) plus the
    // leeway has passed since it stopped signing, it is gone. The clock is moved by moving the
    // stored schedule back.
    await t.writ.db.knex.raw(`UPDATE signing_keys SET activates_at = activates_at - interval '24 hours', created_at = created_at - interval '24 hours'`);
    await t.writ.keys.reload();
    expect(await publishedKids(t)).toContain(oldKid);
    await t.writ.db.knex.raw(`UPDATE signing_keys SET activates_at = activates_at - interval '61 seconds', created_at = created_at - interval '61 seconds'`);
    await t.writ.keys.reload();
    expect(await publishedKids(t)).not.toContain(oldKid);
    const refused = await chained(t, before);
    expect([refused.status, refused.body.error]).toEqual([400, 'invalid_request']);
    expect((await t.auditRows({ request_id: refused.headers.get('x-request-id') })).map((r) => r.reason)).toEqual(['kid_unknown']);
    expect(await t.introspect('executor-agent', before)).toEqual({ active: false });
  });

  it('refuses a second scheduled key for an algorithm, and a key announced for less than the JWKS cache age; an immediate one always goes', async () => {
    await expect(rotate(t, 299)).rejects.toMatchObject({ code: 'invalid_request' });
    await expect(rotate(t, 1)).rejects.toMatchObject({ code: 'invalid_request' });
    const [pending] = await rotate(t, 3600);
    await expect(rotate(t, 600)).rejects.toMatchObject({ code: 'already_pending' });
    const [now] = await rotate(t, 0);
    const keys = await listed(t);
    expect([keys.get(pending!.kid)?.state, keys.get(now!.kid)?.state]).toEqual(['pending', 'active']);
  });
});

describe('removing a signing key (the emergency path)', () => {
  let t: TestWrit;
  beforeAll(async () => {
    t = await startTestWrit({ name: 'key-removal' });
  });
  afterAll(async () => t?.close());

  it('withdraws the key from /jwks, refuses its tokens at once and signs with a replacement in its place', async () => {
    const first = await hop1(t);
    const [second] = await rotate(t, 0);
    await t.writ.keys.reload();
    const token = await hop1(t);
    const kid = kidOf(token);
    expect(kid).toBe(second!.kid);
    const [scheduled] = await rotate(t, 3600);
    const before = await listed(t);
    // Introspected once, so a cached answer would have to be dropped.
    expect(await t.introspect('executor-agent', token)).toMatchObject({ active: true });
    expect((await chained(t, token)).status).toBe(200);

    const { replacement } = await remove(t, kid);
    await t.writ.keys.reload();

    expect(replacement).toMatchObject({ alg: 'ES256' });
    expect(await publishedKids(t)).not.toContain(kid);
    expect(await t.introspect('executor-agent', token)).toEqual({ active: false });
    const refused = await chained(t, token);
    expect([refused.status, refused.body.error, refused.body.access_token]).toEqual([400, 'invalid_request', undefined]);
    expect((await t.auditRows({ request_id: refused.headers.get('x-request-id') })).map((r) => r.reason)).toEqual(['kid_unknown']);
    expect(kidOf(await hop1(t))).toBe(replacement!.kid);

    // The rest of the schedule is as it was: the key before keeps its retirement (removal does
    // not hand it back signing or more time), the scheduled key still waits for its time.
    const after = await listed(t);
    expect(after.get(kidOf(first))).toEqual(before.get(kidOf(first)));
    expect(after.get(kidOf(first))?.state).toBe('retired');
    expect((await chained(t, first)).status).toBe(200);
    expect(after.get(scheduled!.kid)?.state).toBe('pending');
    expect(after.get(replacement!.kid)).toMatchObject({ state: 'active', activatesAt: before.get(kid)!.activatesAt });

    expect(await t.auditRows({ type: 'key.removed' })).toEqual([expect.objectContaining({ client_id: 'test', details: expect.objectContaining({ kid, state: 'active' }) })]);
    await expect(remove(t, kid)).rejects.toMatchObject({ code: 'already_removed' });
  });
});

describe('rotation across instances on one PostgreSQL database', () => {
  let a: TestWrit;
  let b: TestWrit;
  beforeAll(async () => {
    a = await startTestWrit({ name: 'key-instances' });
    b = await startTestWrit({ name: 'key-instances-b', databaseUrl: a.databaseUrl!, idp: a.idp, applyExample: false, issuer: a.issuer });
    await b.writ.policy.reload();
  });
  afterAll(async () => {
    await b?.close();
    await a?.close();
  });

  it('another instance signs with a new key and refuses a removed one within a second, with no signal but the stored rows', async () => {
    const token = await hop1(b);
    expect(await b.introspect('executor-agent', token)).toMatchObject({ active: true });
    const [next] = await rotate(a, 0);
    await expect.poll(async () => kidOf(await hop1(b)), { timeout: 1000, interval: 50 }).toBe(next!.kid);

    // The key b signed with before is retired, still accepted; removed on a, b refuses it.
    expect((await chained(b, token)).status).toBe(200);
    await remove(a, kidOf(token));
    await expect.poll(() => b.introspect('executor-agent', token), { timeout: 1000, interval: 50 }).toEqual({ active: false });
    expect((await chained(b, token)).status).toBe(400);
  });
});

describe('resource servers through a rotation under load', () => {
  let t: TestWrit;
  beforeAll(async () => {
    t = await startTestWrit({ name: 'key-rs' });
  });
  afterAll(async () => t?.close());

  /** Mints tokens for the payments API for `ms`, verifying each as the resource server would. */
  async function load(verify: (token: string) => Promise<unknown>, ms: number): Promise<{ kids: Set<string>; failures: string[]; verified: number }> {
    const kids = new Set<string>();
    const failures: string[] = [];
    let verified = 0;
    const until = Date.now() + ms;
    const worker = async (): Promise<void> => {
      while (Date.now() < until) {
        const res = await t.exchange('planner-agent', { subject_token: await t.idp.token(t.issuer), subject_token_type: AT, audience: PAYMENTS });
        const token = res.body.access_token as string;
        kids.add(kidOf(token));
        try {
          await verify(token);
          verified += 1;
        } catch (err) {
          failures.push(`${kidOf(token)}: ${(err as Error).message}`);
        }
      }
    };
    await Promise.all(Array.from({ length: 4 }, worker));
    return { kids, failures, verified };
  }

  const resourceServer = (cacheMaxAge: number) => {
    const jwks = createRemoteJWKSet(new URL(`${t.url}/jwks`), { cacheMaxAge, cooldownDuration: 30_000 });
    return (token: string) => jwtVerify(token, jwks, { issuer: t.issuer, audience: PAYMENTS, algorithms: ['ES256'], typ: 'at+jwt' });
  };

  it('loses no validation when the new key is published ahead of the resource server\'s cache age', async () => {
    // The resource server caches the JWKS for 0.5 s and the new key is published 2 s ahead.
    const verify = resourceServer(500);
    await rotateIn(t, 2);
    const result = await load(verify, 4000);
    expect(result.failures).toEqual([]);
    expect(result.kids.size).toBe(2);
    expect(result.verified).toBeGreaterThan(20);
  });

  it('(the same check catches an unannounced key: a cache that just fetched refuses the first tokens it signs)', async () => {
    const verify = resourceServer(60_000);
    await verify(await (async () => (await t.exchange('planner-agent', { subject_token: await t.idp.token(t.issuer), subject_token_type: AT, audience: PAYMENTS })).body.access_token as string)());
    await rotate(t, 0);
    await t.writ.keys.reload();
    const result = await load(verify, 300);
    expect(result.failures.length).toBeGreaterThan(0);
  });
});

describe('what the key ring and the migration do with keys they cannot use', () => {
  let t: TestWrit;
  beforeAll(async () => {
    t = await startTestWrit({ name: 'key-edges' });
  });
  afterAll(async () => t?.close());

  it('leaves out a key sealed under another WRIT_KEK and still applies every other change', async () => {
    const [scheduled] = await rotate(t, 3600);
    await t.writ.keys.reload();
    expect(await publishedKids(t)).toContain(scheduled!.kid);
    const foreign = await t.writ.db.knex.transaction((trx) => insertKey(trx, Buffer.alloc(32, 1), { alg: 'PS256', activatesAt: new Date(Date.now() + 3600_000), by: 'test', reason: 'test' }));
    await remove(t, scheduled!.kid);
    await t.writ.keys.reload();
    const kids = await publishedKids(t);
    expect(kids).not.toContain(foreign.kid);
    expect(kids).not.toContain(scheduled!.kid);
    expect((await t.exchange('planner-agent', { subject_token: await t.idp.token(t.issuer), subject_token_type: AT, audience: EXECUTOR_AUD })).status).toBe(200);
  });

  it('with no key it can open for an algorithm: not ready, and that algorithm\'s exchanges are 503, audited, no token', async () => {
    // Signing from now: after every ES256 key before it, the one the last removal made included.
    const foreign = await t.writ.db.knex.transaction((trx) => insertKey(trx, Buffer.alloc(32, 1), { alg: 'ES256', activatesAt: new Date(), by: 'test', reason: 'test' }));
    await new Promise((resolve) => setTimeout(resolve, 20));
    await t.writ.keys.reload();
    expect(t.writ.keys.current().active.has('ES256')).toBe(false);
    expect((await fetch(`${t.url}/readyz`)).status).toBe(503);
    const res = await t.exchange('planner-agent', { subject_token: await t.idp.token(t.issuer), subject_token_type: AT, audience: EXECUTOR_AUD });
    await expectDenied(t, res, 'temporarily_unavailable', 'signing_key_unavailable', 503);
    expect(res.headers.get('retry-after')).not.toBeNull();
    await remove(t, foreign.kid);
    await t.writ.keys.reload();
    expect((await fetch(`${t.url}/readyz`)).status).toBe(200);
    expect((await t.exchange('planner-agent', { subject_token: await t.idp.token(t.issuer), subject_token_type: AT, audience: EXECUTOR_AUD })).status).toBe(200);
  });

  it('migrates down to statuses the old code reads as the schedule stands, and up again', async () => {
    const db = await openDatabase({ databaseUrl: await createTestDatabase('key_migration'), dataDir: tmpdir() });
    try {
      await migrate(db);
      const key = Buffer.alloc(32, 2);
      const kids = await db.knex.transaction(async (trx) => {
        const at = (hoursAgo: number) => new Date(Date.now() - hoursAgo * 3600_000);
        const insert = async (alg: 'ES256' | 'RS256', hoursAgo: number) => (await insertKey(trx, key, { alg, activatesAt: at(hoursAgo), by: 'test', reason: 'test' })).kid;
        return {
          expired: await insert('ES256', 72), retired: await insert('ES256', 30), active: await insert('ES256', 1), pending: await insert('ES256', -1),
          rsRetired: await insert('RS256', 3), rsRemoved: await insert('RS256', 1),
        };
      });
      // Each key created when it began to sign, as keys made over months would have been.
      await db.knex.raw('UPDATE signing_keys SET created_at = least(created_at, activates_at)');
      await db.knex('signing_keys').where({ kid: kids.rsRemoved }).update({ removed_at: new Date() });
      const statusBefore = new Map((await loadKeySchedule(db.knex, new Date())).keys.map((k) => [k.kid, k.state]));
      expect(Object.fromEntries(Object.entries(kids).map(([name, kid]) => [name, statusBefore.get(kid)]))).toEqual({
        expired: 'expired', retired: 'retired', active: 'active', pending: 'pending', rsRetired: 'retired', rsRemoved: 'removed',
      });

      await db.knex.migrate.down({ name: '20261204_007_signing_key_schedule.ts' });
      const rows = new Map((await db.knex('signing_keys').select('kid', 'status')).map((r: { kid: string; status: string }) => [r.kid, r.status]));
      // The old code publishes `active` and `retired` keys and signs with the newest active one per algorithm.
      expect(Object.fromEntries(Object.entries(kids).map(([name, kid]) => [name, rows.get(kid)]))).toEqual({
        expired: 'removed', retired: 'retired', active: 'active', pending: 'removed', rsRetired: 'retired', rsRemoved: 'removed',
      });

      await migrate(db);
      const after = new Map((await loadKeySchedule(db.knex, new Date())).keys.map((k) => [k.kid, k.state]));
      expect([after.get(kids.active), after.get(kids.retired), after.get(kids.rsRemoved), after.get(kids.pending)]).toEqual(['active', 'retired', 'removed', 'removed']);
    } finally {
      await db.close();
    }
  });
});

describe('the key-encryption key, fixed by the first keys stored', () => {
  const A = Buffer.alloc(32, 0xa);
  const B = Buffer.alloc(32, 0xb);
  /** Whether every stored key opens under `key`. */
  const allOpen = async (knex: Knex, key: Buffer): Promise<boolean> => {
    const rows = await knex('signing_keys').select<Array<{ kid: string; private_jwk_enc: string }>>('kid', 'private_jwk_enc');
    return rows.length > 0 && rows.every((r) => {
      try {
        open(key, r.private_jwk_enc, `signing-key:${r.kid}`);
        return true;
      } catch {
        return false;
      }
    });
  };

  it('of two first starts with different keys at once, one stores its keys and the other is refused', async () => {
    for (let round = 0; round < 3; round++) {
      const db = await openDatabase({ databaseUrl: await createTestDatabase(`kek_race_${round}`), dataDir: tmpdir() });
      try {
        await migrate(db);
        const [a, b] = await Promise.allSettled([ensureSigningKeys(db.knex, A), ensureSigningKeys(db.knex, B)]);
        const refused = [a, b].filter((r) => r.status === 'rejected');
        expect(refused).toHaveLength(1);
        expect((refused[0] as PromiseRejectedResult).reason).toBeInstanceOf(KeyEncryptionKeyMismatch);
        const winner = a.status === 'fulfilled' ? A : B;
        expect(await allOpen(db.knex, winner)).toBe(true);
        // A rotation racing it with the other key is refused the same way, under the same lock.
        await expect(rotateKeys(db.knex, winner === A ? B : A, { activateInSeconds: 0, by: 'test' })).rejects.toBeInstanceOf(KeyEncryptionKeyMismatch);
        expect(await allOpen(db.knex, winner)).toBe(true);
      } finally {
        await db.close();
      }
    }
  });
});
