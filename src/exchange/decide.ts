/**
 * The policy decision of a token exchange (docs/DESIGN.md §7), after the request was parsed and the
 * subject/actor tokens' signatures and times were verified by other modules.
 *
 * `decide` is a pure function of (compiled policy, input): no I/O, no clock, no randomness.
 * It runs one small step function per row of the decision table, in order, in the style of
 * Fosite's handlers. Each step records a `DecisionStep` so `explain` can show the whole trail;
 * the first failing step ends the decision with its reason code and the RFC error for it.
 *
 * Denial details are for audit and explain only. They name clients, audiences, issuers, rule
 * ids and scope names, never a token, a secret or a subject's identifier.
 */
import { ruleKey, type CompiledPolicy } from '../policy/compiled.ts';
import type {
  AudiencePolicy, ClientPolicy, IssuerPolicy, RulePolicy, SubjectSelector,
} from '../policy/model.ts';
import { claimsMatch } from '../policy/match.ts';
import { errorFor, type ReasonCode } from './reasons.ts';
import type {
  ActClaim, Decision, DecisionInput, DecisionStep, Grant, RootSubject, StepName, VerifiedActor,
  VerifiedSubject, WritSubject,
} from './types.ts';

/** docs/DESIGN.md §7 task row: "`task_id` ≤ 128 chars of `[A-Za-z0-9._:-]`". */
export const TASK_ID_PATTERN = /^[A-Za-z0-9._:-]{1,128}$/;

// ---------------------------------------------------------------------------------------------
// Step results

interface Passed<T> {
  readonly ok: true;
  readonly outcome: 'pass' | 'skip';
  readonly value: T;
  readonly detail: string;
}

interface Failed {
  readonly ok: false;
  readonly reason: ReasonCode;
  readonly detail: string;
}

type StepResult<T> = Passed<T> | Failed;

function pass<T>(value: T, detail: string): Passed<T> {
  return { ok: true, outcome: 'pass', value, detail };
}

function skip<T>(value: T, detail: string): Passed<T> {
  return { ok: true, outcome: 'skip', value, detail };
}

function fail(reason: ReasonCode, detail: string): Failed {
  return { ok: false, reason, detail };
}

// ---------------------------------------------------------------------------------------------
// The decision

/**
 * Decides one token exchange. Returns the grant to mint and record, or a denial with its
 * reason code, RFC 6749/8693 error, an audit-only detail, the rule if one was selected, and
 * every step evaluated so far.
 */
export function decide(policy: CompiledPolicy, input: DecisionInput): Decision {
  const steps: DecisionStep[] = [];
  let ruleId: string | undefined;

  const deny = (step: StepName, failed: Failed): Decision => {
    steps.push({ step, outcome: 'fail', reason: failed.reason, detail: failed.detail });
    const denial: Decision = {
      ok: false,
      reason: failed.reason,
      error: errorFor(failed.reason),
      detail: failed.detail,
      steps,
    };
    if (ruleId !== undefined) denial.ruleId = ruleId;
    return denial;
  };
  const record = <T>(step: StepName, passed: Passed<T>): T => {
    steps.push({ step, outcome: passed.outcome, detail: passed.detail });
    return passed.value;
  };

  const clientResult = checkClient(policy, input);
  if (!clientResult.ok) return deny('client', clientResult);
  const client = record('client', clientResult);

  const targetResult = checkTarget(policy, input);
  if (!targetResult.ok) return deny('target', targetResult);
  const audience = record('target', targetResult);

  const subjectResult = checkSubjectToken(policy, input, client);
  if (!subjectResult.ok) return deny('subject_token', subjectResult);
  const subjectFacts = record('subject_token', subjectResult);

  const actorResult = checkActorToken(policy, input, client);
  if (!actorResult.ok) return deny('actor_token', actorResult);
  const actor = record('actor_token', actorResult);

  const mayActResult = checkMayAct(input, actor);
  if (!mayActResult.ok) return deny('may_act', mayActResult);
  record('may_act', mayActResult);

  const ruleResult = selectRule(policy, input);
  if (!ruleResult.ok) return deny('rule', ruleResult);
  const rule = record('rule', ruleResult);
  ruleId = rule.id;

  const scopesResult = grantScopes(input, audience, rule);
  if (!scopesResult.ok) return deny('scopes', scopesResult);
  const scopes = record('scopes', scopesResult);

  const lifetimeResult = computeLifetime(input, audience, rule, actor);
  if (!lifetimeResult.ok) return deny('lifetime', lifetimeResult);
  const lifetime = record('lifetime', lifetimeResult);

  const chainResult = buildChain(policy, input, rule, actor, subjectFacts);
  if (!chainResult.ok) return deny('chain', chainResult);
  const chain = record('chain', chainResult);

  const taskResult = resolveTask(input, rule);
  if (!taskResult.ok) return deny('task', taskResult);
  const taskId = record('task', taskResult);

  const root = rootOf(input.subject);
  const grant: Grant = {
    ruleId: rule.id,
    policyVersion: policy.version,
    audience: audience.audience,
    scopes,
    iat: lifetime.iat,
    exp: lifetime.exp,
    sub: subjectFacts.sub,
    subId: { format: 'iss_sub', iss: root.issuer, sub: root.sub },
    act: chain.act,
    taskId,
    depth: chain.depth,
    depthBound: chain.depthBound,
    actors: chain.actors,
    root,
    parentJti: input.subject.kind === 'writ' ? input.subject.jti : null,
    signingAlg: audience.signing_alg,
  };
  return { ok: true, grant, steps };
}

