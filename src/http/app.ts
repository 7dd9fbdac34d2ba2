import { randomUUID } from 'node:crypto';
import * as querystring from 'node:querystring';
import { decodeJwt } from 'jose';
import Koa from 'koa';
import mount from 'koa-mount';
import type { Middleware } from 'koa';
import type { Logger } from 'pino';
import type Provider from 'oidc-provider';
import type { BatchedAuditWriter } from '../audit/batch-writer.ts';
import type { AuditEvent } from '../audit/event.ts';
import { clientAuthenticated, ROUTES } from '../oauth/provider.ts';
import type { RateLimit } from '../policy/model.ts';
import { TASK_FLAG } from './handlers.ts';
import { formGuard } from './form-guard.ts';
import { addressFailureLimit, setRateLimitHeaders, type RateDecision, type RateLimiter } from './rate-limit.ts';
import { RefusalHold } from './refusal-hold.ts';

export interface AppDeps {
  provider: Provider;
  logger: Logger;
  trustProxy: boolean;
  ready: () => Promise<boolean>;
  auditNow: (event: AuditEvent) => Promise<void>;
  auditQueue: BatchedAuditWriter;
  isStorageError: (err: unknown) => boolean;
  /** Writ's own routes (admin API), tried before the provider's. */
  routes: Middleware[];
  limiter: RateLimiter;
  authFailureLimit: () => RateLimit;
  /** A client's own limit (policy `rate_limit`), if it has one. */
  clientRateLimit: (clientId: string) => RateLimit | undefined;
  /** True once shutdown began: new requests are refused while in-flight ones finish. */
  draining: () => boolean;
}

/** The client id a Basic header claims, only as a key for counting failures. */
function basicClientId(header: string): string | undefined {
  const match = /^Basic ([A-Za-z0-9+/]+=*)$/i.exec(header);
  if (!match) return undefined;
  const decoded = Buffer.from(match[1]!, 'base64').toString('utf8');
  const colon = decoded.indexOf(':');
  if (colon <= 0) return undefined;
  try {
    return decodeURIComponent(decoded.slice(0, colon).replace(/\+/g, '%20')).slice(0, 256);
  } catch {
    return undefined;
  }
}

/**
 * The client a form body names: `client_id`, or else the `sub` of its `client_assertion`
 * (decoded, not verified: only to find the failure bucket, as the provider finds the client).
 */
export function bodyClientId(body: Buffer): string | undefined {
  const form = querystring.parse(body.toString());
  const id = form.client_id;
  if (typeof id === 'string' && id !== '') return id.slice(0, 256);
  const assertion = form.client_assertion;
  if (typeof assertion !== 'string') return undefined;
  try {
    const { sub } = decodeJwt(assertion);
    return typeof sub === 'string' && sub !== '' ? sub.slice(0, 256) : undefined;
  } catch {
    return undefined;
  }
}

/** The client the provider found for this request, authenticated or not (see clientAuthenticated). */
function namedClient(ctx: Koa.Context): string | undefined {
  return (ctx as { oidc?: { client?: { clientId?: string } } }).oidc?.client?.clientId;
}

/** The path the client called: task revocation runs under the revocation route's path. */
function calledPath(ctx: Koa.Context): string {
  return (ctx.state as Record<string, unknown>)[TASK_FLAG] ? '/task/revocation' : ctx.path;
}

/**
 * oidc-provider's 400 invalid_request descriptions for an `Authorization` header it could not
 * read as client_secret_basic (lib/shared/client_auth.js): another scheme, not base64, no colon,
 * credentials not form-encoded, an empty secret.
 */
const UNREADABLE_BASIC = new Set([
  'invalid authorization header value format',
  'client_id and client_secret in the authorization header are not properly encoded',
  'client_secret must be provided in the Authorization header',
]);

/**
 * Whether the request offered any client credential: an `Authorization` header, a client
 * attestation, or a non-empty `client_secret` or a `client_assertion` in the body. A bare
 * `client_id` is not one: RFC 6749 §2.3 has the client authenticate with a password or
 * another credential, and the identifier alone proves nothing.
 */
