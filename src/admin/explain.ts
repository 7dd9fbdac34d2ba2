import type { Knex } from 'knex';
import { decide } from '../exchange/decide.ts';
import type { LineageCache } from '../exchange/lineage-store.ts';
import type { ActClaim, Decision, ExchangeRequest, JsonObject, VerifiedSubject } from '../exchange/types.ts';
import type { CompiledPolicy } from '../policy/compiled.ts';

/** A hypothetical exchange, as an identity team describes it to `POST /admin/v1/explain`. */
export interface ExplainRequest {
  client_id: string;
  audience: string;
  scope?: string;
  task_id?: string;
  /** An upstream subject (issuer and its verified claims, `sub` among them), or a Writ token by jti. */
  subject: { issuer: string; claims: JsonObject } | { parent_jti: string };
  actor?: { issuer: string; sub: string };
}

export type ExplainResult = {
  decision: 'grant' | 'deny';
  policy_version: number;
  rule: string | null;
  steps: Decision['steps'];
} & ({ error: string; reason: string; detail: string } | { grant: Record<string, unknown> });

export class ExplainInputError extends Error {
  override name = 'ExplainInputError';
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

export function parseExplainRequest(body: unknown): ExplainRequest {
  if (!isObject(body)) throw new ExplainInputError('expected a JSON object');
  const { client_id: clientId, audience, scope, task_id: taskId, subject, actor } = body;
  if (typeof clientId !== 'string' || typeof audience !== 'string') throw new ExplainInputError('client_id and audience are required strings');
  if (scope !== undefined && typeof scope !== 'string') throw new ExplainInputError('scope must be a space-separated string');
  if (taskId !== undefined && typeof taskId !== 'string') throw new ExplainInputError('task_id must be a string');
  if (!isObject(subject)) throw new ExplainInputError('subject is required');
  let parsedSubject: ExplainRequest['subject'];
  if (typeof subject.parent_jti === 'string') parsedSubject = { parent_jti: subject.parent_jti };
  else if (typeof subject.issuer === 'string' && isObject(subject.claims) && typeof subject.claims.sub === 'string') {
    parsedSubject = { issuer: subject.issuer, claims: subject.claims };
  } else throw new ExplainInputError('subject needs {issuer, claims: {sub, …}} or {parent_jti}');
  let parsedActor: ExplainRequest['actor'];
  if (actor !== undefined) {
    if (!isObject(actor) || typeof actor.issuer !== 'string' || typeof actor.sub !== 'string') throw new ExplainInputError('actor needs issuer and sub');
    parsedActor = { issuer: actor.issuer, sub: actor.sub };
  }
  return {
    client_id: clientId, audience, subject: parsedSubject,
    ...(scope !== undefined ? { scope } : {}), ...(taskId !== undefined ? { task_id: taskId } : {}), ...(parsedActor ? { actor: parsedActor } : {}),
  };
}

function actFrom(actors: readonly string[]): ActClaim | undefined {
  let act: ActClaim | undefined;
  for (const sub of actors) act = act ? { sub, act } : { sub };
  return act;
}

/**
 * Runs the real decision on a hypothetical exchange: the token checks are assumed passed (the
 * claims given are taken as verified), everything from docs/DESIGN.md §7's policy steps is the same
 * code that decides live exchanges. Nothing is minted or recorded.
 */
export async function explain(
  deps: { policy: CompiledPolicy; knex: Knex; lineage: LineageCache; issuer: string; maxTtl: number },
  req: ExplainRequest,
  now: number,
): Promise<ExplainResult> {
  let subject: VerifiedSubject;
  if ('parent_jti' in req.subject) {
    const lineage = await deps.lineage.get(deps.knex, req.subject.parent_jti, now);
    if (!lineage) throw new ExplainInputError('no token with that jti');
    const act = actFrom(lineage.actors)!;
    const prefix = deps.policy.issuers.get(lineage.root.issuer)?.subject_prefix ?? '';
    const sub = `${prefix}${lineage.root.sub}`;
    subject = {
      kind: 'writ', issuer: deps.issuer, sub, jti: lineage.jti, aud: lineage.audience, act, lineage,
      iat: now, exp: Math.max(lineage.exp, now + 60),
      claims: { iss: deps.issuer, sub, aud: lineage.audience, client_id: lineage.clientId, scope: lineage.scopes.join(' '), act, jti: lineage.jti, ...(lineage.taskId ? { task_id: lineage.taskId } : {}) },
    };
  } else {
    const claims = req.subject.claims;
    subject = { kind: 'upstream', issuer: req.subject.issuer, sub: String(claims.sub), claims: { iss: req.subject.issuer, ...claims }, iat: now, exp: now + 3600 };
  }
  const request: ExchangeRequest = {
    subjectToken: '', subjectTokenType: 'access_token', audience: req.audience,
    ...(req.scope !== undefined ? { scope: req.scope.split(' ').filter(Boolean) } : {}),
    ...(req.task_id !== undefined ? { taskId: req.task_id } : {}),
  };
  const decision = decide(deps.policy, {
    now, selfIssuer: deps.issuer, maxTtl: deps.maxTtl, clientId: req.client_id, request, subject,
    ...(req.actor ? { actor: { issuer: req.actor.issuer, sub: req.actor.sub, claims: { ...req.actor }, exp: now + 3600 } } : {}),
  });
  const base = { policy_version: deps.policy.version, steps: decision.steps };
  if (!decision.ok) {
    return { ...base, decision: 'deny', rule: decision.ruleId ?? null, error: decision.error, reason: decision.reason, detail: decision.detail };
  }
  const g = decision.grant;
  return {
    ...base, decision: 'grant', rule: g.ruleId,
    grant: { audience: g.audience, scope: g.scopes.join(' '), expires_in: g.exp - now, act: g.act, sub: g.sub, task_id: g.taskId, depth: g.depth, depth_bound: g.depthBound, signing_alg: g.signingAlg },
  };
}
