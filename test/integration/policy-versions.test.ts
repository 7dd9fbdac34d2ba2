import { createServer, type Server } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { toRow, type AuditEvent } from '../../src/audit/event.ts';
import { diffPolicies, formatDiff, type PolicyChange } from '../../src/policy/diff.ts';
import { loadPolicyFiles, type LoadOptions, type PolicyFile } from '../../src/policy/load.ts';
import type { PolicyDocument } from '../../src/policy/model.ts';
import { checkJwksUris } from '../../src/policy/reachability.ts';
import { formatReport, scopeCreepReport } from '../../src/policy/report.ts';
import { canonicalJson } from '../../src/canonical-json.ts';
import { currentVersion, digestOf } from '../../src/policy/store.ts';
import {
  applyPolicyFilesWithDiff, exportYaml, getVersion, listVersions, rollbackTo, RollbackError, secretChanges,
} from '../../src/policy/versions.ts';
import {
  AT, EXECUTOR_AUD, PAYMENTS, SECRETS, TX, basicAuth, examplePolicyFor, startTestWrit, type TestWrit,
} from '../support/harness.ts';

const NEW_PLANNER_SECRET = 'planner-rotated-0123456789abcdefghijklmn';
const REPORTING_SECRET = 'reporting-secret-0123456789abcdefghijklm';

const SECRET_REFS: Record<string, string> = {
  'planner-agent': '${PLANNER_SECRET}',
  'executor-agent': '${EXECUTOR_SECRET}',
  'payments-api': '${PAYMENTS_API_SECRET}',
  'reporting-agent': '${REPORTING_SECRET}',
};

/** The example with planner-reads-payments tightened to 60 s but widened to payment.transfer, and one more agent (JSON is YAML). */
function version2(v1: PolicyDocument): string {
  const doc = structuredClone(v1);
  const rule = doc.rules.find((r) => r.id === 'planner-reads-payments')!;
  rule.scopes = ['payment.read', 'payment.transfer'];
  rule.ttl = 60;
  doc.clients.unshift({ client_id: 'reporting-agent', kind: 'agent', auth: 'client_secret_post', audiences: [], actor_identities: [], scopes: [], enabled: true });
  return JSON.stringify({ ...doc, clients: doc.clients.map((c) => ({ ...c, secret: SECRET_REFS[c.client_id] })) }, null, 2);
}

