import { readdir, readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { Ajv2020, type ErrorObject, type ValidateFunction } from 'ajv/dist/2020.js';
import { isMap, isScalar, isSeq, LineCounter, parseDocument, visit, type Document } from 'yaml';
import schema from '../../policy/schema.json' with { type: 'json' };
import type {
  AudiencePolicy, ClientPolicy, IssuerPolicy, PolicyDocument, PolicySettings, RulePolicy, SubjectSelector,
} from './model.ts';
import {
  formatPath, parsePath, validatePolicy, type Locate, type PathSegment, type PolicyIssue, type SourceLocation,
} from './validate.ts';

export type { PolicyIssue, SourceLocation } from './validate.ts';

export interface LoadOptions {
  /** Where `${NAME}` secrets come from (normally `process.env`). */
  env: Readonly<Record<string, string | undefined>>;
  /** WRIT_ISSUER. */
  selfIssuer: string;
  /** WRIT_MAX_TTL, seconds. */
  maxTtl: number;
}

export type LoadResult =
  | { ok: true; document: PolicyDocument; secrets: Map<string, string>; warnings: PolicyIssue[] }
  | { ok: false; errors: PolicyIssue[]; warnings: PolicyIssue[] };

export interface PolicyFile {
  /** Shown in issues; also decides rule order (files in name order). */
  name: string;
  text: string;
}

/** `file:line:col: error: path: message`, the shape editors and CI annotate from. */
export function formatIssue(i: PolicyIssue): string {
  let where = '';
  if (i.file !== undefined) {
    where = i.line === undefined ? `${i.file}: ` : `${i.file}:${i.line}:${i.column ?? 1}: `;
  }
  return `${where}${i.severity}: ${i.path === '' ? '' : `${i.path}: `}${i.message}`;
}

// What a file may say before defaults are applied (the schema guarantees this shape).
type Defaulted<T, K extends keyof T> = Omit<T, K> & Partial<Pick<T, K>>;
type IssuerInput = Defaulted<IssuerPolicy, 'token_types' | 'typ' | 'act' | 'max_token_age'>;
type ClientInput = Defaulted<ClientPolicy, 'audiences' | 'actor_identities' | 'scopes' | 'enabled'>;
type AudienceInput = Defaulted<AudiencePolicy, 'signing_alg'>;
type RuleInput = Defaulted<RulePolicy, 'max_depth' | 'require_task'>;
interface PolicyFileInput {
  issuers?: IssuerInput[];
  clients?: ClientInput[];
  audiences?: AudienceInput[];
  rules?: RuleInput[];
  settings?: Partial<PolicySettings>;
}

const SECTIONS = ['issuers', 'clients', 'audiences', 'rules'] as const;
type Section = (typeof SECTIONS)[number];

const DEFAULT_SETTINGS: PolicySettings = { max_depth_cap: 5 };
const MIN_SECRET_LENGTH = 32;
const MAX_SECRET_LENGTH = 1024;
/** Policy is small; a cap keeps a pasted or generated monster from reaching the parser via the admin API. */
const MAX_FILE_CHARS = 1024 * 1024;
const ENV_REFERENCE = /^\$\{([A-Z_][A-Z0-9_]*)\}$/;

let compiledSchema: ValidateFunction<PolicyFileInput> | undefined;
function schemaValidator(): ValidateFunction<PolicyFileInput> {
  compiledSchema ??= new Ajv2020({ allErrors: true, strict: true }).compile<PolicyFileInput>(schema);
  return compiledSchema;
}

interface SourceFile {
  name: string;
  doc: Document.Parsed;
  lines: LineCounter;
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** Line and column of the node a path names, or of its deepest ancestor present in the file. */
function positionOf(file: SourceFile, segments: readonly PathSegment[], atKey: boolean): { line: number; column: number } {
  let node: unknown = file.doc.contents;
  let key: unknown;
  for (const segment of segments) {
    if (isMap(node) && typeof segment === 'string') {
      const pair = node.items.find((p) => isScalar(p.key) && String(p.key.value) === segment);
      if (!pair) break;
      key = pair.key;
      node = pair.value;
    } else if (isSeq(node) && typeof segment === 'number' && node.items[segment] !== undefined) {
      key = undefined;
      node = node.items[segment];
    } else {
      break;
    }
  }
  const offsetOf = (n: unknown): number | undefined =>
    (isMap(n) || isSeq(n) || isScalar(n)) && n.range ? n.range[0] : undefined;
  // An empty value (`ttl:`) has no useful position of its own; its key does.
  const emptyValue = node === null || (isScalar(node) && node.value === null);
  const offset = (atKey || emptyValue ? offsetOf(key) : undefined) ?? offsetOf(node) ?? offsetOf(key) ?? 0;
  const pos = file.lines.linePos(offset);
  return { line: pos.line, column: pos.col };
}

function issueAt(
  file: SourceFile, segments: readonly PathSegment[], code: string, message: string,
  options: { atKey?: boolean; severity?: PolicyIssue['severity'] } = {},
): PolicyIssue {
  const { line, column } = positionOf(file, segments, options.atKey ?? false);
  return { severity: options.severity ?? 'error', file: file.name, line, column, path: formatPath(segments), code, message };
}

// Messages of these yaml error codes may quote source text, which could be a literal secret.
const QUOTING_YAML_ERRORS: Readonly<Record<string, string>> = {
  BAD_DQ_ESCAPE: 'invalid escape sequence in a double-quoted string',
  BAD_PROP_ORDER: 'anchors and tags must come after the indicator',
  BAD_SCALAR_START: 'a plain value cannot start with this character; quote it',
  UNEXPECTED_TOKEN: 'unexpected token',
  TAG_RESOLVE_FAILED: 'custom and unknown tags are not supported',
  BAD_COLLECTION_TYPE: 'custom and unknown tags are not supported',
};

function yamlCode(code: string): string {
  if (code === 'DUPLICATE_KEY') return 'yaml_duplicate_key';
  if (code === 'TAG_RESOLVE_FAILED' || code === 'BAD_COLLECTION_TYPE') return 'yaml_tag';
  return 'yaml_syntax';
}

/** Parses one file as strict YAML 1.2: any warning is an error, and no aliases, anchors or non-string keys. */
function parseFile(name: string, text: string): { file: SourceFile; issues: PolicyIssue[] } {
  const lines = new LineCounter();
  const doc = parseDocument(text, {
    version: '1.2',
    schema: 'core',
    uniqueKeys: true,
    resolveKnownTags: false,
    prettyErrors: false,
    strict: true,
    lineCounter: lines,
  });
  const file: SourceFile = { name, doc, lines };
  const issues: PolicyIssue[] = [];
  const at = (offset: number, code: string, message: string): void => {
    const pos = lines.linePos(offset);
    issues.push({ severity: 'error', file: name, line: pos.line, column: pos.col, path: '', code, message });
  };
  for (const e of [...doc.errors, ...doc.warnings]) {
    let message = QUOTING_YAML_ERRORS[e.code] ?? e.message;
    if (e.code === 'DUPLICATE_KEY') {
      // Name the key only when it is a plain identifier: quoting arbitrary source could leak a secret.
      const key = /^[A-Za-z0-9_.-]{1,64}(?=\s*:)/.exec(text.slice(e.pos[0], e.pos[0] + 80))?.[0];
      message = key === undefined ? 'duplicate key' : `duplicate key "${key}"`;
    }
    at(e.pos[0], yamlCode(e.code), message);
  }
  if (doc.directives?.yaml.explicit && doc.directives.yaml.version !== '1.2') {
    at(0, 'yaml_version', 'policy files are YAML 1.2; remove the %YAML directive');
  }
  visit(doc, {
    Alias(_, node) {
      at(node.range?.[0] ?? 0, 'yaml_alias', 'aliases are not supported; write the value out');
    },
    Node(_, node) {
      if (node.anchor) {
        // A collection's range starts after its properties, so find the `&` itself.
        const start = node.range?.[0] ?? 0;
        const offset = text.lastIndexOf(`&${node.anchor}`, start);
        at(offset < 0 ? start : offset, 'yaml_alias', 'anchors are not supported; write the value out');
      }
    },
    Pair(_, pair) {
      if (!isScalar(pair.key) || typeof pair.key.value !== 'string') {
        const offset = isScalar(pair.key) || isMap(pair.key) || isSeq(pair.key) ? pair.key.range?.[0] : undefined;
        at(offset ?? 0, 'yaml_key', 'keys must be strings');
      }
    },
  });
  return { file, issues };
}

/** Turns an ajv JSON pointer into path segments, telling array indexes from keys by the data. */
function pointerSegments(pointer: string, data: unknown): PathSegment[] {
  if (pointer === '') return [];
  const segments: PathSegment[] = [];
  let current = data;
  for (const raw of pointer.slice(1).split('/')) {
    const segment = raw.replaceAll('~1', '/').replaceAll('~0', '~');
    if (Array.isArray(current)) {
      const index = Number(segment);
      segments.push(index);
      current = current[index];
    } else {
      segments.push(segment);
      current = isRecord(current) ? current[segment] : undefined;
    }
  }
  return segments;
}

function schemaMessage(e: ErrorObject): string {
  if (e.keyword === 'enum') {
    const allowed = (e.params as { allowedValues?: unknown[] }).allowedValues ?? [];
    return `must be one of: ${allowed.map(String).join(', ')}`;
  }
  if (e.keyword === 'anyOf' && e.schemaPath.includes('claimCondition')) return 'must be a string or a list of strings';
  if (e.keyword === 'pattern' && e.schemaPath.includes('/identifier/')) return 'must be visible ASCII characters without spaces';
  if (e.keyword === 'pattern' && e.schemaPath.includes('/scopeToken/')) return 'must be a scope token: visible ASCII characters except space, " and \\';
  return e.message ?? 'is invalid';
}

function schemaIssues(file: SourceFile, data: unknown, errors: readonly ErrorObject[]): PolicyIssue[] {
  // For anyOf, ajv also reports why each branch failed; the anyOf error alone says it better.
  const alternatives = errors.filter((e) => e.keyword === 'anyOf');
  const isBranchError = (e: ErrorObject): boolean => alternatives.some((a) =>
    e !== a && e.schemaPath.startsWith(`${a.schemaPath}/`)
    && (e.instancePath === a.instancePath || e.instancePath.startsWith(`${a.instancePath}/`)));
  const seen = new Set<string>();
  const issues: PolicyIssue[] = [];
  for (const e of errors) {
    if (isBranchError(e)) continue;
    const segments = pointerSegments(e.instancePath, data);
    let issue: PolicyIssue;
    if (e.keyword === 'additionalProperties') {
      const field = String((e.params as { additionalProperty: unknown }).additionalProperty);
      issue = issueAt(file, [...segments, field], 'unknown_field', `unknown field "${field}"`, { atKey: true });
    } else if (e.keyword === 'required') {
      const field = String((e.params as { missingProperty: unknown }).missingProperty);
      issue = issueAt(file, segments, 'missing_field', `missing required field "${field}"`);
    } else {
      issue = issueAt(file, segments, 'schema', schemaMessage(e));
    }
    const key = `${issue.path}\n${issue.message}`;
    if (!seen.has(key)) {
      seen.add(key);
      issues.push(issue);
    }
  }
  return issues;
}

function isSecretPath(segments: readonly PathSegment[]): boolean {
  return segments.length === 3 && segments[0] === 'clients' && typeof segments[1] === 'number' && segments[2] === 'secret';
}

/**
 * Resolves `clients[i].secret` values (local index → secret) and refuses `${` anywhere else,
 * so that a typo never ships a literal `${...}` as a claim value or a secret.
 */
function resolveSecrets(
  file: SourceFile, data: unknown, env: LoadOptions['env'], issues: PolicyIssue[],
): Map<number, string> {
  const secrets = new Map<number, string>();
  const resolve = (raw: string, segments: PathSegment[]): void => {
    const reference = ENV_REFERENCE.exec(raw);
    let secret = raw;
    let origin = '';
    if (reference?.[1] !== undefined) {
      const name = reference[1];
      const value = env[name];
      if (value === undefined || value === '') {
        issues.push(issueAt(file, segments, 'env_unset', `environment variable ${name} is ${value === undefined ? 'not set' : 'empty'}`));
        return;
      }
      secret = value;
      origin = ` (from ${name})`;
    } else if (raw.includes('${')) {
      issues.push(issueAt(file, segments, 'env_not_allowed', 'a secret may use ${NAME} only as its whole value, with NAME made of A-Z, 0-9 and _'));
      return;
    }
    const length = [...secret].length;
    if (length < MIN_SECRET_LENGTH) {
      issues.push(issueAt(file, segments, 'secret_too_short', `secret${origin} is shorter than ${MIN_SECRET_LENGTH} characters`));
    } else if (length > MAX_SECRET_LENGTH) {
      issues.push(issueAt(file, segments, 'secret_too_long', `secret${origin} is longer than ${MAX_SECRET_LENGTH} characters`));
    } else {
      if (!reference) {
        issues.push(issueAt(file, segments, 'literal_secret', 'secret is written literally; write ${NAME} to keep it out of version control', { severity: 'warning' }));
      }
      secrets.set(segments[1] as number, secret);
    }
  };
  const walk = (value: unknown, segments: PathSegment[]): void => {
    if (typeof value === 'string') {
      if (isSecretPath(segments)) resolve(value, segments);
      else if (value.includes('${')) {
        issues.push(issueAt(file, segments, 'env_not_allowed', '${NAME} is allowed only as the whole value of a client secret'));
      }
    } else if (Array.isArray(value)) {
      value.forEach((item, index) => walk(item, [...segments, index]));
    } else if (isRecord(value)) {
      for (const [key, item] of Object.entries(value)) {
        if (key.includes('${')) {
          issues.push(issueAt(file, [...segments, key], 'env_not_allowed', '${NAME} is allowed only as the whole value of a client secret', { atKey: true }));
        }
        walk(item, [...segments, key]);
      }
    }
  };
  walk(data, []);
  return secrets;
}

interface LoadedFile {
  file: SourceFile;
  data: PolicyFileInput;
  secrets: Map<number, string>;
}

interface Origin {
  file: number;
  index: number;
}

interface Merged {
  input: Required<Omit<PolicyFileInput, 'settings'>>;
  settings: Partial<PolicySettings>;
  origins: Record<Section, Origin[]>;
  /** setting name → index of the file that sets it. */
  settingOrigins: Map<string, number>;
}

function merge(files: readonly LoadedFile[], issues: PolicyIssue[]): Merged {
  const merged: Merged = {
    input: { issuers: [], clients: [], audiences: [], rules: [] },
    settings: {},
    origins: { issuers: [], clients: [], audiences: [], rules: [] },
    settingOrigins: new Map(),
  };
  files.forEach(({ file, data }, f) => {
    for (const section of SECTIONS) {
      const items = data[section] ?? [];
      items.forEach((_, index) => merged.origins[section].push({ file: f, index }));
    }
    merged.input.issuers.push(...(data.issuers ?? []));
    merged.input.clients.push(...(data.clients ?? []));
    merged.input.audiences.push(...(data.audiences ?? []));
    merged.input.rules.push(...(data.rules ?? []));
    for (const [name, value] of Object.entries(data.settings ?? {}) as Array<[keyof PolicySettings, never]>) {
      const earlier = merged.settingOrigins.get(name);
      if (earlier !== undefined) {
        issues.push(issueAt(file, ['settings', name], 'duplicate_setting', `settings.${name} is already set in ${files[earlier]?.file.name ?? 'another file'}; set each setting in one file only`, { atKey: true }));
      } else {
        merged.settingOrigins.set(name, f);
        merged.settings[name] = value;
      }
    }
  });
  return merged;
}

function normalizeIssuer(i: IssuerInput): IssuerPolicy {
  return {
    issuer: i.issuer,
    ...(i.jwks_uri !== undefined && { jwks_uri: i.jwks_uri }),
    ...(i.jwks !== undefined && { jwks: structuredClone(i.jwks) }),
    algorithms: [...i.algorithms],
    audience: i.audience,
    token_types: [...(i.token_types ?? ['access_token', 'jwt'])],
    typ: [...(i.typ ?? ['at+jwt', 'application/at+jwt'])],
    ...(i.subject_prefix !== undefined && { subject_prefix: i.subject_prefix }),
    act: i.act ?? 'reject',
    max_token_age: i.max_token_age ?? 86400,
  };
}

/** Drops `secret`: it travels separately and never lands in a stored version. */
function normalizeClient(c: ClientInput): ClientPolicy {
  return {
    client_id: c.client_id,
    kind: c.kind,
    auth: c.auth,
    ...(c.jwks !== undefined && { jwks: structuredClone(c.jwks) }),
    ...(c.jwks_uri !== undefined && { jwks_uri: c.jwks_uri }),
    audiences: [...(c.audiences ?? [])],
    actor_identities: (c.actor_identities ?? []).map((a) => ({ issuer: a.issuer, sub: a.sub })),
    scopes: [...(c.scopes ?? [])],
    enabled: c.enabled ?? true,
    ...(c.rate_limit !== undefined && { rate_limit: { ...c.rate_limit } }),
  };
}

function normalizeAudience(a: AudienceInput): AudiencePolicy {
  return { audience: a.audience, scopes: [...a.scopes], max_ttl: a.max_ttl, signing_alg: a.signing_alg ?? 'ES256' };
}

function normalizeSubject(s: SubjectSelector): SubjectSelector {
  // structuredClone keeps a claim literally named `__proto__` an own property.
  return {
    issuer: s.issuer,
    ...(s.claims !== undefined && { claims: structuredClone(s.claims) }),
    ...(s.after !== undefined && { after: [...s.after] }),
    ...(s.root !== undefined && { root: structuredClone(s.root) }),
  };
}

function normalizeRule(r: RuleInput): RulePolicy {
  return {
    id: r.id,
    actor: r.actor,
    subject: normalizeSubject(r.subject),
    audience: r.audience,
    scopes: [...r.scopes],
    ttl: r.ttl,
    max_depth: r.max_depth ?? 1,
    require_task: r.require_task ?? false,
  };
}

function locator(files: readonly LoadedFile[], merged: Merged): Locate {
  return (mergedPath: string): SourceLocation | undefined => {
    const segments = parsePath(mergedPath);
    const [section, index, ...rest] = segments ?? [];
    let fileIndex: number | undefined;
    let local: PathSegment[];
    if (section === 'settings') {
      fileIndex = typeof index === 'string' ? merged.settingOrigins.get(index) : undefined;
      local = segments ?? [];
    } else if (SECTIONS.includes(section as Section) && typeof index === 'number') {
      const origin = merged.origins[section as Section][index];
      fileIndex = origin?.file;
      local = [section as Section, origin?.index ?? index, ...rest];
    } else {
      return undefined;
    }
    const loaded = fileIndex === undefined ? undefined : files[fileIndex];
    if (!loaded) return undefined;
    return { file: loaded.file.name, ...positionOf(loaded.file, local, false), path: formatPath(local) };
  };
}

/** Issues in file order, then by position, so output reads top to bottom. */
function sortIssues(issues: readonly PolicyIssue[], fileOrder: readonly string[]): PolicyIssue[] {
  const rank = (i: PolicyIssue): number => (i.file === undefined ? -1 : fileOrder.indexOf(i.file));
  return [...issues].sort((a, b) => rank(a) - rank(b) || (a.line ?? 0) - (b.line ?? 0) || (a.column ?? 0) - (b.column ?? 0));
}

function result(issues: readonly PolicyIssue[], fileOrder: readonly string[]): { errors: PolicyIssue[]; warnings: PolicyIssue[] } {
  const sorted = sortIssues(issues, fileOrder);
  return { errors: sorted.filter((i) => i.severity === 'error'), warnings: sorted.filter((i) => i.severity === 'warning') };
}

/**
 * Parses, validates and merges policy files into one document (docs/DESIGN.md §6). Pure: the
 * environment comes in through `options.env`. Files are taken in name order whatever order
 * they are given in, since that order decides which rule matches first.
 */
export function loadPolicyFiles(files: ReadonlyArray<PolicyFile>, options: LoadOptions): LoadResult {
  const ordered = [...files].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const fileOrder = ordered.map((f) => f.name);
  const issues: PolicyIssue[] = [];
  if (ordered.length === 0) {
    // Applying nothing would delete the whole policy; that is never what an empty directory means.
    issues.push({ severity: 'error', path: '', code: 'no_files', message: 'no policy files (*.yaml, *.yml) found' });
  }
  ordered.forEach((f, i) => {
    if (i > 0 && ordered[i - 1]?.name === f.name) {
      issues.push({ severity: 'error', file: f.name, path: '', code: 'duplicate_file', message: 'file given more than once' });
    }
  });

  const loaded: LoadedFile[] = [];
  let readable = true;
  for (const { name, text } of ordered) {
    if (text.length > MAX_FILE_CHARS) {
      issues.push({ severity: 'error', file: name, path: '', code: 'file_too_large', message: `file is larger than ${MAX_FILE_CHARS} characters` });
      readable = false;
      continue;
    }
    const parsed = parseFile(name, text);
    issues.push(...parsed.issues);
    if (parsed.issues.length > 0) {
      readable = false;
      continue;
    }
    // Aliases were refused above; maxAliasCount 0 makes sure none is ever expanded.
    const data: unknown = parsed.file.doc.toJS({ maxAliasCount: 0 }) ?? {};
    const secrets = resolveSecrets(parsed.file, data, options.env, issues);
    const validate = schemaValidator();
    if (validate(data)) {
      loaded.push({ file: parsed.file, data, secrets });
    } else {
      issues.push(...schemaIssues(parsed.file, data, validate.errors ?? []));
      readable = false;
    }
  }
  // Semantic checks assume every file has the schema's shape; until then they would only add noise.
  if (!readable || issues.some((i) => i.code === 'no_files' || i.code === 'duplicate_file')) {
    return { ok: false, ...result(issues, fileOrder) };
  }

  const merged = merge(loaded, issues);
  const document: PolicyDocument = {
    issuers: merged.input.issuers.map(normalizeIssuer),
    clients: merged.input.clients.map(normalizeClient),
    audiences: merged.input.audiences.map(normalizeAudience),
    rules: merged.input.rules.map(normalizeRule),
    settings: { ...DEFAULT_SETTINGS, ...merged.settings },
  };
  issues.push(...validatePolicy(document, options, locator(loaded, merged)));

  const { errors, warnings } = result(issues, fileOrder);
  if (errors.length > 0) return { ok: false, errors, warnings };

  const secrets = new Map<string, string>();
  merged.origins.clients.forEach((origin, c) => {
    const secret = loaded[origin.file]?.secrets.get(origin.index);
    const client = document.clients[c];
    if (secret !== undefined && client) secrets.set(client.client_id, secret);
  });
  return { ok: true, document, secrets, warnings };
}

function isPolicyFileName(name: string): boolean {
  // Dotfiles are editor droppings (`.#x.yaml`), not policy, as a shell `*.yaml` glob agrees.
  return !name.startsWith('.') && (name.endsWith('.yaml') || name.endsWith('.yml'));
}

/** The text of `*.yaml` and `*.yml` directly in `dir` (not recursive), or what could not be read. */
export async function readPolicyDir(dir: string): Promise<{ ok: true; files: PolicyFile[] } | { ok: false; errors: PolicyIssue[] }> {
  let names: string[];
  try {
    names = (await readdir(dir)).filter(isPolicyFileName).sort();
  } catch (err) {
    const message = `cannot read policy directory: ${(err as NodeJS.ErrnoException).code ?? String(err)}`;
    return { ok: false, errors: [{ severity: 'error', file: dir, path: '', code: 'read_error', message }] };
  }
  const files: PolicyFile[] = [];
  const errors: PolicyIssue[] = [];
  for (const name of names) {
    const full = path.join(dir, name);
    try {
      // stat follows symlinks: a linked file counts, a directory named x.yaml does not.
      if (!(await stat(full)).isFile()) continue;
      files.push({ name: full, text: await readFile(full, 'utf8') });
    } catch (err) {
      errors.push({ severity: 'error', file: full, path: '', code: 'read_error', message: `cannot read file: ${(err as NodeJS.ErrnoException).code ?? String(err)}` });
    }
  }
  return errors.length > 0 ? { ok: false, errors } : { ok: true, files };
}

/** Reads the policy files of `dir` and loads them with `loadPolicyFiles`. */
export async function loadPolicyDir(dir: string, options: LoadOptions): Promise<LoadResult> {
  const read = await readPolicyDir(dir);
  return read.ok ? loadPolicyFiles(read.files, options) : { ok: false, errors: read.errors, warnings: [] };
}
