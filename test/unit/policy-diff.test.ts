import { describe, expect, it } from 'vitest';
import { diffPolicies, formatDiff, summarizeChanges, type PolicyChange, type SecretStatus } from '../../src/policy/diff.ts';
import type { PolicyDocument } from '../../src/policy/model.ts';
import {
  EXECUTOR, EXECUTOR_AUD, IDP, PAYMENTS, PAYMENTS_API, PLANNER, examplePolicyDocument,
} from '../support/example-policy.ts';

function edited(edit: (doc: PolicyDocument) => void): PolicyDocument {
  const doc = examplePolicyDocument();
  edit(doc);
  return doc;
}

/** jsonb hands documents back with keys in its own order; a diff must not care. */
function shuffledKeys<T>(value: T): T {
  if (Array.isArray(value)) return value.map(shuffledKeys) as T;
  if (value && typeof value === 'object') {
    return Object.fromEntries(Object.entries(value).reverse().map(([k, v]) => [k, shuffledKeys(v)])) as T;
  }
  return value;
}

describe('diffPolicies', () => {
  it('finds nothing between equal documents, whatever their key order', () => {
    const before = examplePolicyDocument();
    expect(diffPolicies(before, examplePolicyDocument())).toEqual([]);
    expect(diffPolicies(shuffledKeys(before), examplePolicyDocument())).toEqual([]);
    expect(formatDiff([])).toBe('no changes');
  });

  it('against no policy, everything is added, with rule positions and secret status', () => {
    const status = new Map<string, SecretStatus>([[PLANNER, 'new'], [EXECUTOR, 'new'], [PAYMENTS_API, 'new']]);
    const changes = diffPolicies(undefined, examplePolicyDocument(), status);
    expect(changes.map((c) => [c.kind, c.section, c.id])).toEqual([
      ['added', 'issuer', IDP],
      ['added', 'client', PLANNER],
      ['added', 'client', EXECUTOR],
      ['added', 'client', PAYMENTS_API],
      ['added', 'audience', PAYMENTS],
      ['added', 'audience', EXECUTOR_AUD],
      ['added', 'rule', 'planner-reads-payments'],
      ['added', 'rule', 'planner-delegates-to-executor'],
      ['added', 'rule', 'executor-reads-payments'],
      ['changed', 'settings', 'settings'],
    ]);
    const planner = changes.find((c) => c.id === PLANNER);
    expect(planner).toMatchObject({ kind: 'added', secret: 'new' });
    expect(changes.find((c) => c.id === 'executor-reads-payments')).toMatchObject({ position: 2 });
    const text = formatDiff(changes);
    expect(text).toContain('+ rule executor-reads-payments (position 3)');
    expect(text).toContain('    + subject.after: [planner-agent]');
    expect(text).toContain('    + secret: set (value not shown)');
    expect(text).toContain('    + max_depth_cap: 5');
    expect(text.split('\n').at(-1)).toBe('9 added, 0 removed, 1 changed');
  });

  it('reports a changed rule field by field: ttl, scopes added and removed, subject claims', () => {
    const before = edited((d) => {
      d.audiences[0]!.scopes.push('payment.refund');
      d.rules[0]!.scopes = ['payment.read', 'payment.refund'];
    });
    const after = edited((d) => {
      d.audiences[0]!.scopes.push('payment.refund');
      d.rules[0]!.ttl = 60;
      d.rules[0]!.scopes = ['payment.read', 'payment.transfer'];
      d.rules[0]!.subject.claims = { groups: ['finance', 'treasury'] };
      d.rules[0]!.require_task = true;
    });
    const changes = diffPolicies(before, after);
    expect(changes).toEqual<PolicyChange[]>([{
      kind: 'changed', section: 'rule', id: 'planner-reads-payments', fields: [
        { kind: 'value', field: 'subject.claims.groups', before: 'finance', after: ['finance', 'treasury'] },
        { kind: 'set', field: 'scopes', added: ['payment.transfer'], removed: ['payment.refund'] },
        { kind: 'value', field: 'ttl', before: 120, after: 60 },
        { kind: 'value', field: 'require_task', before: false, after: true },
      ],
    }]);
    expect(formatDiff(changes)).toBe([
      '~ rule planner-reads-payments',
      '    ~ subject.claims.groups: finance → [finance, treasury]',
      '    + scopes: payment.transfer',
      '    - scopes: payment.refund',
      '    ~ ttl: 120 → 60',
      '    ~ require_task: false → true',
      '0 added, 0 removed, 1 changed',
    ].join('\n'));
  });

  it('reports added and removed objects in every section, and settings', () => {
    const after = edited((d) => {
      d.issuers.push({ ...d.issuers[0]!, issuer: 'https://idp2.example.com', jwks_uri: 'https://idp2.example.com/jwks' });
      d.clients = d.clients.filter((c) => c.client_id !== PAYMENTS_API);
      d.clients.push({ client_id: 'auditor', kind: 'admin', auth: 'client_secret_post', audiences: [], actor_identities: [], scopes: ['writ:audit.read'], enabled: true });
      d.audiences = d.audiences.filter((a) => a.audience !== EXECUTOR_AUD);
      d.clients.find((c) => c.client_id === EXECUTOR)!.audiences = [];
      d.rules = d.rules.filter((r) => r.id !== 'planner-delegates-to-executor');
      d.settings.max_depth_cap = 3;
    });
    const changes = diffPolicies(examplePolicyDocument(), after, new Map([['auditor', 'new']]));
    expect(changes.map((c) => `${c.kind} ${c.section} ${c.id}`)).toEqual([
      `added issuer https://idp2.example.com`,
      `removed client ${PAYMENTS_API}`,
      `changed client ${EXECUTOR}`,
      'added client auditor',
      `removed audience ${EXECUTOR_AUD}`,
      'removed rule planner-delegates-to-executor',
      'changed settings settings',
    ]);
    expect(changes.find((c) => c.id === EXECUTOR)).toMatchObject({ fields: [{ kind: 'set', field: 'audiences', added: [], removed: [EXECUTOR_AUD] }] });
    expect(changes.find((c) => c.section === 'settings')).toMatchObject({ fields: [{ kind: 'value', field: 'max_depth_cap', before: 5, after: 3 }] });
    const text = formatDiff(changes);
    expect(text).toContain(`- client ${PAYMENTS_API}`);
    expect(text).toContain('+ client auditor');
    expect(text).toContain('    + scopes: [writ:audit.read]');
    expect(text).toContain('    ~ max_depth_cap: 5 → 3');
    expect(summarizeChanges(changes)).toBe('2 added, 3 removed, 2 changed');
  });

  it('reports a secret change even when nothing else about the client changed, and never a value', () => {
    const status = new Map<string, SecretStatus>([[PLANNER, 'changed'], [EXECUTOR, 'unchanged'], [PAYMENTS_API, 'kept']]);
    const changes = diffPolicies(examplePolicyDocument(), examplePolicyDocument(), status);
    expect(changes).toEqual([{ kind: 'changed', section: 'client', id: PLANNER, fields: [{ kind: 'secret', field: 'secret', status: 'changed' }] }]);
    expect(formatDiff(changes)).toBe(`~ client ${PLANNER}\n    ~ secret: changed (value not shown)\n0 added, 0 removed, 1 changed`);
  });

  it('ignores a secret that slipped into a document and never prints it', () => {
    const secret = 'literal-secret-0123456789abcdefghijklmn';
    const after = edited((d) => {
      d.clients[0]!.secret = secret;
      d.clients.push({ client_id: 'new-agent', kind: 'agent', auth: 'client_secret_basic', secret, audiences: [], actor_identities: [], scopes: [], enabled: true });
    });
    const changes = diffPolicies(examplePolicyDocument(), after, new Map([['new-agent', 'new']]));
    expect(changes.map((c) => `${c.kind} ${c.id}`)).toEqual(['added new-agent']);
    expect(JSON.stringify(changes)).not.toContain(secret);
    expect(formatDiff(changes)).not.toContain(secret);
  });

  it('reports rules that changed places in decision order, not the ones an insertion shifted', () => {
    const after = edited((d) => {
      const [first, second, third] = d.rules as [typeof d.rules[0], typeof d.rules[0], typeof d.rules[0]];
      d.rules = [
        { ...first, id: 'inserted-first', ttl: 30 },
        third,
        first,
        second,
      ];
    });
    const changes = diffPolicies(examplePolicyDocument(), after);
    expect(changes).toEqual([
      expect.objectContaining({ kind: 'added', section: 'rule', id: 'inserted-first', position: 0 }),
      { kind: 'changed', section: 'rule', id: 'executor-reads-payments', fields: [{ kind: 'moved', field: 'position', from: 2, to: 0 }] },
    ]);
    expect(formatDiff(changes)).toContain('~ rule executor-reads-payments\n    ~ position: 3 → 1');
  });

  it('compares list fields as sets, and shows a pure reordering whole', () => {
    const after = edited((d) => {
      d.issuers[0]!.algorithms = ['ES256', 'RS256'];
      d.issuers[0]!.token_types = ['access_token'];
      d.clients[0]!.actor_identities = [{ issuer: IDP, sub: 'bot-1' }];
    });
    const changes = diffPolicies(examplePolicyDocument(), after);
    expect(changes).toEqual([
      { kind: 'changed', section: 'issuer', id: IDP, fields: [
        { kind: 'value', field: 'algorithms', before: ['RS256', 'ES256'], after: ['ES256', 'RS256'] },
        { kind: 'set', field: 'token_types', added: [], removed: ['jwt'] },
      ] },
      { kind: 'changed', section: 'client', id: PLANNER, fields: [
        { kind: 'set', field: 'actor_identities', added: [`{"issuer":"${IDP}","sub":"bot-1"}`], removed: [] },
      ] },
    ]);
  });

  it('names JWKs by kid when inline keys change, and jwks_uri ↔ jwks switches field by field', () => {
    const key = (kid: string): Record<string, unknown> => ({ kty: 'EC', crv: 'P-256', x: `x-${kid}`, y: `y-${kid}`, kid });
    const before = edited((d) => {
      delete d.issuers[0]!.jwks_uri;
      d.issuers[0]!.jwks = { keys: [key('k1'), key('k2')] };
    });
    const rotated = edited((d) => {
      delete d.issuers[0]!.jwks_uri;
      d.issuers[0]!.jwks = { keys: [key('k2'), key('k3')] };
    });
    expect(diffPolicies(before, rotated)).toEqual([{ kind: 'changed', section: 'issuer', id: IDP, fields: [
      { kind: 'set', field: 'jwks.keys', added: ['key kid=k3'], removed: ['key kid=k1'] },
    ] }]);
    const text = formatDiff(diffPolicies(examplePolicyDocument(), rotated));
    expect(text).toContain('    - jwks_uri: https://idp.example.com/.well-known/jwks.json');
    expect(text).toContain('    + jwks: {keys: [key kid=k2, key kid=k3]}');
  });

  it('quotes claim names and values a reader could misparse', () => {
    const after = edited((d) => {
      d.rules[0]!.subject.claims = { groups: 'finance', 'https://example.com/roles': 'payments admin' };
    });
    const text = formatDiff(diffPolicies(examplePolicyDocument(), after));
    expect(text).toContain('    + subject.claims["https://example.com/roles"]: "payments admin"');
  });
});

describe('formatDiff output safety', () => {
  it('escapes control characters so a policy string cannot drive the terminal', () => {
    const after = examplePolicyDocument();
    after.rules[0]!.subject.claims = { groups: 'fin\u001b[2Jance' };
    after.issuers.push({ ...after.issuers[0]!, issuer: 'https://evil\u001b]0;x\u0007.example.com' });
    const text = formatDiff(diffPolicies(examplePolicyDocument(), after));
    for (const line of text.split('\n')) expect(line).not.toMatch(/[\u0000-\u001f\u007f-\u009f]/);
    expect(text).toContain('fin\\u001b[2Jance');
    expect(text).toContain('+ issuer https://evil\\u001b]0;x\\u0007.example.com');
  });
});
