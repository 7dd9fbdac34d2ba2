import { randomBytes } from 'node:crypto';
import { decodeJwt } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  AT, EXECUTOR_AUD, IDP, PAYMENTS, TX, TestIdp, basicAuth, startTestWrit, type TestWrit,
} from '../support/harness.ts';
import { expectDenied, lineageCount } from '../support/expect.ts';

/**
 * Delegation attacks (docs/DESIGN.md §6–§8, RFC 8693 §4), end to end over HTTP against PostgreSQL:
 * escalation along a chain, lifetime extension, foreign actor tokens, may_act bypass, an `act`
 * forged upstream, cycles, depth, reuse after revocation, a tool re-exchanging what it received,
 * and task_id hijack. Every denial asserts the exact status and RFC error, that no token was
 * minted (no body token, no new lineage row, no jti on the audit row) and the audit reason.
 */

const PRESERVE_IDP = 'https://idp-preserve.example.com';
const REVIEWER_AUD = 'https://agents.example.com/reviewer';
const PLANNER_AUD = 'https://agents.example.com/planner';
const SHALLOW_TOOL = 'https://shallow-tool.example.com';
const SECRETS = {
  REVIEWER_SECRET: 'reviewer-secret-0123456789abcdefghijklmno',
  INTRUDER_SECRET: 'intruder-secret-0123456789abcdefghijklmno',
};

function policy(idp: TestIdp, preserve: TestIdp): string {
  const finance = { issuer: IDP, claims: { groups: 'finance' } };
  return JSON.stringify({
    issuers: [
      { issuer: IDP, jwks: { keys: [idp.publicJwk] }, algorithms: ['ES256'], audience: 'self' },
      { issuer: PRESERVE_IDP, jwks: { keys: [preserve.publicJwk] }, algorithms: ['ES256'], audience: 'self', act: 'preserve' },
    ],
    clients: [
      { client_id: 'planner-agent', kind: 'agent', auth: 'client_secret_basic', secret: '${PLANNER_SECRET}', audiences: [PLANNER_AUD], actor_identities: [{ issuer: IDP, sub: 'bot-7' }] },
      { client_id: 'executor-agent', kind: 'agent', auth: 'client_secret_basic', secret: '${EXECUTOR_SECRET}', audiences: [EXECUTOR_AUD] },
      { client_id: 'reviewer-agent', kind: 'agent', auth: 'client_secret_basic', secret: '${REVIEWER_SECRET}', audiences: [REVIEWER_AUD] },
      { client_id: 'intruder-agent', kind: 'agent', auth: 'client_secret_basic', secret: '${INTRUDER_SECRET}' },
      { client_id: 'payments-api', kind: 'resource_server', auth: 'client_secret_basic', secret: '${PAYMENTS_API_SECRET}', audiences: [PAYMENTS] },
    ],
    audiences: [
      { audience: PAYMENTS, scopes: ['payment.read', 'payment.transfer'], max_ttl: 300 },
      { audience: EXECUTOR_AUD, scopes: ['payment.read', 'payment.transfer'], max_ttl: 600 },
      { audience: REVIEWER_AUD, scopes: ['payment.read', 'payment.transfer'], max_ttl: 600 },
      { audience: PLANNER_AUD, scopes: ['payment.read'], max_ttl: 600 },
      { audience: SHALLOW_TOOL, scopes: ['payment.read'], max_ttl: 300 },
    ],
    rules: [
      // Interns' delegations may never go deeper than the first hop (a lineage bound).
      { id: 'planner-to-executor-interns', actor: 'planner-agent', subject: { issuer: IDP, claims: { groups: 'interns' } }, audience: EXECUTOR_AUD, scopes: ['payment.read'], ttl: 300, max_depth: 1 },
      { id: 'planner-to-executor', actor: 'planner-agent', subject: finance, audience: EXECUTOR_AUD, scopes: ['payment.read'], ttl: 300, max_depth: 4 },
      { id: 'planner-reads', actor: 'planner-agent', subject: finance, audience: PAYMENTS, scopes: ['payment.read'], ttl: 120, max_depth: 1 },
      { id: 'planner-reads-preserved', actor: 'planner-agent', subject: { issuer: PRESERVE_IDP }, audience: PAYMENTS, scopes: ['payment.read'], ttl: 120, max_depth: 4 },
      { id: 'planner-to-self', actor: 'planner-agent', subject: finance, audience: PLANNER_AUD, scopes: ['payment.read'], ttl: 300, max_depth: 3 },
      { id: 'planner-reexchanges-own', actor: 'planner-agent', subject: { issuer: 'self', after: ['planner-agent'] }, audience: EXECUTOR_AUD, scopes: ['payment.read'], ttl: 300, max_depth: 3 },
      // The rule allows transfer; the parent never had it.
      { id: 'executor-pays', actor: 'executor-agent', subject: { issuer: 'self', after: ['planner-agent'] }, audience: PAYMENTS, scopes: ['payment.read', 'payment.transfer'], ttl: 60, max_depth: 4 },
      { id: 'executor-pays-for-reviewer', actor: 'executor-agent', subject: { issuer: 'self', after: ['reviewer-agent'] }, audience: PAYMENTS, scopes: ['payment.read'], ttl: 60, max_depth: 4 },
      { id: 'executor-to-reviewer', actor: 'executor-agent', subject: { issuer: 'self', after: ['planner-agent'] }, audience: REVIEWER_AUD, scopes: ['payment.read', 'payment.transfer'], ttl: 300, max_depth: 4 },
      { id: 'executor-to-shallow', actor: 'executor-agent', subject: { issuer: 'self' }, audience: SHALLOW_TOOL, scopes: ['payment.read'], ttl: 60, max_depth: 1 },
      { id: 'reviewer-to-executor', actor: 'reviewer-agent', subject: { issuer: 'self', after: ['executor-agent'] }, audience: EXECUTOR_AUD, scopes: ['payment.read'], ttl: 300, max_depth: 4 },
      { id: 'reviewer-reads', actor: 'reviewer-agent', subject: { issuer: 'self' }, audience: PAYMENTS, scopes: ['payment.read'], ttl: 60, max_depth: 4 },
      { id: 'intruder-reads', actor: 'intruder-agent', subject: { issuer: IDP }, audience: PAYMENTS, scopes: ['payment.read'], ttl: 60, max_depth: 1 },
    ],
  });
}

