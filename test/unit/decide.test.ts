import { describe, it, expect } from 'vitest';
import { decide } from '../../src/exchange/decide.ts';
import { errorFor, type OAuthErrorCode, type ReasonCode } from '../../src/exchange/reasons.ts';
import type {
  ActClaim, Decision, DecisionInput, ExchangeRequest, Grant, JsonObject, UpstreamSubject,
  VerifiedActor, WritSubject,
} from '../../src/exchange/types.ts';
import type { CompiledPolicy } from '../../src/policy/compiled.ts';
import type { PolicyDocument, RulePolicy } from '../../src/policy/model.ts';
import {
  EXECUTOR, EXECUTOR_AUD, IDP, PAYMENTS, PAYMENTS_API, PLANNER, examplePolicy,
} from '../support/example-policy.ts';
import { writSubjectFromGrant } from '../support/writ-subject.ts';

const SELF = 'https://writ.example.com';
const NOW = 1_750_000_000;
const MAX_TTL = 900;
const SUBJECT_TOKEN = 'eyJhbGciOiJFUzI1NiJ9.SUBJECT-TOKEN-MUST-NOT-LEAK.c2ln';
const ACTOR_TOKEN = 'eyJhbGciOiJFUzI1NiJ9.ACTOR-TOKEN-MUST-NOT-LEAK.c2ln';
const OTHER_IDP = 'https://login.partner.example';
const PLANNER_AUD = 'https://agents.example.com/planner';
const BOT = 'bot-7';

const STEP_ORDER = [
  'client', 'target', 'subject_token', 'actor_token', 'may_act', 'rule', 'scopes', 'lifetime', 'chain', 'task',
] as const;

function deepFreeze<T>(value: T): T {
  if (typeof value === 'object' && value !== null && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const v of Object.values(value)) deepFreeze(v);
  }
  return value;
}

function upstream(overrides: Partial<Omit<UpstreamSubject, 'kind'>> = {}, extraClaims: JsonObject = {}): UpstreamSubject {
  const sub = overrides.sub ?? 'alice';
  const issuer = overrides.issuer ?? IDP;
  const iat = overrides.iat ?? NOW - 30;
  const exp = overrides.exp ?? NOW + 3600;
  return {
    kind: 'upstream',
    issuer,
    sub,
    claims: overrides.claims ?? { iss: issuer, sub, aud: SELF, iat, exp, groups: ['finance', 'staff'], ...extraClaims },
    iat,
    exp,
    ...(overrides.act === undefined ? {} : { act: overrides.act }),
  };
}

function actorToken(sub = BOT, issuer = IDP, exp = NOW + 3600): VerifiedActor {
  return { issuer, sub, claims: { iss: issuer, sub, aud: SELF, exp }, exp };
}

interface InputOptions {
  clientId?: string;
  audience?: string;
  scope?: string[];
  taskId?: string;
  subject?: UpstreamSubject | WritSubject;
  actor?: VerifiedActor;
  now?: number;
  maxTtl?: number;
}

function input(o: InputOptions = {}): DecisionInput {
  const request: ExchangeRequest = {
    subjectToken: SUBJECT_TOKEN,
    subjectTokenType: 'access_token',
    audience: o.audience ?? PAYMENTS,
  };
  if (o.scope !== undefined) request.scope = o.scope;
  if (o.taskId !== undefined) request.taskId = o.taskId;
  if (o.actor !== undefined) {
    request.actorToken = ACTOR_TOKEN;
    request.actorTokenType = 'access_token';
  }
  const result: DecisionInput = {
    now: o.now ?? NOW,
    selfIssuer: SELF,
    maxTtl: o.maxTtl ?? MAX_TTL,
    clientId: o.clientId ?? PLANNER,
    request,
    subject: o.subject ?? upstream(),
  };
  if (o.actor !== undefined) result.actor = o.actor;
  return result;
}

/**
 * Every decision in this file goes through here: the input is frozen (decide must not mutate
 * it), decide is run twice (it must be deterministic), the RFC error must be the one the reason
 * maps to, the trail must follow the table's order, and nothing may echo a token.
 */
function run(policy: CompiledPolicy, i: DecisionInput): Decision {
  deepFreeze(i);
  const first = decide(policy, i);
  const second = decide(policy, i);
  expect(second).toEqual(first);
  const text = JSON.stringify(first);
  expect(text).not.toContain('MUST-NOT-LEAK');
  const names = first.steps.map((s) => s.step);
  expect(names).toEqual(STEP_ORDER.slice(0, names.length));
  if (first.ok) {
    expect(names).toEqual([...STEP_ORDER]);
    expect(first.steps.every((s) => s.outcome !== 'fail')).toBe(true);
  } else {
    expect(first.error).toBe(errorFor(first.reason));
    const last = first.steps[first.steps.length - 1];
    expect(last).toMatchObject({ outcome: 'fail', reason: first.reason });
    expect(first.steps.slice(0, -1).every((s) => s.outcome !== 'fail')).toBe(true);
    expect(first.detail.length).toBeGreaterThan(0);
  }
  return first;
}

function granted(d: Decision): Grant {
  if (!d.ok) throw new Error(`expected a grant, got ${d.reason}: ${d.detail}`);
  return d.grant;
}

function expectDenied(d: Decision, reason: ReasonCode, error: OAuthErrorCode, ruleId?: string): void {
  if (d.ok) throw new Error(`expected ${reason}, got a grant by ${d.grant.ruleId}`);
  expect({ reason: d.reason, error: d.error }).toEqual({ reason, error });
  expect(d.ruleId).toBe(ruleId);
}

function rule(overrides: Partial<RulePolicy> & Pick<RulePolicy, 'id' | 'actor' | 'audience'>): RulePolicy {
  return {
    subject: { issuer: IDP },
    scopes: ['payment.read'],
    ttl: 120,
    max_depth: 1,
    require_task: false,
    ...overrides,
  };
}

