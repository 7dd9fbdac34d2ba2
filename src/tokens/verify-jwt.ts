import { errors, jwtVerify, type JWTVerifyOptions } from 'jose';
import { isDeepStrictEqual } from 'node:util';
import { ExchangeDenied, type ReasonCode, type TokenRole } from '../exchange/reasons.ts';
import { isPlainText } from '../store/text.ts';
import type { ActClaim, SubIdClaim } from '../exchange/types.ts';
import type { IssuerPolicy, TokenTypeName } from '../policy/model.ts';
import { inspectCompactJws, type InspectedJws, type InspectOptions } from './jws-structure.ts';
import { ASYMMETRIC_JWS_ALGS, type KeyResolver, type VerificationKey } from './jwks-cache.ts';
import type { VerifiedSignatures } from './verified-signatures.ts';

/**
 * Verification of the JWTs presented to the token endpoint: upstream subject and actor tokens
 * (docs/DESIGN.md §7 "subject token" and "actor token" rows) and tokens Writ minted itself (§5).
 * Order: structure (no crypto) → algorithm and type policy → key → signature and registered
 * claims (jose) → Writ's stricter claim rules. Every failure is an `ExchangeDenied` naming the
 * token's role; no detail ever contains the token, a claim value or key material.
 */

/** Writ signs only with these (docs/DESIGN.md §5, policy `SigningAlg`). */
const WRIT_ALGS: readonly string[] = ['ES256', 'RS256', 'PS256'];
/** RFC 8693 §4.1 chains are short; a deeper one is refused rather than walked. */
export const MAX_ACT_DEPTH = 10;
const MAX_UPSTREAM_SUB_LENGTH = 255;
/** A Writ `sub` is the upstream `sub` plus the issuer's `subject_prefix`. */
const MAX_WRIT_SUB_LENGTH = 1024;
/** O3: inbound lifetime `exp - iat` ≤ 24 h. */
const DEFAULT_MAX_LIFETIME = 86_400;
/** docs/DESIGN.md §7 task row. */
const TASK_ID = /^[A-Za-z0-9._:-]{1,128}$/;
/** RFC 6749 §3.3 scope-token: 1*( %x21 / %x23-5B / %x5D-7E ). */
const SCOPE_TOKEN = /^[\x21\x23-\x5B\x5D-\x7E]+$/;

export interface UpstreamVerifyOptions {
  role: TokenRole;
  /** The RFC 8693 `*_token_type` the client declared (short name). */
  declaredType: TokenTypeName;
  issuer: IssuerPolicy;
  keys: KeyResolver;
  /** WRIT_ISSUER, what `audience: self` means. */
  selfIssuer: string;
  /** Epoch seconds. */
  now: number;
  /** Clock skew allowed on `exp`, `nbf` and `iat`, seconds. Default 60 (O3). */
  leeway?: number;
  /** Cap on `exp - iat`, seconds. Default 86400 (O3). */
  maxLifetime?: number;
  /** Structural limits (token length, JSON depth). A token inspected under other limits than the defaults is not kept in `signatures`. */
  limits?: Omit<InspectOptions, 'role'>;
  /** This very token's structure, already checked by `inspectCompactJws` with `limits` (to route it): not checked twice. Frozen if the token is kept. */
  inspected?: InspectedJws;
  /** Tokens verified before, to skip verifying the same token under the same key again; a token that passes is kept there with its structure. */
  signatures?: VerifiedSignatures;
}

export interface VerifiedUpstreamToken {
  issuer: string;
  sub: string;
  /** The verified claims set. */
  claims: Record<string, unknown>;
  iat: number;
  exp: number;
  /** Only when the issuer is configured `act: preserve` and the token carries one. */
  act?: ActClaim;
}

export interface WritVerifyOptions {
  selfIssuer: string;
  keys: KeyResolver;
  /** Epoch seconds. */
  now: number;
  /** Default 0: Writ's own clock minted it. */
  leeway?: number;
  role?: TokenRole;
  /** As for upstream tokens. */
  limits?: Omit<InspectOptions, 'role'>;
  /** As for upstream tokens. */
  inspected?: InspectedJws;
  /** As for upstream tokens. */
  signatures?: VerifiedSignatures;
}

