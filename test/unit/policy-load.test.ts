import { mkdtempSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, it, expect } from 'vitest';
import { formatIssue, loadPolicyDir, loadPolicyFiles, type LoadOptions, type LoadResult, type PolicyIssue } from '../../src/policy/load.ts';
import { compilePolicy } from '../../src/policy/compile.ts';
import { ruleKey } from '../../src/policy/compiled.ts';
import type { PolicyDocument } from '../../src/policy/model.ts';

const POLICY_DIR = fileURLToPath(new URL('../../policy/', import.meta.url));
const EXAMPLE = readFileSync(path.join(POLICY_DIR, 'example.yaml'), 'utf8');

const SECRETS = {
  PLANNER_SECRET: 'planner-0123456789abcdefghijklmnopqrstuv',
  EXECUTOR_SECRET: 'executor-0123456789abcdefghijklmnopqrstu',
  PAYMENTS_API_SECRET: 'payments-0123456789abcdefghijklmnopqrstu',
};
const OPTIONS: LoadOptions = { env: SECRETS, selfIssuer: 'http://localhost:4000', maxTtl: 900 };

function errorsOf(result: LoadResult): PolicyIssue[] {
  if (result.ok) throw new Error('expected the policy to be refused');
  return result.errors;
}

function documentOf(result: LoadResult): PolicyDocument {
  if (!result.ok) throw new Error(`expected the policy to load:\n${result.errors.map(formatIssue).join('\n')}`);
  return result.document;
}

const EXPECTED_EXAMPLE: PolicyDocument = {
  issuers: [{
    issuer: 'https://idp.example.com',
    jwks_uri: 'https://idp.example.com/.well-known/jwks.json',
    algorithms: ['RS256', 'ES256'],
    audience: 'self',
    token_types: ['access_token', 'jwt'],
    typ: ['at+jwt', 'application/at+jwt'],
    act: 'reject',
    max_token_age: 86400,
  }],
  clients: [
    { client_id: 'planner-agent', kind: 'agent', auth: 'client_secret_basic', audiences: [], actor_identities: [], scopes: [], enabled: true },
    {
      client_id: 'executor-agent', kind: 'agent', auth: 'client_secret_basic',
      audiences: ['https://agents.example.com/executor'], actor_identities: [], scopes: [], enabled: true,
    },
    {
      client_id: 'payments-api', kind: 'resource_server', auth: 'client_secret_basic',
      audiences: ['https://payments.example.com'], actor_identities: [], scopes: [], enabled: true,
    },
  ],
  audiences: [
    { audience: 'https://payments.example.com', scopes: ['payment.read', 'payment.transfer'], max_ttl: 300, signing_alg: 'ES256' },
    { audience: 'https://agents.example.com/executor', scopes: ['payment.read'], max_ttl: 600, signing_alg: 'ES256' },
  ],
  rules: [
    {
      id: 'planner-reads-payments', actor: 'planner-agent',
      subject: { issuer: 'https://idp.example.com', claims: { groups: 'finance' } },
      audience: 'https://payments.example.com', scopes: ['payment.read'], ttl: 120, max_depth: 2, require_task: false,
    },
    {
      id: 'planner-delegates-to-executor', actor: 'planner-agent',
      subject: { issuer: 'https://idp.example.com', claims: { groups: 'finance' } },
      audience: 'https://agents.example.com/executor', scopes: ['payment.read'], ttl: 300, max_depth: 2, require_task: false,
    },
    {
      id: 'executor-reads-payments', actor: 'executor-agent',
      subject: { issuer: 'self', after: ['planner-agent'] },
      audience: 'https://payments.example.com', scopes: ['payment.read'], ttl: 60, max_depth: 2, require_task: false,
    },
  ],
  settings: { max_depth_cap: 5 },
};

