import { describe, it, expect } from 'vitest';
import fc from 'fast-check';
import { decide } from '../../src/exchange/decide.ts';
import { errorFor } from '../../src/exchange/reasons.ts';
import type {
  ActClaim, Decision, DecisionInput, ExchangeRequest, Grant, UpstreamSubject, VerifiedActor, WritSubject,
} from '../../src/exchange/types.ts';
import { compilePolicy } from '../../src/policy/compile.ts';
import type { CompiledPolicy } from '../../src/policy/compiled.ts';
import type {
  AudiencePolicy, ClientPolicy, PolicyDocument, RulePolicy, SigningAlg, SubjectSelector,
} from '../../src/policy/model.ts';
import { writSubjectFromGrant } from '../support/writ-subject.ts';

const RUNS = 1000;
const SELF = 'https://writ.test';
const IDP = 'https://idp.test';
const NOW = 1_800_000_000;
const SCOPES = ['s0', 's1', 's2'];
const GROUPS = ['finance', 'ops', 'hr'];
const ALL_AGENTS = ['a0', 'a1', 'a2', 'a3'];
const TOOLS = ['https://t0.test', 'https://t1.test'];
const agentAudience = (agent: string): string => `https://agents.test/${agent}`;
const bot = (agent: string): string => `bot-${agent}`;

/** `arb` one time in `1 + weight`, undefined otherwise (fc.option's `freq` is the other way round). */
function rarely<T>(arb: fc.Arbitrary<T>, weight = 3): fc.Arbitrary<T | undefined> {
  return fc.oneof({ weight, arbitrary: fc.constant(undefined) }, { weight: 1, arbitrary: arb });
}

/** Mostly generous values from `[generous]`, sometimes tight ones from `[tight]`. */
function mostly(generous: [number, number], tight: [number, number]): fc.Arbitrary<number> {
  return fc.oneof(
    { weight: 6, arbitrary: fc.integer({ min: generous[0], max: generous[1] }) },
    { weight: 1, arbitrary: fc.integer({ min: tight[0], max: tight[1] }) },
  );
}

// ---------------------------------------------------------------------------------------------
// Random policies

interface RuleSeed {
  actor: number;
  audience: number;
  self: boolean;
  after: string[] | undefined;
  rootGroups: string[] | undefined;
  claimGroups: string[] | undefined;
  /** undefined: all the audience's scopes. */
  scopes: string[] | undefined;
  strayScopes: boolean;
  ttl: number;
  maxDepth: number;
  requireTask: boolean;
}

const ruleSeedArb = (agents: string[]): fc.Arbitrary<RuleSeed> => fc.record({
  actor: fc.nat(),
  audience: fc.nat(),
  self: fc.boolean(),
  after: rarely(fc.subarray(agents, { minLength: 1 }), 2),
  rootGroups: rarely(fc.subarray(GROUPS, { minLength: 1 })),
  claimGroups: rarely(fc.subarray(GROUPS, { minLength: 1 })),
  scopes: rarely(fc.subarray(SCOPES, { minLength: 1 }), 1),
  // Sometimes a rule names scopes its audience does not define (the loader should refuse
  // that, but the decision must still never grant one).
  strayScopes: fc.boolean().chain((b) => (b ? fc.boolean().map((c) => c && b) : fc.constant(false))),
  ttl: mostly([120, 900], [1, 60]),
  maxDepth: mostly([3, 6], [1, 2]),
  requireTask: fc.boolean().chain((b) => (b ? fc.boolean() : fc.constant(false))),
});

const audienceArb = (audience: string): fc.Arbitrary<AudiencePolicy> => fc.record({
  audience: fc.constant(audience),
  scopes: fc.subarray(SCOPES, { minLength: 2 }),
  max_ttl: mostly([120, 900], [1, 60]),
  signing_alg: fc.constantFrom<SigningAlg>('ES256', 'RS256', 'PS256'),
});

interface GeneratedPolicy {
  doc: PolicyDocument;
  /** The planned path: (client, audience) of hop k. */
  plan: Array<[string, string]>;
}

