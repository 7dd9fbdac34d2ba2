import { userInfo } from 'node:os';
import { recordAudit } from '../audit/event.ts';
import { createLoginToken, DEFAULT_LOGIN_TTL_SECONDS, type LoginToken } from '../audit/view-login.ts';
import { openCliDatabase } from './cli-database.ts';
import { UsageError, type CliContext } from './context.ts';
import { runningServer } from './local-server.ts';

/** Who asked, for the audit record; printable ASCII only, as the local endpoint wants it. */
function whoAsked(): string {
  let user = 'unknown';
  try {
    user = userInfo().username;
  } catch {
    // No passwd entry (some containers).
  }
  const name = `writ audit open (${user})`.replace(/[^\x20-\x7e]/g, '?');
  return name.slice(0, 100);
}

/**
 * `writ audit open`: a one-time login URL for the chain view. The token is created on the
 * database directly or, on the embedded database while `writ serve` holds the data dir, by that
 * server through its local endpoint (docs/DESIGN.md §8).
 */
export async function auditOpen(ctx: CliContext, args: string[] = []): Promise<number> {
  if (args.length > 0) throw new UsageError('audit open takes no arguments');
  const { config } = ctx;
  const createdBy = whoAsked();
  const server = config.databaseUrl ? undefined : runningServer(config.dataDir);
  let login: LoginToken;
  if (server) {
    let response: Response;
    try {
      response = await fetch(`${server.url}/audit/view/local/login`, {
        method: 'POST',
        headers: { authorization: `Bearer ${server.token}`, 'content-type': 'application/json' },
        body: JSON.stringify({ created_by: createdBy }),
      });
    } catch (err) {
      ctx.err(`writ serve (pid ${server.pid}) holds ${config.dataDir} but did not answer at ${server.url}: ${(err as Error).message}`);
      return 1;
    }
    const body = await response.json().catch(() => undefined) as { token?: unknown; expires_at?: unknown; error_description?: unknown } | undefined;
    if (response.status !== 201 || typeof body?.token !== 'string' || typeof body.expires_at !== 'string') {
      ctx.err(`writ serve (pid ${server.pid}) refused to create a login: HTTP ${response.status}${typeof body?.error_description === 'string' ? ` (${body.error_description})` : ''}`);
      if (response.status === 404) ctx.err('That server may predate the chain view: restart it with this version of Writ.');
      return 1;
    }
    login = { token: body.token, expiresAt: new Date(body.expires_at) };
  } else {
    const db = await openCliDatabase(ctx, { poolMax: 2 });
    try {
      login = await createLoginToken(db.knex, { createdBy });
      await recordAudit(db.knex, {
        type: 'admin.action', outcome: 'ok',
        details: { action: 'audit_view_login_created', created_by: createdBy, expires_at: login.expiresAt.toISOString() },
      });
    } finally {
      await db.close();
    }
  }
  const minutes = Math.round(DEFAULT_LOGIN_TTL_SECONDS / 60);
  ctx.out('Open this URL in a browser to sign in to the chain view:');
  ctx.out('');
  ctx.out(`  ${config.issuer}/audit/view/login?token=${login.token}`);
  ctx.out('');
  ctx.out(`It expires in ${minutes} minutes (${login.expiresAt.toISOString().replace(/\.\d{3}Z$/, 'Z')}) and works once; the session it starts lasts 8 hours.`);
  if (!config.databaseUrl && !server) {
    ctx.err(`No writ serve is running on ${config.dataDir}: start one before the link expires.`);
  }
  return 0;
}
