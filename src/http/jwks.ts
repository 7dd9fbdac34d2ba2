import type { Middleware } from 'koa';
import type { SigningKeys } from '../tokens/signing-keys.ts';

/**
 * Resource servers cache the JWKS; this bounds how long. It must stay well below the
 * pre-publication window of a rotation (24 h by default), so every cache holds a new key
 * before it signs (standards notes O4).
 */
export const JWKS_MAX_AGE_SECONDS = 300;

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
