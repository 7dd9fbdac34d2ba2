import { describe, it, expect } from 'vitest';
import { loadPolicyFiles, type LoadResult, type PolicyIssue } from '../../src/policy/load.ts';
import { formatPath, parsePath, validatePolicy } from '../../src/policy/validate.ts';
import type { PolicyDocument } from '../../src/policy/model.ts';

const AGENT_SECRET = 'agent-secret-0123456789-abcdefghijklmnop';
const OPTIONS = { env: { AGENT_SECRET }, selfIssuer: 'https://writ.example.com', maxTtl: 900 };

/** A valid policy without warnings; each test adds one file (`z.yaml`) with one mistake. */
const BASE = `issuers:
  - issuer: https://idp.example.com
    jwks_uri: https://idp.example.com/jwks
    algorithms: [ES256]
    audience: self
clients:
  - client_id: agent-a
    kind: agent
    auth: client_secret_basic
    secret: \${AGENT_SECRET}
  - client_id: agent-b
    kind: agent
    auth: client_secret_basic
  - client_id: tool-api
    kind: resource_server
    auth: client_secret_basic
    audiences: [https://tool.example.com]
audiences:
  - audience: https://tool.example.com
    scopes: [tool.read, tool.write]
    max_ttl: 300
rules:
  - id: a-reads-tool
    actor: agent-a
    subject: { issuer: https://idp.example.com }
    audience: https://tool.example.com
    scopes: [tool.read]
    ttl: 60
`;

function load(z: string, base = BASE): LoadResult {
  return loadPolicyFiles([{ name: 'a-base.yaml', text: base }, { name: 'z.yaml', text: z }], OPTIONS);
}

/** 1-based line of the first line of `text` containing `marker`. */
function lineOf(text: string, marker: string): number {
  const index = text.split('\n').findIndex((l) => l.includes(marker));
  if (index < 0) throw new Error(`marker not found: ${marker}`);
  return index + 1;
}

function errorsOf(result: LoadResult): PolicyIssue[] {
  if (result.ok) throw new Error('expected the policy to be refused');
  return result.errors;
}

function expectError(z: string, code: string, path: string, marker: string): PolicyIssue {
  const errors = errorsOf(load(z));
  const found = errors.find((e) => e.code === code && e.path === path);
  expect(found, `${code} at ${path} in ${JSON.stringify(errors, null, 2)}`).toBeDefined();
  expect(found).toMatchObject({ severity: 'error', file: 'z.yaml', line: lineOf(z, marker) });
  return found as PolicyIssue;
}

function warningsOf(result: LoadResult): PolicyIssue[] {
  if (!result.ok) throw new Error(`expected the policy to load: ${JSON.stringify(result.errors, null, 2)}`);
  return result.warnings;
}

const AUDIENCE = `audiences:
  - audience: https://other.example.com
    scopes: [other.read]
    max_ttl: 300
`;

function rule(lines: string): string {
  return `rules:
  - id: r1
${lines}`;
}

describe('the base policy', () => {
  it('loads without errors or warnings', () => {
    const result = loadPolicyFiles([{ name: 'a-base.yaml', text: BASE }], OPTIONS);
    expect(result.ok).toBe(true);
    expect(warningsOf(result)).toEqual([]);
  });
});

