import { randomBytes } from 'node:crypto';
import type { Knex } from 'knex';
import type { Middleware, ParameterizedContext } from 'koa';
import Provider, { errors, type Configuration, type KoaContextWithOIDC } from 'oidc-provider';
import { verifyClientSecret } from '../tokens/kek.ts';
import type { SigningKeys } from '../tokens/signing-keys.ts';
import { KnexAdapter, PolicyClientAdapter } from './adapter.ts';
import { AdminTokenAdapter } from './admin-token-adapter.ts';
import { ADMIN_SCOPES } from '../admin/bootstrap.ts';
import { TOKEN_EXCHANGE, WRIT_KIND } from './client-metadata.ts';
import { patchStructuredTokenActions, registerStructuredTokenHandlers } from './internals.ts';

export interface ProviderOptions {
  issuer: string;
  keys: SigningKeys;
  knex: () => Knex;
  findClient: (clientId: string) => Record<string, unknown> | undefined;
  secretKey: Buffer;
  trustProxy: boolean;
  grant: {
    params: readonly string[];
    repeatable: readonly string[];
    handler: (ctx: KoaContextWithOIDC) => Promise<void>;
  };
  introspect: Middleware;
  revoke: Middleware;
  extraRevocationParams: (ctx: ParameterizedContext) => string[];
  /** An admin token not issued because its record could not be stored (answered 503). */
  onStorageError: (message: string, requestId: string | null) => void;
}

const CLIENT_AUTHENTICATED = Symbol('writ.clientAuthenticated');

function markClientAuthenticated(ctx: ParameterizedContext | undefined): void {
  if (ctx) (ctx.state as Record<symbol, unknown>)[CLIENT_AUTHENTICATED] = true;
}

/**
 * Whether the request's client passed client authentication. The provider names the client
 * (`ctx.oidc.client`) before it checks any credential and refuses some requests after that with
 * a 400, so neither the client nor the status tells.
 */
export function clientAuthenticated(ctx: ParameterizedContext): boolean {
  // A replayed assertion is refused (401) after its other checks passed.
  return (ctx.state as Record<symbol, unknown>)[CLIENT_AUTHENTICATED] === true && ctx.status !== 401;
}

export const ROUTES = {
  token: '/token',
  introspection: '/token/introspection',
  revocation: '/token/revocation',
  jwks: '/jwks',
} as const;

/** Paths the provider always mounts but a token service has no use for. */
const UNUSED_PATHS = [/^\/auth(\/|$)/, /^\/session\/end/, /^\/\.well-known\/openid-configuration$/];

/** Discovery members that describe the OpenID Connect surface Writ does not offer. */
const UNOFFERED_METADATA = [
  'authorization_endpoint', 'claims_parameter_supported', 'claims_supported', 'code_challenge_methods_supported',
  'end_session_endpoint', 'id_token_signing_alg_values_supported', 'request_parameter_supported',
  'request_uri_parameter_supported', 'require_request_uri_registration', 'response_modes_supported',
  'scopes_supported', 'subject_types_supported', 'userinfo_endpoint',
  'claim_types_supported', 'authorization_response_iss_parameter_supported',
];

