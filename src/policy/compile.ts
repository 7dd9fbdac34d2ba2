import { ruleKey, type CompiledPolicy } from './compiled.ts';
import type { PolicyDocument, RulePolicy } from './model.ts';

/** Builds the in-memory index of one policy version. The document must already be valid. */
export function compilePolicy(doc: PolicyDocument, version: number): CompiledPolicy {
  const audienceOwner = new Map<string, string>();
  for (const client of doc.clients) {
    for (const aud of client.audiences) audienceOwner.set(aud, client.client_id);
  }
  const rules = new Map<string, RulePolicy[]>();
  for (const rule of doc.rules) {
    const key = ruleKey(rule.actor, rule.audience);
    const list = rules.get(key);
    if (list) list.push(rule);
    else rules.set(key, [rule]);
  }
  return {
    version,
    issuers: new Map(doc.issuers.map((i) => [i.issuer, i])),
    clients: new Map(doc.clients.map((c) => [c.client_id, c])),
    audiences: new Map(doc.audiences.map((a) => [a.audience, a])),
    audienceOwner,
    rules,
    settings: doc.settings,
  };
}
