import type {
  AudiencePolicy, ClaimCondition, ClientPolicy, IssuerPolicy, PolicyDocument, PublicJwkSet, RulePolicy,
} from './model.ts';

/** One finding about a policy, located in its source file when that is known. */
export interface PolicyIssue {
  severity: 'error' | 'warning';
  file?: string;
  /** 1-based. */
  line?: number;
  /** 1-based. */
  column?: number;
  /** Where in the file's data, like `rules[2].ttl`; empty for the file as a whole. */
  path: string;
  /** Stable identifier of the kind of finding, for tools and tests. */
  code: string;
  /** For humans. Never contains a secret. */
  message: string;
}

export interface SourceLocation {
  file: string;
  line: number;
  column: number;
  /**
   * The path inside that file, when it differs from the merged document's path
   * (`rules[7]` of the merged document may be `rules[1]` of the third file).
   */
  path?: string;
}

/** Maps a path of the merged document (as `formatPath` writes it) to where it was written. */
export type Locate = (path: string) => SourceLocation | undefined;

export interface ValidateOptions {
  /** WRIT_ISSUER: no upstream issuer may claim it. */
  selfIssuer: string;
  /** WRIT_MAX_TTL, seconds. */
  maxTtl: number;
}

export type PathSegment = string | number;

const IDENTIFIER_SEGMENT = /^[A-Za-z_][A-Za-z0-9_]*$/;

/** `['rules', 2, 'subject', 'claims', 'https://x/groups']` → `rules[2].subject.claims["https://x/groups"]`. */
export function formatPath(segments: readonly PathSegment[]): string {
  let out = '';
  for (const segment of segments) {
    if (typeof segment === 'number') out += `[${segment}]`;
    else if (IDENTIFIER_SEGMENT.test(segment)) out += out === '' ? segment : `.${segment}`;
    else out += `[${JSON.stringify(segment)}]`;
  }
  return out;
}

/** The inverse of `formatPath`; undefined for anything `formatPath` cannot have written. */
export function parsePath(path: string): PathSegment[] | undefined {
  const segments: PathSegment[] = [];
  // Claim names are free-form, so quoted segments are JSON strings and may contain `.` or `]`.
  const token = /\.?([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]|\[("(?:[^"\\]|\\.)*")\]/y;
  let at = 0;
  while (at < path.length) {
    token.lastIndex = at;
    const m = token.exec(path);
    if (!m || (at === 0 && path.startsWith('.'))) return undefined;
    if (m[1] !== undefined) segments.push(m[1]);
    else if (m[2] !== undefined) segments.push(Number(m[2]));
    else if (m[3] !== undefined) segments.push(JSON.parse(m[3]) as string);
    at = token.lastIndex;
  }
  return segments;
}

/** JWS algorithms Writ verifies upstream tokens with: asymmetric only (no `none`, no HMAC). */
const ALLOWED_ALGORITHMS: ReadonlySet<string> = new Set([
  'RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'ES512', 'EdDSA', 'Ed25519',
]);

/** JWK members that only private or symmetric keys carry (RFC 7518 §6). */
const PRIVATE_JWK_MEMBERS = ['d', 'p', 'q', 'dp', 'dq', 'qi', 'oth', 'k'] as const;

const LOOPBACK_HOSTS: ReadonlySet<string> = new Set(['localhost', '127.0.0.1', '[::1]']);

const SELF = 'self';

/** Writ's own namespace: admin scopes live there, so policy must never mint into it. */
function isReserved(value: string): boolean {
  return value.toLowerCase().startsWith('writ:');
}

function withoutTrailingSlash(value: string): string {
  return value.endsWith('/') ? value.slice(0, -1) : value;
}

/** RFC 3986 absolute-URI: a scheme, no fragment; also no whitespace, which would break `aud` matching. */
function isAbsoluteUri(value: string): boolean {
  return /^[A-Za-z][A-Za-z0-9+.-]*:/.test(value)
    && !value.includes('#')
    && !/[\s\u0000-\u001f\u007f]/.test(value)
    && URL.canParse(value);
}

function conditionValues(condition: ClaimCondition): readonly string[] {
  return typeof condition === 'string' ? [condition] : condition;
}

/**
 * True when every token matching `later` also matches `earlier`: each claim `earlier` checks is
 * checked by `later` too, with no value `earlier` would refuse.
 */
function claimsNoStricter(
  earlier: Readonly<Record<string, ClaimCondition>> | undefined,
  later: Readonly<Record<string, ClaimCondition>> | undefined,
): boolean {
  for (const [name, condition] of Object.entries(earlier ?? {})) {
    if (!later || !Object.hasOwn(later, name)) return false;
    const accepted = new Set(conditionValues(condition));
    const laterCondition = later[name];
    if (laterCondition === undefined) return false;
    if (!conditionValues(laterCondition).every((v) => accepted.has(v))) return false;
  }
  return true;
}

/** Whether `earlier`'s subject selector matches every subject `later`'s does (so `later` is never reached). */
function selectorShadows(earlier: RulePolicy, later: RulePolicy): boolean {
  const e = earlier.subject;
  const l = later.subject;
  if (e.issuer !== l.issuer) return false;
  if (!claimsNoStricter(e.claims, l.claims)) return false;
  if (e.after && !(l.after && l.after.every((c) => e.after?.includes(c)))) return false;
  if (e.root) {
    if (!l.root || l.root.issuer !== e.root.issuer) return false;
    if (!claimsNoStricter(e.root.claims, l.root.claims)) return false;
  }
  return true;
}

class Collector {
  readonly issues: PolicyIssue[] = [];
  readonly #locate: Locate | undefined;

  constructor(locate: Locate | undefined) {
    this.#locate = locate;
  }

  error(code: string, at: readonly PathSegment[], message: string): void {
    this.#add('error', code, at, message);
  }

  warning(code: string, at: readonly PathSegment[], message: string): void {
    this.#add('warning', code, at, message);
  }

  /** `file:line` of a path, to point from one finding to the definition it conflicts with. */
  where(at: readonly PathSegment[]): string {
    const path = formatPath(at);
    const loc = this.#locate?.(path);
    return loc ? `${loc.file}:${loc.line}` : path;
  }

  #add(severity: PolicyIssue['severity'], code: string, at: readonly PathSegment[], message: string): void {
    const path = formatPath(at);
    const loc = this.#locate?.(path);
    const issue: PolicyIssue = { severity, path: loc?.path ?? path, code, message };
    if (loc) {
      issue.file = loc.file;
      issue.line = loc.line;
      issue.column = loc.column;
    }
    this.issues.push(issue);
  }
}