// ---------------------------------------------------------------------------------------------
// 1. client

/**
 * docs/DESIGN.md §7 client row: "authenticated, kind `agent`, enabled" → `unauthorized_client`.
 * docs/DESIGN.md §4: only an `agent` may exchange, "as the actor". Authentication itself happened
 * before (oidc-provider); here the client must still be in this policy version.
 */
function checkClient(policy: CompiledPolicy, input: DecisionInput): StepResult<ClientPolicy> {
  const client = policy.clients.get(input.clientId);
  if (client === undefined) {
    return fail('client_not_agent', `client ${input.clientId} is not in policy version ${policy.version}`);
  }
  if (!client.enabled) return fail('client_disabled', `client ${client.client_id} is disabled`);
  if (client.kind !== 'agent') {
    return fail('client_not_agent', `client ${client.client_id} is of kind ${client.kind}, not agent`);
  }
  return pass(client, `agent ${client.client_id}`);
}

// ---------------------------------------------------------------------------------------------
// 2. target

/**
 * docs/DESIGN.md §7 target row: "matched as an exact string to a known audience" → `invalid_target`.
 * RFC 8693 §2.2.2: refusing a target SHOULD return `invalid_target`. (URI syntax and the single
 * distinct value were checked by the request parser.)
 */
function checkTarget(policy: CompiledPolicy, input: DecisionInput): StepResult<AudiencePolicy> {
  const audience = policy.audiences.get(input.request.audience);
  if (audience === undefined) {
    return fail('unknown_audience', `audience ${input.request.audience} is not defined in policy`);
  }
  return pass(audience, `audience ${audience.audience}`);
}

// ---------------------------------------------------------------------------------------------
// 3. subject token (the policy part; signature, times and revocation were checked before)

interface SubjectFacts {
  /** The `sub` the issued token carries: prefixed root sub (upstream), or the parent's `sub`. */
  sub: string;
  /** Earlier actors to nest below the current one, outermost first (identity members only). */
  priorActs: ActClaim[];
}

/**
 * docs/DESIGN.md §7 subject token row: from a trusted issuer; "no upstream `act` unless the issuer
 * says `act: preserve`"; "a Writ token: ... addressed to this client (its `aud` is one of the
 * client's audiences)". A token whose `aud` is a tool is never re-exchangeable by an agent
 * unless that agent owns the audience.
 */