describe('the example policy of docs/DESIGN.md §6 (policy/example.yaml)', () => {
  it('loads from the directory into exactly the normalized document, defaults applied', async () => {
    const result = await loadPolicyDir(POLICY_DIR, OPTIONS);
    // strict equality: no `secret`, and no stray undefined-valued keys in what gets stored
    expect(documentOf(result)).toStrictEqual(EXPECTED_EXAMPLE);
    expect(result.warnings).toEqual([]);
  });

  it('returns the secrets separately and keeps them out of the document', () => {
    const result = loadPolicyFiles([{ name: 'example.yaml', text: EXAMPLE }], OPTIONS);
    if (!result.ok) throw new Error('expected ok');
    expect(result.secrets).toEqual(new Map([
      ['planner-agent', SECRETS.PLANNER_SECRET],
      ['executor-agent', SECRETS.EXECUTOR_SECRET],
      ['payments-api', SECRETS.PAYMENTS_API_SECRET],
    ]));
    for (const client of result.document.clients) expect(Object.hasOwn(client, 'secret')).toBe(false);
    const serialized = JSON.stringify(result.document);
    for (const value of Object.values(SECRETS)) expect(serialized).not.toContain(value);
  });

  it('compiles into rules indexed by actor and audience, in decision order', () => {
    const compiled = compilePolicy(documentOf(loadPolicyFiles([{ name: 'example.yaml', text: EXAMPLE }], OPTIONS)), 7);
    expect(compiled.version).toBe(7);
    expect(compiled.rules.get(ruleKey('planner-agent', 'https://payments.example.com'))?.map((r) => r.id)).toEqual(['planner-reads-payments']);
    expect(compiled.rules.get(ruleKey('executor-agent', 'https://payments.example.com'))?.map((r) => r.id)).toEqual(['executor-reads-payments']);
    expect(compiled.rules.get(ruleKey('executor-agent', 'https://agents.example.com/executor'))).toBeUndefined();
    expect(compiled.audienceOwner.get('https://payments.example.com')).toBe('payments-api');
    expect(compiled.audienceOwner.get('https://agents.example.com/executor')).toBe('executor-agent');
    expect(compiled.settings.max_depth_cap).toBe(5);
  });

  it('keeps several rules for one actor and audience in file-name then file order', () => {
    const extra = (id: string): string => `rules:
  - id: ${id}
    actor: planner-agent
    subject: { issuer: https://idp.example.com, claims: { groups: ${id} } }
    audience: https://payments.example.com
    scopes: [payment.read]
    ttl: 60
`;
    const doc = documentOf(loadPolicyFiles([
      { name: '30-late.yaml', text: extra('late') },
      { name: 'example.yaml', text: EXAMPLE },
      { name: '10-early.yml', text: extra('early') },
    ], OPTIONS));
    const compiled = compilePolicy(doc, 1);
    expect(compiled.rules.get(ruleKey('planner-agent', 'https://payments.example.com'))?.map((r) => r.id))
      .toEqual(['early', 'late', 'planner-reads-payments']);
  });
});