function addAgent(doc: PolicyDocument, clientId: string, audiences: string[] = []): void {
  doc.clients.push({
    client_id: clientId, kind: 'agent', auth: 'client_secret_basic', audiences, actor_identities: [], scopes: [], enabled: true,
  });
}

function client(doc: PolicyDocument, clientId: string): PolicyDocument['clients'][number] {
  const c = doc.clients.find((x) => x.client_id === clientId);
  if (!c) throw new Error(`no client ${clientId}`);
  return c;
}

function ruleById(doc: PolicyDocument, id: string): RulePolicy {
  const r = doc.rules.find((x) => x.id === id);
  if (!r) throw new Error(`no rule ${id}`);
  return r;
}

/** Hop one of the example chain: planner-agent exchanges the human's token for the executor. */
function plannerToExecutor(policy: CompiledPolicy, o: InputOptions = {}): WritSubject {
  const g = granted(run(policy, input({ audience: EXECUTOR_AUD, ...o })));
  return writSubjectFromGrant(g, SELF, 'jti-planner-executor');
}

// ---------------------------------------------------------------------------------------------

describe('decide: the docs/DESIGN.md §6 example policy end to end', () => {
  const policy = examplePolicy();

  it('direct exchange planner-agent → payments grants exactly the rule', () => {
    const d = run(policy, input());
    const g = granted(d);
    expect(g).toEqual({
      ruleId: 'planner-reads-payments',
      policyVersion: 1,
      audience: PAYMENTS,
      scopes: ['payment.read'],
      iat: NOW,
      exp: NOW + 120,
      sub: 'alice',
      subId: { format: 'iss_sub', iss: IDP, sub: 'alice' },
      act: { sub: PLANNER },
      taskId: null,
      depth: 1,
      depthBound: 2,
      actors: [PLANNER],
      root: { issuer: IDP, sub: 'alice', claims: upstream().claims },
      parentJti: null,
      signingAlg: 'ES256',
    } satisfies Grant);
    expect(d.steps.map((s) => [s.step, s.outcome])).toEqual([
      ['client', 'pass'], ['target', 'pass'], ['subject_token', 'pass'], ['actor_token', 'skip'],
      ['may_act', 'skip'], ['rule', 'pass'], ['scopes', 'pass'], ['lifetime', 'pass'], ['chain', 'pass'],
      ['task', 'skip'],
    ]);
  });

  it('planner-agent → executor uses planner-delegates-to-executor (ttl 300)', () => {
    const g = granted(run(policy, input({ audience: EXECUTOR_AUD })));
    expect(g).toMatchObject({
      ruleId: 'planner-delegates-to-executor', audience: EXECUTOR_AUD, scopes: ['payment.read'],
      exp: NOW + 300, act: { sub: PLANNER }, depth: 1, depthBound: 2, actors: [PLANNER], parentJti: null,
    });
  });

  it('executor-agent re-exchanges the planner token for payments: a two-hop chain', () => {
    const parent = plannerToExecutor(policy);
    const d = run(policy, input({ clientId: EXECUTOR, subject: parent, now: NOW + 10 }));
    const g = granted(d);
    expect(g).toEqual({
      ruleId: 'executor-reads-payments',
      policyVersion: 1,
      audience: PAYMENTS,
      scopes: ['payment.read'],
      iat: NOW + 10,
      exp: NOW + 70,
      sub: 'alice',
      subId: { format: 'iss_sub', iss: IDP, sub: 'alice' },
      act: { sub: EXECUTOR, act: { sub: PLANNER } },
      taskId: null,
      depth: 2,
      depthBound: 2,
      actors: [PLANNER, EXECUTOR],
      root: parent.lineage.root,
      parentJti: 'jti-planner-executor',
      signingAlg: 'ES256',
    } satisfies Grant);
  });

  it('carries the policy version and the audience signing algorithm', () => {
    const p = examplePolicy((doc) => {
      const aud = doc.audiences.find((a) => a.audience === PAYMENTS);
      if (aud) aud.signing_alg = 'RS256';
    }, 42);
    expect(granted(run(p, input()))).toMatchObject({ policyVersion: 42, signingAlg: 'RS256' });
  });
});

describe('decide: client (docs/DESIGN.md §7 client row → unauthorized_client)', () => {
  it('refuses a client that is not in the policy', () => {
    expectDenied(run(examplePolicy(), input({ clientId: 'ghost-agent' })), 'client_not_agent', 'unauthorized_client');
  });
  it('refuses a resource_server', () => {
    expectDenied(run(examplePolicy(), input({ clientId: PAYMENTS_API })), 'client_not_agent', 'unauthorized_client');
  });
  it('refuses an admin client', () => {
    const p = examplePolicy((doc) => {
      doc.clients.push({
        client_id: 'root-admin', kind: 'admin', auth: 'client_secret_basic', audiences: [], actor_identities: [],
        scopes: ['writ:policy.read'], enabled: true,
      });
    });
    expectDenied(run(p, input({ clientId: 'root-admin' })), 'client_not_agent', 'unauthorized_client');
  });
  it('refuses a disabled agent', () => {
    const p = examplePolicy((doc) => { client(doc, PLANNER).enabled = false; });
    expectDenied(run(p, input()), 'client_disabled', 'unauthorized_client');
  });
});

describe('decide: target (→ invalid_target)', () => {
  const policy = examplePolicy();
  it('refuses an unknown audience', () => {
    expectDenied(run(policy, input({ audience: 'https://evil.example.com' })), 'unknown_audience', 'invalid_target');
  });
  it('matches audiences as exact strings (a trailing slash is another audience)', () => {
    expectDenied(run(policy, input({ audience: `${PAYMENTS}/` })), 'unknown_audience', 'invalid_target');
  });
});