describe('policy versions: diff, apply, history, rollback, export', () => {
  let t: TestWrit;
  let options: LoadOptions & { secretKey: Buffer };
  let v1Files: PolicyFile[];
  let v2Files: PolicyFile[];
  const v2Env = { ...SECRETS, PLANNER_SECRET: NEW_PLANNER_SECRET, REPORTING_SECRET };

  beforeAll(async () => {
    t = await startTestWrit({ name: 'policy_versions', applyExample: false });
    options = { env: SECRETS, selfIssuer: t.issuer, maxTtl: t.config.maxTtl, secretKey: t.writ.derived.clientSecret };
    v1Files = [{ name: 'example.yaml', text: examplePolicyFor(t.idp) }];
    const v1 = loadPolicyFiles(v1Files, options);
    if (!v1.ok) throw new Error(JSON.stringify(v1.errors));
    v2Files = [{ name: 'example.yaml', text: version2(v1.document) }];
  });
  afterAll(async () => t?.close());

  const knex = () => t.writ.db.knex;
  const plannerExchange = async (secret: string) => t.post('/token', {
    grant_type: TX, subject_token: await t.idp.token(t.issuer), subject_token_type: AT, audience: PAYMENTS, scope: 'payment.read',
  }, basicAuth('planner-agent', secret));

  let v2Diff: PolicyChange[];

  it('v1: applying onto an empty database adds everything and sets every secret', async () => {
    const outcome = await applyPolicyFilesWithDiff(knex(), v1Files, { ...options, appliedBy: 'alice', message: 'first policy' });
    if (!outcome.ok) throw new Error(JSON.stringify(outcome.errors));
    expect(outcome.version).toBe(1);
    expect(outcome.previousVersion).toBeUndefined();
    expect(outcome.changes.filter((c) => c.kind !== 'added').map((c) => c.section)).toEqual(['settings']);
    expect(outcome.changes.filter((c) => c.section === 'client')).toEqual([
      expect.objectContaining({ id: 'planner-agent', secret: 'new' }),
      expect.objectContaining({ id: 'executor-agent', secret: 'new' }),
      expect.objectContaining({ id: 'payments-api', secret: 'new' }),
    ]);
    await t.writ.policy.reload();
    expect((await plannerExchange(SECRETS.PLANNER_SECRET)).status).toBe(200);
  });

  it('diff of v2 shows exactly the changes, telling a changed secret from an unchanged one by the stored hash', async () => {
    const loaded = loadPolicyFiles(v2Files, { ...options, env: v2Env });
    if (!loaded.ok) throw new Error(JSON.stringify(loaded.errors));
    const status = await secretChanges(knex(), options.secretKey, loaded.document, loaded.secrets);
    expect(Object.fromEntries(status)).toEqual({
      'reporting-agent': 'new', 'planner-agent': 'changed', 'executor-agent': 'unchanged', 'payments-api': 'unchanged',
    });
    // A file that omits a secret keeps the stored one.
    const withoutPayments = new Map(loaded.secrets);
    withoutPayments.delete('payments-api');
    expect((await secretChanges(knex(), options.secretKey, loaded.document, withoutPayments)).get('payments-api')).toBe('kept');

    const current = await currentVersion(knex());
    v2Diff = diffPolicies(current?.document, loaded.document, status);
    expect(v2Diff).toEqual([
      {
        kind: 'added', section: 'client', id: 'reporting-agent', secret: 'new',
        object: { client_id: 'reporting-agent', kind: 'agent', auth: 'client_secret_post', audiences: [], actor_identities: [], scopes: [], enabled: true },
      },
      { kind: 'changed', section: 'client', id: 'planner-agent', fields: [{ kind: 'secret', field: 'secret', status: 'changed' }] },
      {
        kind: 'changed', section: 'rule', id: 'planner-reads-payments', fields: [
          { kind: 'set', field: 'scopes', added: ['payment.transfer'], removed: [] },
          { kind: 'value', field: 'ttl', before: 120, after: 60 },
        ],
      },
    ]);
    const text = formatDiff(v2Diff);
    expect(text).toContain('~ client planner-agent\n    ~ secret: changed (value not shown)');
    expect(text).toContain('    ~ ttl: 120 → 60');
    expect(text).not.toContain('executor-agent');
    for (const secret of Object.values(v2Env)) expect(text).not.toContain(secret);
  });

  it('v2: apply records who and why, and reports the same diff it applied', async () => {
    const outcome = await applyPolicyFilesWithDiff(knex(), v2Files, { ...options, env: v2Env, appliedBy: 'bob', message: 'tighten planner ttl' });
    if (!outcome.ok) throw new Error(JSON.stringify(outcome.errors));
    expect(outcome.version).toBe(2);
    expect(outcome.previousVersion).toBe(1);
    expect(outcome.changes).toEqual(v2Diff);
    await t.writ.policy.reload();
    expect((await plannerExchange(NEW_PLANNER_SECRET)).status).toBe(200);
    expect((await plannerExchange(SECRETS.PLANNER_SECRET)).status).toBe(401);
  });

  it('an apply that fails changes nothing and reports no diff', async () => {
    const broken = [{ name: 'example.yaml', text: v2Files[0]!.text.replace('${REPORTING_SECRET}', '${UNSET_SECRET}') }];
    const outcome = await applyPolicyFilesWithDiff(knex(), broken, { ...options, env: v2Env, appliedBy: 'bob', message: 'oops' });
    expect(outcome.ok).toBe(false);
    expect((await currentVersion(knex()))?.version).toBe(2);
  });

  it('history lists every version, newest first, with who applied it and why', async () => {
    const versions = await listVersions(knex(), 10);
    expect(versions.map((v) => [v.version, v.appliedBy, v.message])).toEqual([[2, 'bob', 'tighten planner ttl'], [1, 'alice', 'first policy']]);
    expect(versions[0]).not.toHaveProperty('document');
    expect((await listVersions(knex(), 1)).map((v) => v.version)).toEqual([2]);
    expect(await getVersion(knex(), 7)).toBeUndefined();
  });

  it('rollback 1 creates v3 equal to v1 and keeps the current secrets', async () => {
    const v1 = await getVersion(knex(), 1);
    const result = await rollbackTo(knex(), 1, { appliedBy: 'carol', message: 'back to v1', secretKey: options.secretKey });
    expect(result.version.version).toBe(3);
    expect(result.previousVersion).toBe(2);
    expect(result.version.digest).toBe(v1?.digest);
    const v3 = await getVersion(knex(), 3);
    expect(canonicalJson(v3?.document)).toBe(canonicalJson(v1?.document));
    expect(v3).toMatchObject({ appliedBy: 'carol', message: 'back to v1' });
    // The diff it applied: v2's changes undone, and no secret touched.
    expect(result.changes.map((c) => `${c.kind} ${c.section} ${c.id}`)).toEqual(['removed client reporting-agent', 'changed rule planner-reads-payments']);
    expect(result.changes.find((c) => c.section === 'rule')).toMatchObject({ fields: [
      { kind: 'set', field: 'scopes', added: [], removed: ['payment.transfer'] },
      { kind: 'value', field: 'ttl', before: 60, after: 120 },
    ] });

    const [audit] = await knex()('audit_events').where({ type: 'policy.applied', policy_version: 3 });
    expect(audit).toMatchObject({ client_id: 'carol', outcome: 'applied' });
    expect(audit.details).toMatchObject({ rollback_of: 1, message: 'back to v1', digest: v1?.digest });

    // The rollback restored v1's policy but not its secret: planner-agent keeps the one v2 set.
    await t.writ.policy.reload();
    const granted = await plannerExchange(NEW_PLANNER_SECRET);
    expect(granted.status).toBe(200);
    expect(granted.body.expires_in).toBe(120);
    expect((await plannerExchange(SECRETS.PLANNER_SECRET)).status).toBe(401);
    // The client the rollback removed lost its credential, as an apply would.
    expect(await knex()('client_credentials').where({ client_id: 'reporting-agent' })).toEqual([]);
  });

  it('a rollback to a version whose client has no stored secret fails clearly and changes nothing', async () => {
    const error = await rollbackTo(knex(), 2, { appliedBy: 'carol', message: 'again', secretKey: options.secretKey }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(RollbackError);
    expect((error as Error).message).toContain('reporting-agent');
    expect((error as Error).message).toContain('never restores secrets');
    await expect(rollbackTo(knex(), 42, { appliedBy: 'carol', message: '', secretKey: options.secretKey })).rejects.toThrow('there is no policy version 42');
    expect((await currentVersion(knex()))?.version).toBe(3);
  });

  it('a rollback to a version today\'s settings refuse fails validation', async () => {
    await expect(rollbackTo(knex(), 1, {
      appliedBy: 'carol', message: '', secretKey: options.secretKey, validate: { selfIssuer: 'https://idp.example.com', maxTtl: 900 },
    })).rejects.toThrow(/version 1 is no longer valid: .*names Writ itself/);
    expect((await currentVersion(knex()))?.version).toBe(3);
  });

  it('export round-trips: the YAML loads back to the same document, has no secrets, and applies without touching them', async () => {
    for (const version of [1, 2, 3]) {
      const stored = await getVersion(knex(), version);
      const yaml = exportYaml(stored!.document, { header: `version ${version}` });
      expect(yaml.startsWith(`# version ${version}\n`)).toBe(true);
      expect(yaml).not.toMatch(/^\s*-?\s*secret:/m);
      for (const secret of Object.values(v2Env)) expect(yaml).not.toContain(secret);
      const loaded = loadPolicyFiles([{ name: 'export.yaml', text: yaml }], { ...options, env: {} });
      if (!loaded.ok) throw new Error(JSON.stringify(loaded.errors));
      expect(canonicalJson(loaded.document)).toBe(canonicalJson(stored!.document));
      expect(digestOf(loaded.document)).toBe(stored!.digest);
      expect(loaded.secrets.size).toBe(0);
    }
    const v3 = await getVersion(knex(), 3);
    const reapplied = await applyPolicyFilesWithDiff(knex(), [{ name: 'export.yaml', text: exportYaml(v3!.document) }], {
      ...options, env: {}, appliedBy: 'dave', message: 're-apply export',
    });
    if (!reapplied.ok) throw new Error(JSON.stringify(reapplied.errors));
    expect(reapplied.changes).toEqual([]);
    await t.writ.policy.reload();
    expect((await plannerExchange(NEW_PLANNER_SECRET)).status).toBe(200);
  });

  it('export keeps field order readable and leaves out empty defaults', () => {
    const doc: PolicyDocument = {
      issuers: [], clients: [{ client_id: 'a', kind: 'agent', auth: 'client_secret_basic', audiences: [], actor_identities: [], scopes: [], enabled: true, secret: 'x'.repeat(40) }],
      audiences: [], rules: [], settings: { max_depth_cap: 5 },
    };
    expect(exportYaml(doc)).toBe('issuers: []\nclients:\n  - client_id: a\n    kind: agent\n    auth: client_secret_basic\n    enabled: true\naudiences: []\nrules: []\nsettings:\n  max_depth_cap: 5\n');
  });
});

describe('scope-creep report', () => {
  let t: TestWrit;
  beforeAll(async () => {
    t = await startTestWrit({ name: 'policy_report' });
  });
  afterAll(async () => t?.close());

  const DAY = 86_400_000;

  async function insertAt(daysAgo: number, event: AuditEvent, now: number): Promise<void> {
    await t.writ.db.knex('audit_events').insert({ ...toRow(event), occurred_at: new Date(now - daysAgo * DAY) });
  }
  const granted = (client: string, rule: string, audience: string, scope: string[]): AuditEvent =>
    ({ type: 'exchange.granted', outcome: 'granted', clientId: client, audience, policyVersion: 1, details: { rule, scope } });
  const denied = (client: string, reason: string, audience: string): AuditEvent =>
    ({ type: 'exchange.denied', outcome: 'denied', reason, clientId: client, audience, policyVersion: 1, details: { detail: 'x' } });

  it('lists unused rules and scopes, rising denials and the capability matrix', async () => {
    // Real exchanges: one grant, one denial (a scope the rule does not allow), both now.
    const userToken = await t.idp.token(t.issuer);
    const ok = await t.exchange('planner-agent', { subject_token: userToken, subject_token_type: AT, audience: PAYMENTS, scope: 'payment.read' });
    expect(ok.status).toBe(200);
    const refused = await t.exchange('planner-agent', { subject_token: await t.idp.token(t.issuer), subject_token_type: AT, audience: PAYMENTS, scope: 'payment.transfer' });
    expect(refused.status).toBe(400);
    await t.auditRows();

    const now = Date.now() + 1000;
    // executor-agent: 1 of 5 denied in the earlier half of a 10-day window, 4 of 6 in the recent half.
    for (const d of [9, 8, 7, 6]) await insertAt(d, granted('executor-agent', 'executor-reads-payments', PAYMENTS, ['payment.read']), now);
    await insertAt(8.5, denied('executor-agent', 'no_rule', PAYMENTS), now);
    for (const d of [4, 3]) await insertAt(d, granted('executor-agent', 'executor-reads-payments', PAYMENTS, ['payment.read']), now);
    for (const [d, reason] of [[4, 'scope_not_allowed'], [3, 'scope_not_allowed'], [2, 'scope_not_allowed'], [1, 'subject_mismatch']] as const) {
      await insertAt(d, denied('executor-agent', reason, PAYMENTS), now);
    }
    // Outside the window: does not count as use.
    await insertAt(20, granted('planner-agent', 'planner-delegates-to-executor', EXECUTOR_AUD, ['payment.read']), now);

    const document = (await currentVersion(t.writ.db.knex))!.document;
    const report = await scopeCreepReport(t.writ.db.knex, document, { days: 10, now: new Date(now), maxTtl: 900 });

    expect(report.unusedRules).toEqual([
      { rule: 'planner-delegates-to-executor', actor: 'planner-agent', audience: EXECUTOR_AUD, scopes: ['payment.read'] },
    ]);
    expect(report.unusedScopes).toEqual([
      { audience: PAYMENTS, scopes: ['payment.transfer'], notGrantable: ['payment.transfer'] },
      { audience: EXECUTOR_AUD, scopes: ['payment.read'], notGrantable: [] },
    ]);
    expect(report.overbroadRules).toEqual([]);
    // planner-agent: 1 denial of 2 exchanges, all in the recent half — below the floor of 3 denials.
    expect(report.risingDenials).toEqual([{
      agent: 'executor-agent',
      earlier: { denied: 1, total: 5, rate: 0.2 },
      recent: { denied: 4, total: 6, rate: 4 / 6 },
      topReasons: [{ reason: 'scope_not_allowed', count: 3 }, { reason: 'subject_mismatch', count: 1 }],
    }]);
    expect(report.capabilityMatrix).toEqual([
      {
        audience: PAYMENTS, maxTtl: 300, owner: 'payments-api', scopes: [
          { scope: 'payment.read', capabilities: [
            { agent: 'planner-agent', enabled: true, rule: 'planner-reads-payments', subject: 'users of https://idp.example.com where groups=finance', ttl: 120, maxDepth: 2, requireTask: false, grants: 1 },
            { agent: 'executor-agent', enabled: true, rule: 'executor-reads-payments', subject: 'a Writ token obtained by planner-agent', ttl: 60, maxDepth: 2, requireTask: false, grants: 6 },
          ] },
          { scope: 'payment.transfer', capabilities: [] },
        ],
      },
      {
        audience: EXECUTOR_AUD, maxTtl: 600, owner: 'executor-agent', scopes: [
          { scope: 'payment.read', capabilities: [
            { agent: 'planner-agent', enabled: true, rule: 'planner-delegates-to-executor', subject: 'users of https://idp.example.com where groups=finance', ttl: 300, maxDepth: 2, requireTask: false, grants: 0 },
          ] },
        ],
      },
    ]);

    const text = formatReport(report, { policyVersion: 1 });
    expect(text).toContain('Rules no exchange used (1):\n  planner-delegates-to-executor: planner-agent → https://agents.example.com/executor [payment.read]');
    expect(text).toContain('  https://payments.example.com: payment.transfer (no rule grants payment.transfer)');
    expect(text).toContain('  executor-agent: 20% (1/5) → 67% (4/6); mostly scope_not_allowed ×3, subject_mismatch ×1');
    expect(text).toContain('      planner-agent via planner-reads-payments, for users of https://idp.example.com where groups=finance; ttl 120s, depth ≤ 2, 1 grant(s)');
    expect(text).toContain('    payment.transfer\n      (no rule grants it)');

    // A narrower window sees only the recent events; a longer one the old grant too.
    const wide = await scopeCreepReport(t.writ.db.knex, document, { days: 30, now: new Date(now) });
    expect(wide.unusedRules).toEqual([]);
  });
});

describe('jwks_uri reachability', () => {
  let server: Server;
  let base: string;
  beforeAll(async () => {
    server = createServer((req, res) => {
      const json = (status: number, body: string): void => {
        res.writeHead(status, { 'content-type': 'application/json' });
        res.end(body);
      };
      if (req.url === '/good') json(200, JSON.stringify({ keys: [{ kty: 'EC', crv: 'P-256', x: 'x', y: 'y' }] }));
      else if (req.url === '/empty') json(200, '{"keys":[]}');
      else if (req.url === '/not-jwks') json(200, '{"issuer":"x"}');
      else if (req.url === '/html') json(200, '<html>');
      else if (req.url === '/redirect') { res.writeHead(302, { location: '/good' }); res.end(); }
      else if (req.url === '/slow') { /* never answers */ }
      else json(404, '{}');
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    base = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
  });
  afterAll(async () => {
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
  });

  it('warns for every jwks_uri that does not answer 200 with keys, naming file and line, and never errors', async () => {
    const paths = ['/good', '/empty', '/not-jwks', '/html', '/redirect', '/slow', '/missing'];
    const issuers = paths.map((p, i) => `  - issuer: https://idp${i}.example.com\n    jwks_uri: ${base}${p}\n    algorithms: [ES256]\n    audience: self\n`).join('');
    const clientKeys = `  - client_id: signer\n    kind: agent\n    auth: private_key_jwt\n    jwks_uri: ${base}/good\n  - client_id: other-signer\n    kind: agent\n    auth: private_key_jwt\n    jwks_uri: ${base}/missing\n`;
    const files = [
      { name: 'issuers.yaml', text: `issuers:\n${issuers}` },
      { name: 'clients.yaml', text: `clients:\n${clientKeys}` },
    ];
    const loaded = loadPolicyFiles(files, { env: {}, selfIssuer: 'http://localhost:4000', maxTtl: 900 });
    if (!loaded.ok) throw new Error(JSON.stringify(loaded.errors));
    const started = Date.now();
    const issues = await checkJwksUris(loaded.document, { timeoutMs: 500, files });
    expect(Date.now() - started).toBeLessThan(3000);
    expect(issues.every((i) => i.severity === 'warning' && i.code === 'jwks_unreachable')).toBe(true);
    expect(issues.map((i) => [i.file, i.line, i.path])).toEqual([
      ['issuers.yaml', 7, 'issuers[1].jwks_uri'],
      ['issuers.yaml', 11, 'issuers[2].jwks_uri'],
      ['issuers.yaml', 15, 'issuers[3].jwks_uri'],
      ['issuers.yaml', 19, 'issuers[4].jwks_uri'],
      ['issuers.yaml', 23, 'issuers[5].jwks_uri'],
      ['issuers.yaml', 27, 'issuers[6].jwks_uri'],
      ['clients.yaml', 9, 'clients[1].jwks_uri'],
    ]);
    const messages = issues.map((i) => i.message);
    expect(messages[0]).toContain('its JWK Set has no keys');
    expect(messages[1]).toContain('no "keys" array');
    expect(messages[2]).toContain('not JSON');
    expect(messages[3]).toContain('could not be fetched');
    expect(messages[4]).toContain('did not answer within 500 ms');
    expect(messages[5]).toContain('HTTP 404');
    expect(messages[5]).toContain('tokens from issuer https://idp6.example.com will be refused');
    expect(messages[6]).toContain('client other-signer cannot authenticate');
  });

  it('says nothing about inline keys, and reports an unresolvable host without waiting for the timeout', async () => {
    const doc = loadPolicyFiles([{ name: 'p.yaml', text: 'issuers:\n  - issuer: https://idp.invalid\n    jwks_uri: https://idp.invalid/jwks\n    algorithms: [ES256]\n    audience: self\n  - issuer: https://inline.example.com\n    jwks: {keys: [{kty: EC, crv: P-256, x: a, y: b}]}\n    algorithms: [ES256]\n    audience: self\n' }], { env: {}, selfIssuer: 'http://localhost:4000', maxTtl: 900 });
    if (!doc.ok) throw new Error(JSON.stringify(doc.errors));
    const issues = await checkJwksUris(doc.document, { timeoutMs: 10_000 });
    expect(issues).toHaveLength(1);
    expect(issues[0]).toMatchObject({ path: 'issuers[0].jwks_uri', code: 'jwks_unreachable' });
    expect(issues[0]!.file).toBeUndefined();
  });
});
