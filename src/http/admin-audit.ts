import type { Context, Middleware } from 'koa';
import type { Knex } from 'knex';
import { AuditQueryError, MAX_SEARCH_LIMIT, searchAudit, traceToken, type AuditSearch } from '../audit/trace.ts';

export type AuditScope = 'writ:audit.read';

export interface AdminAuditDeps {
  knex: Knex;
  /**
   * Decides whether the caller may read the audit log. On false it should have set the
   * answer (401 with WWW-Authenticate, or 403); if it set none, the answer is 403.
   */
  authorize: (ctx: Context, scope: AuditScope) => Promise<boolean>;
}

const PREFIX = '/admin/v1/audit/';
const TRACE = /^\/admin\/v1\/audit\/trace\/([^/]+)$/;
const JTI = /^[A-Za-z0-9._~-]{1,256}$/;
const SEARCH_PARAMS = new Set(['subject', 'actor', 'audience', 'task_id', 'type', 'since', 'until', 'limit', 'cursor']);

function badRequest(ctx: Context, description: string): void {
  ctx.status = 400;
  ctx.body = { error: 'invalid_request', error_description: description };
}

function parseTime(name: string, value: string): Date {
  const d = new Date(value);
  if (!/^\d{4}-\d{2}-\d{2}/.test(value) || Number.isNaN(d.getTime())) throw new AuditQueryError(`${name} must be an ISO 8601 time`);
  return d;
}

/** The query string of GET /admin/v1/audit/events as an AuditSearch; throws AuditQueryError. */
export function parseSearchQuery(query: Record<string, string | string[] | undefined>): AuditSearch {
  const q: AuditSearch = {};
  for (const [name, raw] of Object.entries(query)) {
    if (raw === undefined) continue;
    if (!SEARCH_PARAMS.has(name)) throw new AuditQueryError(`unknown parameter ${name}`);
    if (Array.isArray(raw)) throw new AuditQueryError(`${name} given more than once`);
    if (raw === '') throw new AuditQueryError(`${name} is empty`);
    // No record holds U+0000 (PostgreSQL text cannot): such a value matches nothing and must
    // not reach the query, where it would be an error instead of a refusal.
    if (raw.includes('\u0000')) throw new AuditQueryError(`${name} holds a NUL character`);
    switch (name) {
      case 'subject': q.subject = raw; break;
      case 'actor': q.actor = raw; break;
      case 'audience': q.audience = raw; break;
      case 'task_id': q.taskId = raw; break;
      case 'type': q.type = raw; break;
      case 'since': q.since = parseTime(name, raw); break;
      case 'until': q.until = parseTime(name, raw); break;
      case 'limit':
        if (!/^\d{1,4}$/.test(raw) || Number(raw) < 1 || Number(raw) > MAX_SEARCH_LIMIT) throw new AuditQueryError(`limit must be from 1 to ${MAX_SEARCH_LIMIT}`);
        q.limit = Number(raw);
        break;
      case 'cursor': q.cursor = raw; break;
    }
  }
  return q;
}

/**
 * `GET /admin/v1/audit/trace/{jti}` (the TokenTrace of src/audit/trace.ts, 404 for a jti
 * Writ never issued) and `GET /admin/v1/audit/events?subject=&actor=&audience=&task_id=&type=
 * &since=&until=&limit=&cursor=` (newest first; `{events, next_cursor}`), both under the
 * `writ:audit.read` scope.
 */
export function adminAuditRoutes(deps: AdminAuditDeps): Middleware {
  return async (ctx, next) => {
    if (!ctx.path.startsWith(PREFIX)) return next();
    const trace = TRACE.exec(ctx.path);
    const isEvents = ctx.path === `${PREFIX}events`;
    if (!trace && !isEvents) return next();
    ctx.set('Cache-Control', 'no-store');
    if (ctx.method !== 'GET' && ctx.method !== 'HEAD') {
      ctx.status = 405;
      ctx.set('Allow', 'GET, HEAD');
      ctx.body = { error: 'invalid_request', error_description: 'use GET' };
      return;
    }
    if (!await deps.authorize(ctx, 'writ:audit.read')) {
      if (ctx.status === 404 || ctx.status < 400) {
        ctx.status = 403;
        ctx.body = { error: 'insufficient_scope', error_description: 'writ:audit.read is required' };
      }
      return;
    }
    if (trace) {
      let jti: string;
      try {
        jti = decodeURIComponent(trace[1]!);
      } catch {
        badRequest(ctx, 'jti is malformed');
        return;
      }
      if (!JTI.test(jti)) {
        badRequest(ctx, 'jti is malformed');
        return;
      }
      const found = await traceToken(deps.knex, jti);
      if (!found) {
        ctx.status = 404;
        ctx.body = { error: 'not_found', error_description: 'no token with this jti was issued' };
        return;
      }
      ctx.body = found;
      return;
    }
    let q: AuditSearch;
    try {
      q = parseSearchQuery(ctx.query);
      ctx.body = await searchAudit(deps.knex, q);
    } catch (err) {
      if (err instanceof AuditQueryError) {
        badRequest(ctx, err.message);
        return;
      }
      throw err;
    }
  };
}