const policyArb: fc.Arbitrary<GeneratedPolicy> = fc.integer({ min: 3, max: 4 }).chain((agentCount) => {
  const agents = ALL_AGENTS.slice(0, agentCount);
  const audienceNames = [...agents.map(agentAudience), ...TOOLS];
  return fc.record({
    audiences: fc.tuple(...audienceNames.map(audienceArb)),
    rules: fc.array(ruleSeedArb(agents), { minLength: 4, maxLength: 30 }),
    // A planned path of agents (sometimes coming back to the first: a cycle) gets a rule per
    // hop, so that random walks often find long chains; random settings still apply to them.
    path: fc.shuffledSubarray(agents, { minLength: 2 }),
    cycleBack: rarely(fc.constant(true)),
    pathSeeds: fc.array(ruleSeedArb(agents), { minLength: 6, maxLength: 6 }),
    afterExact: fc.array(fc.boolean().chain((b) => (b ? fc.constant(true) : fc.boolean())), { minLength: 6, maxLength: 6 }),
    pathFirst: fc.boolean(),
    botListed: fc.tuple(...agents.map(() => fc.boolean().chain((b) => (b ? fc.constant(true) : fc.boolean())))),
    act: fc.constantFrom<'reject' | 'preserve'>('reject', 'preserve', 'preserve'),
    prefix: fc.option(fc.constantFrom('idp|', 'corp:'), { nil: undefined }),
    cap: mostly([3, 6], [1, 2]),
  }).map(({
    audiences, rules: randomRules, path, cycleBack, pathSeeds, afterExact, pathFirst, botListed, act, prefix, cap,
  }): GeneratedPolicy => {
    const hops = cycleBack ? [...path, path[0] as string] : path;
    const planned = hops.map((agent, i): RuleSeed => {
      const seed = pathSeeds[i] as RuleSeed;
      const next = hops[i + 1];
      const previous = hops[i - 1];
      return {
        ...seed,
        actor: agents.indexOf(agent),
        audience: next === undefined ? agents.length + (seed.audience % TOOLS.length) : agents.indexOf(next),
        self: previous !== undefined,
        after: previous !== undefined && afterExact[i] ? [previous] : seed.after,
      };
    });
    const rules = pathFirst ? [...planned, ...randomRules] : [...randomRules, ...planned];
    const clients: ClientPolicy[] = agents.map((agent, i) => ({
      client_id: agent,
      kind: 'agent',
      auth: 'client_secret_basic',
      audiences: [agentAudience(agent)],
      actor_identities: botListed[i] ? [{ issuer: IDP, sub: bot(agent) }] : [],
      scopes: [],
      enabled: true,
    }));
    clients.push({
      client_id: 'tools-api', kind: 'resource_server', auth: 'client_secret_basic', audiences: [...TOOLS],
      actor_identities: [], scopes: [], enabled: true,
    });
    const rulePolicies = rules.map((seed, i): RulePolicy => {
      let subject: SubjectSelector;
      if (seed.self) {
        subject = { issuer: 'self' };
        if (seed.after) subject.after = seed.after;
        if (seed.rootGroups) subject.root = { issuer: IDP, claims: { groups: seed.rootGroups } };
      } else {
        subject = { issuer: IDP };
        if (seed.claimGroups) subject.claims = { groups: seed.claimGroups };
      }
      const audienceIndex = seed.audience % audienceNames.length;
      const audienceScopes = (audiences[audienceIndex] as AudiencePolicy).scopes;
      const picked = seed.scopes ?? audienceScopes;
      const inAudience = picked.filter((x) => audienceScopes.includes(x));
      return {
        id: `r${i}`,
        actor: agents[seed.actor % agents.length] as string,
        subject,
        audience: audienceNames[audienceIndex] as string,
        scopes: seed.strayScopes || inAudience.length === 0 ? [...picked] : inAudience,
        ttl: seed.ttl,
        max_depth: seed.maxDepth,
        require_task: seed.requireTask,
      };
    });
    const plan = planned.map((seed): [string, string] => [
      agents[seed.actor] as string, audienceNames[seed.audience] as string,
    ]);
    const doc: PolicyDocument = {
      issuers: [{
        issuer: IDP, jwks_uri: `${IDP}/jwks`, algorithms: ['ES256'], audience: 'self', token_types: ['access_token', 'jwt'],
        typ: ['at+jwt', 'application/at+jwt'], act, max_token_age: 86400,
        ...(prefix === undefined ? {} : { subject_prefix: prefix }),
      }],
      clients,
      audiences: [...audiences],
      rules: rulePolicies,
      settings: { max_depth_cap: cap },
    };
    return { doc, plan };
  });
});