describe('defaults and explicit values', () => {
  it('keeps explicit values instead of defaults', () => {
    const text = `issuers:
  - issuer: https://idp.example.com
    jwks: { keys: [{ kty: RSA, n: abc, e: AQAB, kid: k1 }] }
    algorithms: [PS256]
    audience: https://writ.example.com
    token_types: [id_token]
    typ: [JWT]
    subject_prefix: "idp|"
    act: preserve
    max_token_age: 600
clients:
  - client_id: bot
    kind: agent
    auth: private_key_jwt
    jwks_uri: https://bot.example.com/jwks
    actor_identities: [{ issuer: https://idp.example.com, sub: bot-sa }]
    enabled: false
  - client_id: ops
    kind: admin
    auth: client_secret_post
    secret: \${OPS_SECRET}
    scopes: [writ:audit.read]
audiences:
  - audience: https://tool.example.com
    scopes: [a]
    max_ttl: 60
    signing_alg: RS256
rules:
  - id: r
    actor: bot
    subject: { issuer: https://idp.example.com }
    audience: https://tool.example.com
    scopes: [a]
    ttl: 30
    max_depth: 3
    require_task: true
settings:
  max_depth_cap: 3
`;
    const result = loadPolicyFiles([{ name: 'p.yaml', text }], { ...OPTIONS, env: { OPS_SECRET: 'o'.repeat(32) } });
    expect(documentOf(result)).toStrictEqual({
      issuers: [{
        issuer: 'https://idp.example.com', jwks: { keys: [{ kty: 'RSA', n: 'abc', e: 'AQAB', kid: 'k1' }] },
        algorithms: ['PS256'], audience: 'https://writ.example.com', token_types: ['id_token'], typ: ['JWT'],
        subject_prefix: 'idp|', act: 'preserve', max_token_age: 600,
      }],
      clients: [
        {
          client_id: 'bot', kind: 'agent', auth: 'private_key_jwt', jwks_uri: 'https://bot.example.com/jwks', audiences: [],
          actor_identities: [{ issuer: 'https://idp.example.com', sub: 'bot-sa' }], scopes: [], enabled: false,
        },
        { client_id: 'ops', kind: 'admin', auth: 'client_secret_post', audiences: [], actor_identities: [], scopes: ['writ:audit.read'], enabled: true },
      ],
      audiences: [{ audience: 'https://tool.example.com', scopes: ['a'], max_ttl: 60, signing_alg: 'RS256' }],
      rules: [{
        id: 'r', actor: 'bot', subject: { issuer: 'https://idp.example.com' }, audience: 'https://tool.example.com',
        scopes: ['a'], ttl: 30, max_depth: 3, require_task: true,
      }],
      settings: { max_depth_cap: 3 },
    });
    if (result.ok) expect(result.secrets).toEqual(new Map([['ops', 'o'.repeat(32)]]));
  });

  it('treats a file of only comments as empty', () => {
    const doc = documentOf(loadPolicyFiles([
      { name: 'a.yaml', text: EXAMPLE },
      { name: 'b.yaml', text: '# nothing here yet\n' },
    ], OPTIONS));
    expect(doc.rules).toHaveLength(3);
  });
});

