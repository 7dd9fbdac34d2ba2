import { decodeJwt } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bootstrapAdmin } from '../../src/admin/bootstrap.ts';
import { applyPolicyFiles } from '../../src/policy/apply.ts';
import { killSwitch } from '../../src/revocation/kill-switch.ts';
import { AT, EXECUTOR_AUD, IDP, PAYMENTS, SECRETS, basicAuth, examplePolicyFor, startTestWrit, type TestWrit } from '../support/harness.ts';
import { expectDenied } from '../support/expect.ts';

describe('admin API, explain and kill switches', () => {
  let t: TestWrit;
  let adminSecret: string;
  let readerSecret: string;

  beforeAll(async () => {
    t = await startTestWrit({ name: 'admin' });
    adminSecret = (await bootstrapAdmin(t.writ.db.knex, { clientId: 'ops-admin', scopes: ['writ:policy.read', 'writ:policy.write', 'writ:revoke', 'writ:audit.read'], secretKey: t.writ.derived.clientSecret, by: 'test' })).secret;
    readerSecret = (await bootstrapAdmin(t.writ.db.knex, { clientId: 'ops-reader', scopes: ['writ:policy.read'], secretKey: t.writ.derived.clientSecret, by: 'test' })).secret;
    await t.writ.policy.reload();
  });
  afterAll(async () => t?.close());

  async function adminToken(clientId: string, secret: string, scope: string): Promise<string> {
    const res = await t.post('/token', { grant_type: 'client_credentials', scope }, basicAuth(clientId, secret));
    expect(res.status, JSON.stringify(res.body)).toBe(200);
    return res.body.access_token as string;
  }
  async function admin(method: string, path: string, token: string | undefined, body?: unknown) {
    const response = await fetch(`${t.url}/admin/v1${path}`, {
      method,
      headers: { ...(token ? { authorization: `Bearer ${token}` } : {}), ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
      ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
    });
    return { status: response.status, headers: response.headers, body: await response.json().catch(() => ({})) as Record<string, unknown> };
  }
  const userToken = (claims: Record<string, unknown> = {}) => t.idp.token(t.issuer, claims);

  it('admins obtain scoped tokens with client_credentials; agents cannot', async () => {
    const token = await adminToken('ops-admin', adminSecret, 'writ:policy.read writ:revoke');
    expect(token.length).toBeGreaterThan(20);
    const beyond = await t.post('/token', { grant_type: 'client_credentials', scope: 'writ:policy.write' }, basicAuth('ops-reader', readerSecret));
    expect(beyond.status).toBe(400);
    expect(beyond.body.error).toBe('invalid_scope');
    const agent = await t.post('/token', { grant_type: 'client_credentials', scope: 'writ:policy.read' }, basicAuth('planner-agent'));
    expect(agent.status).toBe(400);
    expect(agent.body.access_token).toBeUndefined();
  });

  it('each admin token is issued with its audit record; an unknown scope is invalid_scope, no token', async () => {
    const granted = await t.post('/token', { grant_type: 'client_credentials', scope: 'writ:audit.read' }, basicAuth('ops-admin', adminSecret));
    expect(granted.status).toBe(200);
    const rows = await t.auditRows({ request_id: granted.headers.get('x-request-id') });
    expect(rows.map((r) => [r.type, r.outcome, r.client_id])).toEqual([['admin.token_issued', 'granted', 'ops-admin']]);
    expect(rows[0]!.details).toMatchObject({ scopes: ['writ:audit.read'] });
    expect(JSON.stringify(rows[0])).not.toContain(granted.body.access_token as string);

    for (const scope of ['writ:foo', 'writ:audit.read writ:foo', 'payment.read']) {
      const before = await t.writ.db.knex('oidc_payloads').where({ model: 'ClientCredentials' }).count<Array<{ count: string }>>('* as count');
      const res = await t.post('/token', { grant_type: 'client_credentials', scope }, basicAuth('ops-admin', adminSecret));
      await expectDenied(t, res, 'invalid_scope', 'scope_unknown');
      const after = await t.writ.db.knex('oidc_payloads').where({ model: 'ClientCredentials' }).count<Array<{ count: string }>>('* as count');
      expect(after[0]!.count, scope).toBe(before[0]!.count);
    }
  });

  it('an admin token whose record cannot be stored is a 503, not a token, and not a refusal on record', async () => {
    // The payloads table held by another transaction: the token's insert runs into PostgreSQL's
    // statement timeout while the rest of the database answers.
    const lock = await t.writ.db.knex.transaction();
    try {
      await lock.raw('LOCK TABLE oidc_payloads IN ACCESS EXCLUSIVE MODE');
      const res = await t.post('/token', { grant_type: 'client_credentials', scope: 'writ:audit.read' }, basicAuth('ops-admin', adminSecret));
      expect([res.status, res.body.error, res.body.access_token, res.headers.get('retry-after')]).toEqual([503, 'temporarily_unavailable', undefined, '1']);
      await lock.rollback();
      expect(await t.auditRows({ request_id: res.headers.get('x-request-id') })).toEqual([]);
    } finally {
      if (!lock.isCompleted()) await lock.rollback();
    }
  }, 15_000);

  it('refuses missing or wrong credentials with 401 and too-narrow ones with 403, changing nothing', async () => {
    const version = t.writ.policy.policy.version;
    expect((await admin('GET', '/policy', undefined)).status).toBe(401);
    expect((await admin('GET', '/policy', 'not-a-token')).status).toBe(401);
    // An access token from the exchange is not an admin credential.
    const exchanged = await t.exchange('planner-agent', { subject_token: await userToken(), subject_token_type: AT, audience: PAYMENTS });
    expect((await admin('GET', '/policy', exchanged.body.access_token as string)).status).toBe(401);
    const reader = await adminToken('ops-reader', readerSecret, 'writ:policy.read');
    expect((await admin('GET', '/policy', reader)).status).toBe(200);
    const denied = await admin('DELETE', '/policy/rules/planner-reads-payments', reader);
    expect(denied.status).toBe(403);
    expect(denied.headers.get('www-authenticate')).toContain('insufficient_scope');
    expect((await admin('POST', '/revocations', reader, { kind: 'client', value: 'planner-agent' })).status).toBe(403);
    expect(t.writ.policy.policy.version).toBe(version);
  });

  it('an admin token can be revoked by its client, and then opens nothing', async () => {
    const token = await adminToken('ops-reader', readerSecret, 'writ:policy.read');
    expect((await admin('GET', '/policy', token)).status).toBe(200);
    expect((await t.post('/token/revocation', { token }, basicAuth('ops-reader', readerSecret))).status).toBe(200);
    expect((await admin('GET', '/policy', token)).status).toBe(401);
  });

  it('no other client may revoke an admin token (RFC 7009 §2.1): refused, audited, still valid; an admin with writ:revoke may', async () => {
    const token = await adminToken('ops-reader', readerSecret, 'writ:policy.read');
    const reader = await bootstrapAdmin(t.writ.db.knex, { clientId: 'ops-reader-2', scopes: ['writ:policy.read'], secretKey: t.writ.derived.clientSecret, by: 'test' });
    await t.writ.policy.reload();
    for (const auth of [basicAuth('planner-agent'), basicAuth('payments-api'), basicAuth('ops-reader-2', reader.secret)]) {
      const res = await t.post('/token/revocation', { token }, auth);
      expect([res.status, res.body.error]).toEqual([400, 'unauthorized_client']);
      const rows = await t.auditRows({ request_id: res.headers.get('x-request-id') });
      expect(rows.map((r) => [r.type, r.outcome, r.reason])).toEqual([['revocation', 'rejected', 'not_permitted']]);
      expect((await admin('GET', '/policy', token)).status).toBe(200);
    }
    const revoked = await t.post('/token/revocation', { token }, basicAuth('ops-admin', adminSecret));
    expect(revoked.status).toBe(200);
    const rows = await t.auditRows({ request_id: revoked.headers.get('x-request-id') });
    expect(rows.map((r) => [r.type, r.outcome, r.client_id])).toEqual([['revocation', 'revoked', 'ops-admin']]);
    expect((await admin('GET', '/policy', token)).status).toBe(401);
  });

  it('reads policy objects and versions', async () => {
    const token = await adminToken('ops-reader', readerSecret, 'writ:policy.read');
    const current = await admin('GET', '/policy', token);
    expect(current.body.version).toBe(t.writ.policy.policy.version);
    const rules = await admin('GET', '/policy/rules', token);
    expect((rules.body.rules as Array<{ id: string }>).map((r) => r.id)).toContain('planner-reads-payments');
    const client = await admin('GET', '/policy/clients/planner-agent', token);
    expect(client.body.item).toMatchObject({ client_id: 'planner-agent', kind: 'agent' });
    expect(JSON.stringify(client.body)).not.toContain(SECRETS.PLANNER_SECRET);
    expect((await admin('GET', '/policy/clients/nobody', token)).status).toBe(404);
    const versions = await admin('GET', '/policy/versions', token);
    expect((versions.body.versions as unknown[]).length).toBeGreaterThanOrEqual(1);
  });

  it('explains a hypothetical exchange step by step, minting nothing', async () => {
    const token = await adminToken('ops-reader', readerSecret, 'writ:policy.read');
    const lineage = Number((await t.writ.db.knex('token_lineage').count('* as n'))[0]!.n);
    const granted = await admin('POST', '/explain', token, {
      client_id: 'planner-agent', audience: PAYMENTS, subject: { issuer: IDP, claims: { sub: 'alice', groups: ['finance'] } },
    });
    expect(granted.status).toBe(200);
    expect(granted.body).toMatchObject({ decision: 'grant', rule: 'planner-reads-payments', policy_version: t.writ.policy.policy.version, grant: { scope: 'payment.read', expires_in: 120, act: { sub: 'planner-agent' } } });
    expect((granted.body.steps as Array<{ step: string; outcome: string }>).every((s) => s.outcome !== 'fail')).toBe(true);
    const denied = await admin('POST', '/explain', token, {
      client_id: 'planner-agent', audience: PAYMENTS, scope: 'payment.read', subject: { issuer: IDP, claims: { sub: 'alice', groups: ['hr'] } },
    });
    expect(denied.body).toMatchObject({ decision: 'deny', error: 'invalid_request', reason: 'subject_mismatch' });
    expect((denied.body.steps as Array<{ step: string; outcome: string }>).at(-1)).toMatchObject({ step: 'rule', outcome: 'fail' });
    // A chain hop, explained from a real parent token's lineage.
    const hop1 = await t.exchange('planner-agent', { subject_token: await userToken(), subject_token_type: AT, audience: EXECUTOR_AUD });
    const next = await admin('POST', '/explain', token, { client_id: 'executor-agent', audience: PAYMENTS, subject: { parent_jti: decodeJwt(hop1.body.access_token as string).jti } });
    expect(next.body).toMatchObject({ decision: 'grant', rule: 'executor-reads-payments', grant: { act: { sub: 'executor-agent', act: { sub: 'planner-agent' } } } });
    expect((await admin('POST', '/explain', token, { client_id: 'x' })).status).toBe(400);
    expect(Number((await t.writ.db.knex('token_lineage').count('* as n'))[0]!.n)).toBe(lineage + 1);
  });

  it('writes policy objects as new versions, refusing invalid ones', async () => {
    const token = await adminToken('ops-admin', adminSecret, 'writ:policy.write writ:policy.read');
    const before = t.writ.policy.policy.version;
    const bad = await admin('PUT', '/policy/rules/too-wide', token, { actor: 'planner-agent', subject: { issuer: IDP }, audience: PAYMENTS, scopes: ['payment.*'], ttl: 60 });
    expect(bad.status).toBe(422);
    // Located by path within the policy, not by a line of a document the caller never saw.
    const errors = bad.body.errors as Array<Record<string, unknown>>;
    expect(errors.length).toBeGreaterThan(0);
    for (const e of errors) expect(Object.keys(e).sort()).toEqual(['code', 'message', 'path', 'severity']);
    expect(t.writ.policy.policy.version).toBe(before);
    const ok = await admin('PUT', '/policy/rules/planner-transfers', token, { actor: 'planner-agent', subject: { issuer: IDP, claims: { groups: 'treasury' } }, audience: PAYMENTS, scopes: ['payment.transfer'], ttl: 60 });
    expect(ok.status, JSON.stringify(ok.body)).toBe(200);
    expect(ok.body.version).toBe(before + 1);
    expect(t.writ.policy.policy.version).toBe(before + 1);
    const transfer = await t.exchange('planner-agent', { subject_token: await userToken({ groups: ['treasury'] }), subject_token_type: AT, audience: PAYMENTS, scope: 'payment.transfer' });
    expect(transfer.status).toBe(200);
    const removed = await admin('DELETE', '/policy/rules/planner-transfers', token);
    expect(removed.body.version).toBe(before + 2);
    await expectDenied(t, await t.exchange('planner-agent', { subject_token: await userToken({ groups: ['treasury'] }), subject_token_type: AT, audience: PAYMENTS, scope: 'payment.transfer' }), 'invalid_request', 'subject_mismatch');
    const actions = await t.auditRows({ type: 'admin.action', client_id: 'ops-admin' });
    expect(actions.map((a) => (a.details as { status: number }).status)).toEqual(expect.arrayContaining([422, 200, 200]));
    const decided = await t.auditRows({ type: 'exchange.granted', client_id: 'planner-agent' });
    expect(decided.at(-1)!.policy_version).toBe(before + 1);
  });

  it('writ:policy.write cannot make an admin client with scopes the caller does not hold', async () => {
    const token = await adminToken('ops-admin', adminSecret, 'writ:policy.write writ:policy.read');
    const secret = 'k'.repeat(40);
    const escalate = await admin('PUT', '/policy/clients/keys-admin', token, { kind: 'admin', auth: 'client_secret_basic', scopes: ['writ:keys', 'writ:audit.read'], secret });
    expect(escalate.status).toBe(422);
    expect(JSON.stringify(escalate.body)).toContain('writ:keys');
    // Nothing was created: the client cannot get a token.
    expect((await t.post('/token', { grant_type: 'client_credentials', scope: 'writ:keys' }, basicAuth('keys-admin', secret))).status).toBe(401);
    // Within what it holds, it may.
    const within = await admin('PUT', '/policy/clients/reader-admin', token, { kind: 'admin', auth: 'client_secret_basic', scopes: ['writ:policy.read'], secret });
    expect(within.status).toBe(200);
    expect((await admin('DELETE', '/policy/clients/reader-admin', token)).status).toBe(200);
  });

  it('concurrent edits of different objects are all kept: none is lost to another’s read', async () => {
    const token = await adminToken('ops-admin', adminSecret, 'writ:policy.write writ:policy.read');
    const tools = [1, 2, 3, 4, 5].map((i) => `https://tool${i}.concurrent.example.com`);
    const answers = await Promise.all(tools.map((a) => admin('PUT', `/policy/audiences/${encodeURIComponent(a)}`, token, { scopes: ['read'], max_ttl: 60 })));
    expect(answers.map((a) => a.status)).toEqual([200, 200, 200, 200, 200]);
    expect(new Set(answers.map((a) => a.body.version)).size).toBe(5);
    const listed = await admin('GET', '/policy/audiences', token);
    const present = (listed.body.audiences as Array<{ audience: string }>).map((a) => a.audience);
    expect(present).toEqual(expect.arrayContaining(tools));
    for (const a of tools) expect((await admin('DELETE', `/policy/audiences/${encodeURIComponent(a)}`, token)).status).toBe(200);
  });

  it('kill switch by client: every token whose chain involves it goes inactive', async () => {
    const revoker = await adminToken('ops-admin', adminSecret, 'writ:revoke');
    const hop1 = await t.exchange('planner-agent', { subject_token: await userToken(), subject_token_type: AT, audience: EXECUTOR_AUD });
    const hop2 = await t.exchange('executor-agent', { subject_token: hop1.body.access_token as string, subject_token_type: AT, audience: PAYMENTS });
    const direct = await t.exchange('planner-agent', { subject_token: await userToken(), subject_token_type: AT, audience: PAYMENTS });
    const res = await admin('POST', '/revocations', revoker, { kind: 'client', value: 'executor-agent' });
    expect(res.status).toBe(201);
    expect(await t.introspect('payments-api', hop2.body.access_token as string)).toEqual({ active: false });
    expect(await t.introspect('payments-api', direct.body.access_token as string)).toMatchObject({ active: true });
    expect(await t.introspect('executor-agent', hop1.body.access_token as string)).toMatchObject({ active: true });
    const [event] = await t.auditRows({ type: 'kill_switch' });
    expect(event).toMatchObject({ client_id: 'ops-admin', outcome: 'revoked' });
    expect(res.body.warnings).toBeUndefined();
    // A mistyped id is still marked, but not silently.
    const typo = await admin('POST', '/revocations', revoker, { kind: 'client', value: 'executer-agent' });
    expect(typo.status).toBe(201);
    expect(typo.body.warnings).toEqual([expect.stringContaining('no client "executer-agent" in the current policy')]);
  });

  it('a kill switch and a client’s disabling hold at this instance from their answer, without the feed', async () => {
    const token = await adminToken('ops-admin', adminSecret, 'writ:revoke writ:policy.write');
    const quiet = await t.exchange('planner-agent', { subject_token: await userToken({ sub: 'quiet-user' }), subject_token_type: AT, audience: PAYMENTS });
    const held = await t.exchange('planner-agent', { subject_token: await userToken(), subject_token_type: AT, audience: EXECUTOR_AUD });
    expect([quiet.status, held.status]).toEqual([200, 200]);
    // Deaf to NOTIFY and the poll: only what each change applied itself counts.
    await t.writ.revocations.stop();
    try {
      expect((await admin('POST', '/revocations', token, { kind: 'subject', value: `${IDP}|quiet-user` })).status).toBe(201);
      expect(await t.introspect('payments-api', quiet.body.access_token as string)).toEqual({ active: false });
      const disabled = await admin('POST', '/clients/planner-agent/disable', token);
      expect(disabled.status).toBe(200);
      expect(await t.introspect('executor-agent', held.body.access_token as string)).toEqual({ active: false });
      // A rollback to that version disables it again: through the policy store, not the route.
      expect((await admin('POST', '/clients/planner-agent/enable', token)).status).toBe(200);
      const later = await t.exchange('planner-agent', { subject_token: await userToken(), subject_token_type: AT, audience: EXECUTOR_AUD });
      expect(later.status).toBe(200);
      expect((await admin('POST', '/policy/rollback', token, { version: disabled.body.version })).status).toBe(200);
      expect(await t.introspect('executor-agent', later.body.access_token as string)).toEqual({ active: false });
    } finally {
      await t.writ.revocations.start();
      expect((await admin('POST', '/clients/planner-agent/enable', token)).status).toBe(200);
    }
  });

  it('kill switch by subject and by rule', async () => {
    const revoker = await adminToken('ops-admin', adminSecret, 'writ:revoke');
    const mallory = await userToken({ sub: 'mallory' });
    const ok = await t.exchange('planner-agent', { subject_token: mallory, subject_token_type: AT, audience: PAYMENTS });
    expect(ok.status).toBe(200);
    expect((await admin('POST', '/revocations', revoker, { kind: 'subject', value: `${IDP}|mallory` })).status).toBe(201);
    expect(await t.introspect('payments-api', ok.body.access_token as string)).toEqual({ active: false });
    // Her upstream token was issued before the mark: it cannot be exchanged again either.
    await expectDenied(t, await t.exchange('planner-agent', { subject_token: mallory, subject_token_type: AT, audience: PAYMENTS }), 'invalid_request', 'token_revoked');

    const byRule = await t.exchange('planner-agent', { subject_token: await userToken(), subject_token_type: AT, audience: EXECUTOR_AUD });
    const child = await t.exchange('executor-agent', { subject_token: byRule.body.access_token as string, subject_token_type: AT, audience: PAYMENTS });
    const marked = await admin('POST', '/revocations', revoker, { kind: 'rule', value: 'planner-delegates-to-executor' });
    expect(marked.body.tokens_revoked_by_jti as number).toBeGreaterThanOrEqual(2);
    expect(await t.introspect('payments-api', child.body.access_token as string)).toEqual({ active: false });
    expect(await t.introspect('executor-agent', byRule.body.access_token as string)).toEqual({ active: false });
  });

  it('answers a NUL or a lone surrogate anywhere in its input with a 4xx, never a 5xx', async () => {
    const token = await adminToken('ops-admin', adminSecret, 'writ:policy.read writ:policy.write writ:revoke writ:audit.read');
    const answers: Array<[string, number]> = [];
    // In URLs: a NUL, a lone surrogate's UTF-8 form and a byte that is no UTF-8 at all.
    for (const q of ['%00', 'a%ED%A0%80', '%FF']) {
      for (const name of ['subject', 'actor', 'audience', 'task_id', 'type', 'cursor']) {
        answers.push([`events ${name}=${q}`, (await admin('GET', `/audit/events?${name}=${q}`, token)).status]);
      }
      answers.push([`trace ${q}`, (await admin('GET', `/audit/trace/${q}`, token)).status]);
      answers.push([`object ${q}`, (await admin('GET', `/policy/objects/clients/${q}`, token)).status]);
      answers.push([`disable ${q}`, (await admin('POST', `/clients/${q}/disable`, token)).status]);
    }
    // In JSON bodies.
    for (const v of ['\u0000', 'a\ud800']) {
      for (const kind of ['client', 'subject', 'issuer', 'rule']) {
        answers.push([`kill ${kind} ${JSON.stringify(v)}`, (await admin('POST', '/revocations', token, { kind, value: v })).status]);
      }
      answers.push([`explain ${JSON.stringify(v)}`, (await admin('POST', '/explain', token, { client_id: v, subject: { issuer: v, sub: v }, audience: v })).status]);
    }
    expect(answers.filter(([, status]) => status >= 500)).toEqual([]);
  });

  it('disabling a client refuses its exchanges and ends its tokens', async () => {
    const token = await adminToken('ops-admin', adminSecret, 'writ:policy.write');
    const held = await t.exchange('planner-agent', { subject_token: await userToken(), subject_token_type: AT, audience: EXECUTOR_AUD });
    expect((await admin('POST', '/clients/planner-agent/disable', token)).status).toBe(200);
    await expectDenied(t, await t.exchange('planner-agent', { subject_token: await userToken(), subject_token_type: AT, audience: EXECUTOR_AUD }), 'unauthorized_client', 'client_disabled');
    expect(await t.introspect('executor-agent', held.body.access_token as string)).toEqual({ active: false });
    expect((await admin('POST', '/clients/planner-agent/enable', token)).status).toBe(200);
    // The disable's mark stays, for the tokens issued before it; it covers its whole second.
    await nextSecond();
    const fresh = await t.exchange('planner-agent', { subject_token: await userToken(), subject_token_type: AT, audience: EXECUTOR_AUD });
    expect(fresh.status).toBe(200);
    expect(await t.introspect('executor-agent', fresh.body.access_token as string)).toMatchObject({ active: true });
    expect(await t.introspect('executor-agent', held.body.access_token as string)).toEqual({ active: false });
  });

  it('a mark is no later than the database\'s clock: the time of a host whose clock runs ahead is taken as now', async () => {
    const { notBefore } = await killSwitch(t.writ.db.knex, { kind: 'client', value: 'clockless-agent', notBefore: new Date(Date.now() + 30_000), revokedBy: 'test' });
    expect(notBefore.getTime()).toBeLessThanOrEqual(Date.now() + 1_000);
    const [stored] = await t.writ.db.knex('revocations').where({ kind: 'client', value: 'clockless-agent' }).select('not_before') as Array<{ not_before: Date }>;
    expect(new Date(stored!.not_before).getTime()).toBe(notBefore.getTime());
  });

  it('an exchange in the second of a kill switch waits for the next: its token is not born revoked', async () => {
    const revoker = await adminToken('ops-admin', adminSecret, 'writ:revoke');
    const subjectToken = await userToken();
    // Early in a second, so that the exchange below falls in the mark's second.
    await nextSecond();
    const marked = await admin('POST', '/revocations', revoker, { kind: 'client', value: 'planner-agent' });
    expect(marked.status).toBe(201);
    const covered = Math.ceil(new Date(marked.body.not_before as string).getTime() / 1000);
    const res = await t.exchange('planner-agent', { subject_token: subjectToken, subject_token_type: AT, audience: EXECUTOR_AUD });
    expect(res.status).toBe(200);
    const token = res.body.access_token as string;
    expect(decodeJwt(token).iat).toBeGreaterThanOrEqual(covered);
    expect(res.body.expires_in).toBe(decodeJwt(token).exp! - decodeJwt(token).iat!);
    expect(await t.introspect('executor-agent', token)).toMatchObject({ active: true });
  });
});

/** Resolves once the clock is into the next whole second: token times are whole seconds. */
async function nextSecond(): Promise<void> {
  await new Promise((resolve) => setTimeout(resolve, 1000 - (Date.now() % 1000) + 20));
}

describe('kill switch by upstream issuer', () => {
  let t: TestWrit;
  let adminSecret: string;
  beforeAll(async () => {
    t = await startTestWrit({ name: 'kill_issuer' });
    adminSecret = (await bootstrapAdmin(t.writ.db.knex, { clientId: 'ops-admin', scopes: ['writ:revoke'], secretKey: t.writ.derived.clientSecret, by: 'test' })).secret;
    await t.writ.policy.reload();
  });
  afterAll(async () => t?.close());

  it('ends every token rooted at the issuer issued before it, refuses its older upstream tokens, and spares what comes after', async () => {
    const upstream = await t.idp.token(t.issuer);
    const hop1 = await t.exchange('planner-agent', { subject_token: upstream, subject_token_type: AT, audience: EXECUTOR_AUD });
    const hop2 = await t.exchange('executor-agent', { subject_token: hop1.body.access_token as string, subject_token_type: AT, audience: PAYMENTS });
    expect([hop1.status, hop2.status]).toEqual([200, 200]);
    const issued = await t.post('/token', { grant_type: 'client_credentials', scope: 'writ:revoke' }, basicAuth('ops-admin', adminSecret));
    expect(issued.status, JSON.stringify(issued.body)).toBe(200);
    const token = issued.body.access_token as string;
    const marked = await fetch(`${t.url}/admin/v1/revocations`, {
      method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, body: JSON.stringify({ kind: 'issuer', value: IDP }),
    });
    expect(marked.status).toBe(201);
    expect(await t.introspect('executor-agent', hop1.body.access_token as string)).toEqual({ active: false });
    expect(await t.introspect('payments-api', hop2.body.access_token as string)).toEqual({ active: false });
    await expectDenied(t, await t.exchange('planner-agent', { subject_token: upstream, subject_token_type: AT, audience: EXECUTOR_AUD }), 'invalid_request', 'token_revoked');
    await nextSecond();
    const after = await t.exchange('planner-agent', { subject_token: await t.idp.token(t.issuer), subject_token_type: AT, audience: EXECUTOR_AUD });
    expect(after.status).toBe(200);
    expect(await t.introspect('executor-agent', after.body.access_token as string)).toMatchObject({ active: true });
  });
});

describe('the last admin', () => {
  it('apply refuses to remove the last admin client', async () => {
    const t = await startTestWrit({ name: 'lastadmin' });
    try {
      const admin = '  - client_id: policy-admin\n    kind: admin\n    auth: client_secret_basic\n    secret: ${ADMIN_SECRET}\n    scopes: [writ:policy.read]\n';
      const placed = examplePolicyFor(t.idp).replace('\nclients:\n', `\nclients:\n${admin}`);
      expect(placed).toContain('policy-admin');
      const opts = { env: { ...SECRETS, ADMIN_SECRET: 'admin-secret-0123456789abcdefghijklmnop' }, selfIssuer: t.issuer, maxTtl: 900, appliedBy: 'test', message: '', secretKey: t.writ.derived.clientSecret };
      expect((await applyPolicyFiles(t.writ.db.knex, [{ name: 'example.yaml', text: placed }], opts)).ok).toBe(true);
      const without = await applyPolicyFiles(t.writ.db.knex, [{ name: 'example.yaml', text: examplePolicyFor(t.idp) }], opts);
      expect(without.ok).toBe(false);
      expect(JSON.stringify(without)).toContain('last admin');
    } finally {
      await t.close();
    }
  });

  it('a whole policy without clients is refused while clients exist, unless allow_empty', async () => {
    const t = await startTestWrit({ name: 'emptypolicy' });
    try {
      const secret = (await bootstrapAdmin(t.writ.db.knex, { clientId: 'ops-admin', scopes: ['writ:policy.write'], secretKey: t.writ.derived.clientSecret, by: 'test' })).secret;
      await t.writ.policy.reload();
      const issued = await t.post('/token', { grant_type: 'client_credentials', scope: 'writ:policy.write' }, basicAuth('ops-admin', secret));
      expect(issued.status, JSON.stringify(issued.body)).toBe(200);
      const put = (body: Record<string, unknown>) => fetch(`${t.url}/admin/v1/policy`, {
        method: 'PUT', headers: { authorization: `Bearer ${issued.body.access_token as string}`, 'content-type': 'application/json' }, body: JSON.stringify(body),
      }).then(async (r) => ({ status: r.status, body: await r.json() as Record<string, unknown> }));
      const files = [{ name: 'a.yaml', text: '# nothing here\n' }];
      const refused = await put({ files });
      expect(refused.status).toBe(422);
      expect(JSON.stringify(refused.body)).toContain('defines no clients');
      const userToken = await t.idp.token(t.issuer);
      expect((await t.exchange('planner-agent', { subject_token: userToken, subject_token_type: AT, audience: EXECUTOR_AUD })).status).toBe(200);
      expect((await put({ files, allow_empty: 'yes' })).status).toBe(400);
      const emptied = await put({ files, allow_empty: true });
      expect(emptied.status).toBe(200);
      expect((await t.exchange('planner-agent', { subject_token: userToken, subject_token_type: AT, audience: EXECUTOR_AUD })).status).toBe(401);
      // With clients again, a rollback to the empty version is refused: no rollback brings secrets back.
      await t.apply();
      const back = await fetch(`${t.url}/admin/v1/policy/rollback`, {
        method: 'POST', headers: { authorization: `Bearer ${issued.body.access_token as string}`, 'content-type': 'application/json' }, body: JSON.stringify({ version: emptied.body.version }),
      });
      expect(back.status).toBe(422);
      expect(JSON.stringify(await back.json())).toContain('defines no clients');
      expect((await t.exchange('planner-agent', { subject_token: await t.idp.token(t.issuer), subject_token_type: AT, audience: EXECUTOR_AUD })).status).toBe(200);
    } finally {
      await t.close();
    }
  });
});
