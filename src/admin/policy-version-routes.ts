import type Router from '@koa/router';
import type { ParameterizedContext } from 'koa';
import { BodyError, readJsonBody } from '../http/json-body.ts';
import type { PolicyFile } from '../policy/load.ts';
import { loadPolicyFiles } from '../policy/load.ts';
import { diffPolicyFiles, exportVersion, rollbackTo, RollbackError } from '../policy/versions.ts';
import type { AdminCaller } from './auth.ts';
import type { AdminRouteHelpers } from './route-helpers.ts';

export interface PolicyVersionRouteDeps {
  issuer: string;
  maxTtl: number;
  secretKey: Buffer;
  /** Makes a new version take effect on this instance before answering. */
  reloadPolicy: () => Promise<void>;
}

export interface FilesBody {
  files: PolicyFile[];
  env: Record<string, string>;
}

/** `{files: [{name, text}], env?: {NAME: value}}`, or why not. */
export function parseFilesBody(body: unknown): FilesBody | string {
  if (!body || typeof body !== 'object' || Array.isArray(body)) return 'expected {files: [{name, text}], env?}';
  const b = body as Record<string, unknown>;
  if (!Array.isArray(b.files) || !b.files.every((f) => f && typeof f === 'object' && typeof (f as PolicyFile).name === 'string' && typeof (f as PolicyFile).text === 'string')) {
    return 'files must be a list of {name, text}';
  }
  if (b.env !== undefined && !(b.env && typeof b.env === 'object' && !Array.isArray(b.env) && Object.values(b.env).every((v) => typeof v === 'string'))) {
    return 'env must map names to strings';
  }
  return { files: (b.files as PolicyFile[]).map((f) => ({ name: f.name, text: f.text })), env: (b.env ?? {}) as Record<string, string> };
}

const iso = (d: Date): string => d.toISOString();

/** Versions are stored as PostgreSQL integers. */
export function isVersion(v: number): boolean {
  return Number.isInteger(v) && v >= 1 && v <= 2147483647;
}

/**
 * `/admin/v1/policy/{validate,diff,export,rollback}`: what `writ policy` does with files and
 * versions, for callers without the database (and for the CLI while `writ serve` holds the
 * embedded one). Validate and diff write nothing; rollback is a new version, audited (or, to the
 * policy already in force, nothing: `unchanged`).
 */
export function registerPolicyVersionRoutes(router: Router, helpers: AdminRouteHelpers, deps: PolicyVersionRouteDeps): void {
  const { knex, requires, audited, problem } = helpers;
  const load = { selfIssuer: deps.issuer, maxTtl: deps.maxTtl };

  const filesOf = async (ctx: ParameterizedContext): Promise<FilesBody | undefined> => {
    const body = await readJsonBody(ctx).catch((e: unknown) => e);
    const parsed = body instanceof BodyError ? body.message : parseFilesBody(body);
    if (typeof parsed === 'string') {
      problem(ctx, 400, 'invalid_request', parsed);
      return undefined;
    }
    return parsed;
  };

  router.post('/policy/validate', requires('writ:policy.read'), async (ctx) => {
    const input = await filesOf(ctx);
    if (!input) return;
    const loaded = loadPolicyFiles(input.files, { ...load, env: input.env });
    ctx.body = loaded.ok
      ? { valid: true, errors: [], warnings: loaded.warnings }
      : { valid: false, errors: loaded.errors, warnings: loaded.warnings };
  });

  // Diff compares the secrets it is given with the stored ones (changed or not): that answer
  // belongs to those who may set them, and each call is recorded.
  router.post('/policy/diff', requires('writ:policy.write'), audited, async (ctx) => {
    const input = await filesOf(ctx);
    if (!input) return;
    const outcome = await diffPolicyFiles(knex, input.files, { ...load, env: input.env, secretKey: deps.secretKey });
    if (!outcome.ok) return problem(ctx, 422, 'invalid_policy', 'the policy does not validate', { errors: outcome.errors, warnings: outcome.warnings });
    ctx.body = {
      base_version: outcome.base?.version ?? null,
      base_digest: outcome.base?.digest ?? null,
      changes: outcome.changes,
      warnings: outcome.warnings,
      clients_without_secret: outcome.clientsWithoutSecret,
    };
  });

  router.get('/policy/export', requires('writ:policy.read'), async (ctx) => {
    const raw = ctx.query.version;
    let version: number | undefined;
    if (raw !== undefined) {
      version = Number(raw);
      if (typeof raw !== 'string' || !isVersion(version)) return problem(ctx, 400, 'invalid_request', 'version must be a positive integer');
    }
    const exported = await exportVersion(knex, version);
    if (!exported) return problem(ctx, 404, 'not_found', version === undefined ? 'no policy has been applied' : 'no such version');
    ctx.set('X-Writ-Policy-Version', String(exported.version.version));
    ctx.type = 'application/yaml; charset=utf-8';
    ctx.body = exported.yaml;
  });

  router.post('/policy/rollback', requires('writ:policy.write'), audited, async (ctx) => {
    const body = await readJsonBody(ctx).catch((e: unknown) => e) as { version?: unknown; message?: unknown } | BodyError;
    if (body instanceof BodyError) return problem(ctx, 400, 'invalid_request', body.message);
    const { version, message } = (body && typeof body === 'object' && !Array.isArray(body) ? body : {}) as { version?: unknown; message?: unknown };
    if (typeof version !== 'number' || !isVersion(version)) return problem(ctx, 400, 'invalid_request', 'version must be a positive integer');
    if (message !== undefined && typeof message !== 'string') return problem(ctx, 400, 'invalid_request', 'message must be a string');
    try {
      const result = await rollbackTo(knex, version, {
        appliedBy: (ctx.state as { admin?: AdminCaller }).admin?.clientId ?? 'admin',
        message: message ?? `rollback to version ${version}`,
        secretKey: deps.secretKey,
        callerScopes: (ctx.state as { admin?: AdminCaller }).admin?.scopes ?? new Set(),
        validate: load,
      });
      await deps.reloadPolicy();
      ctx.body = {
        version: result.version.version,
        digest: result.version.digest,
        created_at: iso(result.version.createdAt),
        previous_version: result.previousVersion,
        changes: result.changes,
        // True when the target's policy is the one in force: no version was created, `version` stays.
        unchanged: result.unchanged,
      };
    } catch (err) {
      if (!(err instanceof RollbackError)) throw err;
      if (err.missing) return problem(ctx, 404, 'not_found', err.message);
      problem(ctx, 422, 'rollback_refused', err.message);
    }
  });
}