// ---------------------------------------------------------------------------------------------
// Random chains of exchanges

interface HopSeed {
  pick: number;
  scope: string[] | undefined;
  taskId: string | undefined;
  dt: number;
  withActor: boolean;
  actorTtl: number;
  /** Take the planned pair for this position when it is a candidate. */
  follow: boolean;
}

interface Scenario {
  user: string;
  groups: string[];
  upstreamAct: ActClaim | undefined;
  mayAct: string | undefined;
  subjectTtl: number;
  maxTtl: number;
  hops: HopSeed[];
}

const hopArb: fc.Arbitrary<HopSeed> = fc.record({
  pick: fc.nat(),
  scope: rarely(fc.subarray(SCOPES)),
  taskId: rarely(fc.constantFrom('T1', 'T2', 'task:3'), 1),
  dt: mostly([0, 5], [6, 200]),
  withActor: fc.boolean().chain((b) => (b ? fc.boolean() : fc.constant(false))),
  actorTtl: fc.integer({ min: -5, max: 900 }),
  follow: fc.boolean().chain((b) => (b ? fc.constant(true) : fc.boolean())),
});

const scenarioArb: fc.Arbitrary<Scenario> = fc.record({
  user: fc.constantFrom('alice', 'bob', 'carol', 'dave', 'a0'),
  groups: fc.subarray(GROUPS),
  upstreamAct: rarely(fc.constantFrom<ActClaim>({ sub: 'svc' }, { sub: 'svc', act: { sub: 'gw' } }), 5),
  mayAct: rarely(fc.constantFrom(...ALL_AGENTS), 5),
  subjectTtl: mostly([600, 3600], [1, 120]),
  maxTtl: mostly([300, 900], [1, 60]),
  hops: fc.array(hopArb, { minLength: 1, maxLength: 8 }),
});

interface Hop {
  input: DecisionInput;
  decision: Decision;
  /** The subject presented: upstream, or the previous grant fed back in. */
  parent: Grant | null;
  /** Rule ids of every grant from the root up to and including the parent. */
  rulesAlong: string[];
}

function upstreamSubject(s: Scenario): UpstreamSubject {
  const claims: Record<string, unknown> = { iss: IDP, sub: s.user, aud: SELF, iat: NOW - 5, exp: NOW + s.subjectTtl, groups: s.groups };
  if (s.mayAct !== undefined) claims['may_act'] = { sub: s.mayAct };
  const subject: UpstreamSubject = {
    kind: 'upstream', issuer: IDP, sub: s.user, claims, iat: NOW - 5, exp: NOW + s.subjectTtl,
  };
  if (s.upstreamAct !== undefined) subject.act = s.upstreamAct;
  return subject;
}

/**
 * Runs a chain: each hop picks, among the (agent, audience) pairs that have rules and that the
 * current subject is addressed to, one pair; every grant is fed back as the next subject.
 */