function checkSubjectToken(
  policy: CompiledPolicy, input: DecisionInput, client: ClientPolicy,
): StepResult<SubjectFacts> {
  const subject = input.subject;
  if (subject.kind === 'upstream') {
    const issuer = policy.issuers.get(subject.issuer);
    if (issuer === undefined || subject.issuer === input.selfIssuer) {
      return fail('issuer_untrusted', `subject token issuer ${subject.issuer} is not a trusted upstream issuer`);
    }
    let priorActs: ActClaim[] = [];
    if (subject.act !== undefined) {
      // docs/DESIGN.md §7: "no upstream `act` unless the issuer says `act: preserve`".
      if (issuer.act !== 'preserve') {
        return fail('upstream_act', `issuer ${issuer.issuer} does not preserve act, but the subject token has one`);
      }
      const levels = readActChain(subject.act);
      if (levels === null) return fail('claim_invalid', 'subject token act claim is malformed');
      priorActs = levels;
    }
    return pass(
      { sub: prefixed(issuer, subject.sub), priorActs },
      `upstream subject from ${issuer.issuer}${priorActs.length > 0 ? ` with ${priorActs.length} preserved act level(s)` : ''}`,
    );
  }

  if (subject.issuer !== input.selfIssuer) {
    return fail('issuer_untrusted', `Writ subject token names issuer ${subject.issuer}, not this issuer`);
  }
  if (!client.audiences.includes(subject.aud)) {
    return fail('not_addressed_to_client', `subject token aud ${subject.aud} is not an audience of ${client.client_id}`);
  }
  const levels = readActChain(subject.act);
  if (levels === null) return fail('claim_invalid', 'subject token act claim is malformed');
  const consistency = checkLineageConsistency(subject, levels);
  if (consistency !== null) return consistency;
  return pass(
    { sub: subject.sub, priorActs: levels },
    `Writ subject addressed to ${client.client_id} (aud ${subject.aud}), parent actor ${subject.lineage.clientId}`,
  );
}

/**
 * The lineage row is what Writ recorded when it minted the token; the claims are what it
 * signed. They must describe the same token, or the chain bookkeeping below would be wrong.
 */
function checkLineageConsistency(subject: WritSubject, levels: readonly ActClaim[]): Failed | null {
  const lineage = subject.lineage;
  if (lineage.jti !== subject.jti) return fail('claim_invalid', 'lineage row does not belong to the subject token');
  if (lineage.audience !== subject.aud) return fail('claim_invalid', 'subject token aud disagrees with its lineage');
  if (levels.length !== lineage.depth) {
    return fail('claim_invalid', `subject token has ${levels.length} act level(s), lineage records ${lineage.depth}`);
  }
  const top = levels[0];
  if (top === undefined || (top.client_id ?? top.sub) !== lineage.clientId) {
    return fail('claim_invalid', 'subject token current actor disagrees with its lineage');
  }
  return null;
}

// ---------------------------------------------------------------------------------------------
// 4. actor token

/**
 * docs/DESIGN.md §7 actor token row: "optional; from a trusted upstream issuer (never a Writ token),
 * `aud` is Writ, its `(iss, sub)` listed in the client's `actor_identities`; its `exp` caps the
 * result". (`aud` and the signature were verified before.)
 */
function checkActorToken(
  policy: CompiledPolicy, input: DecisionInput, client: ClientPolicy,
): StepResult<VerifiedActor | null> {
  const actor = input.actor;
  if (actor === undefined) return skip(null, 'no actor token');
  if (actor.issuer === input.selfIssuer) {
    return fail('actor_token_writ', 'actor token was issued by Writ; only upstream actor tokens are accepted');
  }
  if (!policy.issuers.has(actor.issuer)) {
    return fail('issuer_untrusted', `actor token issuer ${actor.issuer} is not a trusted upstream issuer`);
  }
  const listed = client.actor_identities.some((id) => id.issuer === actor.issuer && id.sub === actor.sub);
  if (!listed) {
    return fail('actor_not_allowed', `actor identity from ${actor.issuer} is not in ${client.client_id}'s actor_identities`);
  }
  return pass(actor, `actor identity from ${actor.issuer} listed for ${client.client_id}`);
}

// ---------------------------------------------------------------------------------------------
// 5. may_act

/**
 * RFC 8693 §4.4: `may_act` "makes a statement that one party is authorized to become the actor
 * and act on behalf of another party". docs/DESIGN.md §7: "if the subject token has it, it must name
 * this client (`sub` = client id, `iss` absent or Writ) or one of its `actor_identities`".
 * docs/standards.md X18: the actor "must match every identity member (`sub` and `iss`)".
 *
 * Resolved strictly: an actor identity only matches when it is the one actually presented as the
 * actor token (step 4 already required it to be listed); a `client_id` member, if present, must
 * name this client; a `may_act` that is present but not an object denies.
 */