/** Reports each id defined more than once, at every definition after the first. */
function checkUnique<T>(
  out: Collector, section: string, items: readonly T[], field: keyof T & string, label: string,
): void {
  const first = new Map<unknown, number>();
  items.forEach((item, index) => {
    const id = item[field];
    const earlier = first.get(id);
    if (earlier === undefined) first.set(id, index);
    else out.error('duplicate_id', [section, index, field], `${label} ${String(id)} is already defined at ${out.where([section, earlier, field])}`);
  });
}

function checkJwks(out: Collector, at: readonly PathSegment[], jwks: PublicJwkSet): void {
  jwks.keys.forEach((key, index) => {
    for (const member of PRIVATE_JWK_MEMBERS) {
      if (Object.hasOwn(key, member)) {
        out.error('private_jwk', [...at, 'keys', index, member], `a JWK set here must hold public keys only; remove the private key member "${member}" (and rotate that key)`);
      }
    }
  });
}

function checkKeyUri(out: Collector, at: readonly PathSegment[], uri: string): void {
  if (!URL.canParse(uri)) {
    out.error('insecure_uri', at, 'jwks_uri must be an absolute https URL');
    return;
  }
  const url = new URL(uri);
  if (url.username !== '' || url.password !== '') {
    out.error('insecure_uri', at, 'jwks_uri must not contain credentials');
  } else if (url.protocol === 'http:' && !LOOPBACK_HOSTS.has(url.hostname)) {
    out.error('insecure_uri', at, 'jwks_uri must use https (http only for localhost, 127.0.0.1 or [::1])');
  } else if (url.protocol !== 'https:' && url.protocol !== 'http:') {
    out.error('insecure_uri', at, 'jwks_uri must be an https URL');
  }
}

/** A scope or audience that Writ must never mint, whatever else is wrong with it. */
function forbiddenName(out: Collector, at: readonly PathSegment[], value: string, what: 'scope' | 'audience'): boolean {
  if (isReserved(value)) {
    out.error('reserved_namespace', at, `${what} ${value} is in Writ's own writ: namespace`);
    return true;
  }
  if (value.includes('*')) {
    out.error('wildcard', at, `${what} ${value} contains "*"; wildcards are not supported, list each ${what}`);
    return true;
  }
  return false;
}