/** A token Writ minted (docs/DESIGN.md §5), verified. */
export interface WritTokenClaims {
  iss: string;
  sub: string;
  sub_id: SubIdClaim;
  aud: string;
  client_id: string;
  /** Space-separated, as minted (RFC 8693 §4.2). */
  scope: string;
  iat: number;
  exp: number;
  jti: string;
  act: ActClaim;
  task_id?: string;
  /** The whole verified claims set. */
  raw: Record<string, unknown>;
}

function deny(reason: ReasonCode, detail: string, role: TokenRole): never {
  throw new ExchangeDenied(reason, detail, role);
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === 'object' && !Array.isArray(value);
}

/**
 * RFC 7515 §4.1.9: `typ` media types are compared case-insensitively, and "A recipient using
 * the media type value MUST treat it as if 'application/' were prepended to any 'typ' value not
 * containing a '/'".
 */
export function normalizeTyp(typ: string): string {
  const lower = typ.toLowerCase();
  return lower.includes('/') ? lower : `application/${lower}`;
}

const AT_JWT = normalizeTyp('at+jwt');
const PLAIN_JWT = normalizeTyp('JWT');

/** RFC 7519 §2 NumericDate, narrowed to what Writ accepts: a non-negative safe integer. */
function isNumericDate(value: unknown): value is number {
  return typeof value === 'number' && Number.isSafeInteger(value) && value >= 0;
}

/** Caller mistakes are programming errors (TypeError), never a denial of the token. */
function checkClock(now: number, leeway: number): number {
  if (!Number.isFinite(now)) throw new TypeError('now must be epoch seconds');
  if (!Number.isFinite(leeway) || leeway < 0) throw new TypeError('leeway must be a non-negative number of seconds');
  return leeway;
}

function nonEmptyString(value: unknown, max: number): value is string {
  return typeof value === 'string' && value.length > 0 && value.length <= max;
}

/**
 * RFC 8693 §4.1 `act`: a JSON object naming the actor with `sub` (and optionally `iss`,
 * `client_id`), earlier actors nested as `act`. Only identity members are kept (§4.1: "claims
 * within the act claim pertain only to the identity of the actor"; docs/standards.md X14/X20: other
 * members are ignored, not trusted).
 */
export function parseActClaim(value: unknown, role: TokenRole, depth = 1): ActClaim {
  if (depth > MAX_ACT_DEPTH) deny('claim_invalid', `"act" nests deeper than ${MAX_ACT_DEPTH}`, role);
  if (!isPlainObject(value)) deny('claim_invalid', '"act" is not a JSON object', role);
  if (!nonEmptyString(value.sub, MAX_WRIT_SUB_LENGTH)) deny('claim_invalid', '"act.sub" is not a non-empty string', role);
  const act: ActClaim = { sub: value.sub };
  if (value.iss !== undefined) {
    if (!nonEmptyString(value.iss, MAX_WRIT_SUB_LENGTH)) deny('claim_invalid', '"act.iss" is not a non-empty string', role);
    act.iss = value.iss;
  }
  if (value.client_id !== undefined) {
    if (!nonEmptyString(value.client_id, MAX_WRIT_SUB_LENGTH)) deny('claim_invalid', '"act.client_id" is not a non-empty string', role);
    act.client_id = value.client_id;
  }
  if (value.act !== undefined) act.act = parseActClaim(value.act, role, depth + 1);
  return act;
}

/** Re-labels a denial from a layer that does not know which token it was looking at. */
function withRole(err: ExchangeDenied, role: TokenRole): ExchangeDenied {
  return err.role === role ? err : new ExchangeDenied(err.reason, err.message, role);
}

async function resolveKey(keys: KeyResolver, header: Record<string, unknown>, role: TokenRole): Promise<VerificationKey> {
  const alg = header.alg as string;
  const kid = header.kid as string | undefined;
  try {
    return await keys.getKey(kid === undefined ? { alg } : { alg, kid });
  } catch (err) {
    if (err instanceof ExchangeDenied) throw withRole(err, role);
    // A resolver that fails in an unexpected way must not turn into a grant, nor leak details.
    throw new ExchangeDenied('jwks_unavailable', 'key lookup failed', role);
  }
}

