import { parseDocument, type YAMLMap } from 'yaml';

/**
 * Replaces an issuer's `jwks_uri` with inline keys in a policy file's text, keeping everything
 * else (comments included). The demo and the tests use it to stand in for an IdP that is not there.
 */
export function inlineIssuerKeys(yamlText: string, issuer: string, jwks: { keys: Array<Record<string, unknown>> }): string {
  const doc = parseDocument(yamlText);
  const issuers = doc.get('issuers') as { items?: YAMLMap[] } | undefined;
  let found = false;
  for (const entry of issuers?.items ?? []) {
    if (entry.get('issuer') !== issuer) continue;
    entry.delete('jwks_uri');
    entry.set('jwks', doc.createNode(jwks));
    found = true;
  }
  if (!found) throw new Error(`no issuer ${issuer} in the policy`);
  return doc.toString();
}
