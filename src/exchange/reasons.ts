/**
 * The one published list of reason codes (docs/DESIGN.md §7). Every denial names one of these in
 * its audit event, in metrics and in `explain`; the client sees only the RFC error.
 */
export const REASONS = {
  // request (RFC 8693 §2.1)
  missing_parameter: 'invalid_request',
  duplicate_parameter: 'invalid_request',
  invalid_parameter: 'invalid_request',
  unsupported_token_type: 'invalid_request',
  requested_token_type_unsupported: 'invalid_request',
  dpop_unsupported: 'invalid_request',
  method_not_allowed: 'invalid_request',
  // client (client_auth_failed and unsupported_grant_type are decided by oidc-provider, before the grant)
  client_auth_failed: 'invalid_client',
  unsupported_grant_type: 'unsupported_grant_type',
  grant_type_not_allowed: 'unauthorized_client',
  not_permitted: 'unauthorized_client',
  client_not_agent: 'unauthorized_client',
  client_disabled: 'unauthorized_client',
  // target
  target_missing: 'invalid_target',
  target_multiple: 'invalid_target',
  target_invalid: 'invalid_target',
  unknown_audience: 'invalid_target',
  // subject and actor tokens
  token_malformed: 'invalid_request',
  token_too_large: 'invalid_request',
  duplicate_member: 'invalid_request',
  header_not_allowed: 'invalid_request',
  crit_unsupported: 'invalid_request',
  issuer_untrusted: 'invalid_request',
  alg_not_allowed: 'invalid_request',
  typ_not_allowed: 'invalid_request',
  token_type_mismatch: 'invalid_request',
  kid_unknown: 'invalid_request',
  signature_invalid: 'invalid_request',
  claim_missing: 'invalid_request',
  claim_invalid: 'invalid_request',
  token_expired: 'invalid_request',
  token_not_yet_valid: 'invalid_request',
  token_too_old: 'invalid_request',
  aud_mismatch: 'invalid_request',
  forbidden_claim: 'invalid_request',
  upstream_act: 'invalid_request',
  token_revoked: 'invalid_request',
  parent_revoked: 'invalid_request',
  not_addressed_to_client: 'invalid_request',
  actor_token_writ: 'invalid_request',
  actor_not_allowed: 'invalid_request',
  may_act_mismatch: 'invalid_request',
  // rule selection
  no_rule: 'invalid_target',
  subject_mismatch: 'invalid_request',
  // scopes
  scope_unknown: 'invalid_scope',
  scope_not_allowed: 'invalid_scope',
  // chain
  depth_exceeded: 'invalid_request',
  act_cycle: 'invalid_request',
  subject_is_client: 'invalid_request',
  // task
  task_invalid: 'invalid_request',
  task_mismatch: 'invalid_request',
  task_required: 'invalid_request',
  task_revoked: 'invalid_request',
  // limits: answered 429 with Retry-After
  rate_limited: 'temporarily_unavailable',
  auth_rate_limited: 'temporarily_unavailable',
  // infrastructure: answered 503, never a token
  jwks_unavailable: 'temporarily_unavailable',
  storage_unavailable: 'temporarily_unavailable',
  signing_key_unavailable: 'temporarily_unavailable',
} as const satisfies Record<string, OAuthErrorCode>;

export type OAuthErrorCode =
  | 'invalid_request'
  | 'invalid_client'
  | 'unsupported_grant_type'
  | 'unauthorized_client'
  | 'invalid_target'
  | 'invalid_scope'
  | 'temporarily_unavailable';

export type ReasonCode = keyof typeof REASONS;

export function errorFor(reason: ReasonCode): OAuthErrorCode {
  return REASONS[reason];
}

/** Which token a token-validation reason concerns. */
export type TokenRole = 'subject' | 'actor';

/**
 * A refusal with its reason code. `detail` is for the audit record and logs only; it must
 * never contain a token or a secret. The HTTP layer shows the client a generic description.
 */
export class ExchangeDenied extends Error {
  readonly reason: ReasonCode;
  readonly error: OAuthErrorCode;
  readonly role: TokenRole | undefined;
  readonly presented: PresentedSubject | undefined;
  constructor(reason: ReasonCode, detail: string, role?: TokenRole, presented?: PresentedSubject) {
    super(detail);
    this.name = 'ExchangeDenied';
    this.reason = reason;
    this.error = REASONS[reason];
    this.role = role;
    this.presented = presented;
  }
}

/**
 * What a refused subject token was, once its signature verified: so that the refusal's audit
 * record names the token and the human it was for (a revoked token presented again is exactly
 * what an auditor looks for), never the token itself.
 */
export interface PresentedSubject {
  /** A Writ token's jti (recorded as the denial's parent_jti). */
  jti?: string;
  /** The root subject, `issuer|sub`. */
  root: string;
  taskId?: string | null;
}