describe('schema errors', () => {
  it('names an unknown top-level field and its line', () => {
    const text = `issuers: []\nrulez: []\n`;
    expect(errorsOf(loadPolicyFiles([{ name: 'p.yaml', text }], OPTIONS))).toEqual([{
      severity: 'error', file: 'p.yaml', line: 2, column: 1, path: 'rulez', code: 'unknown_field', message: 'unknown field "rulez"',
    }]);
  });

  it('names an unknown nested field, in the file that has it, with a file-local path', () => {
    const text = `rules:
  - id: r
    actor: planner-agent
    subject:
      issuer: https://idp.example.com
      claim: { groups: finance }
    audience: https://payments.example.com
    scopes: [payment.read]
    ttl: 60
`;
    const errors = errorsOf(loadPolicyFiles([{ name: 'example.yaml', text: EXAMPLE }, { name: 'typo.yaml', text }], OPTIONS));
    expect(errors).toEqual([expect.objectContaining({
      file: 'typo.yaml', line: 6, column: 7, path: 'rules[0].subject.claim', code: 'unknown_field', message: expect.stringContaining('"claim"'),
    })]);
  });

  it('reports every problem of a file at once', () => {
    const text = `audiences:
  - audience: https://t.example.com
    scopes: []
    max_ttl: 0
    signing_alg: HS256
  - scopes: [a b]
    max_ttl: "60"
clients:
  - client_id: c
    kind: robot
    auth: client_secret_basic
    enabled: yes
`;
    const errors = errorsOf(loadPolicyFiles([{ name: 'p.yaml', text }], OPTIONS));
    const summary = errors.map((e) => [e.line, e.path, e.code]);
    expect(summary).toEqual([
      [3, 'audiences[0].scopes', 'schema'],
      [4, 'audiences[0].max_ttl', 'schema'],
      [5, 'audiences[0].signing_alg', 'schema'],
      [6, 'audiences[1]', 'missing_field'],
      [6, 'audiences[1].scopes[0]', 'schema'],
      [7, 'audiences[1].max_ttl', 'schema'],
      [10, 'clients[0].kind', 'schema'],
      // YAML 1.2: `yes` is a string, not a boolean
      [12, 'clients[0].enabled', 'schema'],
    ]);
    expect(errors.find((e) => e.path === 'clients[0].kind')?.message).toBe('must be one of: agent, resource_server, admin');
    expect(errors.find((e) => e.code === 'missing_field')?.message).toBe('missing required field "audience"');
  });

  it('requires the fields docs/DESIGN.md §6 requires of a rule', () => {
    const errors = errorsOf(loadPolicyFiles([{ name: 'p.yaml', text: 'rules:\n  - id: r\n' }], OPTIONS));
    expect(errors.map((e) => e.message).sort()).toEqual(
      ['actor', 'audience', 'scopes', 'subject', 'ttl'].map((f) => `missing required field "${f}"`),
    );
    expect(errors.every((e) => e.line === 2 && e.path === 'rules[0]')).toBe(true);
  });

  it('explains a bad claim condition once', () => {
    const text = `rules:
  - id: r
    actor: a
    subject: { issuer: self, claims: { groups: { any: [a] } } }
    audience: https://t.example.com
    scopes: [s]
    ttl: 60
`;
    expect(errorsOf(loadPolicyFiles([{ name: 'p.yaml', text }], OPTIONS))).toEqual([expect.objectContaining({
      line: 4, path: 'rules[0].subject.claims.groups', code: 'schema', message: 'must be a string or a list of strings',
    })]);
  });

  it('refuses a file that is not a mapping', () => {
    expect(errorsOf(loadPolicyFiles([{ name: 'p.yaml', text: '- a\n- b\n' }], OPTIONS))).toEqual([expect.objectContaining({
      file: 'p.yaml', line: 1, path: '', code: 'schema', message: 'must be object',
    })]);
  });
});

describe('strict YAML', () => {
  it('refuses duplicate keys', () => {
    const text = `audiences:
  - audience: https://t.example.com
    scopes: [a]
    max_ttl: 60
    max_ttl: 600
`;
    expect(errorsOf(loadPolicyFiles([{ name: 'p.yaml', text }], OPTIONS))).toEqual([{
      severity: 'error', file: 'p.yaml', line: 5, column: 5, path: '', code: 'yaml_duplicate_key', message: 'duplicate key "max_ttl"',
    }]);
  });

  it('refuses anchors and aliases', () => {
    const text = `audiences:
  - &tool
    audience: https://t.example.com
    scopes: [a]
    max_ttl: 60
  - *tool
`;
    const errors = errorsOf(loadPolicyFiles([{ name: 'p.yaml', text }], OPTIONS));
    expect(errors.map((e) => [e.code, e.line])).toEqual([['yaml_alias', 2], ['yaml_alias', 6]]);
  });

  it('refuses custom and YAML 1.1 tags', () => {
    const text = `audiences:\n  - audience: !env TOOL\n    scopes: !!set { a }\n    max_ttl: 60\n`;
    const errors = errorsOf(loadPolicyFiles([{ name: 'p.yaml', text }], OPTIONS));
    expect(errors.map((e) => [e.code, e.line])).toEqual([['yaml_tag', 2], ['yaml_tag', 3]]);
  });

  it('refuses a %YAML 1.1 directive', () => {
    const errors = errorsOf(loadPolicyFiles([{ name: 'p.yaml', text: '%YAML 1.1\n---\nrules: []\n' }], OPTIONS));
    expect(errors.map((e) => e.code)).toEqual(['yaml_version']);
  });

  it('refuses several documents in one file', () => {
    const errors = errorsOf(loadPolicyFiles([{ name: 'p.yaml', text: 'rules: []\n---\nclients: []\n' }], OPTIONS));
    expect(errors.map((e) => [e.code, e.line])).toEqual([['yaml_syntax', 2]]);
  });

  it('refuses keys that are not strings', () => {
    const text = `rules:
  - id: r
    actor: a
    subject: { issuer: self, claims: { 42: x } }
    audience: https://t.example.com
    scopes: [s]
    ttl: 60
`;
    expect(errorsOf(loadPolicyFiles([{ name: 'p.yaml', text }], OPTIONS)).map((e) => [e.code, e.line])).toEqual([['yaml_key', 4]]);
  });

  it('reports a syntax error with its line', () => {
    const errors = errorsOf(loadPolicyFiles([{ name: 'p.yaml', text: 'rules:\n  - id: r\n  actor: x\n' }], OPTIONS));
    expect(errors).toEqual([expect.objectContaining({ file: 'p.yaml', code: 'yaml_syntax', line: 3, column: 1 })]);
  });
});