function offeredCredential(ctx: Koa.Context): boolean {
  const headers = ctx.headers;
  if (headers.authorization !== undefined || headers['oauth-client-attestation'] !== undefined || headers['oauth-client-attestation-pop'] !== undefined) return true;
  const body = (ctx.request as { body?: unknown }).body;
  if (!Buffer.isBuffer(body)) return false;
  const form = querystring.parse(body.toString());
  // The provider's own test: an empty client_secret is none, any client_assertion is one.
  return Boolean(form.client_secret) || form.client_assertion !== undefined;
}

const REQUEST_ID = /^[A-Za-z0-9._:-]{1,64}$/;
const POST_ONLY = new Set<string>([ROUTES.token, ROUTES.introspection, ROUTES.revocation, '/task/revocation']);
/** Endpoints where clients authenticate (task revocation runs through the revocation route). */
const AUTHENTICATED = new Set<string>([ROUTES.token, ROUTES.introspection, ROUTES.revocation]);
/** The names the per-client limiter keys its buckets by (src/http/handlers.ts `limitClient`). */
const ENDPOINT_NAMES = new Map<string, string>([[ROUTES.token, 'token'], [ROUTES.introspection, 'introspection'], [ROUTES.revocation, 'revocation']]);

/** Reason codes for refusals the provider makes before Writ's grant runs. */
function providerRejectionReason(body: { error?: string; error_description?: string } | undefined): string {
  const description = body?.error_description ?? '';
  switch (body?.error) {
    case 'invalid_client': return 'client_auth_failed';
    case 'unsupported_grant_type': return 'unsupported_grant_type';
    case 'unauthorized_client': return 'grant_type_not_allowed';
    case 'invalid_scope':
      if (/invalid characters/.test(description)) return 'invalid_parameter';
      return /unknown/.test(description) ? 'scope_unknown' : 'scope_not_allowed';
    case 'invalid_target': return 'target_invalid';
    case 'invalid_request':
      if (/twice|only be provided using one mechanism/.test(description)) return 'duplicate_parameter';
      if (/missing required parameter|must be provided/.test(description)) return 'missing_parameter';
      return 'invalid_parameter';
    default: return 'invalid_parameter';
  }
}

/**
 * Refusals under a flood are recorded in aggregate (O2): one event per client, source and reason
 * for each window, with the count, instead of a row per refused request.
 */
class RefusalTally {
  private counts = new Map<string, { reason: string; claimed: string | null; sourceIp: string; endpoint: string; count: number }>();
  private timer: NodeJS.Timeout | undefined;
  private readonly queue: BatchedAuditWriter;
  private readonly windowMs: number;

  constructor(queue: BatchedAuditWriter, windowMs = 5000) {
    this.queue = queue;
    this.windowMs = windowMs;
    // A window cut short by shutdown still has its count recorded.
    queue.onClose(() => this.flush());
  }

  /** `claimed` is the client id the request names; it did not authenticate. */
  add(reason: string, claimed: string | null, sourceIp: string, endpoint: string, requestId: string): void {
    const key = `${reason}\n${claimed ?? ''}\n${sourceIp}\n${endpoint}`;
    const entry = this.counts.get(key);
    if (entry) {
      entry.count += 1;
      return;
    }
    // The first refusal of a window is recorded at once, with its request id; the rest are counted.
    this.queue.enqueue({ type: 'token_endpoint.rejected', outcome: 'rejected', reason, requestId, details: { endpoint, source_ip: sourceIp, claimed_client_id: claimed, first_of_window: true } });
    this.counts.set(key, { reason, claimed, sourceIp, endpoint, count: 0 });
    this.timer ??= setTimeout(() => this.flush(), this.windowMs);
    this.timer.unref();
  }

