import type { CompiledPolicy } from '../policy/compiled.ts';
import type { ClientPolicy } from '../policy/model.ts';

export const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';

/** Writ's own metadata on each client, read back from `ctx.oidc.client` by Writ's handlers. */
export const WRIT_KIND = 'writ_kind';

/**
 * oidc-provider client metadata for a policy client. The `client_secret` field holds the keyed
 * hash, never the secret: `compareClientSecret` is replaced to hash what is presented.
 */
export function clientMetadata(client: ClientPolicy, secretHash: string | undefined): Record<string, unknown> | undefined {
  const base: Record<string, unknown> = {
    client_id: client.client_id,
    token_endpoint_auth_method: client.auth,
    // Every kind may ask, so that a non-agent is refused by Writ's grant with
    // `unauthorized_client` (docs/DESIGN.md §7) rather than by the provider's generic check.
    grant_types: client.kind === 'admin' ? [TOKEN_EXCHANGE, 'client_credentials'] : [TOKEN_EXCHANGE],
    response_types: [],
    redirect_uris: [],
    [WRIT_KIND]: client.kind,
    // What client_credentials may grant: an admin's writ:* scopes (only admins have the grant).
    ...(client.kind === 'admin' && client.scopes.length > 0 ? { scope: client.scopes.join(' ') } : {}),
  };
  if (client.auth === 'private_key_jwt') {
    if (client.jwks) base.jwks = client.jwks;
    else if (client.jwks_uri) base.jwks_uri = client.jwks_uri;
    else return undefined;
    return base;
  }
  if (!secretHash) return undefined;
  base.client_secret = secretHash;
  return base;
}

/** The adapter's `Client.find`: from the in-memory policy, never a database read. */
export function findClientMetadata(
  policy: CompiledPolicy,
  credentials: ReadonlyMap<string, string>,
  clientId: string,
): Record<string, unknown> | undefined {
  const client = policy.clients.get(clientId);
  return client ? clientMetadata(client, credentials.get(clientId)) : undefined;
}