describe('secrets and ${NAME}', () => {
  const client = (secret: string): string => `clients:
  - client_id: extra
    kind: agent
    auth: client_secret_basic
    secret: ${secret}
`;
  const withExample = (text: string, env: LoadOptions['env'] = SECRETS): LoadResult =>
    loadPolicyFiles([{ name: 'example.yaml', text: EXAMPLE }, { name: 'z.yaml', text }], { ...OPTIONS, env });

  it('refuses ${NAME} outside a secret, in values and in keys', () => {
    const text = `rules:
  - id: r
    actor: planner-agent
    subject:
      issuer: https://idp.example.com
      claims: { groups: "\${GROUP}", "\${KEY}": x }
    audience: https://payments.example.com
    scopes: [payment.read]
    ttl: 60
audiences:
  - audience: https://\${HOST}/api
    scopes: [a]
    max_ttl: 60
`;
    const errors = errorsOf(withExample(text, { ...SECRETS, GROUP: 'finance', KEY: 'k', HOST: 'h' }));
    expect(errors.map((e) => [e.file, e.line, e.path, e.code])).toEqual([
      ['z.yaml', 6, 'rules[0].subject.claims.groups', 'env_not_allowed'],
      ['z.yaml', 6, 'rules[0].subject.claims["${KEY}"]', 'env_not_allowed'],
      ['z.yaml', 11, 'audiences[0].audience', 'env_not_allowed'],
    ]);
  });

  it('refuses ${NAME} as part of a secret', () => {
    const errors = errorsOf(withExample(client('prefix-${PLANNER_SECRET}')));
    expect(errors.map((e) => [e.file, e.line, e.path, e.code])).toEqual([['z.yaml', 5, 'clients[0].secret', 'env_not_allowed']]);
  });

  it('refuses a lower-case variable name', () => {
    expect(errorsOf(withExample(client('${planner_secret}'))).map((e) => e.code)).toEqual(['env_not_allowed']);
  });

  it('refuses an unset variable, naming it', () => {
    const errors = errorsOf(withExample(client('${EXTRA_SECRET}')));
    expect(errors).toEqual([{
      severity: 'error', file: 'z.yaml', line: 5, column: 13, path: 'clients[0].secret', code: 'env_unset',
      message: 'environment variable EXTRA_SECRET is not set',
    }]);
  });

  it('refuses an empty variable', () => {
    const errors = errorsOf(withExample(client('${EXTRA_SECRET}'), { ...SECRETS, EXTRA_SECRET: '' }));
    expect(errors.map((e) => [e.code, e.message])).toEqual([['env_unset', 'environment variable EXTRA_SECRET is empty']]);
  });

  it('refuses a short substituted secret', () => {
    const errors = errorsOf(withExample(client('${EXTRA_SECRET}'), { ...SECRETS, EXTRA_SECRET: 's'.repeat(31) }));
    expect(errors.map((e) => [e.line, e.path, e.code])).toEqual([[5, 'clients[0].secret', 'secret_too_short']]);
  });

  it('refuses a short literal secret', () => {
    const errors = errorsOf(withExample(client('short-literal')));
    expect(errors.map((e) => [e.line, e.path, e.code])).toEqual([[5, 'clients[0].secret', 'secret_too_short']]);
  });

  it('accepts a secret of exactly 32 characters', () => {
    const result = withExample(client('${EXTRA_SECRET}'), { ...SECRETS, EXTRA_SECRET: 's'.repeat(32) });
    expect(result.ok && result.secrets.get('extra')).toBe('s'.repeat(32));
  });

  it('never puts a secret value in any issue', () => {
    const literal = 'literal-secret-VALUE-that-is-long-enough';
    const short = 'tiny-SECRET';
    const env = { ...SECRETS, A_SECRET: 'a'.repeat(10), B_SECRET: 'b-SECRET-value-b-SECRET-value-b-SECRET-value' };
    const text = `clients:
  - client_id: a
    kind: agent
    auth: client_secret_basic
    secret: \${A_SECRET}
  - client_id: b
    kind: resource_server
    auth: client_secret_basic
    secret: \${B_SECRET}
    actor_identities: [{ issuer: https://nowhere.example.com, sub: x }]
  - client_id: c
    kind: admin
    auth: client_secret_post
    secret: ${literal}
    scopes: [writ:revoke]
  - client_id: d
    kind: agent
    auth: client_secret_post
    secret: ${short}
`;
    const outcomes = [
      withExample(text, env),
      withExample(text.replace('scopes: [writ:revoke]', 'scopes: [writ:everything]'), env),
      withExample(`${text}  - client_id: "${literal}`, env),
      withExample(`${text}  - client_id: ${literal}: x`, env),
      withExample(`${text}  - client_id: \${B_SECRET}`, env),
    ];
    for (const outcome of outcomes) {
      const issues = outcome.ok ? outcome.warnings : [...outcome.errors, ...outcome.warnings];
      expect(issues.length).toBeGreaterThan(0);
      const text = JSON.stringify(issues) + issues.map(formatIssue).join('\n');
      for (const secret of [literal, short, env.A_SECRET, env.B_SECRET, ...Object.values(SECRETS)]) {
        expect(text).not.toContain(secret);
      }
    }
  });
});