function checkMayAct(input: DecisionInput, actor: VerifiedActor | null): StepResult<null> {
  const claims = input.subject.claims;
  if (!Object.hasOwn(claims, 'may_act')) return skip(null, 'subject token has no may_act');
  const mayAct = claims['may_act'];
  if (!isPlainObject(mayAct)) return fail('may_act_mismatch', 'subject token may_act is not an object');
  const sub = mayAct['sub'];
  const iss = mayAct['iss'];
  const clientIdMember = mayAct['client_id'];
  if (typeof sub !== 'string') return fail('may_act_mismatch', 'subject token may_act has no string sub');
  if (clientIdMember !== undefined && clientIdMember !== input.clientId) {
    return fail('may_act_mismatch', `may_act client_id does not name ${input.clientId}`);
  }
  const namesClient = sub === input.clientId && (iss === undefined || iss === input.selfIssuer);
  if (namesClient) return pass(null, `may_act names ${input.clientId}`);
  const namesActor = actor !== null && sub === actor.sub && iss === actor.issuer;
  if (namesActor) return pass(null, `may_act names the presented actor identity from ${actor.issuer}`);
  return fail('may_act_mismatch', `may_act names neither ${input.clientId} nor the presented actor identity`);
}

// ---------------------------------------------------------------------------------------------
// 6. rule

/**
 * docs/DESIGN.md §7 rule row: "first rule (in order) with this actor and audience whose subject
 * selector matches; none for (client, audience)" → `invalid_target`; "a rule exists for (client,
 * audience) but no subject selector matches" → `invalid_request`.
 * RFC 8693 §4.1: "only the top-level claims and the `sub` of the outermost actor are used for
 * access control decisions" (docs/standards.md X15) — selectors see the subject's own claims and the
 * parent's current actor (lineage), never nested `act` entries.
 */
function selectRule(policy: CompiledPolicy, input: DecisionInput): StepResult<RulePolicy> {
  const rules = policy.rules.get(ruleKey(input.clientId, input.request.audience)) ?? [];
  if (rules.length === 0) {
    return fail('no_rule', `no rule for ${input.clientId} → ${input.request.audience}`);
  }
  for (const rule of rules) {
    if (selectorMatches(rule.subject, input.subject)) return pass(rule, `rule ${rule.id}`);
  }
  return fail(
    'subject_mismatch',
    `no subject selector matches among rule(s) ${rules.map((r) => r.id).join(', ')}`,
  );
}

/**
 * docs/DESIGN.md §6 selectors: "`subject.issuer` is an upstream issuer, or `self` for a token Writ
 * issued. With `self`: `after` lists the clients one of which must be the parent token's current
 * actor (its `client_id`, from lineage), and optional `root: {issuer, claims}` constrains the
 * chain's human, matched against the root subject's verified claims that Writ keeps in lineage".
 */
export function selectorMatches(selector: SubjectSelector, subject: VerifiedSubject): boolean {
  if (selector.issuer === 'self') {
    if (subject.kind !== 'writ') return false;
    const lineage = subject.lineage;
    if (selector.after !== undefined && !selector.after.includes(lineage.clientId)) return false;
    if (selector.root !== undefined) {
      if (selector.root.issuer !== lineage.root.issuer) return false;
      if (!claimsMatch(selector.root.claims, lineage.root.claims)) return false;
    }
    return claimsMatch(selector.claims, subject.claims);
  }
  if (subject.kind !== 'upstream' || subject.issuer !== selector.issuer) return false;
  return claimsMatch(selector.claims, subject.claims);
}

// ---------------------------------------------------------------------------------------------
// 7. scopes

/**
 * docs/DESIGN.md §7 scopes row: "(requested, or the rule's scopes if none requested) ∩ rule ∩
 * parent's scopes (Writ subject); a requested name the audience does not define, or an empty
 * result" → `invalid_scope`. Granted scopes keep the audience's order, so the result is
 * deterministic whatever order the client asked in.
 */
