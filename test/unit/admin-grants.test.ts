import { describe, expect, it } from 'vitest';
import type { ClientPolicy } from '../../src/policy/model.ts';
import { adminScopesGranted } from '../../src/policy/admin-grants.ts';

const admin = (id: string, scopes: string[], extra: Partial<ClientPolicy> = {}): ClientPolicy =>
  ({ client_id: id, kind: 'admin', auth: 'client_secret_basic', scopes, enabled: true, audiences: [], ...extra }) as unknown as ClientPolicy;

describe('adminScopesGranted: admin scopes an apply puts in new hands', () => {
  it('a new admin client, and one newly enabled or newly an admin, hands out all its scopes', () => {
    expect(adminScopesGranted([], [admin('a', ['writ:keys'])], new Set())).toEqual(new Map([['a', ['writ:keys']]]));
    expect(adminScopesGranted([admin('a', ['writ:keys'], { enabled: false })], [admin('a', ['writ:keys'])], new Set())).toEqual(new Map([['a', ['writ:keys']]]));
    expect(adminScopesGranted([admin('a', ['writ:keys'], { kind: 'agent' } as Partial<ClientPolicy>)], [admin('a', ['writ:keys'])], new Set())).toEqual(new Map([['a', ['writ:keys']]]));
  });

  it('an admin client kept as it was hands out only the scopes added to it', () => {
    expect(adminScopesGranted([admin('a', ['writ:revoke'])], [admin('a', ['writ:revoke'])], new Set())).toEqual(new Map());
    expect(adminScopesGranted([admin('a', ['writ:revoke'])], [admin('a', ['writ:revoke', 'writ:keys'])], new Set())).toEqual(new Map([['a', ['writ:keys']]]));
  });

  it('new credentials (a secret set, other keys, another method) hand out all of them', () => {
    expect(adminScopesGranted([admin('a', ['writ:revoke'])], [admin('a', ['writ:revoke'])], new Set(['a']))).toEqual(new Map([['a', ['writ:revoke']]]));
    expect(adminScopesGranted([admin('a', ['writ:revoke'])], [admin('a', ['writ:revoke'], { auth: 'private_key_jwt', jwks_uri: 'https://x.example/jwks' })], new Set())).toEqual(new Map([['a', ['writ:revoke']]]));
  });

  it('the same keys in another member order are the same keys (jsonb reorders them)', () => {
    const key = { kty: 'EC', crv: 'P-256', x: 'AAAA', y: 'BBBB', kid: 'k1' };
    const reordered = { y: 'BBBB', x: 'AAAA', kid: 'k1', kty: 'EC', crv: 'P-256' };
    const before = admin('a', ['writ:keys'], { auth: 'private_key_jwt', jwks: { keys: [reordered] } } as Partial<ClientPolicy>);
    const after = admin('a', ['writ:keys'], { auth: 'private_key_jwt', jwks: { keys: [key] } } as Partial<ClientPolicy>);
    expect(adminScopesGranted([before], [after], new Set())).toEqual(new Map());
  });

  it('disabled admins and other kinds hand out nothing', () => {
    expect(adminScopesGranted([], [admin('a', ['writ:keys'], { enabled: false }), admin('b', ['writ:keys'], { kind: 'agent' } as Partial<ClientPolicy>)], new Set())).toEqual(new Map());
  });
});
