import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { migrate, openDatabase, type Database } from '../../src/store/db.ts';
import { killSwitch } from '../../src/revocation/kill-switch.ts';
import { markJtisRevoked } from '../../src/revocation/revoke.ts';
import { runWrit } from '../support/cli.ts';
import { AT, EXECUTOR_AUD, basicAuth, createTestDatabase, startTestWrit, type TestWrit } from '../support/harness.ts';

describe('Writ serving as a role with the least privileges (writ db grants)', () => {
  const role = `writ_app_${randomBytes(4).toString('hex')}`;
  const dataDir = mkdtempSync(path.join(tmpdir(), 'writ-grants-'));
  let ownerUrl: string;
  let owner: Database;
  let t: TestWrit;

  beforeAll(async () => {
    ownerUrl = await createTestDatabase('least_privilege');
    owner = await openDatabase({ databaseUrl: ownerUrl, dataDir });
    await migrate(owner);
    await owner.knex.raw(`CREATE ROLE ${role} LOGIN`);
    const printed = await runWrit(['db', 'grants', '--role', role], { DATABASE_URL: ownerUrl, WRIT_DATA_DIR: dataDir });
    expect(printed.stdout).toContain(`REVOKE UPDATE, DELETE, TRUNCATE ON audit_events, audit_chain, audit_checkpoints, audit_retention FROM ${role};`);
    const applied = await runWrit(['db', 'grants', '--role', role, '--apply'], { DATABASE_URL: ownerUrl, WRIT_DATA_DIR: dataDir });
    expect(applied.code, applied.stderr).toBe(0);
    const url = new URL(ownerUrl);
    url.username = role;
    t = await startTestWrit({ name: 'least-privilege', databaseUrl: url.toString() });
  }, 60_000);

  afterAll(async () => {
    await t?.close();
    await owner.knex.raw(`DROP OWNED BY ${role}`);
    await owner.close();
    const admin = await openDatabase({ databaseUrl: ownerUrl, dataDir });
    await admin.knex.raw(`DROP ROLE IF EXISTS ${role}`).catch(() => undefined);
    await admin.close();
    rmSync(dataDir, { recursive: true, force: true });
  });

  it('exchanges, audits and seals as that role', async () => {
    const res = await t.exchange('planner-agent', { subject_token: await t.idp.token(t.issuer), subject_token_type: AT, audience: EXECUTOR_AUD });
    expect(res.status).toBe(200);
    expect(await t.auditRows({ request_id: res.headers.get('x-request-id') })).toHaveLength(1);
    const { rows } = await t.writ.db.knex.raw<{ rows: Array<{ u: string }> }>('SELECT current_user AS u');
    expect(rows[0]!.u).toBe(role);
    // Partitions ahead are created through the owner's function: one dropped by the owner comes back.
    const ahead = new Date();
    ahead.setUTCMonth(ahead.getUTCMonth() + 3, 1);
    const part = `audit_events_y${ahead.getUTCFullYear()}m${String(ahead.getUTCMonth() + 1).padStart(2, '0')}`;
    await owner.knex.raw(`DROP TABLE ${part}`);
    expect(await t.writ.auditSealer.ensurePartitions()).toBe(1);
  });

  it('cannot change or remove the audit record, nor turn its triggers off', async () => {
    const knex = t.writ.db.knex;
    const month = new Date();
    const part = `audit_events_y${month.getUTCFullYear()}m${String(month.getUTCMonth() + 1).padStart(2, '0')}`;
    for (const sql of [
      `UPDATE audit_events SET outcome = 'forged'`,
      'DELETE FROM audit_events',
      `UPDATE ${part} SET outcome = 'forged'`,
      `DELETE FROM ${part}`,
      'DELETE FROM audit_chain',
      'TRUNCATE audit_checkpoints',
      'DELETE FROM audit_retention',
    ]) await expect(knex.raw(sql), sql).rejects.toThrow(/permission denied/);
    await expect(knex.raw('ALTER TABLE audit_events DISABLE TRIGGER ALL')).rejects.toThrow(/must be owner/);
    await expect(knex.raw('SET session_replication_role = replica')).rejects.toThrow(/permission denied/);
  });

  it('revokes as that role, and cannot un-revoke, rewrite or delete a lineage row or a revocation mark', async () => {
    const knex = t.writ.db.knex;
    const res = await t.exchange('planner-agent', { subject_token: await t.idp.token(t.issuer), subject_token_type: AT, audience: EXECUTOR_AUD });
    expect(res.status).toBe(200);
    const token = res.body.access_token as string;
    const jti = JSON.parse(Buffer.from(token.split('.')[1]!, 'base64url').toString()).jti as string;
    expect((await t.post('/token/revocation', { token }, basicAuth('planner-agent'))).status).toBe(200);
    expect(await t.introspect('executor-agent', token)).toEqual({ active: false });
    // A kill switch set twice moves its mark forward through the role's column grants.
    await killSwitch(knex, { kind: 'client', value: 'nobody-agent', notBefore: new Date(Date.now() - 60_000), revokedBy: 'test' });
    await killSwitch(knex, { kind: 'client', value: 'nobody-agent', notBefore: new Date(), revokedBy: 'test' });

    for (const [sql, refusal] of [
      [`UPDATE token_lineage SET revoked_at = NULL WHERE jti = '${jti}'`, /already revoked/],
      [`UPDATE token_lineage SET client_id = 'someone-else'`, /permission denied/],
      [`UPDATE token_lineage SET actors = '[]'::jsonb`, /permission denied/],
      ['DELETE FROM token_lineage', /permission denied/],
      ['DELETE FROM revocations', /permission denied/],
      [`UPDATE revocations SET value = 'x' WHERE kind = 'jti'`, /permission denied/],
      [`UPDATE revocations SET not_before = not_before - interval '1 day' WHERE kind = 'client'`, /only moves forward/],
    ] as const) await expect(knex.raw(sql), sql).rejects.toThrow(refusal);
    expect(await t.introspect('executor-agent', token)).toEqual({ active: false });
    // The triggers hold for the owner too.
    await expect(owner.knex.raw(`UPDATE token_lineage SET revoked_at = NULL WHERE jti = ?`, [jti])).rejects.toThrow(/already revoked/);
    await expect(owner.knex.raw(`UPDATE token_lineage SET root_sub = 'mallory' WHERE jti = ?`, [jti])).rejects.toThrow(/already revoked/);
    for (const sql of ['DELETE FROM revocations', 'TRUNCATE revocations', 'DELETE FROM token_lineage', 'TRUNCATE token_lineage CASCADE']) {
      await expect(owner.knex.raw(sql), sql).rejects.toThrow(/are kept/);
    }
    const live = await t.exchange('planner-agent', { subject_token: await t.idp.token(t.issuer), subject_token_type: AT, audience: EXECUTOR_AUD });
    const liveJti = JSON.parse(Buffer.from((live.body.access_token as string).split('.')[1]!, 'base64url').toString()).jti as string;
    await expect(owner.knex.raw(`UPDATE token_lineage SET root_sub = 'mallory' WHERE jti = ?`, [liveJti])).rejects.toThrow(/only revoked_at may be set/);
  });

  it('a rule kill switch racing the revocation of one of its tokens still sets its mark', async () => {
    const knex = t.writ.db.knex;
    const res = await t.exchange('planner-agent', { subject_token: await t.idp.token(t.issuer), subject_token_type: AT, audience: EXECUTOR_AUD });
    const jti = JSON.parse(Buffer.from((res.body.access_token as string).split('.')[1]!, 'base64url').toString()).jti as string;
    // The revocation holds the row while the kill switch reads the rule's live tokens, then commits.
    const revocation = await owner.knex.transaction();
    await revocation.raw('UPDATE token_lineage SET revoked_at = clock_timestamp() WHERE jti = ? AND revoked_at IS NULL', [jti]);
    const marked = killSwitch(knex, { kind: 'rule', value: 'planner-delegates-to-executor', notBefore: new Date(), revokedBy: 'test' });
    await new Promise((resolve) => setTimeout(resolve, 300));
    await revocation.commit();
    await expect(marked).resolves.toMatchObject({ tokens: expect.any(Number) });
    expect(await owner.knex('revocations').where({ kind: 'rule', value: 'planner-delegates-to-executor' }).first()).toBeDefined();
  });

  it('marks twenty thousand tokens revoked in one call, past the parameters one statement may bind', async () => {
    const exp = Math.floor(Date.now() / 1000) + 600;
    const tokens = Array.from({ length: 20_000 }, (_, i) => ({ jti: `bulk-${i}`, exp }));
    await t.writ.db.knex.transaction((trx) => markJtisRevoked(trx, tokens, 'test'));
    const [marked] = await owner.knex('revocations').where('value', 'like', 'bulk-%').count<Array<{ count: string }>>('* as count');
    expect(Number(marked!.count)).toBe(20_000);
  });
});
