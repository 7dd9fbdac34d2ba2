import type { Middleware } from 'koa';
import type { Knex } from 'knex';
import { presentsLocalCredential } from '../admin/auth.ts';
import { bootstrapAdmin, ADMIN_SCOPES } from '../admin/bootstrap.ts';
import { readJsonStream } from './json-body.ts';
import { applyPolicyFilesWithDiff } from '../policy/versions.ts';
import type { AdminScope } from '../policy/model.ts';
import { PolicyApplyError } from '../policy/store.ts';
import { parseFilesBody } from '../admin/policy-version-routes.ts';

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
        const { secret, replaced } = await bootstrapAdmin(deps.knex, { clientId: b.client_id, scopes: scopes as AdminScope[], secretKey: deps.secretKey, by: typeof b.by === 'string' ? b.by : 'local-cli' });
        await deps.reloadPolicy();
        ctx.body = { client_id: b.client_id, client_secret: secret, replaced };
      } catch (err) {
        if (!(err instanceof PolicyApplyError)) throw err;
        ctx.status = 422;
        ctx.body = { error: 'invalid_request', error_description: err.message };
      }
      return;
    }
    const input = parseFilesBody(body);
    // The CLI always sends the variables its files reference, even none.
    if (typeof input === 'string' || !Object.hasOwn(body as object, 'env')) {
      ctx.status = 400;
      ctx.body = { error: 'invalid_request', error_description: 'expected {files: [{name, text}], env: {}}' };
      return;
    }
    const { message, appliedBy, allow_empty: allowEmpty } = body as { message?: unknown; appliedBy?: unknown; allow_empty?: unknown };
    const outcome = await applyPolicyFilesWithDiff(deps.knex, input.files, {
      keepSomeClient: allowEmpty !== true,
      env: input.env,
      selfIssuer: deps.selfIssuer,
      maxTtl: deps.maxTtl,
      appliedBy: typeof appliedBy === 'string' ? appliedBy : 'local-cli',
      message: typeof message === 'string' ? message : '',
      secretKey: deps.secretKey,
    });
    if (outcome.ok) await deps.reloadPolicy();
    ctx.status = outcome.ok ? 200 : 422;
    ctx.body = outcome;
  };
}