export function createProvider(options: ProviderOptions): Provider {
  patchStructuredTokenActions();
  const configuration: Configuration = {
    adapter: (name: string) => (name === 'Client'
      ? new PolicyClientAdapter(options.findClient)
      : name === 'ClientCredentials' ? new AdminTokenAdapter(name, options.knex, options.onStorageError) : new KnexAdapter(name, options.knex)),
    clientAuthMethods: ['client_secret_basic', 'client_secret_post', 'private_key_jwt'],
    responseTypes: [],
    // Only admin clients obtain tokens with these, through client_credentials, for the admin API.
    scopes: [...ADMIN_SCOPES],
    claims: {},
    jwks: { keys: [...options.keys.active.values()].map((k) => k.privateJwk) } as Configuration['jwks'],
    enabledJWA: {
      clientAuthSigningAlgValues: ['RS256', 'PS256', 'ES256', 'EdDSA', 'Ed25519'],
    },
    extraClientMetadata: { properties: [WRIT_KIND] },
    features: {
      devInteractions: { enabled: false },
      userinfo: { enabled: false },
      rpInitiatedLogout: { enabled: false },
      pushedAuthorizationRequests: { enabled: false },
      registration: { enabled: false },
      clientCredentials: { enabled: true },
      introspection: { enabled: true },
      revocation: { enabled: true },
      // Off until sender-constrained tokens are built; the grant refuses a DPoP header.
      dPoP: { enabled: false },
    },
    routes: { ...ROUTES },
    cookies: { keys: [randomBytes(32).toString('base64url')] },
    // `Origin` is no credential at the client endpoints. Refused here, a request carrying it got a
    // 400 once the client was named, before any secret was checked (an unknown client, a 401): an
    // oracle of client ids. Let through, the origin is still granted nothing: Writ's app removes
    // every Access-Control header from those endpoints' answers and answers no preflight.
    clientBasedCORS: () => true,
    renderError: async (ctx, out) => {
      ctx.type = 'application/json';
      ctx.body = out;
    },
    ttl: { AccessToken: 60, ClientCredentials: 600, Grant: 60 },
    // Called once the assertion's signature, iss, sub, exp and an accepted aud have been checked;
    // only its jti's replay check follows, and that refusal is a 401.
    assertJwtClientAuthClaimsAndHeader: async (ctx, claims) => {
      // draft-ietf-oauth-rfc7523bis §5: "the audience value MUST be the issuer identifier of the
      // authorization server as a single string". The provider would also take an array, or the
      // URL of the endpoint built from the request's Host, so an assertion made for another
      // server could be replayed here.
      if (claims.aud !== options.issuer) throw new errors.InvalidClientAuth('audience (aud) must be the issuer identifier');
      markClientAuthenticated(ctx);
    },
  };
  const provider = new Provider(options.issuer, configuration);
  registerStructuredTokenHandlers(provider, {
    introspect: options.introspect,
    revoke: options.revoke,
    extraRevocationParams: options.extraRevocationParams,
  });
  provider.proxy = options.trustProxy;

  // Client secrets are stored as keyed hashes: hash what is presented and compare in constant time.
  const secretKey = options.secretKey;
  (provider.Client.prototype as unknown as { compareClientSecret: (this: { clientId: string; clientSecret: string }, actual: string) => Promise<boolean> })
    .compareClientSecret = async function compareClientSecret(actual: string) {
      const matches = verifyClientSecret(secretKey, this.clientId, actual, this.clientSecret);
      if (matches) markClientAuthenticated(Provider.ctx);
      return matches;
    };

  provider.registerGrantType(TOKEN_EXCHANGE, options.grant.handler, [...options.grant.params], [...options.grant.repeatable]);

  provider.use(async (ctx, next) => {
    if (UNUSED_PATHS.some((re) => re.test(ctx.path))) {
      ctx.status = 404;
      ctx.body = { error: 'not_found' };
      return;
    }
    await next();
    if (ctx.oidc?.route === 'discovery' && ctx.status === 200 && ctx.body && typeof ctx.body === 'object') {
      const body = ctx.body as Record<string, unknown>;
      for (const key of UNOFFERED_METADATA) delete body[key];
      // Endpoint URLs come from the configured issuer, not from whatever Host the request named.
      for (const [key, value] of Object.entries(body)) {
        if ((key.endsWith('_endpoint') || key === 'jwks_uri') && typeof value === 'string') {
          body[key] = `${options.issuer}${new URL(value).pathname}`;
        }
      }
      body.task_revocation_endpoint = `${options.issuer}/task/revocation`;
      // The same client authentication is accepted at every endpoint (RFC 8414 §2).
      for (const endpoint of ['introspection', 'revocation']) {
        body[`${endpoint}_endpoint_auth_methods_supported`] ??= body.token_endpoint_auth_methods_supported;
        body[`${endpoint}_endpoint_auth_signing_alg_values_supported`] ??= body.token_endpoint_auth_signing_alg_values_supported;
      }
    }
  });
  return provider;
}