describe('duplicate ids', () => {
  it('refuses an issuer defined twice, pointing at the first definition', () => {
    const z = `issuers:
  - issuer: https://idp.example.com
    jwks_uri: https://idp.example.com/jwks
    algorithms: [ES256]
    audience: self
`;
    const e = expectError(z, 'duplicate_id', 'issuers[0].issuer', 'issuer: https://idp');
    expect(e.column).toBe(13);
    expect(e.message).toContain('a-base.yaml:2');
  });

  it('refuses a client_id defined twice', () => {
    const z = `clients:
  - client_id: agent-a
    kind: agent
    auth: private_key_jwt
    jwks_uri: https://agent.example.com/jwks
`;
    const e = expectError(z, 'duplicate_id', 'clients[0].client_id', 'client_id: agent-a');
    expect(e.message).toContain('a-base.yaml:7');
  });

  it('refuses an audience defined twice', () => {
    const z = `audiences:
  - audience: https://tool.example.com
    scopes: [tool.read]
    max_ttl: 60
`;
    expectError(z, 'duplicate_id', 'audiences[0].audience', 'audience: https://tool');
  });

  it('refuses a rule id used twice', () => {
    const z = `rules:
  - id: a-reads-tool
    actor: agent-b
    subject: { issuer: https://idp.example.com }
    audience: https://tool.example.com
    scopes: [tool.read]
    ttl: 60
`;
    expectError(z, 'duplicate_id', 'rules[0].id', 'id: a-reads-tool');
  });

  it('accepts a client_id equal to an audience string', () => {
    const z = `clients:
  - client_id: https://tool.example.com
    kind: agent
    auth: private_key_jwt
    jwks_uri: https://agent.example.com/jwks
`;
    expect(load(z).ok).toBe(true);
  });
});

describe('rule references', () => {
  it('refuses an unknown actor', () => {
    const z = rule(`    actor: ghost-agent
    subject: { issuer: https://idp.example.com }
    audience: https://tool.example.com
    scopes: [tool.read]
    ttl: 60
`);
    expectError(z, 'unknown_reference', 'rules[0].actor', 'actor: ghost-agent');
  });

  it('refuses an actor that is not an agent', () => {
    const z = rule(`    actor: tool-api
    subject: { issuer: https://idp.example.com }
    audience: https://tool.example.com
    scopes: [tool.read]
    ttl: 60
`);
    expectError(z, 'actor_not_agent', 'rules[0].actor', 'actor: tool-api');
  });

  it('refuses an unknown audience', () => {
    const z = rule(`    actor: agent-b
    subject: { issuer: https://idp.example.com }
    audience: https://nowhere.example.com
    scopes: [tool.read]
    ttl: 60
`);
    expectError(z, 'unknown_reference', 'rules[0].audience', 'audience: https://nowhere');
  });

  it('refuses a subject issuer that is neither self nor listed', () => {
    const z = rule(`    actor: agent-b
    subject:
      issuer: https://evil.example.com
    audience: https://tool.example.com
    scopes: [tool.read]
    ttl: 60
`);
    expectError(z, 'unknown_reference', 'rules[0].subject.issuer', 'issuer: https://evil');
  });

  it('refuses after naming an unknown client', () => {
    const z = rule(`    actor: agent-b
    subject:
      issuer: self
      after:
        - agent-a
        - ghost-agent
    audience: https://tool.example.com
    scopes: [tool.read]
    ttl: 60
    max_depth: 2
`);
    expectError(z, 'unknown_reference', 'rules[0].subject.after[1]', '- ghost-agent');
  });

  it('refuses after without issuer self', () => {
    const z = rule(`    actor: agent-b
    subject:
      issuer: https://idp.example.com
      after: [agent-a]
    audience: https://tool.example.com
    scopes: [tool.read]
    ttl: 60
`);
    expectError(z, 'after_requires_self', 'rules[0].subject.after', 'after: [agent-a]');
  });

  it('refuses root without issuer self', () => {
    const z = rule(`    actor: agent-b
    subject:
      issuer: https://idp.example.com
      root: { issuer: https://idp.example.com }
    audience: https://tool.example.com
    scopes: [tool.read]
    ttl: 60
`);
    expectError(z, 'root_requires_self', 'rules[0].subject.root', 'root:');
  });

  it('refuses a root issuer that is not listed', () => {
    const z = rule(`    actor: agent-b
    subject:
      issuer: self
      after: [agent-a]
      root:
        issuer: https://evil.example.com
        claims: { groups: finance }
    audience: https://tool.example.com
    scopes: [tool.read]
    ttl: 60
    max_depth: 2
`);
    expectError(z, 'unknown_reference', 'rules[0].subject.root.issuer', 'issuer: https://evil');
  });

  it('refuses rule scopes that the audience does not define', () => {
    const z = rule(`    actor: agent-b
    subject: { issuer: https://idp.example.com }
    audience: https://tool.example.com
    scopes:
      - tool.read
      - tool.admin
    ttl: 60
`);
    const e = expectError(z, 'scope_not_in_audience', 'rules[0].scopes[1]', '- tool.admin');
    expect(e.message).toContain('tool.admin');
  });

  it('accepts a well-formed self rule with after and root', () => {
    const z = rule(`    actor: agent-b
    subject:
      issuer: self
      after: [agent-a]
      root: { issuer: https://idp.example.com, claims: { groups: [finance, ops] } }
    audience: https://tool.example.com
    scopes: [tool.read]
    ttl: 60
    max_depth: 2
`);
    const result = load(z);
    expect(warningsOf(result)).toEqual([]);
  });
});

