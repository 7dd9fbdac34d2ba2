import type { Middleware } from 'koa';
import { JWKS_MAX_AGE_SECONDS, type SigningKeys } from '../tokens/signing-keys.ts';

/**
 * GET /jwks from the keys this instance holds now: the provider's own JWKS route would serve
 * the keys it was constructed with, and keys change while Writ runs (src/tokens/key-schedule.ts).
 * Other methods fall through to the provider, which answers them as before.
 */
export function jwksRoute(path: string, keys: () => SigningKeys): Middleware {
  return async (ctx, next) => {
    if (ctx.path !== path || (ctx.method !== 'GET' && ctx.method !== 'HEAD')) return next();
    ctx.set('Access-Control-Allow-Origin', '*');
    ctx.set('Cache-Control', `public, max-age=${JWKS_MAX_AGE_SECONDS}`);
    ctx.type = 'application/jwk-set+json; charset=utf-8';
    ctx.body = JSON.stringify(keys().publicJwks);
  };
}
