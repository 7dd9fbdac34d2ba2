import type { Knex } from 'knex';
import type { ClientPolicy } from '../policy/model.ts';
import { revokeTask, revokeTaskForAgent, revokeTokenCascade } from '../revocation/revoke.ts';
import { rootKey } from '../revocation/state.ts';
import type { KeyResolver } from '../tokens/key-resolver.ts';
import { verifyWritToken } from '../tokens/verify-jwt.ts';
import { clientsInAct } from '../exchange/presented-tokens.ts';

export interface RevocationDeps {
  issuer: string;
  writKeys: KeyResolver;
  knex: Knex;
}

export type RevocationOutcome =
  | { status: 'revoked'; jti: string; count: number }
  | { status: 'ignored' }
  | { status: 'refused' };

function canRevokeAnything(caller: ClientPolicy): boolean {
  return caller.kind === 'admin' && caller.scopes.includes('writ:revoke');
}

/**
 * RFC 7009 for Writ's JWTs. Unknown or invalid tokens are answered 200 (§2.2: "invalid tokens
 * do not cause an error response"). An agent may revoke tokens it obtained or that derive from
 * them (docs/DESIGN.md §4). The revocation and everything derived from the token is persisted
 * before the 200.
 */
export async function revokeToken(deps: RevocationDeps, caller: ClientPolicy, token: string, requestId: string): Promise<RevocationOutcome> {
  if (!caller.enabled || caller.kind === 'resource_server') return { status: 'refused' };
  let claims;
  try {
    // An expired token is already unusable: revoking it is a no-op, answered 200 like any
    // invalid token (RFC 7009 §2.2).
    claims = await verifyWritToken(token, { selfIssuer: deps.issuer, keys: deps.writKeys, now: Math.floor(Date.now() / 1000) });
  } catch {
    return { status: 'ignored' };
  }
  const chain = [claims.client_id, ...clientsInAct(claims.act)];
  if (!canRevokeAnything(caller) && !(caller.kind === 'agent' && chain.includes(caller.client_id))) {
    return { status: 'refused' };
  }
  const result = await revokeTokenCascade(deps.knex, {
    jti: claims.jti,
    revokedBy: caller.client_id,
    audit: (count) => ({
      type: 'revocation',
      outcome: 'revoked',
      requestId,
      clientId: caller.client_id,
      jti: claims.jti,
      taskId: claims.task_id ?? null,
      subject: rootKey(claims.sub_id.iss, claims.sub_id.sub),
      audience: claims.aud,
      details: { revoked: count, derived: Math.max(0, count - 1) },
    }),
  });
  return { status: 'revoked', jti: claims.jti, count: result.revoked.length };
}

/**
 * `POST /task/revocation`: an agent ends a task for the chains it took part in (docs/DESIGN.md §4,
 * "its own tasks"); an admin with writ:revoke ends the task everywhere, and no exchange may
 * continue it.
 */
export async function revokeTaskById(deps: RevocationDeps, caller: ClientPolicy, taskId: string, requestId: string): Promise<RevocationOutcome> {
  if (!caller.enabled || caller.kind === 'resource_server') return { status: 'refused' };
  const audit = (n: number) => ({
    type: 'task.revocation' as const,
    outcome: 'revoked' as const,
    requestId,
    clientId: caller.client_id,
    taskId,
    details: { revoked: n, scope: canRevokeAnything(caller) ? 'everywhere' : 'chains of this agent' },
  });
  if (canRevokeAnything(caller)) {
    const count = await revokeTask(deps.knex, { taskId, revokedBy: caller.client_id, audit });
    return { status: 'revoked', jti: '', count };
  }
  if (caller.kind !== 'agent') return { status: 'refused' };
  const count = await revokeTaskForAgent(deps.knex, { taskId, agent: caller.client_id, audit });
  return count === undefined ? { status: 'refused' } : { status: 'revoked', jti: '', count };
}