function grantScopes(input: DecisionInput, audience: AudiencePolicy, rule: RulePolicy): StepResult<string[]> {
  const requested = input.request.scope;
  if (requested !== undefined) {
    const unknown = requested.filter((s) => !audience.scopes.includes(s));
    if (unknown.length > 0) {
      return fail('scope_unknown', `audience ${audience.audience} does not define scope(s) ${unique(unknown).join(' ')}`);
    }
  }
  const wanted = new Set(requested ?? rule.scopes);
  const allowed = new Set(rule.scopes);
  const parent = input.subject.kind === 'writ' ? new Set(input.subject.lineage.scopes) : null;
  const granted = audience.scopes.filter(
    (s, i) => audience.scopes.indexOf(s) === i && wanted.has(s) && allowed.has(s) && (parent === null || parent.has(s)),
  );
  if (granted.length === 0) {
    return fail(
      'scope_not_allowed',
      `no scope left: requested [${[...wanted].join(' ')}] ∩ rule ${rule.id} [${rule.scopes.join(' ')}]`
        + (parent === null ? '' : ` ∩ parent [${[...parent].join(' ')}]`),
    );
  }
  return pass(granted, `granted ${granted.join(' ')}`);
}

// ---------------------------------------------------------------------------------------------
// 8. lifetime

interface Lifetime {
  iat: number;
  exp: number;
}

/**
 * docs/DESIGN.md §7 lifetime row: "`exp` = min(now + rule ttl, now + audience max_ttl, now +
 * `WRIT_MAX_TTL`, subject `exp`, actor token `exp`)". RFC 8693 §5 (docs/standards.md X19): "use `scope`
 * and a short lifetime to bound delegated abuse". A result not after `now` means the subject (or
 * actor) token has effectively expired.
 */
function computeLifetime(
  input: DecisionInput, audience: AudiencePolicy, rule: RulePolicy, actor: VerifiedActor | null,
): StepResult<Lifetime> {
  const now = input.now;
  const bounds: Array<[string, number]> = [
    [`rule ${rule.id} ttl`, now + rule.ttl],
    [`audience max_ttl`, now + audience.max_ttl],
    ['WRIT_MAX_TTL', now + input.maxTtl],
    ['subject token exp', input.subject.exp],
  ];
  if (input.subject.kind === 'writ') bounds.push(['parent lineage exp', input.subject.lineage.exp]);
  if (actor !== null) bounds.push(['actor token exp', actor.exp]);
  let exp = Number.POSITIVE_INFINITY;
  let bound = '';
  for (const [name, value] of bounds) {
    if (!Number.isFinite(value)) return fail('claim_invalid', `${name} is not a finite time`);
    if (value < exp) {
      exp = value;
      bound = name;
    }
  }
  if (!Number.isFinite(now) || exp <= now) {
    return fail('token_expired', `no lifetime left: ${bound} is not after now`);
  }
  return pass({ iat: now, exp }, `exp = now + ${exp - now}s (bound: ${bound})`);
}

// ---------------------------------------------------------------------------------------------
// 9. chain

interface Chain {
  act: ActClaim;
  depth: number;
  depthBound: number;
  actors: string[];
}

/**
 * docs/DESIGN.md §5: `act` is "`{sub: <client id>}` for the current actor, or `{sub, iss, client_id}`
 * when an actor token names another identity; earlier actors nest inside as `act.act`".
 * RFC 8693 §4.1 (docs/standards.md X13): "prior actors are nested inside it, most recent outermost";
 * X14: minted `act` carries identity claims only.
 * docs/DESIGN.md §7 chain row: "depth = number of `act` levels in the issued token ≤ min(`max_depth`
 * of every rule along the lineage, `max_depth_cap`); no client twice in the chain; the subject's
 * `sub` is never an acting client's id; nested actors only ever deny, never grant".
 */
function buildChain(
  policy: CompiledPolicy,
  input: DecisionInput,
  rule: RulePolicy,
  actor: VerifiedActor | null,
  subject: SubjectFacts,
): StepResult<Chain> {
  const current: ActClaim = actor === null
    ? { sub: input.clientId }
    : { sub: actor.sub, iss: actor.issuer, client_id: input.clientId };
  const act = nestActs(current, subject.priorActs);
  const depth = 1 + subject.priorActs.length;

  const parent = input.subject.kind === 'writ' ? input.subject.lineage : null;
  const depthBound = Math.min(
    rule.max_depth,
    policy.settings.max_depth_cap,
    parent === null ? Number.POSITIVE_INFINITY : parent.depthBound,
  );
  if (!(depth <= depthBound)) {
    return fail('depth_exceeded', `depth ${depth} exceeds bound ${depthBound} (rule ${rule.id} max_depth ${rule.max_depth}, cap ${policy.settings.max_depth_cap}${parent === null ? '' : `, lineage ${parent.depthBound}`})`);
  }

  const actors = [...(parent === null ? [] : parent.actors), input.clientId];
  const seen = new Set<string>();
  for (const id of actors) {
    if (seen.has(id)) return fail('act_cycle', `client ${id} would appear twice in the chain`);
    seen.add(id);
  }

  const root = rootOf(input.subject);
  for (const id of actors) {
    if (id === root.sub || id === subject.sub) {
      return fail('subject_is_client', `the root subject's sub equals acting client ${id}`);
    }
  }
  // RFC 9068 §5 / RFC 9700 §4.15: a resource server must be able to tell a user from a client,
  // so no token names as its subject the id of any client, acting in this chain or not.
  if (policy.clients.has(subject.sub)) {
    return fail('subject_is_client', `the issued token's sub would equal client ${subject.sub}`);
  }

  return pass({ act, depth, depthBound, actors }, `depth ${depth} of ${depthBound}; actors ${actors.join(' → ')}`);
}