describe("Writ's namespace and wildcards", () => {
  it('refuses a writ: scope on an audience', () => {
    const z = `audiences:
  - audience: https://other.example.com
    scopes: [other.read, writ:policy.write]
    max_ttl: 300
`;
    expectError(z, 'reserved_namespace', 'audiences[0].scopes[1]', 'writ:policy.write');
  });

  it('refuses a writ: audience', () => {
    const z = `audiences:
  - audience: WRIT:admin
    scopes: [other.read]
    max_ttl: 300
`;
    expectError(z, 'reserved_namespace', 'audiences[0].audience', 'WRIT:admin');
  });

  it('refuses an audience that is Writ itself', () => {
    const z = `audiences:
  - audience: https://writ.example.com/
    scopes: [other.read]
    max_ttl: 300
`;
    expectError(z, 'reserved_namespace', 'audiences[0].audience', 'audience: https://writ');
  });

  it('refuses a writ: scope in a rule', () => {
    const z = rule(`    actor: agent-b
    subject: { issuer: https://idp.example.com }
    audience: https://tool.example.com
    scopes: [writ:revoke]
    ttl: 60
`);
    expectError(z, 'reserved_namespace', 'rules[0].scopes[0]', 'writ:revoke');
  });

  it('refuses a wildcard scope', () => {
    const z = `audiences:
  - audience: https://other.example.com
    scopes: [other.*]
    max_ttl: 300
`;
    expectError(z, 'wildcard', 'audiences[0].scopes[0]', 'other.*');
  });

  it('refuses a wildcard audience', () => {
    const z = `audiences:
  - audience: https://*.example.com
    scopes: [other.read]
    max_ttl: 300
`;
    expectError(z, 'wildcard', 'audiences[0].audience', '*.example.com');
  });

  it('refuses writ: scopes on a client that is not an admin', () => {
    const z = `clients:
  - client_id: sneaky
    kind: agent
    auth: private_key_jwt
    jwks_uri: https://sneaky.example.com/jwks
    scopes: [writ:revoke]
`;
    expectError(z, 'scopes_not_admin', 'clients[0].scopes', 'scopes: [writ:revoke]');
  });

  it('accepts writ: scopes on an admin client', () => {
    const z = `clients:
  - client_id: ops-admin
    kind: admin
    auth: private_key_jwt
    jwks: { keys: [{ kty: EC, crv: P-256, x: abc, y: def }] }
    scopes: [writ:policy.read, writ:revoke]
`;
    expect(load(z).ok).toBe(true);
  });
});

