import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { applyPolicyFiles } from '../../src/policy/apply.ts';
import type { LoadOptions, PolicyFile } from '../../src/policy/load.ts';
import { currentVersion } from '../../src/policy/store.ts';
import { applyPolicyFilesWithDiff, rollbackTo } from '../../src/policy/versions.ts';
import { AT, PAYMENTS, SECRETS, TX, basicAuth, examplePolicyFor, startTestWrit, type TestWrit } from '../support/harness.ts';

const ROTATED = 'planner-rotated-0123456789abcdefghijklmn';

/**
 * Applying the policy in force is a no-op (`writ serve --apply` at every start, `writ policy
 * apply` with no changes): no version, no `policy.applied` event, and the result says so. A
 * changed secret or document is still applied. On PostgreSQL and on the embedded PGlite.
 */
describe.each([
  { db: 'PostgreSQL', embedded: false },
  { db: 'PGlite', embedded: true },
])('applying the policy in force ($db)', ({ embedded }) => {
  let t: TestWrit;
  let files: PolicyFile[];
  let options: LoadOptions & { secretKey: Buffer; appliedBy: string; message: string };

  beforeAll(async () => {
    t = await startTestWrit({ name: 'policy_apply_unchanged', embedded, applyExample: false });
    files = [{ name: 'example.yaml', text: examplePolicyFor(t.idp) }];
    options = { env: SECRETS, selfIssuer: t.issuer, maxTtl: t.config.maxTtl, secretKey: t.writ.derived.clientSecret, appliedBy: 'test', message: 'at start' };
  }, 60_000);
  afterAll(async () => t?.close());

  const knex = () => t.writ.db.knex;
  const versions = async () => (await knex()('policy_versions').select('version').orderBy('version')).map((r: { version: number }) => r.version);
  const appliedEvents = async () => (await t.auditRows({ type: 'policy.applied' })).map((r) => r.policy_version);
  const plannerExchange = async (secret: string) => t.post('/token', {
    grant_type: TX, subject_token: await t.idp.token(t.issuer), subject_token_type: AT, audience: PAYMENTS, scope: 'payment.read',
  }, basicAuth('planner-agent', secret));

  it('the same files twice make one version; the second apply reports unchanged and the version in force', async () => {
    const first = await applyPolicyFiles(knex(), files, options);
    if (!first.ok) throw new Error(JSON.stringify(first.errors));
    expect(first).toMatchObject({ version: 1, unchanged: false });

    const second = await applyPolicyFiles(knex(), files, { ...options, message: 'restart' });
    if (!second.ok) throw new Error(JSON.stringify(second.errors));
    expect(second).toMatchObject({ version: 1, digest: first.digest, unchanged: true });
    // With the diff, as `writ policy apply` and `writ serve --apply` run it.
    const third = await applyPolicyFilesWithDiff(knex(), files, { ...options, message: 'restart again' });
    if (!third.ok) throw new Error(JSON.stringify(third.errors));
    expect(third).toMatchObject({ version: 1, digest: first.digest, unchanged: true, previousVersion: 1, changes: [] });

    expect(await versions()).toEqual([1]);
    expect(await appliedEvents()).toEqual([1]);
    expect(await currentVersion(knex())).toMatchObject({ version: 1, message: 'at start' });
    await t.writ.policy.reload();
    expect((await plannerExchange(SECRETS.PLANNER_SECRET)).status).toBe(200);
  });

  it('the same files with a changed client secret are applied: a new version, and the new secret takes effect', async () => {
    const rotated = await applyPolicyFilesWithDiff(knex(), files, { ...options, env: { ...SECRETS, PLANNER_SECRET: ROTATED }, message: 'rotate planner' });
    if (!rotated.ok) throw new Error(JSON.stringify(rotated.errors));
    expect(rotated).toMatchObject({ version: 2, unchanged: false, previousVersion: 1 });
    expect(rotated.changes).toEqual([expect.objectContaining({ kind: 'changed', section: 'client', id: 'planner-agent', fields: [{ kind: 'secret', field: 'secret', status: 'changed' }] })]);
    expect(await versions()).toEqual([1, 2]);
    expect(await appliedEvents()).toEqual([1, 2]);
    await t.writ.policy.reload();
    expect((await plannerExchange(ROTATED)).status).toBe(200);
    expect((await plannerExchange(SECRETS.PLANNER_SECRET)).status).toBe(401);

    // The rotated secret given again is no change.
    const again = await applyPolicyFiles(knex(), files, { ...options, env: { ...SECRETS, PLANNER_SECRET: ROTATED } });
    expect(again).toMatchObject({ ok: true, version: 2, unchanged: true });
    expect(await versions()).toEqual([1, 2]);
  });

  it('changed files still make a new version', async () => {
    const changed = [{ name: 'example.yaml', text: files[0]!.text.replace('ttl: 120', 'ttl: 90') }];
    expect(changed[0]!.text).not.toBe(files[0]!.text);
    const outcome = await applyPolicyFilesWithDiff(knex(), changed, { ...options, env: { ...SECRETS, PLANNER_SECRET: ROTATED }, message: 'shorter ttl' });
    if (!outcome.ok) throw new Error(JSON.stringify(outcome.errors));
    expect(outcome).toMatchObject({ version: 3, unchanged: false, previousVersion: 2 });
    expect(outcome.changes.map((c) => `${c.kind} ${c.section} ${c.id}`)).toEqual(['changed rule planner-reads-payments']);
    expect(await versions()).toEqual([1, 2, 3]);
    expect(await appliedEvents()).toEqual([1, 2, 3]);
  });

  it('a rollback to the policy in force changes nothing and says so; to another one it is a new version', async () => {
    const same = await rollbackTo(knex(), 3, { appliedBy: 'carol', message: 'no-op', secretKey: options.secretKey });
    expect(same).toMatchObject({ unchanged: true, previousVersion: 3, changes: [], version: { version: 3, message: 'shorter ttl' } });
    expect(same.version).not.toHaveProperty('unchanged');
    expect(await versions()).toEqual([1, 2, 3]);
    expect(await appliedEvents()).toEqual([1, 2, 3]);

    const back = await rollbackTo(knex(), 1, { appliedBy: 'carol', message: 'back', secretKey: options.secretKey });
    expect(back).toMatchObject({ unchanged: false, previousVersion: 3, version: { version: 4 } });
    // Version 2 has version 1's document (only a secret changed): rolling back to it now is no change.
    const equal = await rollbackTo(knex(), 2, { appliedBy: 'carol', message: 'to 2', secretKey: options.secretKey });
    expect(equal).toMatchObject({ unchanged: true, version: { version: 4 } });
    expect(await versions()).toEqual([1, 2, 3, 4]);
    expect(await appliedEvents()).toEqual([1, 2, 3, 4]);
    // No rollback touches a secret: the rotated one stays.
    await t.writ.policy.reload();
    expect((await plannerExchange(ROTATED)).status).toBe(200);
  });
});
