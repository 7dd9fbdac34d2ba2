import { createHash } from 'node:crypto';
import type { AudiencePolicy, ClientPolicy, IssuerPolicy, PolicyDocument, RulePolicy } from './model.ts';
import { canonicalJson } from '../canonical-json.ts';
import { formatPath, type PathSegment } from './validate.ts';

/**
 * What `writ policy apply` would change (or did change), object by object and field by field.
 * Pure: the only outside fact it needs, whether each client's secret changes, comes in as
 * `secretStatus` (computed against the stored hashes by `secretChanges` in versions.ts).
 * Secret values never enter or leave this module.
 */

/**
 * A client's secret in an apply: `new` (none stored yet), `changed` (differs from the stored
 * hash), `unchanged` (matches it), `kept` (the file omits `secret`; the stored one stays).
 */
export type SecretStatus = 'unchanged' | 'changed' | 'new' | 'kept';

export type ObjectSection = 'issuer' | 'client' | 'audience' | 'rule';
export type PolicyObject = IssuerPolicy | ClientPolicy | AudiencePolicy | RulePolicy;

/** One field of a changed object. `field` is a path inside the object, like `subject.claims.groups`. */
export type FieldChange =
  /** A value set, removed or replaced; `undefined` means absent. */
  | { kind: 'value'; field: string; before: unknown; after: unknown }
  /** A list compared as a set: what was added and removed (items of object lists are labelled). */
  | { kind: 'set'; field: string; added: string[]; removed: string[] }
  /** The secret; only its status, never a value. */
  | { kind: 'secret'; field: 'secret'; status: 'changed' | 'new' }
  /** A rule's position in decision order (0-based; first match wins), relative to the rules both versions have. */
  | { kind: 'moved'; field: 'position'; from: number; to: number };

export type PolicyChange =
  /** `object` never carries a secret; `secret` is the client's secret status; `position` a rule's 0-based index in the new order. */
  | { kind: 'added'; section: ObjectSection; id: string; object: PolicyObject; secret?: SecretStatus; position?: number }
  | { kind: 'removed'; section: ObjectSection; id: string; object: PolicyObject }
  | { kind: 'changed'; section: ObjectSection; id: string; fields: FieldChange[] }
  | { kind: 'changed'; section: 'settings'; id: 'settings'; fields: FieldChange[] };

type Plain = Record<string, unknown>;

