import { errors } from 'oidc-provider';

/** oidc-provider's error classes, thrown by Writ's handlers so the provider renders them. */
export function oauthError(error: string, description: string, status = 400): Error {
  const err = new errors.CustomOIDCProviderError(error, description) as Error & { status: number; statusCode: number; expose: boolean };
  err.status = status;
  err.statusCode = status;
  err.expose = true;
  return err;
}
