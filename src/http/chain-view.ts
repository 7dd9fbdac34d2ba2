import { readFileSync } from 'node:fs';
import type { Context, Middleware } from 'koa';
import type { Knex } from 'knex';
import type { AuditEvent } from '../audit/event.ts';
import { AuditQueryError, searchAudit, traceToken } from '../audit/trace.ts';
import {
  consumeLoginTokenFor,
  createLoginToken,
  DEFAULT_SESSION_TTL_SECONDS,
  signSession,
  verifySession,
} from '../audit/view-login.ts';
import { parseSearchQuery } from './admin-audit.ts';
import { presentsLocalCredential } from '../admin/auth.ts';
import { readJsonStream } from './json-body.ts';

export interface ChainViewDeps {
  knex: Knex;
  /** Signs session cookies (deriveKeys(kek).localAdmin). */
  sessionKey: Buffer;
  /** Writ's issuer: an https issuer makes the cookie Secure. */
  issuer: string;
  /** Records an audit event before the answer (login, login token creation). */
  audit: (event: AuditEvent) => Promise<void>;
  /** The local credential of `writ serve` on the embedded database, for `writ audit open`. */
  localToken?: () => string | undefined;
  /** Clock, for tests. */
  now?: () => Date;
}

export const SESSION_COOKIE = 'writ_audit_session';
const PREFIX = '/audit/view';

export const CHAIN_VIEW_HEADERS: Readonly<Record<string, string>> = {
  'Content-Security-Policy': "default-src 'self'; style-src 'self'; script-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
  'X-Content-Type-Options': 'nosniff',
  // The login URL carries a token: never let it leave in a Referer.
  'Referrer-Policy': 'no-referrer',
  'Cache-Control': 'no-store',
};

const TRACE_PATH = /^\/audit\/view\/api\/trace\/([^/]+)$/;
const JTI = /^[A-Za-z0-9._~-]{1,256}$/;
const CREATED_BY = /^[\x20-\x7e]{1,100}$/;
const MAX_LOCAL_BODY = 4096;

interface Assets {
  index: string;
  appJs: string;
  styleCss: string;
}

function readAssets(): Assets {
  const file = (name: string): string => readFileSync(new URL(`./chain-view/${name}`, import.meta.url), 'utf8');
  return { index: file('index.html'), appJs: file('app.js'), styleCss: file('style.css') };
}

