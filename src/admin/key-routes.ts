import type Router from '@koa/router';
import type { ParameterizedContext } from 'koa';
import { BodyError, readJsonBody } from '../http/json-body.ts';
import type { SigningAlg } from '../policy/model.ts';
import { DEFAULT_PREPUBLISH_SECONDS, KeyOperationError, removeKey, rotateKeys } from '../tokens/key-rotation.ts';
import type { ScheduledKey } from '../tokens/key-schedule.ts';
import { SIGNING_ALGS, type NewKey, type SigningKeyRing } from '../tokens/signing-keys.ts';
import type { AdminCaller } from './auth.ts';
import type { AdminRouteHelpers } from './route-helpers.ts';

export interface KeyRouteDeps {
  ring: SigningKeyRing;
  encryptionKey: Buffer;
}

const iso = (d: Date | null): string | null => d?.toISOString() ?? null;

export function describeKey(k: ScheduledKey): Record<string, unknown> {
  return {
    kid: k.kid, alg: k.alg, state: k.state, created_at: iso(k.createdAt), activates_at: iso(k.activatesAt),
    superseded_at: iso(k.supersededAt), published_until: iso(k.publishedUntil), removed_at: iso(k.removedAt),
  };
}

export const describeNew = (k: NewKey): Record<string, unknown> => ({ kid: k.kid, alg: k.alg, activates_at: k.activatesAt.toISOString() });

const ANSWER: Record<KeyOperationError['code'], [number, string]> = {
  invalid_request: [400, 'invalid_request'], unknown_kid: [404, 'not_found'], already_pending: [409, 'already_pending'], already_removed: [409, 'already_removed'],
};

/** `/admin/v1/keys`: Writ's signing keys, listed, rotated and removed under `writ:keys`. */
export function registerKeyRoutes(router: Router, helpers: AdminRouteHelpers, deps: KeyRouteDeps): void {
  const { knex, requires, audited, problem } = helpers;
  const who = (ctx: ParameterizedContext): { by: string; requestId?: string } => {
    const state = ctx.state as { requestId?: string; admin?: AdminCaller };
    return { by: state.admin?.clientId ?? 'admin', ...(state.requestId ? { requestId: state.requestId } : {}) };
  };
  const refused = (ctx: ParameterizedContext, err: unknown): void => {
    if (!(err instanceof KeyOperationError)) throw err;
    problem(ctx, ...ANSWER[err.code], err.message);
  };

  router.get('/keys', requires('writ:keys'), async (ctx) => {
    await deps.ring.reload();
    ctx.body = { keys: deps.ring.schedule().keys.map(describeKey) };
  });

  router.post('/keys/rotation', requires('writ:keys'), audited, async (ctx) => {
    const body = await readJsonBody(ctx).catch((e: unknown) => e) as { algs?: unknown; activate_in?: unknown } | BodyError;
    if (body instanceof BodyError) return problem(ctx, 400, 'invalid_request', body.message);
    if (!body || typeof body !== 'object' || Array.isArray(body)) return problem(ctx, 400, 'invalid_request', 'expected a JSON object');
    const { algs, activate_in: activateIn, ...rest } = body;
    if (Object.keys(rest).length) return problem(ctx, 400, 'invalid_request', `unknown member(s): ${Object.keys(rest).join(', ')}`);
    if (algs !== undefined && !(Array.isArray(algs) && algs.length > 0 && new Set(algs).size === algs.length && algs.every((a) => SIGNING_ALGS.includes(a as SigningAlg)))) {
      return problem(ctx, 400, 'invalid_request', `algs must list some of ${SIGNING_ALGS.join(', ')}`);
    }
    if (activateIn !== undefined && typeof activateIn !== 'number') return problem(ctx, 400, 'invalid_request', 'activate_in is a number of seconds');
    try {
      const created = await rotateKeys(knex, deps.encryptionKey, {
        ...(algs ? { algs: algs as SigningAlg[] } : {}),
        activateInSeconds: activateIn ?? DEFAULT_PREPUBLISH_SECONDS,
        ...who(ctx),
      });
      await deps.ring.reload();
      ctx.status = 201;
      ctx.body = { keys: created.map(describeNew) };
    } catch (err) {
      refused(ctx, err);
    }
  });

  router.post('/keys/:kid/removal', requires('writ:keys'), audited, async (ctx) => {
    try {
      const result = await removeKey(knex, deps.encryptionKey, { kid: ctx.params.kid!, ...who(ctx) });
      await deps.ring.reload();
      ctx.body = { removed: result.removed, replacement: result.replacement ? describeNew(result.replacement) : null };
    } catch (err) {
      refused(ctx, err);
    }
  });
}
