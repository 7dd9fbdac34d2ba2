import type { ParameterizedContext } from 'koa';
import { errors } from 'oidc-provider';

/** oidc-provider's error classes, thrown by Writ's handlers so the provider renders them. */
export function oauthError(error: string, description: string, status = 400): Error {
  const err = new errors.CustomOIDCProviderError(error, description) as Error & { status: number; statusCode: number; expose: boolean };
  err.status = status;
  err.statusCode = status;
  err.expose = true;
  return err;
}

/** The database cannot be used right now: 503 with Retry-After, never a token or a refusal. */
export function unavailable(ctx: Pick<ParameterizedContext, 'set'> | undefined): Error {
  ctx?.set('Retry-After', '1');
  return oauthError('temporarily_unavailable', 'try again shortly', 503);
}
