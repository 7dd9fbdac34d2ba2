import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ADMIN_SCOPES, bootstrapAdmin } from '../../src/admin/bootstrap.ts';
import { verifyAuditChain } from '../../src/audit/verify.ts';
import { createLoginToken } from '../../src/audit/view-login.ts';
import { migrate, openDatabase, SchemaMismatch, type Database } from '../../src/store/db.ts';
import { SERVING_GRANTS, SERVING_SEQUENCES } from '../../src/store/grants.ts';
import { killSwitch } from '../../src/revocation/kill-switch.ts';
import { markJtisRevoked } from '../../src/revocation/revoke.ts';
import { runWrit } from '../support/cli.ts';
import { AT, EXECUTOR_AUD, basicAuth, createTestDatabase, startTestWrit, type TestWrit } from '../support/harness.ts';

const jtiOf = (token: string): string => JSON.parse(Buffer.from(token.split('.')[1]!, 'base64url').toString()).jti as string;

describe('Writ serving as a role with the least privileges (writ db grants)', () => {
  const role = `writ_app_${randomBytes(4).toString('hex')}`;
  const dataDir = mkdtempSync(path.join(tmpdir(), 'writ-grants-'));
  let ownerUrl: string;
  let owner: Database;
  let roleUrl: string;
  let t: TestWrit;

  beforeAll(async () => {
    ownerUrl = await createTestDatabase('least_privilege');
    owner = await openDatabase({ databaseUrl: ownerUrl, dataDir });
    await migrate(owner);
    await owner.knex.raw(`CREATE ROLE ${role} LOGIN`);
    // What an earlier `writ db grants` gave: every row operation on every table. Run again, it
    // takes back what the server does not use.
    await owner.knex.raw(`GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO ${role}`);
    await owner.knex.raw(`GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO ${role}`);
    const printed = await runWrit(['db', 'grants', '--role', role], { DATABASE_URL: ownerUrl, WRIT_DATA_DIR: dataDir });
    for (const line of [
      `REVOKE ALL ON ALL TABLES IN SCHEMA public FROM ${role};`,
      `GRANT SELECT, INSERT ON policy_versions TO ${role};`,
      `GRANT SELECT, INSERT ON audit_events TO ${role};`,
      `GRANT UPDATE (revoked_at) ON token_lineage TO ${role};`,
      `GRANT SELECT ON knex_migrations TO ${role};`,
    ]) expect(printed.stdout).toContain(line);
    expect(printed.stdout).not.toMatch(/GRANT [A-Z, ]*DELETE[A-Z, ]* ON (policy_versions|signing_keys|knex_migrations|audit_(events|chain|checkpoints|retention))\b/);
    const applied = await runWrit(['db', 'grants', '--role', role, '--apply'], { DATABASE_URL: ownerUrl, WRIT_DATA_DIR: dataDir });
    expect(applied.code, applied.stderr).toBe(0);
    const url = new URL(ownerUrl);
    url.username = role;
    roleUrl = url.toString();
    t = await startTestWrit({ name: 'least-privilege', databaseUrl: roleUrl });
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

  it('holds exactly what SERVING_GRANTS lists on every table of the schema, nothing on the partitions', async () => {
    const { rows: tables } = await owner.knex.raw<{ rows: Array<{ name: string; partition: boolean }> }>(`
      SELECT c.relname AS name, c.relispartition AS partition FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')`);
    // A table a migration adds is decided in SERVING_GRANTS, not left to a grant on all tables.
    expect(tables.filter((r) => !r.partition).map((r) => r.name).sort()).toEqual(Object.keys(SERVING_GRANTS).sort());
    expect(tables.filter((r) => r.partition).length).toBeGreaterThan(1);
    const privileges = ['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'REFERENCES', 'TRIGGER'];
    for (const { name, partition } of tables) {
      const grant = partition ? { rows: [], updates: [] } : SERVING_GRANTS[name]!;
      const { rows: [held] } = await owner.knex.raw<{ rows: Array<Record<string, boolean>> }>(
        `SELECT ${privileges.map((p) => `has_table_privilege(?, ?::regclass, '${p}') AS "${p}"`).join(', ')}`,
        privileges.flatMap(() => [role, name]));
      expect(privileges.filter((p) => held![p]), name).toEqual(grant.rows);
      const { rows: columns } = await owner.knex.raw<{ rows: Array<{ name: string; updatable: boolean }> }>(`
        SELECT attname AS name, has_column_privilege(?, attrelid, attname, 'UPDATE') AS updatable
        FROM pg_attribute WHERE attrelid = ?::regclass AND attnum > 0 AND NOT attisdropped`, [role, name]);
      const updatable = grant.rows.includes('UPDATE') ? columns.map((c) => c.name) : grant.updates ?? [];
      expect(columns.filter((c) => c.updatable).map((c) => c.name).sort(), name).toEqual([...updatable].sort());
    }
    // Sequences: those of the serial columns it inserts into, and no others.
    const { rows: sequences } = await owner.knex.raw<{ rows: Array<{ name: string; usage: boolean; select: boolean; update: boolean }> }>(`
      SELECT c.relname AS name, has_sequence_privilege(?, c.oid, 'USAGE') AS usage, has_sequence_privilege(?, c.oid, 'SELECT') AS select,
             has_sequence_privilege(?, c.oid, 'UPDATE') AS update
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' AND c.relkind = 'S'`, [role, role, role]);
    for (const seq of sequences) {
      const granted = SERVING_SEQUENCES[seq.name] ?? '';
      expect([seq.usage, seq.select, seq.update], seq.name).toEqual([granted.includes('USAGE'), granted.includes('SELECT'), false]);
    }
    const { rows: serials } = await owner.knex.raw<{ rows: Array<{ table: string; default: string }> }>(`
      SELECT table_name AS table, column_default AS default FROM information_schema.columns
      WHERE table_schema = 'public' AND column_default LIKE 'nextval(%'`);
    for (const serial of serials) {
      if (!SERVING_GRANTS[serial.table]?.rows.includes('INSERT')) continue;
      const sequence = /nextval\('(?:public\.)?"?([a-z0-9_]+)"?'/.exec(serial.default)![1]!;
      expect(SERVING_SEQUENCES[sequence], `${serial.table}: ${sequence}`).toContain('USAGE');
    }
  });

  it('stored the issuer it serves as that role, and cannot change it: writ db issuer --set is the owner\'s', async () => {
    const env = { DATABASE_URL: roleUrl, WRIT_DATA_DIR: dataDir };
    expect((await runWrit(['db', 'issuer'], env)).stdout).toBe(`${t.issuer}\n`);
    const refused = await runWrit(['db', 'issuer', '--set', 'https://sts.example.com'], env);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toContain('permission denied');
    expect(refused.stderr).toContain('as the owner of Writ\'s tables');
    await expect(t.writ.db.knex.raw('DELETE FROM served_issuer')).rejects.toThrow(/permission denied/);
    expect((await owner.knex('served_issuer').select('issuer')).map((r: { issuer: string }) => r.issuer)).toEqual([t.issuer]);
  });

  it('checks migrations at start as that role: reads the list, takes and frees knex\'s lock, writes nothing else', async () => {
    const db = await openDatabase({ databaseUrl: roleUrl, dataDir });
    const statements: string[] = [];
    db.knex.on('query', (q: { sql: string }) => statements.push(q.sql));
    try {
      await migrate(db);
    } finally {
      await db.close();
    }
    expect(statements.filter((s) => !/^(select|BEGIN;|COMMIT;)/i.test(s.trim()))).toEqual([
      'update "knex_migrations_lock" set "is_locked" = $1 where "is_locked" = $2',
      'update "knex_migrations_lock" set "is_locked" = $1',
    ]);
  });

  it('a migration pending when that role starts: refused with what to do, not the SQL that failed', async () => {
    const [latest] = await owner.knex('knex_migrations').orderBy('name', 'desc').limit(1).select('name', 'batch', 'migration_time');
    await owner.knex('knex_migrations').where({ name: latest.name }).del();
    const db = await openDatabase({ databaseUrl: roleUrl, dataDir });
    try {
      const refused = await migrate(db).then(() => undefined, (err: unknown) => err);
      expect(refused).toBeInstanceOf(SchemaMismatch);
      expect((refused as Error).message).toMatch(new RegExp(`^the database needs migrations this role may not apply \\(${latest.name.replace(/\./g, '\\.')}\\): run writ migrate as the owner of the tables, then writ db grants \\(PostgreSQL said: .*(must be owner|permission denied).*\\)$`));
    } finally {
      await db.close();
      await owner.knex('knex_migrations').insert(latest);
    }
  });

  it('cannot delete, truncate or rewrite what the server never deletes or rewrites', async () => {
    const knex = t.writ.db.knex;
    const count = async (table: string): Promise<number> => Number((await owner.knex(table).count<Array<{ count: string }>>('* as count'))[0]!.count);
    const before = { policy_versions: await count('policy_versions'), signing_keys: await count('signing_keys'), knex_migrations: await count('knex_migrations') };
    expect(Object.values(before).every((n) => n > 0)).toBe(true);
    for (const sql of [
      'DELETE FROM policy_versions',
      'DELETE FROM signing_keys',
      'DELETE FROM knex_migrations',
      'DELETE FROM knex_migrations_lock',
      'DELETE FROM bootstrap_admins',
      'DELETE FROM audit_retention',
      'TRUNCATE policy_versions',
      'TRUNCATE signing_keys',
      'TRUNCATE knex_migrations',
      `UPDATE policy_versions SET document = '{}'::jsonb`,
      `UPDATE signing_keys SET private_jwk_enc = 'x'`,
      'UPDATE signing_keys SET activates_at = now()',
      `UPDATE knex_migrations SET name = 'x'`,
      `INSERT INTO knex_migrations (name, batch, migration_time) VALUES ('x', 99, now())`,
      'UPDATE knex_migrations_lock SET index = 2',
      `INSERT INTO bootstrap_admins (client_id, scopes) VALUES ('mallory', '[]')`,
      'UPDATE bootstrap_admins SET enabled = true',
      `INSERT INTO audit_retention (partition) VALUES ('x')`,
      `UPDATE audit_view_logins SET expires_at = now() + interval '1 day'`,
    ]) await expect(knex.raw(sql), sql).rejects.toThrow(/permission denied/);
    // And on every table: no DELETE, INSERT or UPDATE of a column beyond what SERVING_GRANTS gives.
    for (const [table, grant] of Object.entries(SERVING_GRANTS)) {
      if (!grant.rows.includes('DELETE')) await expect(knex.raw(`DELETE FROM ${table}`), table).rejects.toThrow(/permission denied/);
      await expect(knex.raw(`TRUNCATE ${table}`), table).rejects.toThrow(/permission denied/);
      if (!grant.rows.includes('INSERT')) await expect(knex.raw(`INSERT INTO ${table} DEFAULT VALUES`), table).rejects.toThrow(/permission denied/);
      if (grant.rows.includes('UPDATE')) continue;
      const { rows: columns } = await owner.knex.raw<{ rows: Array<{ name: string }> }>(
        'SELECT attname AS name FROM pg_attribute WHERE attrelid = ?::regclass AND attnum > 0 AND NOT attisdropped', [table]);
      for (const { name } of columns) {
        if (grant.updates?.includes(name)) continue;
        await expect(knex.raw(`UPDATE ${table} SET "${name}" = "${name}"`), `${table}.${name}`).rejects.toThrow(/permission denied/);
      }
    }
    expect({ policy_versions: await count('policy_versions'), signing_keys: await count('signing_keys'), knex_migrations: await count('knex_migrations') }).toEqual(before);
  });

  it('serves the admin API as that role: keys, policy edits and rollback, kill switch, task and admin-token revocation, audit reads, chain-view login, sealing', async () => {
    // `writ admin bootstrap` runs as the owner.
    const { secret } = await bootstrapAdmin(owner.knex, { clientId: 'lp-admin', scopes: [...ADMIN_SCOPES], secretKey: t.writ.derived.clientSecret, by: 'test' });
    await t.writ.policy.reload();
    const issued = await t.post('/token', { grant_type: 'client_credentials', scope: ADMIN_SCOPES.join(' ') }, basicAuth('lp-admin', secret));
    expect(issued.status, JSON.stringify(issued.body)).toBe(200);
    const token = issued.body.access_token as string;
    const admin = async (method: string, path: string, body?: unknown): Promise<{ status: number; body: Record<string, unknown> }> => {
      const response = await fetch(`${t.url}/admin/v1${path}`, {
        method,
        headers: { authorization: `Bearer ${token}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
        ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
      });
      return { status: response.status, body: await response.json().catch(() => ({})) as Record<string, unknown> };
    };
    const exchange = async (extra: Record<string, string> = {}): Promise<string> => {
      const res = await t.exchange('planner-agent', { subject_token: await t.idp.token(t.issuer), subject_token_type: AT, audience: EXECUTOR_AUD, ...extra });
      expect(res.status, JSON.stringify(res.body)).toBe(200);
      return res.body.access_token as string;
    };

    // Keys: a rotation, and the removal of a signing key, which puts a new one in its place.
    const rotated = await admin('POST', '/keys/rotation', {});
    expect(rotated.status, JSON.stringify(rotated.body)).toBe(201);
    const listed = await admin('GET', '/keys');
    const active = (listed.body.keys as Array<{ kid: string; state: string }>).find((k) => k.state === 'active')!;
    const removed = await admin('POST', `/keys/${encodeURIComponent(active.kid)}/removal`);
    expect(removed.status, JSON.stringify(removed.body)).toBe(200);
    expect(removed.body.replacement).not.toBeNull();
    expect(await t.introspect('executor-agent', await exchange())).toMatchObject({ active: true });

    // Policy: a client disabled (a new version and a revocation mark), rolled back, then removed (its secret deleted).
    const start = t.writ.policy.policy.version;
    const disabled = await admin('POST', '/clients/payments-api/disable');
    expect(disabled.status, JSON.stringify(disabled.body)).toBe(200);
    const rolledBack = await admin('POST', '/policy/rollback', { version: start });
    expect(rolledBack.status, JSON.stringify(rolledBack.body)).toBe(200);
    expect(t.writ.policy.policy.clients.get('payments-api')?.enabled).toBe(true);
    const dropped = await admin('DELETE', '/policy/clients/payments-api');
    expect(dropped.status, JSON.stringify(dropped.body)).toBe(200);
    expect(await owner.knex('client_credentials').where({ client_id: 'payments-api' }).first()).toBeUndefined();

    // Revocations: a kill switch, and a task ended by a client in it.
    expect((await admin('POST', '/revocations', { kind: 'client', value: 'lp-nobody' })).status).toBe(201);
    const tasked = await exchange({ task_id: 'lp-task' });
    expect((await t.post('/task/revocation', { task_id: 'lp-task' }, basicAuth('planner-agent'))).status).toBe(200);
    expect(await t.introspect('executor-agent', tasked)).toEqual({ active: false });

    // Audit reads, and the chain view signed into with a login `writ audit open` made with the
    // serving role's own credentials.
    expect((await admin('GET', '/audit/events?limit=5')).status).toBe(200);
    expect((await admin('GET', `/audit/trace/${jtiOf(tasked)}`)).status).toBe(200);
    const login = await createLoginToken(t.writ.db.knex, { createdBy: 'test' });
    const signedIn = await fetch(`${t.url}/audit/view/login?token=${login.token}`, { redirect: 'manual' });
    expect(signedIn.status).toBe(303);
    const cookie = signedIn.headers.get('set-cookie')!.split(';')[0]!;
    expect((await fetch(`${t.url}/audit/view/api/events`, { headers: { cookie } })).status).toBe(200);
    expect((await fetch(`${t.url}/audit/view/login?token=${login.token}`, { redirect: 'manual' })).status).toBe(401);

    // The admin token revoked by its own client: oidc-provider removes its record.
    expect((await t.post('/token/revocation', { token }, basicAuth('lp-admin', secret))).status).toBe(200);
    expect((await admin('GET', '/keys')).status).toBe(401);

    // All of it sealed and checkpointed as that role, and on record.
    await t.writ.auditQueue.flush();
    await t.writ.auditSealer.sealOnce({ graceMs: 0, forceCheckpoint: true });
    const report = await verifyAuditChain(t.writ.db.knex, t.writ.derived.auditCheckpoint);
    expect(report.ok, JSON.stringify(report.problems)).toBe(true);
    expect(report.checkpoints.valid).toBeGreaterThan(0);
    const types = (await owner.knex('audit_events').distinct('type')).map((r: { type: string }) => r.type);
    expect(types).toEqual(expect.arrayContaining(['key.generated', 'key.removed', 'policy.applied', 'admin.token_issued']));
  });
});
