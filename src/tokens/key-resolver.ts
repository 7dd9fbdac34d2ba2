import { ExchangeDenied, type TokenRole } from '../exchange/reasons.ts';
import type { CompiledPolicy } from '../policy/compiled.ts';
import type { IssuerPolicy } from '../policy/model.ts';
import { RemoteJwks, type KeyResolver } from './jwks-cache.ts';
import type { SigningKeys } from './signing-keys.ts';

export type { KeyResolver } from './jwks-cache.ts';

/** Writ's own published keys, by kid; the key's algorithm must be the header's. */
export function writKeyResolver(keys: () => SigningKeys, role: TokenRole = 'subject'): KeyResolver {
  return {
    async getKey(header) {
      const key = header.kid === undefined ? undefined : keys().byKid.get(header.kid);
      if (!key) throw new ExchangeDenied('kid_unknown', 'no Writ key with this kid', role);
      if (key.alg !== header.alg) throw new ExchangeDenied('alg_not_allowed', 'the key is not for this algorithm', role);
      return key.publicKey;
    },
  };
}

function sourceOf(issuer: IssuerPolicy): string {
  return issuer.jwks_uri ?? JSON.stringify(issuer.jwks ?? null);
}

/**
 * One key set per trusted issuer, kept across policy reloads while the issuer's key source is
 * unchanged, so a policy change does not throw away fetched keys or reset the fetch cooldown.
 */
export class UpstreamKeys {
  private readonly sets = new Map<string, { source: string; jwks: KeyResolver }>();
  private readonly onFetch: ((issuer: string, outcome: { ok: true } | { ok: false; error: string }) => void) | undefined;

  constructor(options: { onFetch?: (issuer: string, outcome: { ok: true } | { ok: false; error: string }) => void } = {}) {
    this.onFetch = options.onFetch;
  }

  sync(policy: CompiledPolicy): void {
    for (const [iss, issuer] of policy.issuers) {
      const source = sourceOf(issuer);
      if (this.sets.get(iss)?.source === source) continue;
      const report = this.onFetch;
      const jwks: KeyResolver = issuer.jwks_uri
        ? new RemoteJwks(issuer.jwks_uri, report ? { onFetch: (outcome) => report(iss, outcome) } : {})
        : RemoteJwks.fromInline(issuer.jwks ?? { keys: [] });
      this.sets.set(iss, { source, jwks });
    }
    for (const iss of this.sets.keys()) if (!policy.issuers.has(iss)) this.sets.delete(iss);
  }

  resolver(issuer: string): KeyResolver {
    const entry = this.sets.get(issuer);
    if (!entry) throw new ExchangeDenied('issuer_untrusted', 'the issuer is not trusted');
    return entry.jwks;
  }
}