describe('decide: subject token (policy part → invalid_request)', () => {
  const policy = examplePolicy();

  it('refuses an upstream issuer that is not trusted', () => {
    const d = run(policy, input({ subject: upstream({ issuer: 'https://idp.evil.example' }) }));
    expectDenied(d, 'issuer_untrusted', 'invalid_request');
  });

  it('refuses an "upstream" subject claiming to be Writ itself', () => {
    expectDenied(run(policy, input({ subject: upstream({ issuer: SELF }) })), 'issuer_untrusted', 'invalid_request');
  });

  it('refuses an upstream act unless the issuer preserves it', () => {
    const d = run(policy, input({ subject: upstream({ act: { sub: 'svc-gateway' } }) }));
    expectDenied(d, 'upstream_act', 'invalid_request');
  });

  it('refuses a malformed preserved act', () => {
    const p = examplePolicy((doc) => { if (doc.issuers[0]) doc.issuers[0].act = 'preserve'; });
    const bad = { sub: 'svc', act: { sub: 42 } } as unknown as ActClaim;
    expectDenied(run(p, input({ subject: upstream({ act: bad }) })), 'claim_invalid', 'invalid_request');
  });

  it('refuses a Writ token that is not addressed to this client (aud is a tool)', () => {
    const toPayments = writSubjectFromGrant(granted(run(policy, input())), SELF, 'jti-pay');
    const d = run(policy, input({ clientId: EXECUTOR, subject: toPayments }));
    expectDenied(d, 'not_addressed_to_client', 'invalid_request');
  });

  it('refuses a Writ token addressed to another agent', () => {
    const toExecutor = plannerToExecutor(policy);
    const d = run(policy, input({ clientId: PLANNER, subject: toExecutor }));
    expectDenied(d, 'not_addressed_to_client', 'invalid_request');
  });

  it('refuses a Writ subject whose issuer is not this Writ', () => {
    const s = plannerToExecutor(policy);
    const d = run(policy, input({ clientId: EXECUTOR, subject: { ...s, issuer: 'https://other-writ.example' } }));
    expectDenied(d, 'issuer_untrusted', 'invalid_request');
  });

  it('refuses a Writ subject whose lineage row is not its own', () => {
    const s = plannerToExecutor(policy);
    const d = run(policy, input({ clientId: EXECUTOR, subject: { ...s, lineage: { ...s.lineage, jti: 'someone-else' } } }));
    expectDenied(d, 'claim_invalid', 'invalid_request');
  });

  it('refuses a Writ subject whose act disagrees with its lineage', () => {
    const s = plannerToExecutor(policy);
    const deeper = run(policy, input({
      clientId: EXECUTOR, subject: { ...s, act: { sub: PLANNER, act: { sub: 'ghost' } } },
    }));
    expectDenied(deeper, 'claim_invalid', 'invalid_request');
    const otherActor = run(policy, input({ clientId: EXECUTOR, subject: { ...s, act: { sub: 'ghost' } } }));
    expectDenied(otherActor, 'claim_invalid', 'invalid_request');
  });
});

describe('decide: actor token (→ invalid_request)', () => {
  const withBot = examplePolicy((doc) => {
    doc.issuers.push({ ...structuredClone(doc.issuers[0]!), issuer: OTHER_IDP, jwks_uri: `${OTHER_IDP}/jwks` });
    client(doc, PLANNER).actor_identities = [{ issuer: IDP, sub: BOT }, { issuer: IDP, sub: 'bot-8' }];
  });

  it('mints {sub, iss, client_id} for a listed actor identity', () => {
    const g = granted(run(withBot, input({ actor: actorToken() })));
    expect(g.act).toEqual({ sub: BOT, iss: IDP, client_id: PLANNER });
    expect(g.actors).toEqual([PLANNER]);
    expect(g.depth).toBe(1);
  });

  it('nests the actor-token level under the next hop', () => {
    const p = examplePolicy((doc) => { client(doc, PLANNER).actor_identities = [{ issuer: IDP, sub: BOT }]; });
    const g1 = granted(run(p, input({ audience: EXECUTOR_AUD, actor: actorToken() })));
    const parent = writSubjectFromGrant(g1, SELF, 'jti-1');
    const g2 = granted(run(p, input({ clientId: EXECUTOR, subject: parent })));
    expect(g2.act).toEqual({ sub: EXECUTOR, act: { sub: BOT, iss: IDP, client_id: PLANNER } });
    expect(g2.actors).toEqual([PLANNER, EXECUTOR]);
    expect(g2.ruleId).toBe('executor-reads-payments');
  });

  it('refuses an identity not in actor_identities', () => {
    expectDenied(run(withBot, input({ actor: actorToken('bot-9') })), 'actor_not_allowed', 'invalid_request');
  });

  it('refuses a listed sub from another (trusted) issuer', () => {
    expectDenied(run(withBot, input({ actor: actorToken(BOT, OTHER_IDP) })), 'actor_not_allowed', 'invalid_request');
  });

  it('refuses any actor token when the client lists no identities', () => {
    expectDenied(run(examplePolicy(), input({ actor: actorToken() })), 'actor_not_allowed', 'invalid_request');
  });

  it('refuses a Writ token as actor token', () => {
    const p = examplePolicy((doc) => { client(doc, PLANNER).actor_identities = [{ issuer: SELF, sub: BOT }]; });
    expectDenied(run(p, input({ actor: actorToken(BOT, SELF) })), 'actor_token_writ', 'invalid_request');
  });

  it('refuses an actor token from an untrusted issuer', () => {
    const p = examplePolicy((doc) => {
      client(doc, PLANNER).actor_identities = [{ issuer: 'https://idp.evil.example', sub: BOT }];
    });
    expectDenied(run(p, input({ actor: actorToken(BOT, 'https://idp.evil.example') })), 'issuer_untrusted', 'invalid_request');
  });
});