/** Maps jose's failures (stable `code`s) to Writ's reason codes. */
function fromJose(err: unknown, role: TokenRole): ExchangeDenied {
  if (err instanceof ExchangeDenied) return withRole(err, role);
  if (err instanceof errors.JWTClaimValidationFailed || err instanceof errors.JWTExpired) {
    const { claim, reason } = err;
    if (reason === 'missing') return new ExchangeDenied('claim_missing', `required claim "${claim}" is missing`, role);
    if (reason === 'invalid') return new ExchangeDenied('claim_invalid', `claim "${claim}" has the wrong type`, role);
    if (err instanceof errors.JWTExpired) {
      return claim === 'iat'
        ? new ExchangeDenied('token_too_old', 'token is older than allowed', role)
        : new ExchangeDenied('token_expired', 'token expired (beyond leeway)', role);
    }
    switch (claim) {
      case 'aud': return new ExchangeDenied('aud_mismatch', 'token is not addressed to the expected audience', role);
      case 'iss': return new ExchangeDenied('issuer_untrusted', 'token "iss" is not the expected issuer', role);
      case 'nbf':
      case 'iat': return new ExchangeDenied('token_not_yet_valid', `"${claim}" is in the future (beyond leeway)`, role);
      default: return new ExchangeDenied('claim_invalid', `claim "${claim}" failed validation`, role);
    }
  }
  if (err instanceof errors.JOSEError) {
    switch (err.code) {
      case 'ERR_JWS_SIGNATURE_VERIFICATION_FAILED':
        return new ExchangeDenied('signature_invalid', 'signature verification failed', role);
      case 'ERR_JOSE_ALG_NOT_ALLOWED':
      case 'ERR_JOSE_NOT_SUPPORTED':
        return new ExchangeDenied('alg_not_allowed', `algorithm refused (${err.code})`, role);
      case 'ERR_JWS_INVALID':
      case 'ERR_JWT_INVALID':
        return new ExchangeDenied('token_malformed', `token refused by JOSE validation (${err.code})`, role);
      default:
        return new ExchangeDenied('signature_invalid', `token verification failed (${err.code})`, role);
    }
  }
  // jose throws TypeError when the key cannot do this algorithm (wrong type, RSA < 2048 bits).
  // Fail closed as a bad signature, with a fixed detail.
  return new ExchangeDenied('signature_invalid', 'key cannot verify this token', role);
}

/** Everything jose is asked to check except the clock, as one comparable string. */
function optionsFingerprint(options: JWTVerifyOptions): string {
  return JSON.stringify({ ...options, currentDate: undefined });
}

/**
 * jose's own time comparisons (`exp` "timestamp check failed" when `exp <= now - tolerance`,
 * `nbf` when `nbf > now + tolerance`), for a token whose signature and other claims verified
 * earlier. Anything else — including a clock that went back — goes through jose again.
 */
function stillInTime(payload: Record<string, unknown>, now: number, tolerance: number): boolean {
  const { exp, nbf } = payload;
  if (typeof exp !== 'number' || exp <= now - tolerance) return false;
  if (nbf !== undefined && (typeof nbf !== 'number' || nbf > now + tolerance)) return false;
  return true;
}

interface SignatureChecked {
  /** Writ's own reading of the claims set (see strict-json.ts). */
  claims: Record<string, unknown>;
  /** To call once Writ's claim rules passed: keeps the token and its structure (no-op on a hit). */
  keep: () => void;
}