function walk(doc: PolicyDocument, plan: Array<[string, string]>, policy: CompiledPolicy, s: Scenario): Hop[] {
  const hops: Hop[] = [];
  let subject: UpstreamSubject | WritSubject = upstreamSubject(s);
  let parent: Grant | null = null;
  let rulesAlong: string[] = [];
  let now = NOW;
  const agents = doc.clients.filter((c) => c.kind === 'agent');
  for (const [n, h] of s.hops.entries()) {
    now += h.dt;
    const current: UpstreamSubject | WritSubject = subject;
    // Mostly pairs with a rule of the subject's kind (self or upstream), sometimes any pair
    // with rules, so that both grants and subject_mismatch stay common.
    // Tool audiences end a chain (no agent owns them), so they are offered one hop in three.
    const anyKind = h.pick % 5 === 0;
    const toolsToo = anyKind || h.pick % 3 === 0;
    const candidates: Array<[string, string]> = [];
    for (const agent of agents) {
      if (current.kind === 'writ' && !agent.audiences.includes(current.aud)) continue;
      for (const aud of doc.audiences) {
        if (!toolsToo && TOOLS.includes(aud.audience)) continue;
        // An agent targeting its own audience can only cycle next: kept for anyKind hops.
        if (!anyKind && agent.audiences.includes(aud.audience)) continue;
        const fits = doc.rules.some((r) => r.actor === agent.client_id && r.audience === aud.audience
          && (anyKind || (r.subject.issuer === 'self') === (current.kind === 'writ')));
        if (fits) candidates.push([agent.client_id, aud.audience]);
      }
    }
    if (candidates.length === 0) break;
    const planned = plan[rulesAlong.length];
    const follow = h.follow && planned !== undefined
      && candidates.some(([c, a]) => c === planned[0] && a === planned[1]);
    const [clientId, audience] = follow
      ? planned
      : candidates[Math.floor(h.pick / 5) % candidates.length] as [string, string];
    const request: ExchangeRequest = { subjectToken: 'opaque', subjectTokenType: 'access_token', audience };
    if (h.scope !== undefined) request.scope = h.scope;
    if (h.taskId !== undefined) request.taskId = h.taskId;
    const input: DecisionInput = { now, selfIssuer: SELF, maxTtl: s.maxTtl, clientId, request, subject: current };
    if (h.withActor) {
      const actor: VerifiedActor = {
        issuer: IDP, sub: bot(clientId), claims: { iss: IDP, sub: bot(clientId) }, exp: now + h.actorTtl,
      };
      input.actor = actor;
      request.actorToken = 'opaque-actor';
      request.actorTokenType = 'access_token';
    }
    const decision = decide(policy, input);
    hops.push({ input, decision, parent, rulesAlong });
    if (decision.ok) {
      subject = writSubjectFromGrant(decision.grant, SELF, `jti-${n}`);
      parent = decision.grant;
      rulesAlong = [...rulesAlong, decision.grant.ruleId];
    }
  }
  return hops;
}

const chainArb = policyArb.chain(({ doc, plan }) => scenarioArb.map((s) => ({ doc, plan, s })));

/** Runs `check` on every hop of every generated chain, 1,000 chains. */
function forEveryHop(check: (hop: Hop, doc: PolicyDocument, policy: CompiledPolicy) => void): void {
  fc.assert(
    fc.property(chainArb, ({ doc, plan, s }) => {
      const policy = compilePolicy(doc, 7);
      for (const hop of walk(doc, plan, policy, s)) check(hop, doc, policy);
    }),
    { numRuns: RUNS },
  );
}

function grantsOnly(check: (g: Grant, hop: Hop, doc: PolicyDocument) => void) {
  return (hop: Hop, doc: PolicyDocument): void => {
    if (hop.decision.ok) check(hop.decision.grant, hop, doc);
  };
}

function ruleOf(doc: PolicyDocument, id: string): RulePolicy {
  const r = doc.rules.find((x) => x.id === id);
  if (!r) throw new Error(`no rule ${id}`);
  return r;
}

function audienceOf(doc: PolicyDocument, aud: string): AudiencePolicy {
  const a = doc.audiences.find((x) => x.audience === aud);
  if (!a) throw new Error(`no audience ${aud}`);
  return a;
}

function actLevels(act: ActClaim | undefined): ActClaim[] {
  const levels: ActClaim[] = [];
  for (let a = act; a !== undefined; a = a.act) levels.push(a);
  return levels;
}

function subset(a: readonly string[], b: readonly string[]): boolean {
  return a.every((x) => b.includes(x));
}

// ---------------------------------------------------------------------------------------------

