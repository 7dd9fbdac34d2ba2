import type { Middleware } from 'koa';
import type { Knex } from 'knex';
import { presentsLocalCredential } from '../admin/auth.ts';
import { bootstrapAdmin, ADMIN_SCOPES } from '../admin/bootstrap.ts';
import { readJsonStream } from './json-body.ts';
import { applyPolicyFilesWithDiff } from '../policy/versions.ts';
import type { AdminScope } from '../policy/model.ts';
import { PolicyApplyError } from '../policy/store.ts';
import type { PolicyFile } from '../policy/load.ts';

export interface LocalAdminDeps {
  /** The credential `writ serve` wrote to its data dir; undefined when there is none. */
  localToken: () => string | undefined;
  knex: Knex;
  selfIssuer: string;
  maxTtl: number;
  secretKey: Buffer;
  /** Makes the new version take effect on this instance before answering. */
  reloadPolicy: () => Promise<void>;
}

interface ApplyBody {
  files: PolicyFile[];
  env: Record<string, string>;
  message?: string;
  appliedBy?: string;
}

function isApplyBody(v: unknown): v is ApplyBody {
  if (!v || typeof v !== 'object') return false;
  const b = v as Record<string, unknown>;
  return Array.isArray(b.files)
    && b.files.every((f) => f && typeof f === 'object' && typeof (f as PolicyFile).name === 'string' && typeof (f as PolicyFile).text === 'string')
    && !!b.env && typeof b.env === 'object'
    && Object.values(b.env as object).every((x) => typeof x === 'string');
}

/**
 * The CLI's channel to a running `writ serve` on the embedded database: the same policy apply
 * the CLI would run itself, authenticated by the local credential in the data dir.
 */
export function localAdmin(deps: LocalAdminDeps): Middleware {
  return async (ctx, next) => {
    if (ctx.path !== '/admin/v1/local/policy/apply' && ctx.path !== '/admin/v1/local/admin/bootstrap') return next();
    ctx.set('Cache-Control', 'no-store');
    if (ctx.method !== 'POST') {
      ctx.status = 405;
      ctx.set('Allow', 'POST');
      return;
    }
    if (!presentsLocalCredential(ctx, deps.localToken())) {
      ctx.status = 401;
      ctx.set('WWW-Authenticate', 'Bearer');
      ctx.body = { error: 'invalid_token' };
      return;
    }
    let body: unknown;
    try {
      body = await readJsonStream(ctx.req, 1024 * 1024);
    } catch {
      ctx.status = 400;
      ctx.body = { error: 'invalid_request', error_description: 'expected a JSON body' };
      return;
    }
    if (ctx.path === '/admin/v1/local/admin/bootstrap') {
      const b = (body && typeof body === 'object' ? body : {}) as { client_id?: unknown; scopes?: unknown; by?: unknown };
      const scopes = Array.isArray(b.scopes) ? b.scopes : ADMIN_SCOPES;
      if (typeof b.client_id !== 'string' || !scopes.every((s) => ADMIN_SCOPES.includes(s as AdminScope))) {
        ctx.status = 400;
        ctx.body = { error: 'invalid_request', error_description: 'expected {client_id, scopes?}' };
        return;
      }
      try {
        const { secret } = await bootstrapAdmin(deps.knex, { clientId: b.client_id, scopes: scopes as AdminScope[], secretKey: deps.secretKey, by: typeof b.by === 'string' ? b.by : 'local-cli' });
        await deps.reloadPolicy();
        ctx.body = { client_id: b.client_id, client_secret: secret };
      } catch (err) {
        if (!(err instanceof PolicyApplyError)) throw err;
        ctx.status = 422;
        ctx.body = { error: 'invalid_request', error_description: err.message };
      }
      return;
    }
    if (!isApplyBody(body)) {
      ctx.status = 400;
      ctx.body = { error: 'invalid_request', error_description: 'expected {files: [{name, text}], env: {}}' };
      return;
    }
    const outcome = await applyPolicyFilesWithDiff(deps.knex, body.files, {
      env: body.env,
      selfIssuer: deps.selfIssuer,
      maxTtl: deps.maxTtl,
      appliedBy: body.appliedBy ?? 'local-cli',
      message: body.message ?? '',
      secretKey: deps.secretKey,
    });
    if (outcome.ok) await deps.reloadPolicy();
    ctx.status = outcome.ok ? 200 : 422;
    ctx.body = outcome;
  };
}