function checkIssuers(out: Collector, issuers: readonly IssuerPolicy[], options: ValidateOptions): void {
  checkUnique(out, 'issuers', issuers, 'issuer', 'issuer');
  const self = withoutTrailingSlash(options.selfIssuer);
  issuers.forEach((issuer, i) => {
    const at = ['issuers', i];
    if (issuer.issuer === SELF || withoutTrailingSlash(issuer.issuer) === self) {
      out.error('issuer_is_self', [...at, 'issuer'], `issuer ${issuer.issuer} names Writ itself; Writ's own tokens are matched with subject issuer "self"`);
    }
    if ((issuer.jwks === undefined) === (issuer.jwks_uri === undefined)) {
      out.error('issuer_keys', at, `issuer ${issuer.issuer} needs exactly one of jwks and jwks_uri`);
    }
    if (issuer.jwks_uri !== undefined) checkKeyUri(out, [...at, 'jwks_uri'], issuer.jwks_uri);
    if (issuer.jwks !== undefined) checkJwks(out, [...at, 'jwks'], issuer.jwks);
    issuer.algorithms.forEach((alg, a) => {
      if (/^none$/i.test(alg) || /^HS/i.test(alg)) {
        out.error('alg_not_allowed', [...at, 'algorithms', a], `algorithm ${alg} is never accepted: only asymmetric signatures are`);
      } else if (!ALLOWED_ALGORITHMS.has(alg)) {
        out.error('alg_not_allowed', [...at, 'algorithms', a], `algorithm ${alg} is not supported; use one of ${[...ALLOWED_ALGORITHMS].join(' ')}`);
      }
    });
    if (issuer.audience !== SELF && !isAbsoluteUri(issuer.audience)) {
      out.error('invalid_uri', [...at, 'audience'], 'audience must be "self" or an absolute URI');
    }
  });
  // RFC 9068 §5: alice at one issuer and alice at another must not become one `sub`. Prefixes
  // keep them apart only if neither is the start of the other (no prefix is the empty one).
  issuers.forEach((issuer, i) => {
    const mine = issuer.subject_prefix ?? '';
    for (let e = 0; e < i; e += 1) {
      const theirs = issuers[e]!.subject_prefix ?? '';
      if (mine.startsWith(theirs) || theirs.startsWith(mine)) {
        out.warning('shared_subject_namespace', ['issuers', i, 'subject_prefix'], `issuers ${issuers[e]!.issuer} and ${issuer.issuer} can mint the same sub for different users: give each a subject_prefix that does not begin the other's`);
        break;
      }
    }
  });
}

function checkClients(
  out: Collector, doc: PolicyDocument, issuerIds: ReadonlySet<string>, audiences: ReadonlyMap<string, AudiencePolicy>,
): void {
  checkUnique(out, 'clients', doc.clients, 'client_id', 'client');
  const owner = new Map<string, { client: string; at: PathSegment[] }>();
  doc.clients.forEach((client: ClientPolicy, c) => {
    const at = ['clients', c];
    if (client.auth === 'private_key_jwt' && (client.jwks === undefined) === (client.jwks_uri === undefined)) {
      out.error('client_keys', at, `client ${client.client_id} uses private_key_jwt and needs exactly one of jwks and jwks_uri`);
    }
    if (client.jwks_uri !== undefined) checkKeyUri(out, [...at, 'jwks_uri'], client.jwks_uri);
    if (client.jwks !== undefined) checkJwks(out, [...at, 'jwks'], client.jwks);
    if (client.kind !== 'agent' && client.actor_identities.length > 0) {
      out.error('actor_identities_not_agent', [...at, 'actor_identities'], `only agents present actor tokens; client ${client.client_id} is ${client.kind}`);
    }
    client.actor_identities.forEach((identity, k) => {
      if (!issuerIds.has(identity.issuer)) {
        out.error('unknown_reference', [...at, 'actor_identities', k, 'issuer'], `issuer ${identity.issuer} is not defined in issuers`);
      }
    });
    if (client.kind !== 'admin' && client.scopes.length > 0) {
      out.error('scopes_not_admin', [...at, 'scopes'], `only admin clients have scopes; client ${client.client_id} is ${client.kind}`);
    }
    client.audiences.forEach((aud, k) => {
      const here = [...at, 'audiences', k];
      if (forbiddenName(out, here, aud, 'audience')) return;
      if (!audiences.has(aud)) {
        out.error('unknown_reference', here, `audience ${aud} is not defined in audiences`);
        return;
      }
      const previous = owner.get(aud);
      if (previous && previous.client !== client.client_id) {
        out.error('audience_owner_conflict', here, `audience ${aud} is already owned by client ${previous.client} (${out.where(previous.at)}); an audience has at most one owner`);
      } else if (!previous) {
        owner.set(aud, { client: client.client_id, at: here });
      }
    });
  });
}

