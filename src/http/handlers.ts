import type { Middleware, ParameterizedContext } from 'koa';
import type { KoaContextWithOIDC } from 'oidc-provider';
import type { BatchedAuditWriter } from '../audit/batch-writer.ts';
import { recordAudit } from '../audit/event.ts';
import { exchange, isStorageError, type ExchangeDeps } from '../exchange/service.ts';
import { oauthError, unavailable } from '../oauth/errors.ts';
import type { CompiledPolicy } from '../policy/compiled.ts';
import type { ClientPolicy } from '../policy/model.ts';
import type { Metrics } from '../metrics.ts';
import { rootKey, type RevocationState } from '../revocation/state.ts';
import { introspect, type IntrospectionDeps } from './introspection.ts';
import { setRateLimitHeaders, type RateDecision, type RateLimiter } from './rate-limit.ts';
import { revokeTaskById, revokeToken, type RevocationDeps } from './revocation.ts';

/** What the client is told; the reason code stays in the audit record (no oracle). */
const DESCRIPTIONS: Record<string, string> = {
  invalid_request: 'the request or a presented token is not acceptable',
  invalid_target: 'the requested audience is not available to this client',
  invalid_scope: 'the requested scope is not available',
  unauthorized_client: 'this client may not use token exchange',
};

export const TASK_FLAG = 'writTaskRevocation';

function requestId(ctx: ParameterizedContext): string {
  return (ctx.state as { requestId?: string }).requestId ?? '';
}

function tooMany(ctx: ParameterizedContext, rate: RateDecision): Error {
  setRateLimitHeaders(ctx, rate);
  return oauthError('temporarily_unavailable', 'too many requests: retry after the time given', 429);
}

/**
 * The client's own limit (policy `rate_limit`) on this endpoint, counted per instance. A refusal
 * is recorded through the batched writer, so a flooding client costs no write per request.
 */
export function limitClient(ctx: ParameterizedContext, deps: { limiter?: RateLimiter; policy: () => CompiledPolicy; auditQueue?: BatchedAuditWriter }, endpoint: string, clientId: string): void {
  const limit = deps.policy().clients.get(clientId)?.rate_limit;
  if (!limit || !deps.limiter) return;
  const rate = deps.limiter.take(`${endpoint}:${clientId}`, limit);
  setRateLimitHeaders(ctx, rate);
  if (rate.ok) return;
  (ctx.state as Record<string, unknown>).writAudited = true;
  (ctx.state as Record<string, unknown>).writReason = 'rate_limited';
  deps.auditQueue?.enqueue({
    type: endpoint === 'token' ? 'exchange.denied' : 'token_endpoint.rejected', outcome: 'denied', reason: 'rate_limited',
    requestId: requestId(ctx), clientId, details: { limit: 'client', endpoint },
  });
  throw tooMany(ctx, rate);
}

/** The policy client behind `ctx.oidc.client`, which the provider authenticated. */
function callerOf(ctx: KoaContextWithOIDC, policy: CompiledPolicy): ClientPolicy {
  const id = ctx.oidc.client?.clientId;
  const caller = id === undefined ? undefined : policy.clients.get(id);
  if (!caller) throw oauthError('invalid_client', 'client authentication failed', 401);
  return caller;
}

export function tokenExchangeHandler(deps: ExchangeDeps & { metrics?: Metrics; limiter?: RateLimiter; auditQueue?: BatchedAuditWriter }) {
  return async function handleTokenExchange(ctx: KoaContextWithOIDC): Promise<void> {
    (ctx.state as Record<string, unknown>).writAudited = true;
    limitClient(ctx, deps, 'token', ctx.oidc.client!.clientId);
    const started = performance.now();
    const result = await exchange(deps, {
      clientId: ctx.oidc.client!.clientId,
      params: ctx.oidc.params as Record<string, string | string[] | undefined>,
      requestId: requestId(ctx),
      dpop: ctx.get('dpop') !== '',
      now: Math.floor(Date.now() / 1000),
    });
    (ctx.state as Record<string, unknown>).writReason = result.ok ? 'granted' : result.reason;
    if (deps.metrics) {
      // Only audiences the policy knows become label values: request input must not mint series.
      const requested = [ctx.oidc.params?.audience, ctx.oidc.params?.resource].flat().find((a) => typeof a === 'string') as string | undefined;
      const audience = requested !== undefined && deps.policy().audiences.has(requested) ? requested : 'other';
      deps.metrics.exchanges.inc({
        outcome: result.ok ? 'granted' : result.error === 'temporarily_unavailable' ? 'unavailable' : 'denied',
        reason: result.ok ? 'granted' : result.reason,
        audience,
        client: ctx.oidc.client!.clientId,
      });
      deps.metrics.exchangeSeconds.observe((performance.now() - started) / 1000);
    }
    if (!result.ok) {
      if (result.rate) throw tooMany(ctx, result.rate);
      if (result.error === 'temporarily_unavailable') throw unavailable(ctx);
      throw oauthError(result.error, DESCRIPTIONS[result.error] ?? 'the request was refused');
    }
    ctx.status = 200;
    ctx.body = result.body;
  };
}