async function verifySignatureAndClaims(
  token: string, inspected: InspectedJws, key: VerificationKey, options: JWTVerifyOptions, role: TokenRole,
  signatures: VerifiedSignatures | undefined,
): Promise<SignatureChecked> {
  const claims = inspected.payload;
  const fingerprint = signatures ? optionsFingerprint(options) : '';
  const now = Math.floor((options.currentDate ?? new Date()).getTime() / 1000);
  const tolerance = typeof options.clockTolerance === 'number' ? options.clockTolerance : 0;
  if (signatures) {
    if (signatures.has(token, key, fingerprint, now) && stillInTime(claims, now, tolerance)) {
      signatures.hits += 1;
      return { claims, keep: () => undefined };
    }
    signatures.misses += 1;
  }
  let verified: { payload: unknown; protectedHeader: unknown };
  try {
    verified = await jwtVerify(token, key, options);
  } catch (err) {
    // jose validates claims only after the signature verified, so these carry an authentic
    // claims set. A malformed time (`-1e400` reads as -Infinity, i.e. "expired") is reported
    // as the malformed claim it is, not as whatever comparison jose happened to make first.
    if (err instanceof errors.JWTClaimValidationFailed || err instanceof errors.JWTExpired) {
      checkNumericDateTypes(err.payload as Record<string, unknown>, role);
    }
    throw fromJose(err, role);
  }
  // jose parsed the token again with JSON.parse, which can misread an escaped member name
  // (strict-json.ts): its claim checks count only if it read what Writ read.
  if (inspected.escapedNames
    && !(isDeepStrictEqual(verified.payload, inspected.payload) && isDeepStrictEqual(verified.protectedHeader, inspected.header))) {
    deny('token_malformed', 'the token\'s JSON reads differently to the JOSE library (escaped member names)', role);
  }
  const { exp } = claims;
  return {
    claims,
    keep: () => {
      if (signatures && isNumericDate(exp)) signatures.add(token, inspected, key, fingerprint, exp + tolerance);
    },
  };
}

/** `exp`, `iat` and `nbf`, when present, must be non-negative safe integers. */
function checkNumericDateTypes(claims: Record<string, unknown>, role: TokenRole): void {
  for (const name of ['exp', 'iat', 'nbf'] as const) {
    if (claims[name] !== undefined && !isNumericDate(claims[name])) {
      deny('claim_invalid', `"${name}" is not an integer NumericDate`, role);
    }
  }
}

interface TimeClaims {
  iat: number;
  exp: number;
}

/**
 * Writ's own time rules on top of jose's `exp`/`nbf` comparison (O3): NumericDates must be
 * finite integers (JSON.parse turns `1e400` into Infinity, which compares as "never expires");
 * a future `iat` beyond the leeway is refused; `exp - iat` is capped.
 */
function checkTimes(
  claims: Record<string, unknown>, now: number, leeway: number, limits: { maxLifetime: number; maxAge?: number }, role: TokenRole,
): TimeClaims {
  checkNumericDateTypes(claims, role);
  const { exp, iat } = claims;
  // Presence was required of jose; this narrows the types.
  if (!isNumericDate(exp) || !isNumericDate(iat)) deny('claim_missing', '"exp" or "iat" is missing', role);
  if (iat > now + leeway) deny('token_not_yet_valid', '"iat" is in the future (beyond leeway)', role);
  // Issuer policy `max_token_age`: a token minted long ago is refused even if it has not expired.
  if (limits.maxAge !== undefined && now - iat > limits.maxAge) deny('token_too_old', 'token is older than the issuer allows', role);
  const { maxLifetime } = limits;
  if (exp <= iat) deny('claim_invalid', '"exp" is not after "iat"', role);
  if (exp - iat > maxLifetime) deny('claim_invalid', `token lifetime exceeds ${maxLifetime} s`, role);
  return { iat, exp };
}

/**
 * Verifies an upstream subject or actor token against its issuer's policy (docs/DESIGN.md §7).
 * The caller has already chosen `issuer` (e.g. with `peekIssuer`); this re-checks `iss` exactly.
 */