describe('decide: may_act (RFC 8693 §4.4 → may_act_mismatch)', () => {
  const p = examplePolicy((doc) => {
    client(doc, PLANNER).actor_identities = [{ issuer: IDP, sub: BOT }, { issuer: IDP, sub: 'bot-8' }];
  });
  const withMayAct = (mayAct: unknown, o: InputOptions = {}): Decision =>
    run(p, input({ subject: upstream({}, { may_act: mayAct }), ...o }));
  const mayActStep = (d: Decision): string | undefined => d.steps.find((s) => s.step === 'may_act')?.outcome;

  it('passes when may_act names this client', () => {
    const d = withMayAct({ sub: PLANNER });
    expect(granted(d).act).toEqual({ sub: PLANNER });
    expect(mayActStep(d)).toBe('pass');
  });
  it('passes when may_act names this client with iss = Writ', () => {
    granted(withMayAct({ sub: PLANNER, iss: SELF }));
  });
  it('passes when may_act also names this client as client_id', () => {
    granted(withMayAct({ sub: PLANNER, client_id: PLANNER }));
  });
  it('is skipped when absent', () => {
    expect(mayActStep(run(p, input()))).toBe('skip');
  });
  it('refuses the client id under another issuer', () => {
    expectDenied(withMayAct({ sub: PLANNER, iss: IDP }), 'may_act_mismatch', 'invalid_request');
  });
  it('refuses another client', () => {
    expectDenied(withMayAct({ sub: EXECUTOR }), 'may_act_mismatch', 'invalid_request');
  });
  it('refuses a client_id member naming another client', () => {
    expectDenied(withMayAct({ sub: PLANNER, client_id: EXECUTOR }), 'may_act_mismatch', 'invalid_request');
  });
  it('passes when it names the presented actor identity (sub and iss)', () => {
    const d = withMayAct({ sub: BOT, iss: IDP }, { actor: actorToken() });
    expect(granted(d).act).toEqual({ sub: BOT, iss: IDP, client_id: PLANNER });
  });
  it('refuses an actor identity named without its iss', () => {
    expectDenied(withMayAct({ sub: BOT }, { actor: actorToken() }), 'may_act_mismatch', 'invalid_request');
  });
  it('refuses a listed actor identity that is not the one presented', () => {
    expectDenied(withMayAct({ sub: BOT, iss: IDP }, { actor: actorToken('bot-8') }), 'may_act_mismatch', 'invalid_request');
  });
  it('refuses a listed actor identity when no actor token is presented', () => {
    expectDenied(withMayAct({ sub: BOT, iss: IDP }), 'may_act_mismatch', 'invalid_request');
  });
  it('accepts the client itself even when an actor token is presented', () => {
    granted(withMayAct({ sub: PLANNER }, { actor: actorToken() }));
  });
  it('refuses a may_act that is not an object', () => {
    expectDenied(withMayAct(PLANNER), 'may_act_mismatch', 'invalid_request');
    expectDenied(withMayAct([{ sub: PLANNER }]), 'may_act_mismatch', 'invalid_request');
    expectDenied(withMayAct(null), 'may_act_mismatch', 'invalid_request');
    expectDenied(withMayAct({ iss: SELF }), 'may_act_mismatch', 'invalid_request');
  });
  it('only looks at the top level: a nested may_act grants nothing', () => {
    expectDenied(withMayAct({ sub: EXECUTOR, may_act: { sub: PLANNER } }), 'may_act_mismatch', 'invalid_request');
  });
  it('applies to the presented token only, not to the root claims kept in lineage', () => {
    const base = examplePolicy();
    const parent = plannerToExecutor(base, { subject: upstream({}, { may_act: { sub: PLANNER } }) });
    granted(run(base, input({ clientId: EXECUTOR, subject: parent })));
  });
});