describe('decide: properties over random policies and chains', () => {
  it('scopes never widen: child ⊆ parent, ⊆ rule ∩ audience, ⊆ request; audience order, no duplicates', () => {
    forEveryHop(grantsOnly((g, hop, doc) => {
      const rule = ruleOf(doc, g.ruleId);
      const audience = audienceOf(doc, g.audience);
      expect(g.scopes.length).toBeGreaterThan(0);
      expect(subset(g.scopes, rule.scopes)).toBe(true);
      expect(subset(g.scopes, audience.scopes)).toBe(true);
      if (hop.input.request.scope !== undefined) expect(subset(g.scopes, hop.input.request.scope)).toBe(true);
      if (hop.parent !== null) expect(subset(g.scopes, hop.parent.scopes)).toBe(true);
      expect(g.scopes).toEqual(audience.scopes.filter((x) => g.scopes.includes(x)));
      expect(new Set(g.scopes).size).toBe(g.scopes.length);
    }));
  });

  it('lifetime: iat = now < exp ≤ every bound, and never later than the parent', () => {
    forEveryHop(grantsOnly((g, hop, doc) => {
      const { now, maxTtl, subject, actor } = hop.input;
      const rule = ruleOf(doc, g.ruleId);
      expect(g.iat).toBe(now);
      expect(g.exp).toBeGreaterThan(now);
      expect(g.exp).toBeLessThanOrEqual(now + rule.ttl);
      expect(g.exp).toBeLessThanOrEqual(now + audienceOf(doc, g.audience).max_ttl);
      expect(g.exp).toBeLessThanOrEqual(now + maxTtl);
      expect(g.exp).toBeLessThanOrEqual(subject.exp);
      if (actor !== undefined) expect(g.exp).toBeLessThanOrEqual(actor.exp);
      if (hop.parent !== null) expect(g.exp).toBeLessThanOrEqual(hop.parent.exp);
      expect(g.exp).toBe(Math.min(
        now + rule.ttl, now + audienceOf(doc, g.audience).max_ttl, now + maxTtl, subject.exp, actor?.exp ?? Infinity,
      ));
    }));
  });

  it('depth ≤ smallest max_depth of every rule along the lineage, ≤ cap; depth = act levels', () => {
    forEveryHop(grantsOnly((g, hop, doc) => {
      const bound = Math.min(
        doc.settings.max_depth_cap,
        ...[...hop.rulesAlong, g.ruleId].map((id) => ruleOf(doc, id).max_depth),
      );
      expect(g.depthBound).toBe(bound);
      expect(g.depth).toBeLessThanOrEqual(bound);
      expect(g.depth).toBe(actLevels(g.act).length);
      expect(g.depth).toBe(hop.parent === null ? 1 + actLevels(hop.input.subject.act).length : hop.parent.depth + 1);
    }));
  });

  it('no client twice in the chain; the current actor is this client; the root is never an actor', () => {
    forEveryHop(grantsOnly((g, hop) => {
      expect(new Set(g.actors).size).toBe(g.actors.length);
      expect(g.actors.at(-1)).toBe(hop.input.clientId);
      expect(g.actors).toEqual([...(hop.parent?.actors ?? []), hop.input.clientId]);
      const top = g.act;
      expect(top.client_id ?? top.sub).toBe(hop.input.clientId);
      if (hop.input.actor !== undefined) {
        expect(top).toMatchObject({ sub: hop.input.actor.sub, iss: hop.input.actor.issuer, client_id: hop.input.clientId });
      } else {
        expect(Object.keys(top).filter((k) => k !== 'act')).toEqual(['sub']);
      }
      // The act chain's Writ levels are exactly the actors, most recent outermost.
      const writLevels = actLevels(g.act).slice(0, g.actors.length).map((l) => l.client_id ?? l.sub);
      expect(writLevels).toEqual([...g.actors].reverse());
      expect(g.actors).not.toContain(g.root.sub);
      expect(g.actors).not.toContain(g.sub);
    }));
  });

  it('the root, sub and sub_id never change along a chain; parentJti links to the parent', () => {
    forEveryHop(grantsOnly((g, hop) => {
      expect(g.subId).toEqual({ format: 'iss_sub', iss: g.root.issuer, sub: g.root.sub });
      if (hop.parent !== null) {
        expect(g.root).toEqual(hop.parent.root);
        expect(g.sub).toBe(hop.parent.sub);
        expect(g.parentJti).toBe((hop.input.subject as WritSubject).jti);
      } else {
        expect(g.root.sub).toBe(hop.input.subject.sub);
        expect(g.sub.endsWith(g.root.sub)).toBe(true);
        expect(g.parentJti).toBeNull();
      }
    }));
  });

  it('task_id never changes once set; require_task rules always carry one', () => {
    forEveryHop((hop, doc) => {
      const d = hop.decision;
      if (d.ok) {
        if (hop.parent !== null && hop.parent.taskId !== null) expect(d.grant.taskId).toBe(hop.parent.taskId);
        if (ruleOf(doc, d.grant.ruleId).require_task) expect(d.grant.taskId).not.toBeNull();
        if (hop.input.request.taskId !== undefined) expect(d.grant.taskId).toBe(hop.input.request.taskId);
      } else if (d.reason === 'task_mismatch') {
        expect(hop.parent?.taskId).toBeTruthy();
        expect(hop.input.request.taskId).not.toBe(hop.parent?.taskId);
      }
    });
  });

  it('decide is deterministic and does not mutate its input; denials map to their RFC error', () => {
    forEveryHop((hop, _doc, policy) => {
      const copy = structuredClone(hop.input);
      const again = decide(policy, copy);
      expect(again).toEqual(hop.decision);
      expect(copy).toEqual(hop.input);
      if (!hop.decision.ok) {
        expect(hop.decision.error).toBe(errorFor(hop.decision.reason));
        expect(hop.decision.steps.at(-1)).toMatchObject({ outcome: 'fail', reason: hop.decision.reason });
      }
    });
  });

  it('nested act levels never change the decision (they only ever deny, never grant)', () => {
    forEveryHop((hop, _doc, policy) => {
      const subject = hop.input.subject;
      if (subject.kind !== 'writ' || subject.act.act === undefined) return;
      // Rename every nested actor (same depth, same current actor): the outcome must not move.
      const rename = (a: ActClaim | undefined): ActClaim | undefined =>
        a === undefined ? undefined : { sub: `renamed-${a.sub}`, ...(a.act ? { act: rename(a.act) } : {}) };
      const act: ActClaim = { ...subject.act, act: rename(subject.act.act) as ActClaim };
      const changed = decide(policy, {
        ...hop.input, subject: { ...subject, act, claims: { ...subject.claims, act } },
      });
      expect(changed.ok).toBe(hop.decision.ok);
      if (!changed.ok && !hop.decision.ok) expect(changed.reason).toBe(hop.decision.reason);
      if (changed.ok && hop.decision.ok) {
        expect({ ...changed.grant, act: null }).toEqual({ ...hop.decision.grant, act: null });
      }
    });
  });

  it('the generator reaches deep chains and every chain denial (the properties are not vacuous)', () => {
    const byDepth = new Map<number, number>();
    const reasons = new Set<string>();
    fc.assert(
      fc.property(chainArb, ({ doc, plan, s }) => {
        const policy = compilePolicy(doc, 7);
        for (const hop of walk(doc, plan, policy, s)) {
          if (hop.decision.ok) byDepth.set(hop.decision.grant.depth, (byDepth.get(hop.decision.grant.depth) ?? 0) + 1);
          else reasons.add(hop.decision.reason);
        }
      }),
      { numRuns: RUNS, seed: 8693 },
    );
    const atLeast = (depth: number): number =>
      [...byDepth.entries()].filter(([d]) => d >= depth).reduce((n, [, count]) => n + count, 0);
    expect(atLeast(2)).toBeGreaterThan(150);
    expect(atLeast(3)).toBeGreaterThan(30);
    expect([...reasons].sort()).toEqual([
      'act_cycle', 'actor_not_allowed', 'depth_exceeded', 'may_act_mismatch', 'scope_not_allowed', 'scope_unknown',
      'subject_is_client', 'subject_mismatch', 'task_mismatch', 'task_required', 'token_expired', 'upstream_act',
    ]);
  });
});
