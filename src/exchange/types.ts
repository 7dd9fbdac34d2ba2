import type { SigningAlg } from '../policy/model.ts';

export const TOKEN_TYPE_URN = {
  access_token: 'urn:ietf:params:oauth:token-type:access_token',
  jwt: 'urn:ietf:params:oauth:token-type:jwt',
  id_token: 'urn:ietf:params:oauth:token-type:id_token',
} as const;

export type JsonObject = Record<string, unknown>;

/** RFC 8693 §4.1 `act`: the current actor, earlier actors nested inside. */
export interface ActClaim {
  sub: string;
  iss?: string;
  client_id?: string;
  act?: ActClaim;
}

/** RFC 9493 subject identifier naming the root subject and its issuer. */
export interface SubIdClaim {
  format: 'iss_sub';
  iss: string;
  sub: string;
}

/** A validated RFC 8693 §2.1 request (parameters only; tokens not yet verified). */
export interface ExchangeRequest {
  subjectToken: string;
  subjectTokenType: 'access_token' | 'jwt' | 'id_token';
  actorToken?: string;
  actorTokenType?: 'access_token' | 'jwt' | 'id_token';
  /** The one distinct value of `audience` ∪ `resource`. */
  audience: string;
  /** Requested scopes, or undefined when `scope` was absent. */
  scope?: string[];
  taskId?: string;
}

/** The root of a chain: the human (or upstream principal) and the claims its issuer vouched for. */
export interface RootSubject {
  issuer: string;
  sub: string;
  claims: JsonObject;
}

/**
 * What Writ keeps about every token it issued (the lineage row), and what it knows about a
 * Writ-issued subject token when it is presented again.
 */
export interface Lineage {
  jti: string;
  parentJti: string | null;
  /** The client that obtained this token: the token's current actor (`act.sub`). */
  clientId: string;
  audience: string;
  scopes: readonly string[];
  root: RootSubject;
  taskId: string | null;
  /** Number of `act` levels in this token. */
  depth: number;
  /** min(max_depth of every rule along the lineage, max_depth_cap). */
  depthBound: number;
  /** Acting clients along the chain, oldest first; the last is `clientId`. */
  actors: readonly string[];
  ruleId: string;
  policyVersion: number;
  iat: number;
  exp: number;
}

/** A subject token from a trusted upstream issuer, signature and claims verified. */
export interface UpstreamSubject {
  kind: 'upstream';
  issuer: string;
  sub: string;
  claims: JsonObject;
  iat: number;
  exp: number;
  /** `act` the issuer put in the token, only when that issuer is configured `act: preserve`. */
  act?: ActClaim;
}

/** A token Writ issued, presented again as the subject of a further hop. */
export interface WritSubject {
  kind: 'writ';
  issuer: string;
  sub: string;
  claims: JsonObject;
  iat: number;
  exp: number;
  jti: string;
  aud: string;
  act: ActClaim;
  lineage: Lineage;
}

export type VerifiedSubject = UpstreamSubject | WritSubject;

/** A verified actor token (always from a trusted upstream issuer). */
export interface VerifiedActor {
  issuer: string;
  sub: string;
  claims: JsonObject;
  exp: number;
}

/** Everything the pure decision needs. No I/O happens inside `decide`. */
export interface DecisionInput {
  now: number;
  /** WRIT_ISSUER */
  selfIssuer: string;
  /** WRIT_MAX_TTL, seconds. */
  maxTtl: number;
  clientId: string;
  request: ExchangeRequest;
  subject: VerifiedSubject;
  actor?: VerifiedActor;
}

/** What a granted exchange mints and records. */
export interface Grant {
  ruleId: string;
  policyVersion: number;
  audience: string;
  scopes: readonly string[];
  iat: number;
  exp: number;
  /** The root subject's `sub`, with its issuer's `subject_prefix`. */
  sub: string;
  subId: SubIdClaim;
  act: ActClaim;
  taskId: string | null;
  depth: number;
  depthBound: number;
  actors: readonly string[];
  root: RootSubject;
  parentJti: string | null;
  signingAlg: SigningAlg;
}

export type StepName =
  | 'client' | 'target' | 'subject_token' | 'actor_token' | 'may_act' | 'rule' | 'scopes'
  | 'lifetime' | 'chain' | 'task';

export interface DecisionStep {
  step: StepName;
  outcome: 'pass' | 'fail' | 'skip';
  reason?: string;
  detail?: string;
}

export type Decision =
  | { ok: true; grant: Grant; steps: DecisionStep[] }
  | {
    ok: false;
    reason: import('./reasons.ts').ReasonCode;
    error: import('./reasons.ts').OAuthErrorCode;
    /** For audit and explain only; never shown to the client. */
    detail: string;
    ruleId?: string;
    steps: DecisionStep[];
  };