export async function verifyUpstreamToken(token: string, opts: UpstreamVerifyOptions): Promise<VerifiedUpstreamToken> {
  const { role, declaredType, issuer, keys, selfIssuer, now } = opts;
  const leeway = checkClock(now, opts.leeway ?? 60);
  const maxLifetime = opts.maxLifetime ?? DEFAULT_MAX_LIFETIME;
  const inspected = opts.inspected ?? inspectCompactJws(token, { ...opts.limits, role });
  const { header } = inspected;

  // RFC 8725 §3.1 (J1): "libraries MUST enable the caller to specify a supported set of
  // algorithms and MUST NOT use any other algorithms". The token's `alg` only selects among the
  // issuer's configured algorithms that Writ can verify asymmetrically.
  const algorithms = issuer.algorithms.filter((a) => ASYMMETRIC_JWS_ALGS.includes(a));
  const alg = header.alg as string;
  if (!algorithms.includes(alg)) deny('alg_not_allowed', 'algorithm not allowed for this issuer', role);

  // RFC 8693 §2.1 (X5): validate the token as the type the client declared, and only if this
  // issuer's tokens may be presented as that type.
  if (!issuer.token_types.includes(declaredType)) {
    deny('token_type_mismatch', `issuer does not allow ${declaredType} tokens`, role);
  }
  // RFC 8725 §3.11 (J10): explicit typing keeps kinds of JWT apart.
  const typ = typeof header.typ === 'string' ? normalizeTyp(header.typ) : undefined;
  if (declaredType === 'id_token') {
    // OpenID Connect ID tokens carry no `typ` or `JWT`; an `at+jwt` (RFC 9068 §4: resource
    // servers "MUST verify that the typ header value is 'at+jwt'") is an access token and must
    // never be accepted as an ID token, nor anything else explicitly typed.
    if (typ === AT_JWT) deny('token_type_mismatch', 'access token presented as id_token', role);
    if (typ !== undefined && typ !== PLAIN_JWT) deny('token_type_mismatch', 'typ is not that of an id_token', role);
  } else {
    const accepted = issuer.typ.map(normalizeTyp);
    if (typ === undefined || !accepted.includes(typ)) deny('typ_not_allowed', 'typ not accepted for this issuer', role);
  }

  const key = await resolveKey(keys, header, role);
  const audience = issuer.audience === 'self' ? selfIssuer : issuer.audience;
  const { claims, keep } = await verifySignatureAndClaims(token, inspected, key, {
    algorithms,
    // RFC 8725 §3.8 (J7) / RFC 7519 §4.1.1: `iss` compared as an exact string.
    issuer: issuer.issuer,
    // RFC 8725 §3.9 (J8): "the relying party MUST validate the audience value".
    audience,
    clockTolerance: leeway,
    currentDate: new Date(now * 1000),
    requiredClaims: ['iss', 'sub', 'aud', 'exp', 'iat'],
  }, role, opts.signatures);

  const { iat, exp } = checkTimes(claims, now, leeway, { maxLifetime, maxAge: issuer.max_token_age }, role);
  if (!nonEmptyString(claims.sub, MAX_UPSTREAM_SUB_LENGTH)) {
    deny('claim_invalid', `"sub" is not a string of 1..${MAX_UPSTREAM_SUB_LENGTH} characters`, role);
  }
  // The subject names a person through every record Writ keeps: plain text only.
  if (!isPlainText(claims.sub)) deny('claim_invalid', '"sub" holds control characters or broken UTF-16', role);

  // ID-token-only members are out of place in anything else (J10): `nonce` (OIDC Core §2,
  // allowed only when the token is declared an id_token) and the hybrid-flow hashes.
  if (declaredType !== 'id_token' && Object.hasOwn(claims, 'nonce')) deny('forbidden_claim', '"nonce" in a non-id_token', role);
  for (const name of ['at_hash', 'c_hash'] as const) {
    if (Object.hasOwn(claims, name)) deny('forbidden_claim', `"${name}" is not accepted`, role);
  }
  // RFC 7800 `cnf`: the token is bound to a key its presenter must prove. Writ cannot check
  // that proof yet, and accepting it as bearer would launder a sender-constrained token (DP3).
  if (Object.hasOwn(claims, 'cnf')) deny('forbidden_claim', '"cnf" (sender-constrained token) is not supported', role);

  let act: ActClaim | undefined;
  if (Object.hasOwn(claims, 'act')) {
    // An upstream delegation chain is kept only if the identity team said so (docs/DESIGN.md §6).
    if (issuer.act !== 'preserve') deny('upstream_act', 'issuer is not configured to preserve "act"', role);
    act = parseActClaim(claims.act, role);
  }
  if (Object.hasOwn(claims, 'may_act')) {
    // RFC 8693 §4.4: `may_act` names the party allowed to act, by `sub` (and `iss`).
    const mayAct = claims.may_act;
    if (!isPlainObject(mayAct) || typeof mayAct.sub !== 'string' || (mayAct.iss !== undefined && typeof mayAct.iss !== 'string')) {
      deny('claim_invalid', '"may_act" must be an object with a string "sub" and optional string "iss"', role);
    }
  }

  const result: VerifiedUpstreamToken = { issuer: issuer.issuer, sub: claims.sub, claims, iat, exp };
  if (act !== undefined) result.act = act;
  keep();
  return result;
}