function checkAudiences(out: Collector, audiences: readonly AudiencePolicy[], options: ValidateOptions): void {
  checkUnique(out, 'audiences', audiences, 'audience', 'audience');
  const self = withoutTrailingSlash(options.selfIssuer);
  audiences.forEach((audience, a) => {
    const at = ['audiences', a];
    if (!forbiddenName(out, [...at, 'audience'], audience.audience, 'audience')) {
      if (withoutTrailingSlash(audience.audience) === self) {
        out.error('reserved_namespace', [...at, 'audience'], `audience ${audience.audience} is Writ itself`);
      } else if (!isAbsoluteUri(audience.audience)) {
        out.error('invalid_uri', [...at, 'audience'], `audience ${audience.audience} must be an absolute URI (with a scheme, without a fragment)`);
      }
    }
    audience.scopes.forEach((scope, s) => forbiddenName(out, [...at, 'scopes', s], scope, 'scope'));
  });
}

function checkSubject(
  out: Collector, rule: RulePolicy, at: readonly PathSegment[], issuerIds: ReadonlySet<string>,
  clients: ReadonlyMap<string, ClientPolicy>,
): void {
  const subject = rule.subject;
  const isSelf = subject.issuer === SELF;
  if (!isSelf && !issuerIds.has(subject.issuer)) {
    out.error('unknown_reference', [...at, 'subject', 'issuer'], `subject issuer ${subject.issuer} is neither "self" nor defined in issuers`);
  }
  if (subject.after) {
    if (!isSelf) out.error('after_requires_self', [...at, 'subject', 'after'], 'after applies only to Writ tokens: use it with subject issuer "self"');
    subject.after.forEach((clientId, k) => {
      if (!clients.has(clientId)) out.error('unknown_reference', [...at, 'subject', 'after', k], `client ${clientId} is not defined in clients`);
    });
  }
  if (subject.root) {
    if (!isSelf) out.error('root_requires_self', [...at, 'subject', 'root'], 'root applies only to Writ tokens: use it with subject issuer "self"');
    if (!issuerIds.has(subject.root.issuer)) {
      out.error('unknown_reference', [...at, 'subject', 'root', 'issuer'], `root issuer ${subject.root.issuer} is not defined in issuers (the chain's human always comes from an upstream issuer)`);
    }
  }
}

/** Rules that are valid but can never lead to a grant: almost certainly a mistake. */
function checkReachable(
  out: Collector, rule: RulePolicy, at: readonly PathSegment[], clients: ReadonlyMap<string, ClientPolicy>, cap: number,
): void {
  const actor = clients.get(rule.actor);
  if (actor && !actor.enabled) {
    out.warning('unreachable_rule', [...at, 'actor'], `rule ${rule.id} can never match: client ${rule.actor} is disabled`);
  }
  const after = rule.subject.after;
  if (rule.subject.issuer === SELF && after && after.every((id) => clients.has(id))) {
    // A parent's current actor is an enabled agent, and never the acting client itself (no client twice in a chain).
    const possible = after.filter((id) => {
      const c = clients.get(id);
      return c !== undefined && c.kind === 'agent' && c.enabled && id !== rule.actor;
    });
    if (possible.length === 0) {
      out.warning('unreachable_rule', [...at, 'subject', 'after'], `rule ${rule.id} can never match: none of its after clients can be the actor of a parent token (enabled agents other than ${rule.actor})`);
    }
  }
  // A token exchanged from a Writ token nests the parent's actor under the new one: at least 2 levels.
  if (rule.subject.issuer === SELF && Math.min(rule.max_depth, cap) < 2) {
    out.warning('unreachable_rule', [...at, 'max_depth'], `rule ${rule.id} can never grant: a token exchanged from a Writ token has at least 2 act levels, but the depth bound is ${Math.min(rule.max_depth, cap)}`);
  }
}

