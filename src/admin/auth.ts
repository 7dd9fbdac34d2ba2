import { timingSafeEqual } from 'node:crypto';
import type { ParameterizedContext } from 'koa';
import type Provider from 'oidc-provider';
import type { CompiledPolicy } from '../policy/compiled.ts';
import type { AdminScope } from '../policy/model.ts';

export interface AdminCaller {
  /** The admin client; for the CLI's local credential, `cli:<user>` as the CLI names it, or `local-cli`. */
  clientId: string;
  scopes: ReadonlySet<AdminScope>;
}

export type AdminAuthResult =
  | { ok: true; caller: AdminCaller }
  | { ok: false; status: 401 | 403; error: 'invalid_token' | 'insufficient_scope' };

const ALL_SCOPES: readonly AdminScope[] = ['writ:policy.read', 'writ:policy.write', 'writ:audit.read', 'writ:revoke', 'writ:keys'];

function bearer(ctx: ParameterizedContext): string | undefined {
  const match = /^Bearer ([A-Za-z0-9._~+/-]+=*)$/.exec(ctx.get('authorization'));
  return match?.[1];
}

function equal(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}

/** Whether the request carries the CLI's local credential (`writ serve` on the embedded database). */
export function presentsLocalCredential(ctx: ParameterizedContext, localToken: string | undefined): boolean {
  const presented = bearer(ctx);
  return localToken !== undefined && presented !== undefined && equal(presented, localToken);
}

/** The CLI names its user in this header beside the local credential (which only it can read). */
export const CLI_USER_HEADER = 'x-writ-cli-user';

/** Who the record names for a call with the local credential: the CLI's user, as a direct CLI call records it. */
function localCaller(ctx: ParameterizedContext): string {
  const named = ctx.get(CLI_USER_HEADER);
  return /^cli:[\x21-\x7e]{1,64}$/.test(named) ? named : 'local-cli';
}

/**
 * Admin API callers present a token Writ issued through client_credentials to an admin client
 * (RFC 6750 bearer). The scopes that count are the token's, cut down to what the client holds
 * now, so disabling a client or removing a scope takes effect before its tokens expire. The
 * CLI's local credential (embedded database only) counts as every scope.
 */
export async function authenticateAdmin(
  ctx: ParameterizedContext,
  deps: { provider: Provider; policy: () => CompiledPolicy; localToken: () => string | undefined },
  needed: AdminScope,
): Promise<AdminAuthResult> {
  const presented = bearer(ctx);
  if (!presented) return { ok: false, status: 401, error: 'invalid_token' };
  if (presentsLocalCredential(ctx, deps.localToken())) {
    return { ok: true, caller: { clientId: localCaller(ctx), scopes: new Set(ALL_SCOPES) } };
  }
  const token = await deps.provider.ClientCredentials.find(presented);
  if (!token || token.isExpired) return { ok: false, status: 401, error: 'invalid_token' };
  const client = deps.policy().clients.get(token.clientId ?? '');
  if (!client || client.kind !== 'admin' || !client.enabled) return { ok: false, status: 401, error: 'invalid_token' };
  const granted = new Set(String(token.scope ?? '').split(' ').filter((s): s is AdminScope => client.scopes.includes(s as AdminScope)));
  if (!granted.has(needed)) return { ok: false, status: 403, error: 'insufficient_scope' };
  return { ok: true, caller: { clientId: client.client_id, scopes: granted } };
}
