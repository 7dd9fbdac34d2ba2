/**
 * The declarative policy, as identity teams write it in `policy/*.yaml` (docs/DESIGN.md §6),
 * after parsing, `${NAME}` substitution and defaults. Stored versions omit `secret`.
 */

export type ClientKind = 'agent' | 'resource_server' | 'admin';
export type ClientAuthMethod = 'client_secret_basic' | 'client_secret_post' | 'private_key_jwt';
/** Short names of the RFC 8693 §3 token type URNs an issuer's tokens may be presented as. */
export type TokenTypeName = 'access_token' | 'jwt' | 'id_token';
/** Algorithms an audience may ask its tokens to be signed with (RFC 9068 §2.1 requires RS256 support). */
export type SigningAlg = 'ES256' | 'RS256' | 'PS256';
export type AdminScope = 'writ:policy.read' | 'writ:policy.write' | 'writ:audit.read' | 'writ:revoke' | 'writ:keys';

export interface PublicJwkSet {
  keys: Array<Record<string, unknown>>;
}

export interface IssuerPolicy {
  /** Exact `iss` string of the upstream identity provider. */
  issuer: string;
  jwks_uri?: string;
  jwks?: PublicJwkSet;
  /** JWS algorithms accepted from this issuer; never `none` or HS*. */
  algorithms: string[];
  /** What subject tokens must carry in `aud`: `self` (= WRIT_ISSUER) or a URL. */
  audience: string;
  /** Default `['access_token', 'jwt']`. */
  token_types: TokenTypeName[];
  /** Accepted JOSE `typ` values; default `['at+jwt', 'application/at+jwt']`. */
  typ: string[];
  /** Prefixed to the root subject's `sub` in minted tokens, to keep issuers' namespaces apart. */
  subject_prefix?: string;
  /** Whether an upstream `act` claim is kept (nested under Writ's) or refused. Default `reject`. */
  act: 'reject' | 'preserve';
  /** Cap on `now - iat` of a presented token, seconds. Default 86400. */
  max_token_age: number;
}

export interface ActorIdentity {
  issuer: string;
  sub: string;
}

/** A token bucket, counted per Writ instance. */
export interface RateLimit {
  per_second: number;
  burst?: number;
}

export interface ClientPolicy {
  client_id: string;
  kind: ClientKind;
  auth: ClientAuthMethod;
  /** Present only while a file is being applied; never stored in a version, never exported. */
  secret?: string;
  jwks?: PublicJwkSet;
  jwks_uri?: string;
  /** Audiences this client owns: tokens with such an `aud` are addressed to it. */
  audiences: string[];
  /** Actor tokens (upstream identities) this agent may present. */
  actor_identities: ActorIdentity[];
  /** Admin clients only. */
  scopes: AdminScope[];
  /** Default true. A disabled client cannot authenticate. */
  enabled: boolean;
  /** Requests per endpoint; unset means unlimited. */
  rate_limit?: RateLimit;
}

export interface AudiencePolicy {
  audience: string;
  scopes: string[];
  /** No token for this audience lives longer, seconds. */
  max_ttl: number;
  /** Default ES256. */
  signing_alg: SigningAlg;
}

/** A claim condition: a string, or a list meaning "any of". */
export type ClaimCondition = string | string[];

export interface RootSelector {
  issuer: string;
  claims?: Record<string, ClaimCondition>;
}

export interface SubjectSelector {
  /** An upstream issuer, or `self` for a token Writ issued. */
  issuer: string;
  claims?: Record<string, ClaimCondition>;
  /** With `self`: one of these clients must be the parent token's current actor. */
  after?: string[];
  /** With `self`: constrains the chain's human (root subject's verified claims). */
  root?: RootSelector;
}

export interface RulePolicy {
  id: string;
  actor: string;
  subject: SubjectSelector;
  audience: string;
  scopes: string[];
  ttl: number;
  /** Default 1. */
  max_depth: number;
  /** Default false. */
  require_task: boolean;
}

export interface PolicySettings {
  /** Caps every chain's depth. Default 5. */
  max_depth_cap: number;
  /** Exchanges per root subject across all clients; unset means unlimited. */
  subject_rate_limit?: RateLimit;
  /** Failed client authentications per client id and per source address. */
  auth_failure_limit?: RateLimit;
}

export interface PolicyDocument {
  issuers: IssuerPolicy[];
  clients: ClientPolicy[];
  audiences: AudiencePolicy[];
  /** In decision order: files in name order, rules in file order. */
  rules: RulePolicy[];
  settings: PolicySettings;
}