describe('decide: rule selection (docs/DESIGN.md §6 selectors)', () => {
  const policy = examplePolicy();

  it('no rule for (client, audience) → no_rule / invalid_target', () => {
    const parent = plannerToExecutor(policy);
    const d = run(policy, input({ clientId: EXECUTOR, audience: EXECUTOR_AUD, subject: parent }));
    expectDenied(d, 'no_rule', 'invalid_target');
  });

  it('upstream claims that do not match → subject_mismatch / invalid_request', () => {
    const s = upstream({ claims: { iss: IDP, sub: 'alice', groups: ['engineering'] } });
    expectDenied(run(policy, input({ subject: s })), 'subject_mismatch', 'invalid_request');
  });

  it('a missing claim never matches', () => {
    const s = upstream({ claims: { iss: IDP, sub: 'alice' } });
    expectDenied(run(policy, input({ subject: s })), 'subject_mismatch', 'invalid_request');
  });

  it('no type coercion: a non-string claim never matches', () => {
    const s = upstream({ claims: { iss: IDP, sub: 'alice', groups: [{ name: 'finance' }] } });
    expectDenied(run(policy, input({ subject: s })), 'subject_mismatch', 'invalid_request');
  });

  it('a string claim matches by equality', () => {
    const s = upstream({ claims: { iss: IDP, sub: 'alice', groups: 'finance' } });
    expect(granted(run(policy, input({ subject: s }))).ruleId).toBe('planner-reads-payments');
  });

  it('an upstream selector does not match a Writ subject (and issuer: self does not match upstream)', () => {
    expectDenied(run(policy, input({ clientId: EXECUTOR })), 'subject_mismatch', 'invalid_request');
    const p = examplePolicy((doc) => {
      client(doc, PLANNER).audiences = [PLANNER_AUD];
      doc.audiences.push({ audience: PLANNER_AUD, scopes: ['payment.read'], max_ttl: 600, signing_alg: 'ES256' });
      doc.rules.push(rule({ id: 'exec-to-planner', actor: EXECUTOR, audience: PLANNER_AUD, subject: { issuer: 'self' }, max_depth: 5 }));
    });
    const parent = writSubjectFromGrant(
      granted(run(p, input({ clientId: EXECUTOR, audience: PLANNER_AUD, subject: plannerToExecutor(p) }))), SELF, 'jti-2',
    );
    // planner's rules for payments all name the upstream issuer: a Writ subject matches none.
    expectDenied(run(p, input({ clientId: PLANNER, subject: parent })), 'subject_mismatch', 'invalid_request');
  });

  it('after: the parent token\'s current actor must be listed', () => {
    const p = examplePolicy((doc) => {
      addAgent(doc, 'auditor-agent');
      doc.rules.push(rule({ id: 'auditor-delegates', actor: 'auditor-agent', audience: EXECUTOR_AUD, max_depth: 5 }));
    });
    const parent = writSubjectFromGrant(
      granted(run(p, input({ clientId: 'auditor-agent', audience: EXECUTOR_AUD }))), SELF, 'jti-a',
    );
    const d = run(p, input({ clientId: EXECUTOR, subject: parent }));
    expectDenied(d, 'subject_mismatch', 'invalid_request');
  });

  it('nested actors never grant: after matches the current actor only, not an earlier one', () => {
    const RELAY = 'relay-agent';
    const RELAY_AUD = 'https://agents.example.com/relay';
    const p = examplePolicy((doc) => {
      addAgent(doc, RELAY, [RELAY_AUD]);
      doc.audiences.push({ audience: RELAY_AUD, scopes: ['payment.read'], max_ttl: 600, signing_alg: 'ES256' });
      doc.rules.push(rule({ id: 'planner-to-relay', actor: PLANNER, audience: RELAY_AUD, max_depth: 5 }));
      doc.rules.push(rule({
        id: 'relay-to-executor', actor: RELAY, audience: EXECUTOR_AUD, subject: { issuer: 'self', after: [PLANNER] }, max_depth: 5,
      }));
      ruleById(doc, 'executor-reads-payments').max_depth = 5;
    });
    const hop1 = writSubjectFromGrant(granted(run(p, input({ audience: RELAY_AUD }))), SELF, 'jti-r1');
    const g2 = granted(run(p, input({ clientId: RELAY, audience: EXECUTOR_AUD, subject: hop1 })));
    expect(g2.act).toEqual({ sub: RELAY, act: { sub: PLANNER } });
    const hop2 = writSubjectFromGrant(g2, SELF, 'jti-r2');
    // executor-reads-payments says after: [planner-agent]; planner is only a nested actor here.
    expectDenied(run(p, input({ clientId: EXECUTOR, subject: hop2 })), 'subject_mismatch', 'invalid_request');
  });

  it('root: constrains the chain\'s human by issuer and lineage claims', () => {
    const build = (root: { issuer: string; claims?: Record<string, string | string[]> }): CompiledPolicy =>
      examplePolicy((doc) => { ruleById(doc, 'executor-reads-payments').subject = { issuer: 'self', after: [PLANNER], root }; });
    const ok = build({ issuer: IDP, claims: { groups: ['finance', 'treasury'] } });
    granted(run(ok, input({ clientId: EXECUTOR, subject: plannerToExecutor(ok) })));
    const wrongClaims = build({ issuer: IDP, claims: { groups: 'hr' } });
    expectDenied(run(wrongClaims, input({ clientId: EXECUTOR, subject: plannerToExecutor(wrongClaims) })), 'subject_mismatch', 'invalid_request');
    const wrongIssuer = build({ issuer: OTHER_IDP });
    expectDenied(run(wrongIssuer, input({ clientId: EXECUTOR, subject: plannerToExecutor(wrongIssuer) })), 'subject_mismatch', 'invalid_request');
  });

  it('self selector claims are matched against the Writ token\'s own claims', () => {
    const withClaims = (claims: Record<string, string | string[]>): CompiledPolicy =>
      examplePolicy((doc) => { ruleById(doc, 'executor-reads-payments').subject = { issuer: 'self', claims }; });
    const byScope = withClaims({ scope: 'payment.read' });
    granted(run(byScope, input({ clientId: EXECUTOR, subject: plannerToExecutor(byScope) })));
    const byClient = withClaims({ client_id: PLANNER });
    granted(run(byClient, input({ clientId: EXECUTOR, subject: plannerToExecutor(byClient) })));
    // The root's claims are not the Writ token's claims: `groups` is only in lineage.root.
    const byGroups = withClaims({ groups: 'finance' });
    expectDenied(run(byGroups, input({ clientId: EXECUTOR, subject: plannerToExecutor(byGroups) })), 'subject_mismatch', 'invalid_request');
  });

  it('first matching rule wins, in order', () => {
    const p = examplePolicy((doc) => {
      doc.rules.push(rule({ id: 'planner-anyone', actor: PLANNER, audience: PAYMENTS, scopes: ['payment.read', 'payment.transfer'] }));
    });
    expect(granted(run(p, input())).ruleId).toBe('planner-reads-payments');
    const engineer = upstream({ claims: { iss: IDP, sub: 'bob', groups: 'engineering' }, sub: 'bob' });
    const g = granted(run(p, input({ subject: engineer })));
    expect(g.ruleId).toBe('planner-anyone');
    expect(g.scopes).toEqual(['payment.read', 'payment.transfer']);
  });
});

