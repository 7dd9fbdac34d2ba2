import Router, { type RouterMiddleware } from '@koa/router';
import type { Knex } from 'knex';
import type { Middleware, ParameterizedContext } from 'koa';
import type Provider from 'oidc-provider';
import { stringify } from 'yaml';
import { recordAudit } from '../audit/event.ts';
import type { LineageCache } from '../exchange/lineage-store.ts';
import { applyPolicyFiles } from '../policy/apply.ts';
import type { CompiledPolicy } from '../policy/compiled.ts';
import type { PolicyIssue } from '../policy/validate.ts';
import type { AdminScope, PolicyDocument } from '../policy/model.ts';
import { currentVersion, PolicyVersionMoved } from '../policy/store.ts';
import { KILL_SWITCH_KINDS, killSwitch, killSwitchTime, killSwitchWarnings } from '../revocation/kill-switch.ts';
import type { KillSwitchKind } from '../revocation/revoke.ts';
import { BodyError, readJsonBody } from '../http/json-body.ts';
import { isPlainText } from '../store/text.ts';
import { authenticateAdmin, type AdminCaller } from './auth.ts';
import { ExplainInputError, explain, parseExplainRequest } from './explain.ts';
import { registerKeyRoutes, type KeyRouteDeps } from './key-routes.ts';
import { isVersion, parseFilesBody, registerPolicyVersionRoutes } from './policy-version-routes.ts';
import type { AdminRouteHelpers } from './route-helpers.ts';

export interface AdminDeps {
  provider: Provider;
  knex: Knex;
  policy: () => CompiledPolicy;
  /** Reloads this instance's policy after a change, and its revoked set (a client disabled). */
  reloadPolicy: () => Promise<void>;
  localToken: () => string | undefined;
  lineage: LineageCache;
  issuer: string;
  maxTtl: number;
  secretKey: Buffer;
  keys: KeyRouteDeps;
  /** Brings this instance's revoked set up to date (after a kill switch). */
  syncRevocations: () => Promise<void>;
}

type Ctx = ParameterizedContext<{ requestId?: string; admin?: AdminCaller }> & { params: Record<string, string> };

const COLLECTIONS = {
  issuers: 'issuer',
  clients: 'client_id',
  audiences: 'audience',
  rules: 'id',
} as const satisfies Record<string, string>;
type Collection = keyof typeof COLLECTIONS;

function isCollection(name: string): name is Collection {
  return Object.hasOwn(COLLECTIONS, name);
}

function problem(ctx: Ctx, status: number, error: string, description?: string, extra: Record<string, unknown> = {}): void {
  ctx.status = status;
  ctx.body = { error, ...(description ? { error_description: description } : {}), ...extra };
}

/**
 * `/admin/v1`: policy objects and versions (validate, diff, export, rollback), explain, kill
 * switches, signing keys. Every call is authorised by
 * scope and every change is audited with the admin client that made it.
 */
