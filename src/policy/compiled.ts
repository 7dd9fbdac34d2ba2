import type {
  AudiencePolicy, ClientPolicy, IssuerPolicy, PolicySettings, RulePolicy,
} from './model.ts';

/**
 * The in-memory index every decision reads. Built once per policy version by `compilePolicy`;
 * lookups on the token path are Map hits, never scans.
 */
export interface CompiledPolicy {
  version: number;
  issuers: ReadonlyMap<string, IssuerPolicy>;
  clients: ReadonlyMap<string, ClientPolicy>;
  audiences: ReadonlyMap<string, AudiencePolicy>;
  /** audience → the one client owning it. */
  audienceOwner: ReadonlyMap<string, string>;
  /** `ruleKey(actor, audience)` → rules for that pair, in decision order. */
  rules: ReadonlyMap<string, readonly RulePolicy[]>;
  settings: PolicySettings;
}

export function ruleKey(actor: string, audience: string): string {
  return `${actor}\n${audience}`;
}