describe('audiences', () => {
  it('refuses an audience that is not an absolute URI', () => {
    const z = `audiences:
  - audience: other.example.com
    scopes: [other.read]
    max_ttl: 300
`;
    expectError(z, 'invalid_uri', 'audiences[0].audience', 'other.example.com');
  });

  it('refuses an audience with a fragment', () => {
    const z = `audiences:
  - audience: https://other.example.com/#x
    scopes: [other.read]
    max_ttl: 300
`;
    expectError(z, 'invalid_uri', 'audiences[0].audience', 'other.example.com/#x');
  });

  it('accepts a URN audience', () => {
    const z = `audiences:
  - audience: urn:example:tool
    scopes: [other.read]
    max_ttl: 300
${rule(`    actor: agent-b
    subject: { issuer: https://idp.example.com }
    audience: urn:example:tool
    scopes: [other.read]
    ttl: 60
`)}`;
    expect(warningsOf(load(z))).toEqual([]);
  });

  it('refuses an audience owned by two clients', () => {
    const z = `clients:
  - client_id: tool-api-2
    kind: resource_server
    auth: client_secret_basic
    audiences:
      - https://tool.example.com
`;
    const e = expectError(z, 'audience_owner_conflict', 'clients[0].audiences[0]', '- https://tool.example.com');
    expect(e.message).toContain('tool-api');
  });

  it('refuses a client audience that is not defined', () => {
    const z = `clients:
  - client_id: other-api
    kind: resource_server
    auth: client_secret_basic
    audiences: [https://other.example.com]
`;
    expectError(z, 'unknown_reference', 'clients[0].audiences[0]', 'audiences: [https://other');
  });
});

describe('issuers', () => {
  const issuer = (lines: string): string => `issuers:
  - issuer: https://idp2.example.com
${lines}`;

  it('refuses an issuer equal to WRIT_ISSUER', () => {
    const z = `issuers:
  - issuer: https://writ.example.com
    jwks_uri: https://writ.example.com/jwks
    algorithms: [ES256]
    audience: self
`;
    expectError(z, 'issuer_is_self', 'issuers[0].issuer', 'issuer: https://writ');
  });

  it('warns when two issuers can mint the same sub for different users, unless their prefixes keep them apart', () => {
    const second = (prefix: string) => `    jwks_uri: https://idp2.example.com/jwks
    algorithms: [ES256]
    audience: self
${prefix}`;
    const shared = (z: string) => warningsOf(load(z)).filter((w) => w.code === 'shared_subject_namespace');
    // Beside the base file's issuer, which has no prefix.
    expect(shared(issuer(second('')))).toEqual([expect.objectContaining({ file: 'z.yaml', line: 2 })]);
    // One prefix begins the other: "idp" + "2:x" is "idp2:" + "x".
    const both = (a: string, b: string) => `issuers:
  - issuer: https://idp.example.com
    jwks_uri: https://idp.example.com/jwks
    algorithms: [ES256]
    audience: self
    subject_prefix: "${a}"
  - issuer: https://idp2.example.com
${second(`    subject_prefix: "${b}"
`)}`;
    const withoutIssuers = BASE.replace(/^issuers:[\s\S]*?(?=clients:)/, '');
    const sharedAlone = (z: string) => warningsOf(load(z, withoutIssuers)).filter((w) => w.code === 'shared_subject_namespace');
    expect(sharedAlone(both('idp', 'idp2:'))).toHaveLength(1);
    expect(sharedAlone(both('idp1:', 'idp2:'))).toEqual([]);
  });

  it('refuses an issuer named self', () => {
    const z = `issuers:
  - issuer: self
    jwks_uri: https://writ.example.com/jwks
    algorithms: [ES256]
    audience: self
`;
    expectError(z, 'issuer_is_self', 'issuers[0].issuer', 'issuer: self');
  });

  it('refuses an issuer without keys', () => {
    const z = issuer(`    algorithms: [ES256]
    audience: self
`);
    expectError(z, 'issuer_keys', 'issuers[0]', 'issuer: https://idp2');
  });

  it('refuses an issuer with both jwks and jwks_uri', () => {
    const z = issuer(`    jwks_uri: https://idp2.example.com/jwks
    jwks: { keys: [{ kty: EC, crv: P-256, x: abc, y: def }] }
    algorithms: [ES256]
    audience: self
`);
    expectError(z, 'issuer_keys', 'issuers[0]', 'issuer: https://idp2');
  });

  it.each(['none', 'NoNe', 'HS256', 'hs512', 'RS1', 'es256'])('refuses algorithm %s', (alg) => {
    const z = issuer(`    jwks_uri: https://idp2.example.com/jwks
    algorithms:
      - ES256
      - ${alg}
    audience: self
`);
    expectError(z, 'alg_not_allowed', 'issuers[0].algorithms[1]', `- ${alg}`);
  });

  it.each(['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'ES512', 'EdDSA', 'Ed25519'])('accepts algorithm %s', (alg) => {
    const z = issuer(`    jwks_uri: https://idp2.example.com/jwks
    algorithms: [${alg}]
    audience: self
`);
    expect(load(z).ok).toBe(true);
  });

  it('refuses a jwks_uri over plain http', () => {
    const z = issuer(`    jwks_uri: http://idp2.example.com/jwks
    algorithms: [ES256]
    audience: self
`);
    expectError(z, 'insecure_uri', 'issuers[0].jwks_uri', 'jwks_uri: http://');
  });

  it.each(['localhost:8080', '127.0.0.1', '[::1]:9000'])('accepts http on loopback host %s', (host) => {
    const z = issuer(`    jwks_uri: http://${host}/jwks
    algorithms: [ES256]
    audience: self
`);
    expect(load(z).ok).toBe(true);
  });

  it('refuses private key material in an inline JWK set', () => {
    const z = issuer(`    jwks:
      keys:
        - { kty: EC, crv: P-256, x: abc, y: def, d: private-part }
    algorithms: [ES256]
    audience: self
`);
    const e = expectError(z, 'private_jwk', 'issuers[0].jwks.keys[0].d', '- { kty: EC');
    expect(e.message).not.toContain('private-part');
  });

  it('refuses an issuer audience that is neither self nor a URI', () => {
    const z = issuer(`    jwks_uri: https://idp2.example.com/jwks
    algorithms: [ES256]
    audience: writ
`);
    expectError(z, 'invalid_uri', 'issuers[0].audience', 'audience: writ');
  });
});

describe('clients', () => {
  it('refuses private_key_jwt without keys', () => {
    const z = `clients:
  - client_id: keyless
    kind: agent
    auth: private_key_jwt
`;
    expectError(z, 'client_keys', 'clients[0]', 'client_id: keyless');
  });

  it('refuses a client jwks_uri over plain http', () => {
    const z = `clients:
  - client_id: keyed
    kind: agent
    auth: private_key_jwt
    jwks_uri: http://keys.example.com/jwks
`;
    expectError(z, 'insecure_uri', 'clients[0].jwks_uri', 'jwks_uri:');
  });

  it('refuses actor_identities naming an unknown issuer', () => {
    const z = `clients:
  - client_id: acting
    kind: agent
    auth: private_key_jwt
    jwks_uri: https://keys.example.com/jwks
    actor_identities:
      - { issuer: https://idp.example.com, sub: bot-1 }
      - { issuer: https://ghost.example.com, sub: bot-2 }
`;
    expectError(z, 'unknown_reference', 'clients[0].actor_identities[1].issuer', 'ghost.example.com');
  });

  it.each(['resource_server', 'admin'])('refuses actor_identities on a %s', (kind) => {
    const z = `clients:
  - client_id: not-an-agent
    kind: ${kind}
    auth: private_key_jwt
    jwks_uri: https://keys.example.com/jwks
    actor_identities: [{ issuer: https://idp.example.com, sub: bot-1 }]
`;
    expectError(z, 'actor_identities_not_agent', 'clients[0].actor_identities', 'actor_identities:');
  });
});

describe('depth', () => {
  it('refuses max_depth above the default cap of 5', () => {
    const z = rule(`    actor: agent-b
    subject: { issuer: https://idp.example.com }
    audience: https://tool.example.com
    scopes: [tool.read]
    ttl: 60
    max_depth: 6
`);
    expectError(z, 'max_depth_exceeds_cap', 'rules[0].max_depth', 'max_depth: 6');
  });

  it('refuses max_depth above a configured cap', () => {
    const z = `settings:
  max_depth_cap: 2
${rule(`    actor: agent-b
    subject: { issuer: https://idp.example.com }
    audience: https://tool.example.com
    scopes: [tool.read]
    ttl: 60
    max_depth: 3
`)}`;
    expectError(z, 'max_depth_exceeds_cap', 'rules[0].max_depth', 'max_depth: 3');
  });
});

describe('warnings', () => {
  it('warns when a ttl exceeds the audience max_ttl', () => {
    const z = rule(`    actor: agent-b
    subject: { issuer: https://idp.example.com }
    audience: https://tool.example.com
    scopes: [tool.read]
    ttl: 301
`);
    const warnings = warningsOf(load(z));
    expect(warnings).toEqual([expect.objectContaining({
      severity: 'warning', code: 'ttl_capped', file: 'z.yaml', line: lineOf(z, 'ttl: 301'), path: 'rules[0].ttl',
    })]);
    expect(warnings[0]?.message).toContain('300');
  });

  it('warns when a ttl exceeds WRIT_MAX_TTL', () => {
    const z = `${AUDIENCE.replace('max_ttl: 300', 'max_ttl: 3600')}${rule(`    actor: agent-b
    subject: { issuer: https://idp.example.com }
    audience: https://other.example.com
    scopes: [other.read]
    ttl: 1800
`)}`;
    const warnings = warningsOf(load(z));
    expect(warnings).toEqual([expect.objectContaining({ code: 'ttl_capped', path: 'rules[0].ttl', line: lineOf(z, 'ttl: 1800') })]);
    expect(warnings[0]?.message).toContain('WRIT_MAX_TTL 900');
  });

  it('warns about a rule shadowed by an earlier, broader rule (across files)', () => {
    const z = rule(`    actor: agent-a
    subject: { issuer: https://idp.example.com, claims: { groups: finance } }
    audience: https://tool.example.com
    scopes: [tool.write]
    ttl: 60
`);
    const warnings = warningsOf(load(z));
    expect(warnings).toEqual([expect.objectContaining({ code: 'shadowed_rule', file: 'z.yaml', path: 'rules[0].id', line: 2 })]);
    expect(warnings[0]?.message).toContain('a-reads-tool');
    expect(warnings[0]?.message).toContain('a-base.yaml:23');
  });

  it('warns when an earlier rule accepts every value a later one does', () => {
    const z = `rules:
  - id: any-of
    actor: agent-b
    subject: { issuer: https://idp.example.com, claims: { groups: [finance, ops] } }
    audience: https://tool.example.com
    scopes: [tool.read]
    ttl: 60
  - id: narrower
    actor: agent-b
    subject: { issuer: https://idp.example.com, claims: { groups: ops, dept: "7" } }
    audience: https://tool.example.com
    scopes: [tool.write]
    ttl: 60
`;
    expect(warningsOf(load(z))).toEqual([expect.objectContaining({ code: 'shadowed_rule', path: 'rules[1].id', line: lineOf(z, 'id: narrower') })]);
  });

  it('does not warn when the earlier rule is more specific', () => {
    const z = `rules:
  - id: specific
    actor: agent-b
    subject: { issuer: https://idp.example.com, claims: { groups: finance } }
    audience: https://tool.example.com
    scopes: [tool.write]
    ttl: 60
  - id: fallback
    actor: agent-b
    subject: { issuer: https://idp.example.com, claims: { groups: [finance, ops] } }
    audience: https://tool.example.com
    scopes: [tool.read]
    ttl: 60
  - id: chained-specific
    actor: agent-b
    subject: { issuer: self, after: [agent-a], root: { issuer: https://idp.example.com, claims: { groups: finance } } }
    audience: https://tool.example.com
    scopes: [tool.read]
    ttl: 60
    max_depth: 2
  - id: chained
    actor: agent-b
    subject: { issuer: self, after: [agent-a] }
    audience: https://tool.example.com
    scopes: [tool.read]
    ttl: 60
    max_depth: 2
`;
    expect(warningsOf(load(z))).toEqual([]);
  });

  it('warns about a self rule whose after lists only clients that cannot act', () => {
    const z = rule(`    actor: agent-b
    subject: { issuer: self, after: [tool-api, agent-b] }
    audience: https://tool.example.com
    scopes: [tool.read]
    ttl: 60
    max_depth: 2
`);
    expect(warningsOf(load(z))).toEqual([expect.objectContaining({ code: 'unreachable_rule', path: 'rules[0].subject.after' })]);
  });

  it('warns about a self rule whose depth bound cannot fit a chain', () => {
    const z = rule(`    actor: agent-b
    subject: { issuer: self, after: [agent-a] }
    audience: https://tool.example.com
    scopes: [tool.read]
    ttl: 60
`);
    const warnings = warningsOf(load(z));
    expect(warnings).toEqual([expect.objectContaining({ code: 'unreachable_rule', path: 'rules[0].max_depth', line: lineOf(z, 'id: r1') })]);
  });

  it('warns about an audience no rule grants', () => {
    const warnings = warningsOf(load(AUDIENCE));
    expect(warnings).toEqual([expect.objectContaining({ code: 'unused_audience', file: 'z.yaml', line: 2, path: 'audiences[0].audience' })]);
  });

  it('warns about a literal secret', () => {
    const z = `clients:
  - client_id: literal
    kind: agent
    auth: client_secret_post
    secret: a-literal-secret-that-is-long-enough-000
`;
    const result = load(z);
    expect(warningsOf(result)).toEqual([expect.objectContaining({ code: 'literal_secret', line: 5, path: 'clients[0].secret' })]);
    expect(JSON.stringify(warningsOf(result))).not.toContain('a-literal-secret');
  });

  it('warns about a rule whose actor is disabled', () => {
    const z = `clients:
  - client_id: sleeper
    kind: agent
    auth: private_key_jwt
    jwks_uri: https://keys.example.com/jwks
    enabled: false
${rule(`    actor: sleeper
    subject: { issuer: https://idp.example.com }
    audience: https://tool.example.com
    scopes: [tool.read]
    ttl: 60
`)}`;
    expect(warningsOf(load(z))).toEqual([expect.objectContaining({ code: 'unreachable_rule', path: 'rules[0].actor' })]);
  });

  it('says nothing about a jwks_uri issuer', () => {
    expect(warningsOf(loadPolicyFiles([{ name: 'a-base.yaml', text: BASE }], OPTIONS))).toEqual([]);
  });
});

describe('validatePolicy without source locations', () => {
  const doc: PolicyDocument = {
    issuers: [],
    clients: [{ client_id: 'a', kind: 'agent', auth: 'client_secret_basic', audiences: [], actor_identities: [], scopes: [], enabled: true }],
    audiences: [{ audience: 'https://t.example.com', scopes: ['s'], max_ttl: 60, signing_alg: 'ES256' }],
    rules: [{
      id: 'r', actor: 'a', subject: { issuer: 'https://nope.example.com' }, audience: 'https://t.example.com',
      scopes: ['s'], ttl: 60, max_depth: 1, require_task: false,
    }],
    settings: { max_depth_cap: 5 },
  };

  it('reports merged-document paths', () => {
    expect(validatePolicy(doc, { selfIssuer: 'https://writ.example.com', maxTtl: 900 })).toEqual([{
      severity: 'error', path: 'rules[0].subject.issuer', code: 'unknown_reference', message: expect.stringContaining('https://nope.example.com'),
    }]);
  });
});

describe('paths', () => {
  it('round-trips through formatPath and parsePath, quoting free-form keys', () => {
    const segments = ['rules', 2, 'subject', 'claims', 'https://example.com/groups[0].x', 'z'];
    const path = formatPath(segments);
    expect(path).toBe('rules[2].subject.claims["https://example.com/groups[0].x"].z');
    expect(parsePath(path)).toEqual(segments);
    expect(parsePath('')).toEqual([]);
    expect(parsePath('.x')).toBeUndefined();
    expect(parsePath('a[')).toBeUndefined();
  });
});