describe('settings', () => {
  it('applies a setting from one file', () => {
    const doc = documentOf(loadPolicyFiles([
      { name: 'example.yaml', text: EXAMPLE },
      { name: 'settings.yaml', text: 'settings:\n  max_depth_cap: 3\n' },
    ], OPTIONS));
    expect(doc.settings).toEqual({ max_depth_cap: 3 });
  });

  it('refuses the same setting in two files', () => {
    const errors = errorsOf(loadPolicyFiles([
      { name: 'example.yaml', text: `${EXAMPLE}settings: { max_depth_cap: 3 }\n` },
      { name: 'more.yaml', text: 'rules: []\nsettings:\n  max_depth_cap: 4\n' },
    ], OPTIONS));
    expect(errors).toEqual([expect.objectContaining({
      file: 'more.yaml', line: 3, column: 3, path: 'settings.max_depth_cap', code: 'duplicate_setting',
      message: expect.stringContaining('example.yaml'),
    })]);
  });

  it('accepts an empty settings block alongside another file setting it', () => {
    const result = loadPolicyFiles([
      { name: 'example.yaml', text: `${EXAMPLE}settings: { max_depth_cap: 3 }\n` },
      { name: 'more.yaml', text: 'settings: {}\n' },
    ], OPTIONS);
    expect(documentOf(result).settings.max_depth_cap).toBe(3);
  });
});