  flush(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    for (const e of this.counts.values()) {
      if (e.count === 0) continue;
      this.queue.enqueue({
        type: 'token_endpoint.rejected', outcome: 'rejected', reason: e.reason,
        details: { endpoint: e.endpoint, source_ip: e.sourceIp, claimed_client_id: e.claimed, more_refused: e.count, window_ms: this.windowMs },
      });
    }
    this.counts.clear();
  }
}

export function createApp(deps: AppDeps): Koa {
  const app = new Koa();
  app.proxy = deps.trustProxy;
  app.silent = true;

  app.use(async (ctx, next) => {
    const incoming = ctx.get('x-request-id');
    const requestId = REQUEST_ID.test(incoming) ? incoming : randomUUID();
    (ctx.state as Record<string, unknown>).requestId = requestId;
    ctx.set('X-Request-Id', requestId);
    const started = performance.now();
    try {
      await next();
    } catch (err) {
      if (deps.isStorageError(err)) {
        ctx.status = 503;
        ctx.set('Retry-After', '1');
        ctx.body = { error: 'temporarily_unavailable', error_description: 'try again shortly' };
      } else {
        deps.logger.error({ requestId, err: (err as Error).message, stack: (err as Error).stack }, 'unhandled error');
        ctx.status = 500;
        ctx.body = { error: 'server_error', error_description: 'an unexpected error occurred' };
      }
    } finally {
      // RFC 6749 §5.1: no-store and Pragma: no-cache on every answer of the OAuth endpoints,
      // refusals, rate limits and the 503 of a draining process included: set here only.
      if (POST_ONLY.has(ctx.path) && !ctx.headerSent) {
        ctx.set('Cache-Control', 'no-store');
        ctx.set('Pragma', 'no-cache');
        // The provider allows any origin on every answer it makes; these endpoints allow none.
        ctx.remove('Access-Control-Allow-Origin');
        ctx.remove('Access-Control-Expose-Headers');
      }
      // Method, path, status and timing only: never bodies, queries or credential headers.
      deps.logger.info({
        requestId,
        method: ctx.method,
        // The path the client used, not the route a task revocation is run through.
        path: calledPath(ctx),
        status: ctx.status,
        ms: Math.round((performance.now() - started) * 100) / 100,
        client: namedClient(ctx),
        reason: (ctx.state as Record<string, unknown>).writReason,
      }, 'request');
    }
  });

  app.use(async (ctx, next) => {
    if (deps.draining()) {
      // A request that reached a kept-alive connection after SIGTERM: refuse it cleanly.
      ctx.status = 503;
      ctx.set('Retry-After', '1');
      ctx.set('Connection', 'close');
      ctx.body = { error: 'temporarily_unavailable', error_description: 'shutting down' };
      return;
    }
    if (ctx.path === '/healthz' && ctx.method === 'GET') {
      ctx.body = { status: 'ok' };
      return;
    }
    if (ctx.path === '/readyz' && ctx.method === 'GET') {
      const ready = await deps.ready().catch(() => false);
      ctx.status = ready ? 200 : 503;
      ctx.body = { status: ready ? 'ready' : 'unavailable' };
      return;
    }
    // One spelling per endpoint: the provider's router would also answer /TOKEN or /token/,
    // and every check keyed on the path (audit, method) must see the canonical one.
    if (!ctx.path.startsWith('/admin/') && !ctx.path.startsWith('/audit/view/api/') && (/[A-Z]/.test(ctx.path) || (ctx.path.length > 1 && ctx.path.endsWith('/')))) {
      ctx.status = 404;
      ctx.body = { error: 'not_found' };
      return;
    }
    // Writ answers no CORS preflight: its callers are agents and tool APIs, not browser pages.
    // The provider would answer one (204, any origin allowed) on its own routes.
    if (ctx.method === 'OPTIONS' && !ctx.path.startsWith('/admin/') && !ctx.path.startsWith('/audit/')) {
      ctx.status = 404;
      ctx.body = { error: 'not_found' };
      return;
    }
    if (POST_ONLY.has(ctx.path) && ctx.method !== 'POST') {
      // Recorded like the endpoint's other refusals of requests with no credential: one event
      // each (batched, nothing was authenticated) within the address's budget for them, and past
      // it counted in aggregate, so a flood of GETs cannot write a row per request.
      const requestId = (ctx.state as Record<string, unknown>).requestId as string;
      // A bucket of its own: a scanner's GETs must not use up the budget of the credential-less
      // POSTs of clients behind the same address (a NAT), which wait for the challenge first.
      const key = methodKey(ctx.ip);
      const perAddress = addressFailureLimit(deps.authFailureLimit());
      if (deps.limiter.peek(key, perAddress).ok) {
        deps.limiter.spend(key, perAddress);
        deps.auditQueue.enqueue({
          type: 'token_endpoint.rejected', outcome: 'rejected', reason: 'method_not_allowed', requestId,
          details: { endpoint: ctx.path, method: ctx.method, source_ip: ctx.ip },
        });
      } else {
        tally.add('method_not_allowed', null, ctx.ip, ctx.path, requestId);
      }
      ctx.status = 405;
      ctx.set('Allow', 'POST');
      ctx.body = { error: 'invalid_request', error_description: 'use POST' };
      return;
    }
    if (ctx.path === '/task/revocation') {
      // Same client authentication as RFC 7009 revocation: run it through that pipeline.
      (ctx.state as Record<string, unknown>)[TASK_FLAG] = true;
      ctx.path = ROUTES.revocation;
    }
    await next();
  });

  // Refusals at the OAuth endpoints that Writ's handlers did not record themselves (client
  // authentication, duplicate or missing parameters, decided by the provider) are recorded too:
  // committed before the response when the client authenticated, batched when it did not.
  app.use(async (ctx, next) => {
    await next();
    if (!AUTHENTICATED.has(ctx.path) || ctx.status < 400 || ctx.status === 503) return;
    const state = ctx.state as Record<string, unknown>;
    if (state.writAudited) return;
    const body = ctx.body as { error?: string; error_description?: string } | undefined;
    const reason = providerRejectionReason(body);
    state.writReason = reason;
    const claimed = namedClient(ctx) ?? null;
    const clientId = clientAuthenticated(ctx) ? claimed : null;
    const event: AuditEvent = {
      type: 'token_endpoint.rejected',
      outcome: 'rejected',
      reason,
      requestId: state.requestId as string,
      clientId,
      details: {
        endpoint: calledPath(ctx),
        error: body?.error ?? null, source_ip: ctx.ip, authenticated: clientId !== null,
        ...(clientId === null && claimed ? { claimed_client_id: claimed } : {}),
      },
    };
    if (clientId === null) {
      deps.auditQueue.enqueue(event);
      return;
    }
    try {
      await deps.auditNow(event);
    } catch {
      ctx.status = 503;
      ctx.set('Retry-After', '1');
      ctx.body = { error: 'temporarily_unavailable', error_description: 'try again shortly' };
    }
  });

  const tally = new RefusalTally(deps.auditQueue);
  const hold = new RefusalHold();
  // Failed client authentications are limited per claimed client id from one source address, and
  // per address (src/http/rate-limit.ts: ADDRESS_FAILURE_FACTOR); once a bucket is empty further
  // attempts are refused before any secret is checked.
  const addressKey = (ip: string): string => `auth-fail-ip:${ip}`;
  const uncredentialedKey = (ip: string): string => `auth-none-ip:${ip}`;
  const methodKey = (ip: string): string => `method-ip:${ip}`;
  const clientKey = (clientId: string, ip: string): string => `auth-fail-client:${clientId}\n${ip}`;
  const refuseLimited = async (ctx: Koa.Context, key: string, rate: RateDecision, reason: string, claimed: string | undefined): Promise<void> => {
    const state = ctx.state as Record<string, unknown>;
    state.writAudited = true;
    state.writReason = reason;
    tally.add(reason, claimed ?? null, ctx.ip, calledPath(ctx), state.requestId as string);
    // A caller back before its Retry-After gets this refusal only then (src/http/refusal-hold.ts).
    const plan = deps.draining() ? 0 : hold.plan(`${key}\n${ctx.ip}`, rate.retryAfter);
    if (plan === 'close') ctx.set('Connection', 'close');
    else if (plan > 0) await hold.hold(plan);
    setRateLimitHeaders(ctx, rate);
    ctx.status = 429;
    ctx.body = { error: 'temporarily_unavailable', error_description: reason === 'rate_limited' ? 'too many requests: retry after the time given' : 'too many failed authentications: retry after the time given' };
  };
  app.use(async (ctx, next) => {
    if (ctx.method !== 'POST' || !AUTHENTICATED.has(ctx.path)) return next();
    const limit = deps.authFailureLimit();
    const perAddress = addressFailureLimit(limit);
    const claimed = basicClientId(ctx.get('authorization'));
    // A client whose own bucket is empty is refused here too, before the provider parses and
    // authenticates anything: a flooding client must not crowd out the others. Only requests
    // that authenticate spend from that bucket, so nobody can empty it for someone else.
    const own = claimed ? deps.clientRateLimit(claimed) : undefined;
    const ownKey = `${ENDPOINT_NAMES.get(ctx.path)}:${claimed}`;
    const checks: Array<[string, RateLimit, string]> = [
      [addressKey(ctx.ip), perAddress, 'auth_rate_limited'],
      ...(claimed ? [[clientKey(claimed, ctx.ip), limit, 'auth_rate_limited'] as [string, RateLimit, string]] : []),
      ...(own ? [[ownKey, own, 'rate_limited'] as [string, RateLimit, string]] : []),
    ];
    for (const [key, bucketLimit, reason] of checks) {
      const rate = deps.limiter.peek(key, bucketLimit);
      if (!rate.ok) return refuseLimited(ctx, key, rate, reason, claimed);
    }
    await next();
    // A refusal by client authentication: every 401 (an unreadable `Authorization` header
    // included: the remap below runs before this line), and the provider's 400s for a client it
    // found but did not authenticate (two mechanisms at once, say). A request that offered no
    // credential guesses no secret, and a client may wait for the challenge before it sends its
    // credentials, so it spends neither budget; but each is refused and recorded, so it has a
    // bucket of its own per address, which bounds how many one address can have written: past
    // it, the refusal is a 429, counted in aggregate (RefusalTally).
    const found = namedClient(ctx);
    const uncredentialed = (ctx.state as Record<string, unknown>).writNoCredential === true;
    if (uncredentialed && ctx.status === 401) {
      const key = uncredentialedKey(ctx.ip);
      const rate = deps.limiter.peek(key, perAddress);
      if (!rate.ok) {
        ctx.remove('WWW-Authenticate');
        return refuseLimited(ctx, key, rate, 'auth_rate_limited', found);
      }
      deps.limiter.spend(key, perAddress);
    } else if (ctx.status === 401 || (ctx.status >= 400 && ctx.status < 500 && found !== undefined && !clientAuthenticated(ctx))) {
      const client = claimed ?? found;
      deps.limiter.spend(addressKey(ctx.ip), perAddress);
      if (client) deps.limiter.spend(clientKey(client, ctx.ip), limit);
    }
  });

  // Client authentication refusals as RFC 6749 §5.2 has them, which oidc-provider answers
  // otherwise. Inside the failure limiter and the audit above: both see the final answer.
  const challenge = (description: string): string => {
    // oidc-provider's own challenge for a failed Basic header (lib/helpers/append_www_authenticate.js),
    // so that every Basic challenge Writ sends reads alike.
    const quoted = (value: string): string => `"${value.replace(/\\/g, '\\\\').replace(/"/g, '\\"')}"`;
    return `Basic realm=${quoted(deps.provider.issuer)}, error="invalid_client", error_description=${quoted(description)}`;
  };
  app.use(async (ctx, next) => {
    await next();
    if (!AUTHENTICATED.has(ctx.path)) return;
    const body = ctx.body as { error?: string; error_description?: string } | undefined;
    if (ctx.status === 400 && body?.error === 'invalid_request') {
      // RFC 6749 §5.2: a grant type the client may not use is `unauthorized_client`.
      if (body.error_description === 'requested grant type is not allowed for this client') {
        ctx.body = { error: 'unauthorized_client', error_description: 'this client may not use this grant type' };
        return;
      }
      // RFC 6749 §5.2 invalid_client: "Client authentication failed (e.g., unknown client, no
      // client authentication included, or unsupported authentication method)."
      if (body.error_description === 'no client authentication mechanism provided') {
        (ctx.state as Record<string, unknown>).writNoCredential = true;
        ctx.status = 401;
        ctx.body = { error: 'invalid_client', error_description: 'client authentication is required' };
        ctx.set('WWW-Authenticate', challenge(ctx.body.error_description));
        return;
      }
      // "If the client attempted to authenticate via the "Authorization" request header field,
      // the authorization server MUST respond with an HTTP 401 (Unauthorized) status code and
      // include the "WWW-Authenticate" response header field matching the authentication scheme
      // used by the client." Any scheme other than Basic is an unsupported method; the answer's
      // challenge names the one Writ supports. Two mechanisms at once stay invalid_request.
      if (ctx.headers.authorization !== undefined && UNREADABLE_BASIC.has(body.error_description ?? '')) {
        ctx.status = 401;
        ctx.body = { error: 'invalid_client', error_description: 'client authentication failed' };
        ctx.set('WWW-Authenticate', challenge(ctx.body.error_description));
        return;
      }
    }
    // A bare client_id is no client authentication either (offeredCredential): oidc-provider
    // refuses it 401 without a challenge, which it sends only for a failed Authorization header.
    // A failed client_secret_post or private_key_jwt gets none.
    if (ctx.status === 401 && body?.error === 'invalid_client' && !ctx.response.get('WWW-Authenticate') && !offeredCredential(ctx)) {
      (ctx.state as Record<string, unknown>).writNoCredential = true;
      ctx.set('WWW-Authenticate', challenge(body.error_description ?? 'client authentication failed'));
    }
  });

  app.use(formGuard(AUTHENTICATED, (ctx, why) => {
    const state = ctx.state as Record<string, unknown>;
    state.writAudited = true;
    state.writReason = 'invalid_parameter';
    deps.auditQueue.enqueue({
      type: 'token_endpoint.rejected', outcome: 'rejected', reason: 'invalid_parameter', requestId: state.requestId as string,
      details: { endpoint: calledPath(ctx), detail: why, source_ip: ctx.ip },
    });
    ctx.status = 400;
    ctx.body = { error: 'invalid_request', error_description: 'the request body is not acceptable' };
  }));

  // A client that authenticates in the body (client_secret_post, private_key_jwt) is named only
  // once the body is read: its bucket for this address is checked here, still before the
  // provider checks any credential.
  app.use(async (ctx, next) => {
    if (ctx.method !== 'POST' || !AUTHENTICATED.has(ctx.path) || ctx.get('authorization') !== '') return next();
    const body = (ctx.request as { body?: unknown }).body;
    const named = Buffer.isBuffer(body) ? bodyClientId(body) : undefined;
    if (named !== undefined) {
      const key = clientKey(named, ctx.ip);
      const rate = deps.limiter.peek(key, deps.authFailureLimit());
      if (!rate.ok) return refuseLimited(ctx, key, rate, 'auth_rate_limited', named);
    }
    await next();
  });

  for (const route of deps.routes) app.use(route);
  app.use(mount(deps.provider));

  app.use(async (ctx) => {
    ctx.status = 404;
    ctx.body = { error: 'not_found' };
  });
  return app;
}