/** A plain page with fixed text (no request data goes into it). */
function messagePage(title: string, paragraphs: string[]): string {
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>Writ · ${title}</title>
<link rel="stylesheet" href="/audit/view/style.css">
</head>
<body class="message-page">
<main class="message">
<h1>${title}</h1>
${paragraphs.map((p) => `<p>${p}</p>`).join('\n')}
</main>
</body>
</html>
`;
}

const RUN_OPEN = 'Run <code>writ audit open</code> where Writ is configured, and open the URL it prints. Each URL works once, within 5 minutes.';

const SIGN_IN_PAGE = messagePage('Sign in to the chain view', [
  'The chain view needs a session.',
  RUN_OPEN,
  // A link followed from another site does not carry the SameSite=Strict cookie; one
  // followed from this page does.
  'Just signed in from a link in another application? <a href="/audit/view">Open the chain view</a>.',
]);

const BAD_LOGIN_PAGE = messagePage('This login link does not work', [
  'The link is unknown, was already used, or has expired.',
  RUN_OPEN,
]);

function cookieValues(header: string, name: string): string[] {
  const values: string[] = [];
  for (const part of header.split(';')) {
    const eq = part.indexOf('=');
    if (eq < 0) continue;
    if (part.slice(0, eq).trim() === name) values.push(part.slice(eq + 1).trim());
  }
  return values;
}

function json(ctx: Context, status: number, body: unknown): void {
  ctx.status = status;
  ctx.body = body;
}

function html(ctx: Context, status: number, page: string): void {
  ctx.status = status;
  ctx.type = 'text/html; charset=utf-8';
  ctx.body = page;
}

function methodNotAllowed(ctx: Context, allow: string): void {
  ctx.set('Allow', allow);
  json(ctx, 405, { error: 'invalid_request', error_description: `use ${allow.split(', ')[0]}` });
}

/**
 * The chain view (ISSUE item 5), read-only, under /audit/view:
 *
 * - `GET /audit/view/login?token=` trades a one-time login token from `writ audit open` for an
 *   HttpOnly, SameSite=Strict session cookie (Secure on an https issuer) and redirects to the page;
 * - `GET /audit/view` (the page), `/audit/view/app.js`, `/audit/view/style.css`;
 * - `GET /audit/view/api/trace/{jti}` (also `…/api/trace?jti=`, for jtis with capitals, which
 *   the app's canonical-path rule refuses in a path) and `GET /audit/view/api/events?…` (the
 *   query of the admin audit API): the session cookie is required;
 * - `POST /audit/view/local/login`: `writ audit open` asking a running `writ serve` on the
 *   embedded database for a login token, with the local credential of the data dir.
 */
export function chainViewRoutes(deps: ChainViewDeps): Middleware {
  const assets = readAssets();
  const now = deps.now ?? (() => new Date());
  const secure = deps.issuer.startsWith('https:');

  const hasSession = (ctx: Context): boolean =>
    cookieValues(ctx.get('cookie'), SESSION_COOKIE).some((value) => verifySession(deps.sessionKey, value, now()));

  const requestId = (ctx: Context): string | null => ((ctx.state as Record<string, unknown>).requestId as string | undefined) ?? null;

  return async (ctx, next) => {
    if (ctx.path !== PREFIX && !ctx.path.startsWith(`${PREFIX}/`)) return next();
    ctx.set(CHAIN_VIEW_HEADERS);
    const path = ctx.path;
    const isGet = ctx.method === 'GET' || ctx.method === 'HEAD';

    if (path === `${PREFIX}/local/login`) {
      if (ctx.method !== 'POST') return methodNotAllowed(ctx, 'POST');
      if (!presentsLocalCredential(ctx, deps.localToken?.())) {
        ctx.set('WWW-Authenticate', 'Bearer');
        return json(ctx, 401, { error: 'invalid_token' });
      }
      let body: unknown;
      try {
        body = (await readJsonStream(ctx.req, MAX_LOCAL_BODY)) ?? {};
      } catch {
        return json(ctx, 400, { error: 'invalid_request', error_description: 'the body must be a small JSON object' });
      }
      const given = body && typeof body === 'object' ? (body as Record<string, unknown>).created_by : undefined;
      if (given !== undefined && (typeof given !== 'string' || !CREATED_BY.test(given))) {
        return json(ctx, 400, { error: 'invalid_request', error_description: 'created_by must be 1 to 100 printable ASCII characters' });
      }
      const createdBy = `local:${given ?? 'writ audit open'}`;
      const login = await createLoginToken(deps.knex, { createdBy });
      await deps.audit({
        type: 'admin.action', outcome: 'ok', requestId: requestId(ctx),
        details: { action: 'audit_view_login_created', created_by: createdBy, expires_at: login.expiresAt.toISOString() },
      });
      return json(ctx, 201, { token: login.token, expires_at: login.expiresAt.toISOString() });
    }

    if (path === `${PREFIX}/login`) {
      // GET only: a HEAD (link checkers, previews) must not burn the token.
      if (ctx.method !== 'GET') return methodNotAllowed(ctx, 'GET');
      const token = ctx.query.token;
      const consumed = typeof token === 'string' ? await consumeLoginTokenFor(deps.knex, token) : undefined;
      if (!consumed) return html(ctx, 401, BAD_LOGIN_PAGE);
      const session = signSession(deps.sessionKey, now(), DEFAULT_SESSION_TTL_SECONDS);
      await deps.audit({
        type: 'admin.action', outcome: 'ok', requestId: requestId(ctx),
        details: {
          action: 'audit_view_login',
          created_by: consumed.createdBy,
          source_ip: ctx.ip,
          session_expires_at: new Date(now().getTime() + DEFAULT_SESSION_TTL_SECONDS * 1000).toISOString(),
        },
      });
      ctx.set('Set-Cookie', `${SESSION_COOKIE}=${session}; HttpOnly; SameSite=Strict; Path=${PREFIX}; Max-Age=${DEFAULT_SESSION_TTL_SECONDS}${secure ? '; Secure' : ''}`);
      ctx.status = 303;
      ctx.set('Location', PREFIX);
      ctx.type = 'text/plain; charset=utf-8';
      ctx.body = 'signed in: continue to /audit/view\n';
      return;
    }

    if (path === `${PREFIX}/app.js` || path === `${PREFIX}/style.css`) {
      if (!isGet) return methodNotAllowed(ctx, 'GET, HEAD');
      const js = path.endsWith('.js');
      ctx.type = js ? 'text/javascript; charset=utf-8' : 'text/css; charset=utf-8';
      ctx.body = js ? assets.appJs : assets.styleCss;
      return;
    }

    if (path === PREFIX) {
      if (!isGet) return methodNotAllowed(ctx, 'GET, HEAD');
      return html(ctx, hasSession(ctx) ? 200 : 401, hasSession(ctx) ? assets.index : SIGN_IN_PAGE);
    }

    const trace = TRACE_PATH.exec(path);
    const isTraceQuery = path === `${PREFIX}/api/trace`;
    const isEvents = path === `${PREFIX}/api/events`;
    if (!trace && !isTraceQuery && !isEvents) return json(ctx, 404, { error: 'not_found' });
    if (!isGet) return methodNotAllowed(ctx, 'GET, HEAD');
    if (!hasSession(ctx)) {
      return json(ctx, 401, { error: 'unauthorized', error_description: 'a chain view session is required: run writ audit open' });
    }

    if (isEvents) {
      try {
        ctx.body = await searchAudit(deps.knex, parseSearchQuery(ctx.query));
      } catch (err) {
        if (err instanceof AuditQueryError) return json(ctx, 400, { error: 'invalid_request', error_description: err.message });
        throw err;
      }
      return;
    }
    let jti: unknown;
    if (trace) {
      try {
        jti = decodeURIComponent(trace[1]!);
      } catch {
        jti = undefined;
      }
    } else {
      jti = ctx.query.jti;
    }
    if (typeof jti !== 'string' || !JTI.test(jti)) return json(ctx, 400, { error: 'invalid_request', error_description: 'jti is malformed' });
    const found = await traceToken(deps.knex, jti);
    if (!found) return json(ctx, 404, { error: 'not_found', error_description: 'no token with this jti was issued' });
    ctx.body = found;
  };
}