function isPlainObject(value: unknown): value is Plain {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function same(a: unknown, b: unknown): boolean {
  return canonicalJson(a) === canonicalJson(b);
}

/** A short, stable label for an item of a list of objects (a JWK by its kid, never by key material). */
export function itemLabel(item: unknown): string {
  if (typeof item === 'string') return item;
  if (isPlainObject(item) && typeof item.kty === 'string') {
    if (typeof item.kid === 'string') return `key kid=${item.kid}`;
    return `key ${item.kty} sha256:${createHash('sha256').update(canonicalJson(item)).digest('hex').slice(0, 12)}`;
  }
  return canonicalJson(item);
}

function withoutSecret<T extends PolicyObject>(object: T): T {
  if (!('secret' in object)) return object;
  const { secret: _secret, ...rest } = object as ClientPolicy;
  return rest as T;
}

/**
 * Fields in the order the model and the example write them, whatever order a stored document
 * has (jsonb does not keep key order), so a diff reads the same whichever side came from where.
 * Unknown fields follow in alphabetical order.
 */
const FIELD_ORDER: Readonly<Record<string, readonly string[]>> = {
  issuer: ['issuer', 'jwks_uri', 'jwks', 'algorithms', 'audience', 'token_types', 'typ', 'subject_prefix', 'act', 'max_token_age'],
  client: ['client_id', 'kind', 'auth', 'jwks', 'jwks_uri', 'audiences', 'actor_identities', 'scopes', 'enabled'],
  audience: ['audience', 'scopes', 'max_ttl', 'signing_alg'],
  rule: ['id', 'actor', 'subject', 'audience', 'scopes', 'ttl', 'max_depth', 'require_task'],
  settings: ['max_depth_cap'],
  subject: ['issuer', 'claims', 'after', 'root'],
  root: ['issuer', 'claims'],
};

/** The context of a nested object, for its field order: `subject` and `root` have their own. */
function childContext(key: string): string {
  return key === 'subject' || key === 'root' ? key : '';
}

function orderedKeys(keys: Iterable<string>, context: string): string[] {
  const order = FIELD_ORDER[context] ?? [];
  const rank = (k: string): number => {
    const i = order.indexOf(k);
    return i < 0 ? order.length : i;
  };
  return [...new Set(keys)].sort((a, b) => rank(a) - rank(b) || (a < b ? -1 : a > b ? 1 : 0));
}

/** Field-level differences of two versions of one object, in the model's field order. */
function diffFields(before: unknown, after: unknown, at: PathSegment[], out: FieldChange[], context: string): void {
  if (same(before, after)) return;
  const field = formatPath(at);
  if (isPlainObject(before) && isPlainObject(after)) {
    for (const key of orderedKeys([...Object.keys(after), ...Object.keys(before)], context)) {
      if (at.length === 0 && key === 'secret') continue;
      diffFields(before[key], after[key], [...at, key], out, childContext(key));
    }
    return;
  }
  if (Array.isArray(before) && Array.isArray(after)) {
    const beforeLabels = new Map(before.map((item) => [canonicalJson(item), itemLabel(item)]));
    const afterLabels = new Map(after.map((item) => [canonicalJson(item), itemLabel(item)]));
    const added = [...afterLabels].filter(([k]) => !beforeLabels.has(k)).map(([, label]) => label);
    const removed = [...beforeLabels].filter(([k]) => !afterLabels.has(k)).map(([, label]) => label);
    if (added.length > 0 || removed.length > 0) {
      out.push({ kind: 'set', field, added, removed });
      return;
    }
    // Same members in another order: still a change, shown whole.
  }
  out.push({ kind: 'value', field, before, after });
}

/**
 * Indexes (into `ids`) of a longest common subsequence of `a` and `b`, as a set of ids: rules in
 * it kept their relative order; the others moved. Policies are small, so O(n·m) is fine.
 */
function stableIds(a: readonly string[], b: readonly string[]): Set<string> {
  const n = a.length;
  const m = b.length;
  const table: number[][] = Array.from({ length: n + 1 }, () => new Array<number>(m + 1).fill(0));
  for (let i = n - 1; i >= 0; i--) {
    for (let j = m - 1; j >= 0; j--) {
      table[i]![j] = a[i] === b[j] ? table[i + 1]![j + 1]! + 1 : Math.max(table[i + 1]![j]!, table[i]![j + 1]!);
    }
  }
  const kept = new Set<string>();
  let i = 0;
  let j = 0;
  while (i < n && j < m) {
    if (a[i] === b[j]) {
      kept.add(a[i]!);
      i++;
      j++;
    } else if (table[i + 1]![j]! >= table[i]![j + 1]!) {
      i++;
    } else {
      j++;
    }
  }
  return kept;
}

function diffSection<T extends PolicyObject>(
  section: ObjectSection,
  before: readonly T[],
  after: readonly T[],
  idOf: (item: T) => string,
  out: PolicyChange[],
  secretStatus: ReadonlyMap<string, SecretStatus>,
): void {
  const beforeById = new Map(before.map((item) => [idOf(item), item]));
  const afterIds = new Set(after.map(idOf));
  for (const item of before) {
    const id = idOf(item);
    if (!afterIds.has(id)) out.push({ kind: 'removed', section, id, object: withoutSecret(item) });
  }
  // Rules are ordered (first match wins): a rule that changed places among the rules both
  // versions have is reported as moved.
  let moved = new Set<string>();
  const beforeOrder = before.map(idOf).filter((id) => afterIds.has(id));
  const afterOrder = after.map(idOf).filter((id) => beforeById.has(id));
  if (section === 'rule') {
    const stable = stableIds(beforeOrder, afterOrder);
    moved = new Set(afterOrder.filter((id) => !stable.has(id)));
  }
  after.forEach((item, index) => {
    const id = idOf(item);
    const previous = beforeById.get(id);
    const status = section === 'client' ? secretStatus.get(id) : undefined;
    if (previous === undefined) {
      out.push({
        kind: 'added', section, id, object: withoutSecret(item),
        ...(status !== undefined && { secret: status }),
        ...(section === 'rule' && { position: index }),
      });
      return;
    }
    const fields: FieldChange[] = [];
    if (moved.has(id)) fields.push({ kind: 'moved', field: 'position', from: beforeOrder.indexOf(id), to: afterOrder.indexOf(id) });
    diffFields(withoutSecret(previous), withoutSecret(item), [], fields, section);
    if (status === 'changed' || status === 'new') fields.push({ kind: 'secret', field: 'secret', status });
    if (fields.length > 0) out.push({ kind: 'changed', section, id, fields });
  });
}

/**
 * Every difference between two policy documents: objects added, removed or changed per section
 * (issuers, clients, audiences, rules), rule order, and settings. `before` undefined means no
 * policy yet (everything is added). `secretStatus` tells, per client id, what happens to its
 * secret; a client whose status is `changed` or `new` is reported even if nothing else changed.
 */
export function diffPolicies(
  before: PolicyDocument | undefined,
  after: PolicyDocument,
  secretStatus: ReadonlyMap<string, SecretStatus> = new Map(),
): PolicyChange[] {
  const out: PolicyChange[] = [];
  diffSection('issuer', before?.issuers ?? [], after.issuers, (i) => i.issuer, out, secretStatus);
  diffSection('client', before?.clients ?? [], after.clients, (c) => c.client_id, out, secretStatus);
  diffSection('audience', before?.audiences ?? [], after.audiences, (a) => a.audience, out, secretStatus);
  diffSection('rule', before?.rules ?? [], after.rules, (r) => r.id, out, secretStatus);
  const settings: FieldChange[] = [];
  diffFields(before?.settings ?? {}, after.settings, [], settings, 'settings');
  if (settings.length > 0) out.push({ kind: 'changed', section: 'settings', id: 'settings', fields: settings });
  return out;
}

function formatValue(value: unknown): string {
  if (value === undefined) return '(none)';
  if (typeof value === 'string') return /^[\x21-\x7e]+$/.test(value) && !value.startsWith('"') ? value : JSON.stringify(value);
  if (Array.isArray(value)) return `[${value.map((v) => (typeof v === 'string' || isPlainObject(v) ? itemLabel(v) : formatValue(v))).join(', ')}]`;
  if (isPlainObject(value)) return `{${Object.entries(value).map(([k, v]) => `${formatPath([k])}: ${formatValue(v)}`).join(', ')}}`;
  return String(value);
}

/** Leaf fields of an object as `path: value` lines (lists stay whole). */
function flatten(value: unknown, at: PathSegment[], out: Array<[string, unknown]>, context: string): void {
  if (isPlainObject(value) && !(at.length > 0 && typeof value.kty === 'string')) {
    for (const key of orderedKeys(Object.keys(value), context)) {
      if (at.length === 0 && key === 'secret') continue;
      flatten(value[key], [...at, key], out, childContext(key));
    }
    return;
  }
  out.push([formatPath(at), value]);
}

const ID_FIELD: Readonly<Record<ObjectSection, string>> = { issuer: 'issuer', client: 'client_id', audience: 'audience', rule: 'id' };

const SECRET_WORDS: Readonly<Record<SecretStatus, string>> = {
  new: 'set (value not shown)',
  changed: 'changed (value not shown)',
  unchanged: 'unchanged',
  kept: 'kept (the file omits it; the stored secret stays)',
};

function fieldLines(field: FieldChange): string[] {
  switch (field.kind) {
    case 'value':
      if (field.before === undefined) return [`    + ${field.field}: ${formatValue(field.after)}`];
      if (field.after === undefined) return [`    - ${field.field}: ${formatValue(field.before)}`];
      return [`    ~ ${field.field}: ${formatValue(field.before)} → ${formatValue(field.after)}`];
    case 'set':
      return [
        ...field.added.map((item) => `    + ${field.field}: ${item}`),
        ...field.removed.map((item) => `    - ${field.field}: ${item}`),
      ];
    case 'secret':
      return [`    ~ secret: ${SECRET_WORDS[field.status]}`];
    case 'moved':
      return [`    ~ position: ${field.from + 1} → ${field.to + 1} (among rules in both versions; first match wins)`];
  }
}

/** Control characters (a terminal would act on them) shown as escapes; policy strings may hold any. */
export function escapeControls(line: string): string {
  return line.replace(/[\u0000-\u001f\u007f-\u009f]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

/** How many objects each change kind touched, for a one-line summary. */
export function summarizeChanges(changes: readonly PolicyChange[]): string {
  if (changes.length === 0) return 'no changes';
  const count = (kind: PolicyChange['kind']): number => changes.filter((c) => c.kind === kind).length;
  return `${count('added')} added, ${count('removed')} removed, ${count('changed')} changed`;
}

/**
 * Human-readable diff: `+` added, `-` removed, `~` changed, one header line per object and one
 * indented line per field; a summary line last. Never prints a secret value.
 */
export function formatDiff(changes: readonly PolicyChange[]): string {
  const lines: string[] = [];
  for (const change of changes) {
    const label = change.section === 'settings' ? 'settings' : `${change.section} ${change.id}`;
    if (change.kind === 'removed') {
      lines.push(`- ${label}`);
    } else if (change.kind === 'added') {
      lines.push(`+ ${label}${change.position === undefined ? '' : ` (position ${change.position + 1})`}`);
      const leaves: Array<[string, unknown]> = [];
      flatten(change.object, [], leaves, change.section);
      // The header already names the object.
      for (const [field, value] of leaves) if (field !== ID_FIELD[change.section]) lines.push(`    + ${field}: ${formatValue(value)}`);
      if (change.secret !== undefined) lines.push(`    + secret: ${SECRET_WORDS[change.secret]}`);
    } else {
      lines.push(`~ ${label}`);
      for (const field of change.fields) lines.push(...fieldLines(field));
    }
  }
  lines.push(summarizeChanges(changes));
  return lines.map(escapeControls).join('\n');
}