export function adminRoutes(deps: AdminDeps): Middleware {
  const router = new Router({ prefix: '/admin/v1' });

  const requires = (scope: AdminScope): RouterMiddleware => async (ctx, next) => {
    ctx.set('Cache-Control', 'no-store');
    const result = await authenticateAdmin(ctx, deps, scope);
    if (!result.ok) {
      ctx.set('WWW-Authenticate', `Bearer realm="writ", error="${result.error}"${result.error === 'insufficient_scope' ? `, scope="${scope}"` : ''}`);
      problem(ctx as Ctx, result.status, result.error);
      return;
    }
    (ctx.state as { admin?: AdminCaller }).admin = result.caller;
    await next();
  };

  /** Audits every call that changes something, whatever its outcome. */
  const audited: RouterMiddleware = async (ctx, next) => {
    try {
      await next();
    } finally {
      const state = ctx.state as { requestId?: string; admin?: AdminCaller };
      await recordAudit(deps.knex, {
        type: 'admin.action',
        outcome: ctx.status < 400 ? 'ok' : 'rejected',
        requestId: state.requestId ?? null,
        clientId: state.admin?.clientId ?? null,
        details: { method: ctx.method, path: ctx.path, status: ctx.status },
      });
    }
  };

  /**
   * One object's change: read the current document, edit it, apply it as the next version. The
   * apply is refused if another change landed in between (it would be lost), and the edit is
   * made again on the newer document.
   */
  const editDocument = async (ctx: Ctx, edit: (document: PolicyDocument) => { document: PolicyDocument; message: string } | undefined): Promise<void> => {
    for (let attempt = 0; ; attempt += 1) {
      const { version, document } = await currentDocument();
      const change = edit(document);
      if (!change) return problem(ctx, 404, 'not_found');
      try {
        return await applyDocument(ctx, change.document, change.message, version);
      } catch (err) {
        if (!(err instanceof PolicyVersionMoved)) throw err;
        if (attempt >= 9) return problem(ctx, 409, 'conflict', 'the policy kept changing; try again');
      }
    }
  };

  /**
   * An edit's findings without a file, line or column: those would point into the whole
   * document Writ wrote from the edit, which the caller never saw. `path` locates each.
   */
  const unlocated = (issues: PolicyIssue[]): PolicyIssue[] => issues.map(({ file: _file, line: _line, column: _column, ...rest }) => rest);

  const applyDocument = async (ctx: Ctx, document: PolicyDocument, message: string, baseVersion: number): Promise<void> => {
    // Through the same loader as files, so the API gets every check the CLI does.
    const text = stringify(document);
    const outcome = await applyPolicyFiles(deps.knex, [{ name: 'admin-api.yaml', text }], {
      env: {}, selfIssuer: deps.issuer, maxTtl: deps.maxTtl, baseVersion,
      appliedBy: (ctx.state as { admin?: AdminCaller }).admin?.clientId ?? 'admin', message, secretKey: deps.secretKey,
      callerScopes: (ctx.state as { admin?: AdminCaller }).admin?.scopes ?? new Set(),
    });
    if (!outcome.ok) {
      problem(ctx, 422, 'invalid_policy', 'the change does not validate', { errors: unlocated(outcome.errors), warnings: unlocated(outcome.warnings) });
      return;
    }
    await deps.reloadPolicy();
    ctx.status = 200;
    ctx.body = { version: outcome.version, digest: outcome.digest, warnings: unlocated(outcome.warnings), unchanged: outcome.unchanged };
  };

  const currentDocument = async (): Promise<{ version: number; document: PolicyDocument }> => {
    const stored = await currentVersion(deps.knex);
    return {
      version: stored?.version ?? 0,
      document: stored?.document ?? { issuers: [], clients: [], audiences: [], rules: [], settings: { max_depth_cap: 5 } },
    };
  };

  const helpers: AdminRouteHelpers = { knex: deps.knex, requires, audited, problem: (ctx, status, error, description, extra) => problem(ctx as Ctx, status, error, description, extra) };
  // Before /policy/:collection, which would take `export` for a collection name.
  registerPolicyVersionRoutes(router, helpers, { issuer: deps.issuer, maxTtl: deps.maxTtl, secretKey: deps.secretKey, reloadPolicy: deps.reloadPolicy });

  router.get('/policy', requires('writ:policy.read'), async (ctx) => {
    const stored = await currentVersion(deps.knex);
    if (!stored) return problem(ctx as Ctx, 404, 'not_found', 'no policy has been applied');
    ctx.body = { version: stored.version, created_at: stored.createdAt, applied_by: stored.appliedBy, message: stored.message, digest: stored.digest, document: stored.document };
  });

  router.get('/policy/versions', requires('writ:policy.read'), async (ctx) => {
    const requested = Number(ctx.query.limit ?? 50);
    const limit = Number.isInteger(requested) && requested > 0 ? Math.min(requested, 500) : 50;
    const rows = await deps.knex('policy_versions').select('version', 'created_at', 'applied_by', 'message', 'digest').orderBy('version', 'desc').limit(limit);
    ctx.body = { versions: rows };
  });

  router.get('/policy/versions/:version', requires('writ:policy.read'), async (ctx) => {
    const version = Number(ctx.params.version);
    const row = isVersion(version) ? await deps.knex('policy_versions').where({ version }).first() : undefined;
    if (!row) return problem(ctx as Ctx, 404, 'not_found', 'no such version');
    ctx.body = row;
  });

  router.get('/policy/:collection', requires('writ:policy.read'), async (ctx) => {
    const { collection } = ctx.params;
    if (!isCollection(collection!)) return problem(ctx as Ctx, 404, 'not_found');
    const { version, document } = await currentDocument();
    ctx.body = { version, [collection]: document[collection] };
  });

  router.get('/policy/:collection/:id', requires('writ:policy.read'), async (ctx) => {
    const { collection, id } = ctx.params;
    if (!isCollection(collection!)) return problem(ctx as Ctx, 404, 'not_found');
    const key = COLLECTIONS[collection];
    const { version, document } = await currentDocument();
    const item = (document[collection] as unknown as Array<Record<string, unknown>>).find((o) => o[key] === id);
    if (!item) return problem(ctx as Ctx, 404, 'not_found');
    ctx.body = { version, item };
  });

  router.put('/policy', requires('writ:policy.write'), audited, async (ctx) => {
    const body = await readJsonBody(ctx).catch((e: unknown) => e);
    if (body instanceof BodyError) return problem(ctx as Ctx, 400, 'invalid_request', body.message);
    const input = parseFilesBody(body);
    if (typeof input === 'string') return problem(ctx as Ctx, 400, 'invalid_request', input);
    const { message, allow_empty: allowEmpty } = body as { message?: unknown; allow_empty?: unknown };
    if (allowEmpty !== undefined && typeof allowEmpty !== 'boolean') return problem(ctx as Ctx, 400, 'invalid_request', 'allow_empty must be a boolean');
    const outcome = await applyPolicyFiles(deps.knex, input.files, {
      env: input.env, selfIssuer: deps.issuer, maxTtl: deps.maxTtl,
      appliedBy: (ctx.state as { admin?: AdminCaller }).admin!.clientId, message: String(message ?? ''), secretKey: deps.secretKey,
      callerScopes: (ctx.state as { admin?: AdminCaller }).admin!.scopes,
      keepSomeClient: allowEmpty !== true,
    });
    if (!outcome.ok) return problem(ctx as Ctx, 422, 'invalid_policy', 'the policy does not validate', { errors: outcome.errors, warnings: outcome.warnings });
    await deps.reloadPolicy();
    ctx.body = { version: outcome.version, digest: outcome.digest, warnings: outcome.warnings, unchanged: outcome.unchanged };
  });

  router.put('/policy/:collection/:id', requires('writ:policy.write'), audited, async (ctx) => {
    const { collection, id } = ctx.params;
    if (!isCollection(collection!)) return problem(ctx as Ctx, 404, 'not_found');
    const body = await readJsonBody(ctx).catch((e: unknown) => e);
    if (body instanceof BodyError || typeof body !== 'object' || body === null || Array.isArray(body)) {
      return problem(ctx as Ctx, 400, 'invalid_request', body instanceof BodyError ? body.message : 'expected a JSON object');
    }
    const key = COLLECTIONS[collection];
    const item = { ...(body as Record<string, unknown>), [key]: id };
    await editDocument(ctx as Ctx, (document) => {
      const list = [...(document[collection] as unknown as Array<Record<string, unknown>>)];
      const at = list.findIndex((o) => o[key] === id);
      if (at >= 0) list[at] = item;
      else list.push(item);
      return { document: { ...document, [collection]: list } as PolicyDocument, message: `${at >= 0 ? 'update' : 'add'} ${collection} ${id}` };
    });
  });

  router.delete('/policy/:collection/:id', requires('writ:policy.write'), audited, async (ctx) => {
    const { collection, id } = ctx.params;
    if (!isCollection(collection!)) return problem(ctx as Ctx, 404, 'not_found');
    const key = COLLECTIONS[collection];
    await editDocument(ctx as Ctx, (document) => {
      const list = (document[collection] as unknown as Array<Record<string, unknown>>).filter((o) => o[key] !== id);
      if (list.length === document[collection].length) return undefined;
      return { document: { ...document, [collection]: list } as PolicyDocument, message: `remove ${collection} ${id}` };
    });
  });

  router.post('/clients/:id/:action', requires('writ:policy.write'), audited, async (ctx) => {
    const { id, action } = ctx.params;
    if (action !== 'disable' && action !== 'enable') return problem(ctx as Ctx, 404, 'not_found');
    await editDocument(ctx as Ctx, (document) => {
      if (!document.clients.some((c) => c.client_id === id)) return undefined;
      const clients = document.clients.map((c) => (c.client_id === id ? { ...c, enabled: action === 'enable' } : c));
      return { document: { ...document, clients }, message: `${action} client ${id}` };
    });
  });

  router.post('/explain', requires('writ:policy.read'), async (ctx) => {
    const body = await readJsonBody(ctx).catch((e: unknown) => e);
    if (body instanceof BodyError) return problem(ctx as Ctx, 400, 'invalid_request', body.message);
    try {
      ctx.body = await explain({ policy: deps.policy(), knex: deps.knex, lineage: deps.lineage, issuer: deps.issuer, maxTtl: deps.maxTtl }, parseExplainRequest(body), Math.floor(Date.now() / 1000));
    } catch (err) {
      if (err instanceof ExplainInputError) return problem(ctx as Ctx, 400, 'invalid_request', err.message);
      throw err;
    }
  });

  router.get('/revocations', requires('writ:revoke'), async (ctx) => {
    const rows = await deps.knex('revocations').whereIn('kind', [...KILL_SWITCH_KINDS, 'task']).orderBy('created_at', 'desc').limit(500)
      .select('kind', 'value', 'not_before', 'created_at', 'revoked_by');
    ctx.body = { revocations: rows };
  });

  router.post('/revocations', requires('writ:revoke'), audited, async (ctx) => {
    const body = await readJsonBody(ctx).catch((e: unknown) => e) as { kind?: unknown; value?: unknown; before?: unknown } | BodyError;
    if (body instanceof BodyError) return problem(ctx as Ctx, 400, 'invalid_request', body.message);
    const { kind, value, before } = body ?? {};
    if (typeof kind !== 'string' || !KILL_SWITCH_KINDS.includes(kind as KillSwitchKind)) return problem(ctx as Ctx, 400, 'invalid_request', `kind must be one of ${KILL_SWITCH_KINDS.join(', ')}`);
    if (typeof value !== 'string' || value === '' || value.length > 2048) return problem(ctx as Ctx, 400, 'invalid_request', 'value is required');
    // Client ids, rule ids, issuers and subjects are plain text; nothing else can be marked.
    if (!isPlainText(value)) return problem(ctx as Ctx, 400, 'invalid_request', 'value holds control characters or broken UTF-16');
    if (before !== undefined && typeof before !== 'string') return problem(ctx as Ctx, 400, 'invalid_request', 'before must be an ISO 8601 time');
    const notBefore = killSwitchTime(before);
    if (!(notBefore instanceof Date)) return problem(ctx as Ctx, 400, 'invalid_request', notBefore.error);
    const state = ctx.state as { requestId?: string; admin?: AdminCaller };
    const result = await killSwitch(deps.knex, { kind: kind as KillSwitchKind, value, notBefore, revokedBy: state.admin!.clientId, ...(state.requestId ? { requestId: state.requestId } : {}) });
    await deps.syncRevocations();
    const policy = deps.policy();
    const warnings = killSwitchWarnings({
      clients: policy.clients.keys(),
      rules: [...policy.rules.values()].flatMap((rules) => rules.map((r) => r.id)),
      issuers: policy.issuers.keys(),
    }, kind as KillSwitchKind, value);
    ctx.status = 201;
    ctx.body = { kind, value, not_before: result.notBefore.toISOString(), tokens_revoked_by_jti: result.tokens, ...(warnings.length > 0 ? { warnings } : {}) };
  });

  registerKeyRoutes(router, helpers, deps.keys);

  return async (ctx, next) => {
    if (!ctx.path.startsWith('/admin/v1/') || ctx.path.startsWith('/admin/v1/local/') || ctx.path.startsWith('/admin/v1/audit/')) return next();
    await router.routes()(ctx as never, async () => undefined);
    if (ctx.status === 404 && ctx.body === undefined) problem(ctx as Ctx, 404, 'not_found');
    else if (ctx.status === 405 || ctx.status === 501) problem(ctx as Ctx, ctx.status, 'method_not_allowed');
  };
}