describe('files', () => {
  const dirs: string[] = [];
  afterAll(() => {
    for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
  });
  const rules = (id: string): string => `rules:
  - id: ${id}
    actor: planner-agent
    subject: { issuer: https://idp.example.com, claims: { team: ${id} } }
    audience: https://payments.example.com
    scopes: [payment.read]
    ttl: 60
`;

  it('reads *.yaml and *.yml in name order, ignoring other files, dotfiles and subdirectories', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'writ-policy-'));
    dirs.push(dir);
    writeFileSync(path.join(dir, 'b-example.yaml'), EXAMPLE);
    writeFileSync(path.join(dir, 'c.yml'), rules('from-yml'));
    writeFileSync(path.join(dir, 'a.yaml'), rules('from-yaml'));
    writeFileSync(path.join(dir, 'd.json'), '{ not yaml');
    writeFileSync(path.join(dir, 'e.yaml.bak'), 'not: policy');
    writeFileSync(path.join(dir, 'README.md'), '# hi');
    writeFileSync(path.join(dir, '.#a.yaml'), 'garbage: [');
    mkdirSync(path.join(dir, 'nested.yaml'));
    writeFileSync(path.join(dir, 'nested.yaml', 'inner.yaml'), rules('nested'));
    const doc = documentOf(await loadPolicyDir(dir, OPTIONS));
    expect(doc.rules.map((r) => r.id)).toEqual([
      'from-yaml', 'planner-reads-payments', 'planner-delegates-to-executor', 'executor-reads-payments', 'from-yml',
    ]);
  });

  it('names files by their path in the directory', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'writ-policy-'));
    dirs.push(dir);
    writeFileSync(path.join(dir, 'p.yml'), 'rulez: []\n');
    const errors = errorsOf(await loadPolicyDir(dir, OPTIONS));
    expect(errors).toEqual([expect.objectContaining({ file: path.join(dir, 'p.yml'), line: 1, code: 'unknown_field' })]);
  });

  it('refuses an empty directory, which would otherwise delete the whole policy', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'writ-policy-'));
    dirs.push(dir);
    expect(errorsOf(await loadPolicyDir(dir, OPTIONS)).map((e) => e.code)).toEqual(['no_files']);
  });

  it('reports a missing directory as an issue', async () => {
    const errors = errorsOf(await loadPolicyDir(path.join(tmpdir(), 'writ-no-such-dir-x9'), OPTIONS));
    expect(errors.map((e) => [e.code, e.message])).toEqual([['read_error', 'cannot read policy directory: ENOENT']]);
  });

  it('refuses the same file name twice', () => {
    const errors = errorsOf(loadPolicyFiles([{ name: 'a.yaml', text: EXAMPLE }, { name: 'a.yaml', text: '' }], OPTIONS));
    expect(errors.map((e) => e.code)).toEqual(['duplicate_file']);
  });

  it('refuses an oversized file', () => {
    const text = `# ${'x'.repeat(1024 * 1024)}\n`;
    expect(errorsOf(loadPolicyFiles([{ name: 'a.yaml', text }], OPTIONS)).map((e) => e.code)).toEqual(['file_too_large']);
  });
});

describe('formatIssue', () => {
  it('writes file:line:col: severity: path: message', () => {
    expect(formatIssue({ severity: 'error', file: 'p.yaml', line: 3, column: 5, path: 'rules[2].ttl', code: 'schema', message: 'must be integer' }))
      .toBe('p.yaml:3:5: error: rules[2].ttl: must be integer');
    expect(formatIssue({ severity: 'warning', file: 'p.yaml', path: '', code: 'x', message: 'm' })).toBe('p.yaml: warning: m');
    expect(formatIssue({ severity: 'error', path: '', code: 'no_files', message: 'none' })).toBe('error: none');
  });
});