function checkRules(
  out: Collector, doc: PolicyDocument, options: ValidateOptions, issuerIds: ReadonlySet<string>,
  clients: ReadonlyMap<string, ClientPolicy>, audiences: ReadonlyMap<string, AudiencePolicy>,
): void {
  checkUnique(out, 'rules', doc.rules, 'id', 'rule');
  const cap = doc.settings.max_depth_cap;
  doc.rules.forEach((rule, r) => {
    const at = ['rules', r];
    const actor = clients.get(rule.actor);
    if (!actor) out.error('unknown_reference', [...at, 'actor'], `client ${rule.actor} is not defined in clients`);
    else if (actor.kind !== 'agent') out.error('actor_not_agent', [...at, 'actor'], `client ${rule.actor} is ${actor.kind}; only agents exchange tokens`);

    let audience: AudiencePolicy | undefined;
    if (!forbiddenName(out, [...at, 'audience'], rule.audience, 'audience')) {
      audience = audiences.get(rule.audience);
      if (!audience) out.error('unknown_reference', [...at, 'audience'], `audience ${rule.audience} is not defined in audiences`);
    }
    rule.scopes.forEach((scope, s) => {
      if (forbiddenName(out, [...at, 'scopes', s], scope, 'scope')) return;
      if (audience && !audience.scopes.includes(scope)) {
        out.error('scope_not_in_audience', [...at, 'scopes', s], `scope ${scope} is not defined by audience ${audience.audience}`);
      }
    });
    checkSubject(out, rule, at, issuerIds, clients);
    if (rule.max_depth > cap) {
      out.error('max_depth_exceeds_cap', [...at, 'max_depth'], `max_depth ${rule.max_depth} exceeds settings.max_depth_cap ${cap}`);
    }

    const limits: string[] = [];
    if (audience && rule.ttl > audience.max_ttl) limits.push(`the audience's max_ttl ${audience.max_ttl}`);
    if (rule.ttl > options.maxTtl) limits.push(`WRIT_MAX_TTL ${options.maxTtl}`);
    if (limits.length > 0) {
      const effective = Math.min(options.maxTtl, audience?.max_ttl ?? options.maxTtl);
      out.warning('ttl_capped', [...at, 'ttl'], `ttl ${rule.ttl} exceeds ${limits.join(' and ')}; tokens will live at most ${effective} seconds`);
    }

    checkReachable(out, rule, at, clients, cap);
    for (let e = 0; e < r; e++) {
      const earlier = doc.rules[e];
      if (earlier && earlier.actor === rule.actor && earlier.audience === rule.audience && selectorShadows(earlier, rule)) {
        out.warning('shadowed_rule', [...at, 'id'], `rule ${rule.id} is never used: earlier rule ${earlier.id} (${out.where(['rules', e, 'id'])}) has the same actor and audience and matches every subject it does`);
        break;
      }
    }
  });

  const granted = new Set(doc.rules.map((r) => r.audience));
  doc.audiences.forEach((audience, a) => {
    if (!granted.has(audience.audience)) {
      out.warning('unused_audience', ['audiences', a, 'audience'], `no rule grants tokens for audience ${audience.audience}`);
    }
  });
}

/**
 * The semantic checks of docs/DESIGN.md §6 that a JSON Schema cannot express: references, uniqueness,
 * namespaces, key material. `doc` must have passed schema validation and had defaults applied.
 * Errors make the policy unusable; warnings flag policy that is valid but probably not meant.
 */
export function validatePolicy(doc: PolicyDocument, options: ValidateOptions, locate?: Locate): PolicyIssue[] {
  const out = new Collector(locate);
  const issuerIds = new Set(doc.issuers.map((i) => i.issuer));
  // First definitions win, so a duplicate does not also produce confusing follow-on errors.
  const clients = new Map<string, ClientPolicy>();
  for (const c of doc.clients) if (!clients.has(c.client_id)) clients.set(c.client_id, c);
  const audiences = new Map<string, AudiencePolicy>();
  for (const a of doc.audiences) if (!audiences.has(a.audience)) audiences.set(a.audience, a);

  checkIssuers(out, doc.issuers, options);
  checkAudiences(out, doc.audiences, options);
  checkClients(out, doc, issuerIds, audiences);
  checkRules(out, doc, options, issuerIds, clients, audiences);
  return out.issues;
}