describe('decide: scopes (→ invalid_scope)', () => {
  const wide = examplePolicy((doc) => {
    ruleById(doc, 'planner-reads-payments').scopes = ['payment.read', 'payment.transfer'];
  });

  it('without a request, grants the rule\'s scopes', () => {
    expect(granted(run(wide, input())).scopes).toEqual(['payment.read', 'payment.transfer']);
  });
  it('a requested name the audience does not define → scope_unknown', () => {
    const d = run(wide, input({ scope: ['payment.read', 'payment.refund'] }));
    expectDenied(d, 'scope_unknown', 'invalid_scope', 'planner-reads-payments');
  });
  it('a scope of another audience is unknown here', () => {
    const p = examplePolicy((doc) => { doc.audiences[1]!.scopes = ['payment.read', 'agent.run']; });
    expectDenied(run(p, input({ scope: ['agent.run'] })), 'scope_unknown', 'invalid_scope', 'planner-reads-payments');
  });
  it('a defined scope the rule does not allow → scope_not_allowed', () => {
    const d = run(examplePolicy(), input({ scope: ['payment.transfer'] }));
    expectDenied(d, 'scope_not_allowed', 'invalid_scope', 'planner-reads-payments');
  });
  it('an empty scope request grants nothing', () => {
    expectDenied(run(wide, input({ scope: [] })), 'scope_not_allowed', 'invalid_scope', 'planner-reads-payments');
  });
  it('narrows to the requested subset', () => {
    expect(granted(run(wide, input({ scope: ['payment.transfer'] }))).scopes).toEqual(['payment.transfer']);
  });
  it('keeps the audience\'s order and drops duplicates', () => {
    const g = granted(run(wide, input({ scope: ['payment.transfer', 'payment.read', 'payment.transfer'] })));
    expect(g.scopes).toEqual(['payment.read', 'payment.transfer']);
  });
  it('only requested ∩ rule is granted', () => {
    expect(granted(run(examplePolicy(), input({ scope: ['payment.read'] }))).scopes).toEqual(['payment.read']);
  });
  it('a Writ subject never widens past its parent\'s scopes', () => {
    const p = examplePolicy((doc) => { ruleById(doc, 'executor-reads-payments').scopes = ['payment.read', 'payment.transfer']; });
    const parent = plannerToExecutor(p);
    expect(parent.lineage.scopes).toEqual(['payment.read']);
    expect(granted(run(p, input({ clientId: EXECUTOR, subject: parent }))).scopes).toEqual(['payment.read']);
    const d = run(p, input({ clientId: EXECUTOR, subject: parent, scope: ['payment.transfer'] }));
    expectDenied(d, 'scope_not_allowed', 'invalid_scope', 'executor-reads-payments');
  });
});

describe('decide: lifetime = min of every bound', () => {
  it('rule ttl', () => {
    expect(granted(run(examplePolicy(), input())).exp).toBe(NOW + 120);
  });
  it('audience max_ttl', () => {
    const p = examplePolicy((doc) => { doc.audiences[0]!.max_ttl = 30; });
    expect(granted(run(p, input())).exp).toBe(NOW + 30);
  });
  it('WRIT_MAX_TTL', () => {
    expect(granted(run(examplePolicy(), input({ maxTtl: 10 }))).exp).toBe(NOW + 10);
  });
  it('subject token exp', () => {
    expect(granted(run(examplePolicy(), input({ subject: upstream({ exp: NOW + 5 }) }))).exp).toBe(NOW + 5);
  });
  it('actor token exp', () => {
    const p = examplePolicy((doc) => { client(doc, PLANNER).actor_identities = [{ issuer: IDP, sub: BOT }]; });
    expect(granted(run(p, input({ actor: actorToken(BOT, IDP, NOW + 3) }))).exp).toBe(NOW + 3);
  });
  it('the parent Writ token\'s exp', () => {
    const policy = examplePolicy();
    const parent = plannerToExecutor(policy); // exp NOW + 300
    const g = granted(run(policy, input({ clientId: EXECUTOR, subject: parent, now: NOW + 290 })));
    expect(g).toMatchObject({ iat: NOW + 290, exp: NOW + 300 });
  });
  it('iat is now', () => {
    expect(granted(run(examplePolicy(), input({ now: NOW + 7 }))).iat).toBe(NOW + 7);
  });
  it('a subject that has effectively expired → token_expired', () => {
    const d = run(examplePolicy(), input({ subject: upstream({ exp: NOW }) }));
    expectDenied(d, 'token_expired', 'invalid_request', 'planner-reads-payments');
  });
  it('an actor token that has effectively expired → token_expired', () => {
    const p = examplePolicy((doc) => { client(doc, PLANNER).actor_identities = [{ issuer: IDP, sub: BOT }]; });
    expectDenied(run(p, input({ actor: actorToken(BOT, IDP, NOW - 1) })), 'token_expired', 'invalid_request', 'planner-reads-payments');
  });
  it('a zero WRIT_MAX_TTL grants nothing', () => {
    expectDenied(run(examplePolicy(), input({ maxTtl: 0 })), 'token_expired', 'invalid_request', 'planner-reads-payments');
  });
});

