import type { ClientPolicy } from './model.ts';
import { canonicalJson } from '../canonical-json.ts';

/**
 * The admin scopes an apply would put in new hands: every scope of an enabled admin client
 * that is new, newly enabled, newly an admin, or whose credentials change (a secret set, other
 * keys or another method: whoever sets them can then use it), and the added scopes of one
 * that stays as it was. A caller may hand out only scopes it holds itself, or `writ:policy.write`
 * alone would be every scope.
 */
export function adminScopesGranted(
  before: readonly ClientPolicy[],
  after: readonly ClientPolicy[],
  credentialsSet: ReadonlySet<string>,
): Map<string, string[]> {
  const previous = new Map(before.map((c) => [c.client_id, c]));
  const granted = new Map<string, string[]>();
  for (const client of after) {
    if (client.kind !== 'admin' || !client.enabled) continue;
    const prior = previous.get(client.client_id);
    const sameHolder = prior !== undefined && prior.kind === 'admin' && prior.enabled
      && !credentialsSet.has(client.client_id)
      && prior.auth === client.auth
      && prior.jwks_uri === client.jwks_uri
      // Key order differs between a policy file and what jsonb gives back.
      && canonicalJson(prior.jwks ?? null) === canonicalJson(client.jwks ?? null);
    const scopes = sameHolder ? client.scopes.filter((s) => !prior.scopes.includes(s)) : [...client.scopes];
    if (scopes.length > 0) granted.set(client.client_id, scopes);
  }
  return granted;
}