export function introspectionHandler(deps: IntrospectionDeps & { policy: () => CompiledPolicy; revocations: RevocationState; auditQueue: BatchedAuditWriter; metrics?: Metrics; limiter?: RateLimiter }): Middleware {
  return async function handleIntrospection(ctx) {
    const oidc = ctx as unknown as KoaContextWithOIDC;
    const token = oidc.oidc.params?.token;
    if (typeof token !== 'string' || token === '') throw oauthError('invalid_request', "missing required parameter 'token'");
    const caller = callerOf(oidc, deps.policy());
    limitClient(ctx, deps, 'introspection', caller.client_id);
    // Fail closed: if revocations may have been missed, never answer active.
    if (!deps.revocations.isFresh()) throw unavailable(ctx);
    const { body, claims, why } = await introspect(deps, caller, token, Math.floor(Date.now() / 1000));
    deps.metrics?.introspections.inc({ active: String(body.active), client: caller.client_id });
    if (why) deps.metrics?.suspiciousIntrospections.inc({ kind: why, client: caller.client_id });
    deps.auditQueue.enqueue({
      type: 'introspection',
      outcome: body.active ? 'active' : 'inactive',
      requestId: requestId(ctx),
      clientId: caller.client_id,
      jti: claims?.jti ?? null,
      audience: claims?.aud ?? null,
      ...(claims ? { subject: rootKey(claims.sub_id.iss, claims.sub_id.sub), taskId: claims.task_id ?? null } : {}),
      details: why ? { inactive: why } : {},
    });
    ctx.body = body;
  };
}

export function revocationHandler(deps: RevocationDeps & {
  policy: () => CompiledPolicy; metrics?: Metrics; limiter?: RateLimiter; auditQueue?: BatchedAuditWriter;
  /** Brings this instance's revoked set up to date, so the revocation holds here from its 200. */
  syncRevocations?: () => Promise<void>;
}): Middleware {
  return async function handleRevocation(ctx) {
    const oidc = ctx as unknown as KoaContextWithOIDC;
    const caller = callerOf(oidc, deps.policy());
    limitClient(ctx, deps, 'revocation', caller.client_id);
    const isTask = (ctx.state as Record<string, unknown>)[TASK_FLAG] === true;
    const name = isTask ? 'task_id' : 'token';
    const value = oidc.oidc.params?.[name];
    if (typeof value !== 'string' || value === '') throw oauthError('invalid_request', `missing required parameter '${name}'`);
    if (isTask && !/^[A-Za-z0-9._:-]{1,128}$/.test(value)) throw oauthError('invalid_request', 'task_id is malformed');
    try {
      // An admin API token (opaque, from client_credentials) can be cut short by its own client
      // or by an admin holding writ:revoke.
      if (!isTask && !value.includes('.')) {
        const adminToken = await oidc.oidc.provider.ClientCredentials.find(value);
        if (adminToken && adminToken.clientId !== caller.client_id && !(caller.kind === 'admin' && caller.scopes.includes('writ:revoke'))) {
          // RFC 7009 §2.1: a token not issued to the caller is refused, as for Writ's own tokens.
          (ctx.state as Record<string, unknown>).writAudited = true;
          (ctx.state as Record<string, unknown>).writReason = 'not_permitted';
          await recordAudit(deps.knex, {
            type: 'revocation', outcome: 'rejected', reason: 'not_permitted', requestId: requestId(ctx),
            clientId: caller.client_id, details: { admin_token_of: adminToken.clientId },
          });
          throw oauthError('unauthorized_client', 'this client may not revoke this token');
        }
        if (adminToken) {
          await adminToken.destroy();
          await recordAudit(deps.knex, { type: 'revocation', outcome: 'revoked', requestId: requestId(ctx), clientId: caller.client_id, details: { admin_token_of: adminToken.clientId } });
        }
        ctx.status = 200;
        ctx.body = '';
        return;
      }
      const outcome = isTask
        ? await revokeTaskById(deps, caller, value, requestId(ctx))
        : await revokeToken(deps, caller, value, requestId(ctx));
      if (outcome.status === 'revoked') {
        deps.metrics?.revocations.inc({ kind: isTask ? 'task' : 'token' }, outcome.count);
        await deps.syncRevocations?.();
      }
      if (outcome.status === 'refused') {
        // An authenticated client's refusal is recorded before the answer, like any other.
        (ctx.state as Record<string, unknown>).writAudited = true;
        (ctx.state as Record<string, unknown>).writReason = 'not_permitted';
        await recordAudit(deps.knex, {
          type: isTask ? 'task.revocation' : 'revocation', outcome: 'rejected', reason: 'not_permitted', requestId: requestId(ctx),
          clientId: caller.client_id, ...(isTask ? { taskId: value } : {}), details: {},
        });
        throw oauthError('unauthorized_client', isTask ? 'this client may not end this task' : 'this client may not revoke this token');
      }
    } catch (err) {
      if (isStorageError(err)) throw unavailable(ctx);
      throw err;
    }
    ctx.status = 200;
    ctx.body = '';
  };
}