describe('decide: chain (act, depth, cycles, subject_is_client)', () => {
  it('depth beyond the rule\'s max_depth → depth_exceeded', () => {
    const p = examplePolicy((doc) => { ruleById(doc, 'executor-reads-payments').max_depth = 1; });
    const d = run(p, input({ clientId: EXECUTOR, subject: plannerToExecutor(p) }));
    expectDenied(d, 'depth_exceeded', 'invalid_request', 'executor-reads-payments');
  });

  it('max_depth defaults to 1 in the model: a default rule allows direct exchange only', () => {
    const p = examplePolicy((doc) => { ruleById(doc, 'planner-reads-payments').max_depth = 1; });
    expect(granted(run(p, input()))).toMatchObject({ depth: 1, depthBound: 1 });
  });

  it('every rule along the lineage bounds the depth, not only the last one', () => {
    const p = examplePolicy((doc) => {
      ruleById(doc, 'planner-delegates-to-executor').max_depth = 1;
      ruleById(doc, 'executor-reads-payments').max_depth = 5;
    });
    const parent = plannerToExecutor(p);
    expect(parent.lineage.depthBound).toBe(1);
    expectDenied(run(p, input({ clientId: EXECUTOR, subject: parent })), 'depth_exceeded', 'invalid_request', 'executor-reads-payments');
  });

  it('settings.max_depth_cap caps every chain', () => {
    const p = examplePolicy((doc) => { doc.settings.max_depth_cap = 1; });
    const parent = plannerToExecutor(p);
    expect(parent.lineage.depthBound).toBe(1);
    expectDenied(run(p, input({ clientId: EXECUTOR, subject: parent })), 'depth_exceeded', 'invalid_request', 'executor-reads-payments');
  });

  it('depthBound is min(rule, cap, lineage)', () => {
    const p = examplePolicy((doc) => {
      doc.settings.max_depth_cap = 4;
      ruleById(doc, 'planner-delegates-to-executor').max_depth = 3;
      ruleById(doc, 'executor-reads-payments').max_depth = 9;
    });
    const g = granted(run(p, input({ clientId: EXECUTOR, subject: plannerToExecutor(p) })));
    expect(g).toMatchObject({ depth: 2, depthBound: 3 });
  });

  it('a preserved upstream act nests below the current actor, identity members only', () => {
    const p = examplePolicy((doc) => { doc.issuers[0]!.act = 'preserve'; });
    const upstreamAct = { sub: 'svc-gateway', iss: IDP, exp: NOW + 10, aud: 'x' } as unknown as ActClaim;
    const g = granted(run(p, input({ subject: upstream({ act: upstreamAct }) })));
    expect(g.act).toEqual({ sub: PLANNER, act: { sub: 'svc-gateway', iss: IDP } });
    expect(g).toMatchObject({ depth: 2, depthBound: 2, actors: [PLANNER] });
  });

  it('preserved upstream act levels count toward depth', () => {
    const p = examplePolicy((doc) => { doc.issuers[0]!.act = 'preserve'; });
    const d = run(p, input({ subject: upstream({ act: { sub: 'svc-a', act: { sub: 'svc-b' } } }) }));
    expectDenied(d, 'depth_exceeded', 'invalid_request', 'planner-reads-payments');
  });

  it('a client appearing twice (A → B → A) → act_cycle', () => {
    const p = examplePolicy((doc) => {
      client(doc, PLANNER).audiences = [PLANNER_AUD];
      doc.audiences.push({ audience: PLANNER_AUD, scopes: ['payment.read'], max_ttl: 600, signing_alg: 'ES256' });
      doc.rules.push(rule({ id: 'executor-to-planner', actor: EXECUTOR, audience: PLANNER_AUD, subject: { issuer: 'self' }, max_depth: 5 }));
      doc.rules.push(rule({ id: 'planner-again', actor: PLANNER, audience: PAYMENTS, subject: { issuer: 'self' }, max_depth: 5 }));
      ruleById(doc, 'planner-delegates-to-executor').max_depth = 5;
    });
    const hop1 = plannerToExecutor(p);
    const g2 = granted(run(p, input({ clientId: EXECUTOR, audience: PLANNER_AUD, subject: hop1 })));
    expect(g2.actors).toEqual([PLANNER, EXECUTOR]);
    const hop2 = writSubjectFromGrant(g2, SELF, 'jti-2');
    const d = run(p, input({ clientId: PLANNER, subject: hop2 }));
    expectDenied(d, 'act_cycle', 'invalid_request', 'planner-again');
  });

  it('a client re-exchanging its own token (A → A) → act_cycle', () => {
    const p = examplePolicy((doc) => {
      doc.rules.push(rule({ id: 'executor-self', actor: EXECUTOR, audience: EXECUTOR_AUD, subject: { issuer: 'self' }, max_depth: 5 }));
      ruleById(doc, 'planner-delegates-to-executor').max_depth = 5;
    });
    const hop1 = plannerToExecutor(p);
    const hop2 = writSubjectFromGrant(
      granted(run(p, input({ clientId: EXECUTOR, audience: EXECUTOR_AUD, subject: hop1 }))), SELF, 'jti-2',
    );
    const d = run(p, input({ clientId: EXECUTOR, audience: EXECUTOR_AUD, subject: hop2 }));
    expectDenied(d, 'act_cycle', 'invalid_request', 'executor-self');
  });

  it('the root subject may not be the acting client → subject_is_client', () => {
    const s = upstream({ sub: PLANNER, claims: { iss: IDP, sub: PLANNER, groups: 'finance' } });
    expectDenied(run(examplePolicy(), input({ subject: s })), 'subject_is_client', 'invalid_request', 'planner-reads-payments');
  });

  it('subject_prefix does not hide a root sub equal to a client id', () => {
    const p = examplePolicy((doc) => { doc.issuers[0]!.subject_prefix = 'idp|'; });
    const s = upstream({ sub: PLANNER, claims: { iss: IDP, sub: PLANNER, groups: 'finance' } });
    expectDenied(run(p, input({ subject: s })), 'subject_is_client', 'invalid_request', 'planner-reads-payments');
  });

  it('no token names a client as its subject, acting in the chain or not (RFC 9068 §5)', () => {
    const s = upstream({ sub: 'payments-api', claims: { iss: IDP, sub: 'payments-api', groups: 'finance' } });
    const d = run(examplePolicy(), input({ subject: s }));
    expectDenied(d, 'subject_is_client', 'invalid_request', 'planner-reads-payments');
    // A subject_prefix keeps the issuer's users apart from the clients: granted, as idp|payments-api.
    const p = examplePolicy((doc) => { doc.issuers[0]!.subject_prefix = 'idp|'; });
    expect(granted(run(p, input({ subject: s }))).sub).toBe('idp|payments-api');
  });

  it('the root subject may not be any client of the chain, at a later hop too', () => {
    // Prefixed, the first hop's sub is no client's id; the raw root sub still is the executor's.
    const policy = examplePolicy((doc) => { doc.issuers[0]!.subject_prefix = 'idp|'; });
    const s = upstream({ sub: EXECUTOR, claims: { iss: IDP, sub: EXECUTOR, groups: 'finance' } });
    const parent = plannerToExecutor(policy, { subject: s });
    const d = run(policy, input({ clientId: EXECUTOR, subject: parent }));
    expectDenied(d, 'subject_is_client', 'invalid_request', 'executor-reads-payments');
  });
});