type Res = Awaited<ReturnType<TestWrit['post']>>;

describe('delegation attacks over HTTP', () => {
  let t: TestWrit;
  let preserve: TestIdp;

  beforeAll(async () => {
    preserve = await TestIdp.create(PRESERVE_IDP);
    t = await startTestWrit({ name: 'attacks_delegation', applyExample: false });
    await t.apply([{ name: 'delegation.yaml', text: policy(t.idp, preserve) }], SECRETS);
  });
  afterAll(async () => {
    if (!t) return;
    const granted = await t.writ.db.knex('audit_events').where({ type: 'exchange.granted' }).count<Array<{ count: number }>>('* as count');
    expect(Number(granted[0]!.count)).toBe(await lineageCount(t));
    await t.close();
  });

  const auth: Record<string, string> = {
    'planner-agent': basicAuth('planner-agent'),
    'executor-agent': basicAuth('executor-agent'),
    'reviewer-agent': basicAuth('reviewer-agent', SECRETS.REVIEWER_SECRET),
    'intruder-agent': basicAuth('intruder-agent', SECRETS.INTRUDER_SECRET),
    'payments-api': basicAuth('payments-api'),
  };
  const as = (client: string, form: Record<string, string>): Promise<Res> => t.post('/token', { grant_type: TX, subject_token_type: AT, ...form }, auth[client]);
  const user = (claims: Record<string, unknown> = {}): Promise<string> => t.idp.token(t.issuer, claims);
  const bot = (claims: Record<string, unknown> = {}): Promise<string> => t.idp.token(t.issuer, { sub: 'bot-7', groups: undefined, ...claims });

  async function granted(res: Res): Promise<string> {
    expect(res.status, JSON.stringify(res.body)).toBe(200);
    return res.body.access_token as string;
  }
  /** planner-agent → executor (the first hop), from a finance user. */
  async function hop1(extra: Record<string, string> = {}, claims: Record<string, unknown> = {}): Promise<string> {
    return granted(await as('planner-agent', { subject_token: await user(claims), audience: EXECUTOR_AUD, ...extra }));
  }
  /** Sends the request and asserts the refusal, and that the lineage did not grow meanwhile. */
  async function refused(client: string, form: Record<string, string>, error: string, reason: string): Promise<void> {
    const lineageBefore = await lineageCount(t);
    const res = await as(client, form);
    await expectDenied(t, res, error, reason);
    expect(await lineageCount(t)).toBe(lineageBefore);
  }
  const introspect = async (token: string): Promise<Record<string, unknown>> => (await t.post('/token/introspection', { token }, auth['payments-api'])).body;

  // -------------------------------------------------------------------------------------------
  describe('escalation along a chain', () => {
    it('a scope the parent never had, though the child’s rule allows it → invalid_scope', async () => {
      const parent = await hop1();
      await refused('executor-agent', { subject_token: parent, audience: PAYMENTS, scope: 'payment.transfer' }, 'invalid_scope', 'scope_not_allowed');
    });
    it('asking for more than the parent had is narrowed to the parent’s scopes, never widened', async () => {
      const parent = await hop1();
      const res = await as('executor-agent', { subject_token: parent, audience: PAYMENTS, scope: 'payment.read payment.transfer' });
      expect(res.status).toBe(200);
      expect(res.body.scope).toBe('payment.read');
      expect(decodeJwt(res.body.access_token as string).scope).toBe('payment.read');
      // With no scope requested, the rule's scopes are still cut down to the parent's.
      const defaulted = await as('executor-agent', { subject_token: parent, audience: PAYMENTS });
      expect(defaulted.body.scope).toBe('payment.read');
    });
    it('two hops down, the narrowed scope stays narrowed', async () => {
      const parent = await hop1();
      const reviewerToken = await granted(await as('executor-agent', { subject_token: parent, audience: REVIEWER_AUD }));
      expect(decodeJwt(reviewerToken).scope).toBe('payment.read');
      await refused('reviewer-agent', { subject_token: reviewerToken, audience: PAYMENTS, scope: 'payment.transfer' }, 'invalid_scope', 'scope_not_allowed');
    });
    it('a scope no audience defines → invalid_scope', async () => {
      await refused('executor-agent', { subject_token: await hop1(), audience: PAYMENTS, scope: 'payment.read admin' }, 'invalid_scope', 'scope_unknown');
    });
    it('an audience the agent has no rule for → invalid_target', async () => {
      await refused('executor-agent', { subject_token: await hop1(), audience: PLANNER_AUD }, 'invalid_target', 'no_rule');
    });
    it('an upstream token re-presented by the next agent in the chain matches no rule', async () => {
      // executor-agent's rules all take Writ tokens: a raw user token cannot skip planner-agent.
      await refused('executor-agent', { subject_token: await user(), audience: PAYMENTS }, 'invalid_request', 'subject_mismatch');
    });
  });

  // -------------------------------------------------------------------------------------------
  describe('lifetime extension', () => {
    it('a child never outlives its parent, whatever its rule’s ttl', async () => {
      const now = Math.floor(Date.now() / 1000);
      const parent = await hop1({}, { exp: now + 20 });
      const parentExp = decodeJwt(parent).exp!;
      expect(parentExp).toBe(now + 20);
      const child = await granted(await as('executor-agent', { subject_token: parent, audience: PAYMENTS }));
      expect(decodeJwt(child).exp).toBe(parentExp);
      const grandchild = await granted(await as('executor-agent', { subject_token: parent, audience: REVIEWER_AUD }));
      expect(decodeJwt(grandchild).exp).toBeLessThanOrEqual(parentExp);
    });
    it('an actor token’s exp caps the result', async () => {
      const now = Math.floor(Date.now() / 1000);
      const res = await as('planner-agent', { subject_token: await user(), actor_token: await bot({ exp: now + 15 }), actor_token_type: AT, audience: PAYMENTS });
      expect(decodeJwt(await granted(res)).exp).toBeLessThanOrEqual(now + 15);
    });
    it('an expired parent cannot be exchanged for a fresh token (no leeway on Writ tokens)', async () => {
      const now = Math.floor(Date.now() / 1000);
      const parent = await hop1({}, { exp: now + 2 });
      await new Promise((r) => setTimeout(r, 3100));
      await refused('executor-agent', { subject_token: parent, audience: PAYMENTS }, 'invalid_request', 'token_expired');
    });
    it('re-exchanging one’s own token to reset its clock is a cycle', async () => {
      const own = await granted(await as('planner-agent', { subject_token: await user(), audience: PLANNER_AUD }));
      await refused('planner-agent', { subject_token: own, audience: EXECUTOR_AUD }, 'invalid_request', 'act_cycle');
    });
  });

  // -------------------------------------------------------------------------------------------
  describe('foreign actor tokens', () => {
    it('a Writ token as the actor token → actor_token_writ', async () => {
      const parent = await hop1();
      await refused('planner-agent', { subject_token: await user(), actor_token: parent, actor_token_type: AT, audience: PAYMENTS }, 'invalid_request', 'actor_token_writ');
      const mine = await granted(await as('planner-agent', { subject_token: await user(), audience: PLANNER_AUD }));
      await refused('planner-agent', { subject_token: await user(), actor_token: mine, actor_token_type: AT, audience: PAYMENTS }, 'invalid_request', 'actor_token_writ');
    });
    it('another client’s actor identity → actor_not_allowed', async () => {
      const parent = await hop1();
      // bot-7 is planner-agent's identity, not the executor's.
      await refused('executor-agent', { subject_token: parent, actor_token: await bot(), actor_token_type: AT, audience: PAYMENTS }, 'invalid_request', 'actor_not_allowed');
    });
    it('an identity no client lists, the subject itself, or bot-7 from another issuer → actor_not_allowed', async () => {
      await refused('planner-agent', { subject_token: await user(), actor_token: await bot({ sub: 'bot-8' }), actor_token_type: AT, audience: PAYMENTS }, 'invalid_request', 'actor_not_allowed');
      await refused('planner-agent', { subject_token: await user(), actor_token: await user(), actor_token_type: AT, audience: PAYMENTS }, 'invalid_request', 'actor_not_allowed');
      await refused('planner-agent', { subject_token: await user(), actor_token: await preserve.token(t.issuer, { sub: 'bot-7' }), actor_token_type: AT, audience: PAYMENTS }, 'invalid_request', 'actor_not_allowed');
    });
    it('a client assertion or an untrusted issuer’s token as the actor → issuer_untrusted', async () => {
      const evil = await TestIdp.create('https://evil.example.com');
      await refused('planner-agent', { subject_token: await user(), actor_token: await evil.token(t.issuer, { sub: 'bot-7' }), actor_token_type: AT, audience: PAYMENTS }, 'invalid_request', 'issuer_untrusted');
      const assertion = await evil.token(t.issuer, { iss: 'executor-agent', sub: 'executor-agent' }, { typ: undefined });
      await refused('planner-agent', { subject_token: await user(), actor_token: assertion, actor_token_type: AT, audience: PAYMENTS }, 'invalid_request', 'issuer_untrusted');
    });
    it('an actor token addressed to someone else → aud_mismatch', async () => {
      await refused('planner-agent', { subject_token: await user(), actor_token: await bot({ aud: PAYMENTS }), actor_token_type: AT, audience: PAYMENTS }, 'invalid_request', 'aud_mismatch');
    });
  });

  // -------------------------------------------------------------------------------------------
  describe('may_act bypass', () => {
    const cases: Array<[string, unknown, string]> = [
      ['names another client', { sub: 'executor-agent' }, 'may_act_mismatch'],
      ['names this client under another issuer', { sub: 'planner-agent', iss: 'https://evil.example.com' }, 'may_act_mismatch'],
      ['names this client under the upstream issuer', { sub: 'planner-agent', iss: IDP }, 'may_act_mismatch'],
      ['names this client but another client_id', { sub: 'planner-agent', client_id: 'executor-agent' }, 'may_act_mismatch'],
      ['names this client in another case', { sub: 'Planner-Agent' }, 'may_act_mismatch'],
      ['names the client’s actor identity, with no actor token presented', { sub: 'bot-7', iss: IDP }, 'may_act_mismatch'],
      ['is a bare string', 'planner-agent', 'claim_invalid'],
      ['is an array', [{ sub: 'planner-agent' }], 'claim_invalid'],
      ['has a numeric sub', { sub: 42 }, 'claim_invalid'],
      ['has no sub', { client_id: 'planner-agent' }, 'claim_invalid'],
      ['is null', null, 'claim_invalid'],
    ];
    it.each(cases)('may_act %s → %s', async (_name, mayAct, reason) => {
      await refused('planner-agent', { subject_token: await user({ may_act: mayAct }), audience: PAYMENTS }, 'invalid_request', reason);
    });
    it('may_act naming bot-7 without an issuer does not match the presented bot-7 actor token', async () => {
      await refused('planner-agent', { subject_token: await user({ may_act: { sub: 'bot-7' } }), actor_token: await bot(), actor_token_type: AT, audience: PAYMENTS }, 'invalid_request', 'may_act_mismatch');
    });
    it('may_act naming bot-7 with a bot-8 actor token is refused at the actor step', async () => {
      await refused('planner-agent', { subject_token: await user({ may_act: { sub: 'bot-7', iss: IDP } }), actor_token: await bot({ sub: 'bot-8' }), actor_token_type: AT, audience: PAYMENTS }, 'invalid_request', 'actor_not_allowed');
    });
    it('positive controls: may_act naming this client (iss absent or Writ), or the presented actor identity', async () => {
      await granted(await as('planner-agent', { subject_token: await user({ may_act: { sub: 'planner-agent' } }), audience: PAYMENTS }));
      await granted(await as('planner-agent', { subject_token: await user({ may_act: { sub: 'planner-agent', iss: t.issuer } }), audience: PAYMENTS }));
      await granted(await as('planner-agent', { subject_token: await user({ may_act: { sub: 'bot-7', iss: IDP } }), actor_token: await bot(), actor_token_type: AT, audience: PAYMENTS }));
    });
  });

  // -------------------------------------------------------------------------------------------
  describe('act forged by an upstream issuer', () => {
    const chain = (levels: number, top: Record<string, unknown> = {}): Record<string, unknown> => {
      let act: Record<string, unknown> | undefined;
      for (let i = levels; i >= 1; i--) act = { sub: `upstream-agent-${i}`, ...(act ? { act } : {}) };
      return { ...act, ...top };
    };
    it.each<[string, unknown]>([
      ['naming a Writ client', { sub: 'executor-agent' }],
      ['naming this client as issued by Writ', { sub: 'planner-agent', iss: 'writ' }],
      ['nested two deep', chain(2)],
      ['that is a string', 'executor-agent'],
      ['that is null', null],
    ])('an issuer that does not preserve act: act %s → upstream_act', async (_name, act) => {
      await refused('planner-agent', { subject_token: await user({ act }), audience: PAYMENTS }, 'invalid_request', 'upstream_act');
    });
    it.each<[string, unknown]>([
      ['a string', 'upstream-agent'],
      ['without sub', { client_id: 'x' }],
      ['with an empty sub', { sub: '' }],
      ['nested 11 deep', chain(11)],
    ])('an issuer that preserves act: a malformed act (%s) → claim_invalid', async (_name, act) => {
      await refused('planner-agent', { subject_token: await preserve.token(t.issuer, { act }), audience: PAYMENTS }, 'invalid_request', 'claim_invalid');
    });
    it('a preserved act adds depth: 4 upstream levels + this hop exceed the rule’s max_depth 4 → depth_exceeded', async () => {
      await refused('planner-agent', { subject_token: await preserve.token(t.issuer, { act: chain(4) }), audience: PAYMENTS }, 'invalid_request', 'depth_exceeded');
    });
    it('nested actors only ever deny, never grant: a preserved act naming a privileged client adds nothing but its identity', async () => {
      const res = await as('planner-agent', {
        subject_token: await preserve.token(t.issuer, { act: { sub: 'executor-agent', scope: 'payment.transfer', client_id: 'executor-agent', aud: PAYMENTS, act: { sub: 'upstream-agent-2', exp: 1 } } }),
        audience: PAYMENTS, scope: 'payment.read payment.transfer',
      });
      const claims = decodeJwt(await granted(res));
      expect(res.body.scope).toBe('payment.read');
      expect(claims.scope).toBe('payment.read');
      // Identity members only (RFC 8693 §4.1, X14): scope, aud and exp of the upstream levels are dropped.
      expect(claims.act).toEqual({ sub: 'planner-agent', act: { sub: 'executor-agent', client_id: 'executor-agent', act: { sub: 'upstream-agent-2' } } });
      // The executor is named in the chain only as an upstream actor: it gains no rule from it.
      await refused('executor-agent', { subject_token: res.body.access_token as string, audience: PAYMENTS }, 'invalid_request', 'not_addressed_to_client');
    });
  });

  // -------------------------------------------------------------------------------------------
  describe('cycles and depth', () => {
    it('planner → executor → reviewer → executor: the executor may not act twice → act_cycle', async () => {
      const p = await hop1();
      const toReviewer = await granted(await as('executor-agent', { subject_token: p, audience: REVIEWER_AUD }));
      const backToExecutor = await granted(await as('reviewer-agent', { subject_token: toReviewer, audience: EXECUTOR_AUD }));
      await refused('executor-agent', { subject_token: backToExecutor, audience: PAYMENTS }, 'invalid_request', 'act_cycle');
    });
    it('a rule’s max_depth below the chain’s depth → depth_exceeded', async () => {
      await refused('executor-agent', { subject_token: await hop1(), audience: SHALLOW_TOOL }, 'invalid_request', 'depth_exceeded');
    });
    it('an earlier hop’s bound holds further down, even where the later rule is generous → depth_exceeded', async () => {
      const internsParent = await hop1({}, { groups: ['interns'] });
      await refused('executor-agent', { subject_token: internsParent, audience: PAYMENTS }, 'invalid_request', 'depth_exceeded');
    });
  });

  // -------------------------------------------------------------------------------------------
  describe('reuse after a parent’s revocation', () => {
    it('the revoked token, and every descendant, can no longer be exchanged or introspected active', async () => {
      const parent = await hop1();
      const child = await granted(await as('executor-agent', { subject_token: parent, audience: REVIEWER_AUD }));
      const leaf = await granted(await as('executor-agent', { subject_token: parent, audience: PAYMENTS }));
      expect((await introspect(leaf)).active).toBe(true);
      expect((await t.post('/token/revocation', { token: parent }, auth['planner-agent'])).status).toBe(200);
      await refused('executor-agent', { subject_token: parent, audience: PAYMENTS }, 'invalid_request', 'parent_revoked');
      await refused('reviewer-agent', { subject_token: child, audience: PAYMENTS }, 'invalid_request', 'parent_revoked');
      await expect.poll(() => introspect(leaf), { timeout: 1500, interval: 100 }).toEqual({ active: false });
    });
    it('revoking a child leaves its parent usable', async () => {
      const parent = await hop1();
      const child = await granted(await as('executor-agent', { subject_token: parent, audience: REVIEWER_AUD }));
      expect((await t.post('/token/revocation', { token: child }, auth['executor-agent'])).status).toBe(200);
      await refused('reviewer-agent', { subject_token: child, audience: PAYMENTS }, 'invalid_request', 'parent_revoked');
      await granted(await as('executor-agent', { subject_token: parent, audience: PAYMENTS }));
    });
    it('an ended task: its tokens and any new exchange naming it are refused → task_revoked', async () => {
      const task = `task-${randomBytes(4).toString('hex')}`;
      const parent = await hop1({ task_id: task });
      const leaf = await granted(await as('executor-agent', { subject_token: parent, audience: PAYMENTS }));
      expect((await t.post('/task/revocation', { task_id: task }, auth['planner-agent'])).status).toBe(200);
      // Once this instance has the task in its revoked set (fed by NOTIFY, docs/DESIGN.md §8).
      await expect.poll(() => introspect(leaf), { timeout: 1500, interval: 50 }).toEqual({ active: false });
      await refused('executor-agent', { subject_token: parent, audience: PAYMENTS }, 'invalid_request', 'task_revoked');
      await refused('planner-agent', { subject_token: await user(), audience: EXECUTOR_AUD, task_id: task }, 'invalid_request', 'task_revoked');
    });
  });

  // -------------------------------------------------------------------------------------------
  describe('a tool re-exchanging what it received', () => {
    it('the resource server itself may never exchange → unauthorized_client', async () => {
      const leaf = await granted(await as('executor-agent', { subject_token: await hop1(), audience: PAYMENTS }));
      await refused('payments-api', { subject_token: leaf, audience: PAYMENTS }, 'unauthorized_client', 'client_not_agent');
      await refused('payments-api', { subject_token: leaf, audience: EXECUTOR_AUD }, 'unauthorized_client', 'client_not_agent');
    });
    it('an agent replaying a tool’s token, or a token addressed to another agent → not_addressed_to_client', async () => {
      const parent = await hop1();
      const leaf = await granted(await as('executor-agent', { subject_token: parent, audience: PAYMENTS }));
      await refused('reviewer-agent', { subject_token: leaf, audience: PAYMENTS }, 'invalid_request', 'not_addressed_to_client');
      await refused('executor-agent', { subject_token: leaf, audience: PAYMENTS }, 'invalid_request', 'not_addressed_to_client');
      // The token planner-agent obtained for the executor is not planner-agent's to present again.
      await refused('planner-agent', { subject_token: parent, audience: EXECUTOR_AUD }, 'invalid_request', 'not_addressed_to_client');
      await refused('reviewer-agent', { subject_token: parent, audience: PAYMENTS }, 'invalid_request', 'not_addressed_to_client');
    });
  });

  // -------------------------------------------------------------------------------------------
  describe('task_id hijack', () => {
    it('a child may not move to another task → task_mismatch', async () => {
      const parent = await hop1({ task_id: 'invoice-run-1' });
      await refused('executor-agent', { subject_token: parent, audience: PAYMENTS, task_id: 'invoice-run-2' }, 'invalid_request', 'task_mismatch');
      const child = await granted(await as('executor-agent', { subject_token: parent, audience: PAYMENTS }));
      expect(decodeJwt(child).task_id).toBe('invoice-run-1');
    });
    it.each(['x'.repeat(129), 'a/b', 'task id', 'tâche', 'a\ud800', '../../etc', "t' OR '1'='1"])('a malformed task_id %j → task_invalid', async (task) => {
      await refused('planner-agent', { subject_token: await user(), audience: EXECUTOR_AUD, task_id: task }, 'invalid_request', 'task_invalid');
    });
    // Regression: a task_id containing U+0000 was answered 503 with no audit record, because the
    // denial's audit row copied the raw task_id into a text column and PostgreSQL refuses NUL
    // (docs/DESIGN.md §7 task row wants task_invalid). protocol.test.ts "hostile characters" holds
    // the same for `audience` and upstream claims.
    it('a task_id with a NUL character → task_invalid (not 503)', async () => {
      await refused('planner-agent', { subject_token: await user(), audience: EXECUTOR_AUD, task_id: 'task\u0000' }, 'invalid_request', 'task_invalid');
    });
    it('an agent outside a task cannot end it, and the task’s tokens stay active', async () => {
      const task = `victim-${randomBytes(4).toString('hex')}`;
      const parent = await hop1({ task_id: task });
      const leaf = await granted(await as('executor-agent', { subject_token: parent, audience: PAYMENTS }));
      const res = await t.post('/task/revocation', { task_id: task }, auth['intruder-agent']);
      expect({ status: res.status, error: res.body.error }).toEqual({ status: 400, error: 'unauthorized_client' });
      expect((await t.post('/task/revocation', { task_id: task }, auth['payments-api'])).status).toBe(400);
      await new Promise((r) => setTimeout(r, 1500));
      expect((await introspect(leaf)).active).toBe(true);
      await granted(await as('executor-agent', { subject_token: parent, audience: PAYMENTS }));
    });
    // Regression: task ids were one global namespace, so an agent that started a chain of its own
    // under another chain's task_id could then end that task for everyone. An agent's task
    // revocation now ends the task for the root subjects of its own chains only.
    it('an agent that names another chain’s task_id cannot end that chain', async () => {
      const task = `victim-${randomBytes(4).toString('hex')}`;
      const parent = await hop1({ task_id: task });
      const leaf = await granted(await as('executor-agent', { subject_token: parent, audience: PAYMENTS }));
      await granted(await as('intruder-agent', { subject_token: await user({ sub: 'mallory' }), audience: PAYMENTS, task_id: task }));
      await t.post('/task/revocation', { task_id: task }, auth['intruder-agent']);
      // Past the propagation window (docs/DESIGN.md §8: every instance within 1 s).
      await new Promise((r) => setTimeout(r, 1500));
      expect((await introspect(leaf)).active).toBe(true);
    });
    // Regression: refused revocations of authenticated clients were answered with no audit record
    // (docs/standards.md O2: "Denials by authenticated clients are always audited").
    it('a refused task revocation is audited', async () => {
      const res = await t.post('/task/revocation', { task_id: 'not-mine' }, auth['intruder-agent']);
      expect(res.status).toBe(400);
      const rows = await t.auditRows({ request_id: res.headers.get('x-request-id') });
      expect(rows.map((r) => [r.type, r.outcome, r.reason, r.client_id, r.task_id])).toEqual([['task.revocation', 'rejected', 'not_permitted', 'intruder-agent', 'not-mine']]);
    });
  });
});