// ---------------------------------------------------------------------------------------------
// 10. task

/**
 * docs/DESIGN.md §7 task row: "`task_id` ≤ 128 chars of `[A-Za-z0-9._:-]`; a child inherits its
 * parent's `task_id`, and a different one is refused; `require_task` rules need one".
 */
function resolveTask(input: DecisionInput, rule: RulePolicy): StepResult<string | null> {
  const requested = input.request.taskId;
  if (requested !== undefined && !TASK_ID_PATTERN.test(requested)) {
    return fail('task_invalid', 'task_id must be 1–128 characters of [A-Za-z0-9._:-]');
  }
  const inherited = input.subject.kind === 'writ' ? input.subject.lineage.taskId : null;
  if (inherited !== null && requested !== undefined && requested !== inherited) {
    return fail('task_mismatch', 'requested task_id differs from the parent token\'s task_id');
  }
  const taskId = inherited ?? requested ?? null;
  if (rule.require_task && taskId === null) {
    return fail('task_required', `rule ${rule.id} requires a task_id`);
  }
  if (taskId === null) return skip(null, 'no task');
  return pass(taskId, inherited !== null ? 'task_id inherited from parent' : 'task_id from request');
}

// ---------------------------------------------------------------------------------------------
// Helpers

/** The chain's root subject: the upstream subject itself, or what lineage kept from hop one. */
function rootOf(subject: VerifiedSubject): RootSubject {
  if (subject.kind === 'writ') return subject.lineage.root;
  return { issuer: subject.issuer, sub: subject.sub, claims: subject.claims };
}

function prefixed(issuer: IssuerPolicy, sub: string): string {
  return issuer.subject_prefix === undefined ? sub : `${issuer.subject_prefix}${sub}`;
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/**
 * Reads an `act` claim into its levels, outermost (current actor) first, keeping only the
 * identity members (`sub`, `iss`, `client_id`; RFC 8693 §4.1, docs/standards.md X14). Returns null when
 * any level is malformed. Iterative, so a deeply nested claim cannot overflow the stack.
 */
function readActChain(act: unknown): ActClaim[] | null {
  const levels: ActClaim[] = [];
  let node: unknown = act;
  while (node !== undefined) {
    if (!isPlainObject(node)) return null;
    const sub = node['sub'];
    const iss = node['iss'];
    const clientId = node['client_id'];
    if (typeof sub !== 'string' || sub.length === 0) return null;
    if (iss !== undefined && typeof iss !== 'string') return null;
    if (clientId !== undefined && typeof clientId !== 'string') return null;
    const level: ActClaim = { sub };
    if (iss !== undefined) level.iss = iss;
    if (clientId !== undefined) level.client_id = clientId;
    levels.push(level);
    node = node['act'];
  }
  return levels;
}

/** Nests `prior` (outermost first) below the current actor, copying every level. */
function nestActs(current: ActClaim, prior: readonly ActClaim[]): ActClaim {
  let inner: ActClaim | undefined;
  for (let i = prior.length - 1; i >= 0; i--) {
    const level: ActClaim = { ...(prior[i] as ActClaim) };
    if (inner !== undefined) level.act = inner;
    inner = level;
  }
  const top: ActClaim = { ...current };
  if (inner !== undefined) top.act = inner;
  return top;
}

function unique(values: readonly string[]): string[] {
  return [...new Set(values)];
}