describe('decide: task_id', () => {
  const policy = examplePolicy();

  it('no task → null, step skipped', () => {
    const d = run(policy, input());
    expect(granted(d).taskId).toBeNull();
    expect(d.steps.at(-1)).toMatchObject({ step: 'task', outcome: 'skip' });
  });
  it('a requested task is carried', () => {
    expect(granted(run(policy, input({ taskId: 'task:2024.q3_close-1' }))).taskId).toBe('task:2024.q3_close-1');
  });
  it('128 characters are allowed', () => {
    expect(granted(run(policy, input({ taskId: 'x'.repeat(128) }))).taskId).toBe('x'.repeat(128));
  });
  it.each([
    ['too long', 'x'.repeat(129)],
    ['empty', ''],
    ['space', 'a b'],
    ['slash', 'a/b'],
    ['non-ASCII', 'naïve'],
    ['newline', 'a\n'],
  ])('refuses a malformed task_id (%s) → task_invalid', (_name, taskId) => {
    expectDenied(run(policy, input({ taskId })), 'task_invalid', 'invalid_request', 'planner-reads-payments');
  });
  it('a child inherits its parent\'s task_id', () => {
    const parent = plannerToExecutor(policy, { taskId: 'T-1' });
    expect(parent.lineage.taskId).toBe('T-1');
    expect(parent.claims['task_id']).toBe('T-1');
    const d = run(policy, input({ clientId: EXECUTOR, subject: parent }));
    expect(granted(d).taskId).toBe('T-1');
    expect(d.steps.at(-1)).toMatchObject({ step: 'task', outcome: 'pass' });
  });
  it('repeating the parent\'s task_id is fine', () => {
    const parent = plannerToExecutor(policy, { taskId: 'T-1' });
    expect(granted(run(policy, input({ clientId: EXECUTOR, subject: parent, taskId: 'T-1' }))).taskId).toBe('T-1');
  });
  it('a different task_id is refused → task_mismatch', () => {
    const parent = plannerToExecutor(policy, { taskId: 'T-1' });
    const d = run(policy, input({ clientId: EXECUTOR, subject: parent, taskId: 'T-2' }));
    expectDenied(d, 'task_mismatch', 'invalid_request', 'executor-reads-payments');
  });
  it('a child may start a task when its parent had none', () => {
    const parent = plannerToExecutor(policy);
    expect(granted(run(policy, input({ clientId: EXECUTOR, subject: parent, taskId: 'T-9' }))).taskId).toBe('T-9');
  });
  it('require_task without a task → task_required', () => {
    const p = examplePolicy((doc) => { ruleById(doc, 'planner-reads-payments').require_task = true; });
    expectDenied(run(p, input()), 'task_required', 'invalid_request', 'planner-reads-payments');
    expect(granted(run(p, input({ taskId: 'T-1' }))).taskId).toBe('T-1');
  });
  it('an inherited task satisfies require_task', () => {
    const p = examplePolicy((doc) => { ruleById(doc, 'executor-reads-payments').require_task = true; });
    expectDenied(run(p, input({ clientId: EXECUTOR, subject: plannerToExecutor(p) })), 'task_required', 'invalid_request', 'executor-reads-payments');
    const parent = plannerToExecutor(p, { taskId: 'T-1' });
    expect(granted(run(p, input({ clientId: EXECUTOR, subject: parent }))).taskId).toBe('T-1');
  });
});

describe('decide: sub, sub_id and subject_prefix', () => {
  const p = examplePolicy((doc) => { doc.issuers[0]!.subject_prefix = 'corp:'; });

  it('prefixes the root sub in `sub`, keeps it bare in sub_id', () => {
    const g = granted(run(p, input()));
    expect(g.sub).toBe('corp:alice');
    expect(g.subId).toEqual({ format: 'iss_sub', iss: IDP, sub: 'alice' });
    expect(g.root).toMatchObject({ issuer: IDP, sub: 'alice' });
  });

  it('a later hop reuses the parent\'s (already prefixed) sub and the lineage root', () => {
    const parent = plannerToExecutor(p);
    expect(parent.sub).toBe('corp:alice');
    const g = granted(run(p, input({ clientId: EXECUTOR, subject: parent })));
    expect(g.sub).toBe('corp:alice');
    expect(g.subId).toEqual({ format: 'iss_sub', iss: IDP, sub: 'alice' });
    expect(g.root).toEqual(parent.lineage.root);
  });

  it('without a prefix, sub is the root sub', () => {
    expect(granted(run(examplePolicy(), input())).sub).toBe('alice');
  });
});

describe('decide: denials carry the rule only once one was selected', () => {
  it('no ruleId before the rule step, ruleId after it', () => {
    const before = run(examplePolicy(), input({ audience: 'https://nope.example' }));
    expectDenied(before, 'unknown_audience', 'invalid_target');
    expect(before.ok === false && 'ruleId' in before).toBe(false);
    const mismatch = run(examplePolicy(), input({ subject: upstream({ claims: { sub: 'alice' } }) }));
    expectDenied(mismatch, 'subject_mismatch', 'invalid_request');
    const after = run(examplePolicy(), input({ scope: ['payment.transfer'] }));
    expectDenied(after, 'scope_not_allowed', 'invalid_scope', 'planner-reads-payments');
  });
});