/** Verifies a token Writ minted (docs/DESIGN.md §5), presented back as a subject token. */
export async function verifyWritToken(token: string, opts: WritVerifyOptions): Promise<WritTokenClaims> {
  const { selfIssuer, keys, now } = opts;
  const role = opts.role ?? 'subject';
  const leeway = checkClock(now, opts.leeway ?? 0);
  const inspected = opts.inspected ?? inspectCompactJws(token, { ...opts.limits, role });
  const { header } = inspected;

  const alg = header.alg as string;
  if (!WRIT_ALGS.includes(alg)) deny('alg_not_allowed', 'algorithm not used by Writ', role);
  // RFC 9068 §4: "Resource servers ... MUST verify that the typ header value is 'at+jwt' or
  // 'application/at+jwt' and reject tokens carrying any other value."
  if (typeof header.typ !== 'string' || normalizeTyp(header.typ) !== AT_JWT) deny('typ_not_allowed', 'typ is not at+jwt', role);

  const key = await resolveKey(keys, header, role);
  const { claims, keep } = await verifySignatureAndClaims(token, inspected, key, {
    algorithms: [...WRIT_ALGS],
    issuer: selfIssuer,
    clockTolerance: leeway,
    currentDate: new Date(now * 1000),
    // RFC 9068 §2.2 required claims, plus Writ's own (§5).
    requiredClaims: ['iss', 'sub', 'aud', 'exp', 'iat', 'jti', 'client_id', 'scope', 'sub_id', 'act'],
  }, role, opts.signatures);

  const { iat, exp } = checkTimes(claims, now, leeway, { maxLifetime: DEFAULT_MAX_LIFETIME }, role);
  const { sub, aud, client_id: clientId, scope, jti, sub_id: subId } = claims;
  if (!nonEmptyString(sub, MAX_WRIT_SUB_LENGTH)) deny('claim_invalid', '"sub" is not a non-empty string', role);
  // Writ mints exactly one audience (docs/DESIGN.md §5); an array is not a token Writ made.
  if (!nonEmptyString(aud, 2048)) deny('claim_invalid', '"aud" is not a single string', role);
  if (!nonEmptyString(clientId, 255)) deny('claim_invalid', '"client_id" is not a non-empty string', role);
  if (!nonEmptyString(jti, 255)) deny('claim_invalid', '"jti" is not a non-empty string', role);
  // RFC 8693 §4.2: space-delimited scope-tokens.
  if (typeof scope !== 'string' || !scope.split(' ').every((s) => SCOPE_TOKEN.test(s))) {
    deny('claim_invalid', '"scope" is not a space-delimited list of scope tokens', role);
  }
  if (
    !isPlainObject(subId) || subId.format !== 'iss_sub'
    || !nonEmptyString(subId.iss, 2048) || !nonEmptyString(subId.sub, MAX_WRIT_SUB_LENGTH)
  ) {
    deny('claim_invalid', '"sub_id" is not an iss_sub identifier', role);
  }
  const act = parseActClaim(claims.act, role);
  let taskId: string | undefined;
  if (claims.task_id !== undefined) {
    if (typeof claims.task_id !== 'string' || !TASK_ID.test(claims.task_id)) deny('claim_invalid', '"task_id" is malformed', role);
    taskId = claims.task_id;
  }
  if (Object.hasOwn(claims, 'cnf')) deny('forbidden_claim', '"cnf" (sender-constrained token) is not supported', role);

  const result: WritTokenClaims = {
    iss: selfIssuer,
    sub,
    sub_id: { format: 'iss_sub', iss: subId.iss, sub: subId.sub },
    aud,
    client_id: clientId,
    scope,
    iat,
    exp,
    jti,
    act,
    raw: claims,
  };
  if (taskId !== undefined) result.task_id = taskId;
  keep();
  return result;
}

/**
 * The unverified `iss` of a structurally valid token, to route it to the right verifier (an
 * upstream issuer or Writ itself). Throws `ExchangeDenied` on structural failure. Never base a
 * decision on the result: the token has not been verified.
 */
export function peekIssuer(token: string, options: InspectOptions = {}): string | undefined {
  const { payload } = inspectCompactJws(token, options);
  return typeof payload.iss === 'string' ? payload.iss : undefined;
}
