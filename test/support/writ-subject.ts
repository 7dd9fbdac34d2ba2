import type { Grant, JsonObject, Lineage, WritSubject } from '../../src/exchange/types.ts';

/**
 * A Writ-issued token presented again as a subject, built from its Grant the way the minting
 * layer records and signs it: the claims of docs/DESIGN.md §5 and the lineage row of §8.
 */
export function writSubjectFromGrant(grant: Grant, selfIssuer: string, jti: string): WritSubject {
  const clientId = grant.actors[grant.actors.length - 1];
  if (clientId === undefined) throw new Error('grant has no actors');
  const claims: JsonObject = {
    iss: selfIssuer,
    sub: grant.sub,
    aud: grant.audience,
    client_id: clientId,
    scope: grant.scopes.join(' '),
    act: grant.act,
    jti,
    iat: grant.iat,
    exp: grant.exp,
  };
  if (grant.taskId !== null) claims['task_id'] = grant.taskId;
  const lineage: Lineage = {
    jti,
    parentJti: grant.parentJti,
    clientId,
    audience: grant.audience,
    scopes: [...grant.scopes],
    root: grant.root,
    taskId: grant.taskId,
    depth: grant.depth,
    depthBound: grant.depthBound,
    actors: [...grant.actors],
    ruleId: grant.ruleId,
    policyVersion: grant.policyVersion,
    iat: grant.iat,
    exp: grant.exp,
  };
  return {
    kind: 'writ',
    issuer: selfIssuer,
    sub: grant.sub,
    claims,
    iat: grant.iat,
    exp: grant.exp,
    jti,
    aud: grant.audience,
    act: grant.act,
    lineage,
  };
}
