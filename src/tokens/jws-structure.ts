import { ExchangeDenied, type ReasonCode, type TokenRole } from '../exchange/reasons.ts';
import { DEFAULT_MAX_JSON_DEPTH, StrictJsonError, parseStrictJsonText } from './strict-json.ts';

/**
 * Structural checks on an incoming JWT, run before any key lookup or cryptography, so that
 * nothing about a malformed or hostile token reaches jose or the JWKS cache. Each failure is an
 * `ExchangeDenied` with a reason code; details never echo the token.
 */

export interface JwsLimits {
  /** Maximum token length in characters. Default 8192. */
  maxLength?: number;
  /** Maximum JSON nesting (objects and arrays) in header and payload. Default 32. */
  maxDepth?: number;
}

export interface InspectOptions extends JwsLimits {
  /** Which token this is, carried into every `ExchangeDenied`. */
  role?: TokenRole;
}

export interface InspectedJws {
  header: Record<string, unknown>;
  payload: Record<string, unknown>;
  /**
   * A member name in the header or the payload was written with an escape. `JSON.parse` may
   * misread such a name (strict-json.ts), and jose parses the token again with it, so the
   * verifier must check that jose read the claims Writ read.
   */
  escapedNames: boolean;
}

export const DEFAULT_MAX_TOKEN_LENGTH = 8192;

/**
 * Header members that make the token name its own key or key source. RFC 8725 §3.10 (J9): a
 * key must come from the issuer's configured key set, and `jku`, `x5u`, `jwk` and `x5c` let an
 * attacker supply one ("blindly following these URLs or trusting these keys" is the classic
 * bypass). `x5t` / `x5t#S256` are mere thumbprint hints: Writ never selects keys by them, so
 * they are ignored rather than refused.
 */
const KEY_SOURCE_MEMBERS = ['jku', 'x5u', 'jwk', 'x5c'] as const;

/**
 * Members that only make sense for JWE, compression or unencoded payloads. RFC 8725 §3.6 (J6):
 * no compression (`zip`), and PBES2 (`p2s`/`p2c`) is refused outright; `enc`/`epk` mean the
 * sender thinks this is a JWE. RFC 7797 `b64` changes how the payload is read (and, with
 * `b64:false`, what the signature covers); Writ understands no such extension.
 */
const NON_JWS_MEMBERS = ['zip', 'enc', 'epk', 'apu', 'apv', 'p2s', 'p2c', 'iv', 'tag', 'b64'] as const;

/** Unpadded base64url alphabet only: no `+`, `/`, `=`, whitespace or other characters. */
const BASE64URL = /^[A-Za-z0-9_-]+$/;

const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

function deny(reason: ReasonCode, detail: string, role: TokenRole | undefined): never {
  throw new ExchangeDenied(reason, detail, role);
}

/**
 * Strict base64url decoding (RFC 7515 §2: "Base64url Encoding ... with all trailing '='
 * characters omitted ... and without the inclusion of any line breaks, whitespace, or other
 * additional characters"). Non-canonical encodings (non-zero trailing bits, a length that is 1
 * mod 4) are refused too: they decode to the same bytes as another string, which would let one
 * token have several spellings.
 */
function decodeSegment(segment: string, what: string, role: TokenRole | undefined): Buffer {
  if (!BASE64URL.test(segment) || segment.length % 4 === 1) {
    deny('token_malformed', `${what} is not unpadded base64url`, role);
  }
  const bytes = Buffer.from(segment, 'base64url');
  if (bytes.toString('base64url') !== segment) {
    deny('token_malformed', `${what} is not canonical base64url`, role);
  }
  return bytes;
}

function decodeJsonObject(
  segment: string, what: 'header' | 'payload', maxDepth: number, role: TokenRole | undefined,
): { value: Record<string, unknown>; escapedNames: boolean } {
  const bytes = decodeSegment(segment, what, role);
  let text: string;
  try {
    text = utf8.decode(bytes);
  } catch {
    deny('token_malformed', `${what} is not valid UTF-8`, role);
  }
  let value: unknown;
  let escapedNames: boolean;
  try {
    ({ value, escapedNames } = parseStrictJsonText(text, maxDepth));
  } catch (e) {
    if (e instanceof StrictJsonError) {
      if (e.kind === 'duplicate_member') {
        // RFC 7519 §4 / RFC 7515 §4: member names MUST be unique; profile J12 rejects duplicates.
        deny('duplicate_member', `${what} has a duplicate member name`, role);
      }
      if (e.kind === 'too_deep') deny('token_malformed', `${what} JSON nests deeper than ${maxDepth}`, role);
      deny('token_malformed', `${what} is not valid JSON`, role);
    }
    throw e;
  }
  // RFC 7515 §4 / RFC 7519 §7.2: the header and the claims set are each a JSON object.
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    deny('token_malformed', `${what} is not a JSON object`, role);
  }
  return { value: value as Record<string, unknown>, escapedNames };
}

function checkHeader(header: Record<string, unknown>, role: TokenRole | undefined): void {
  // RFC 7515 §4.1.1: "alg" is REQUIRED.
  const alg = header.alg;
  if (typeof alg !== 'string' || alg.length === 0) deny('token_malformed', 'header "alg" is missing or not a string', role);
  // RFC 8725 §3.2 (J2): "none" must never be accepted, in any spelling. §3.5 / profile J5: no
  // HMAC anywhere on the verification path, which also closes RSA-public-key-as-HMAC-secret
  // key confusion (§2.1 "Weak Signatures and Insufficient Signature Validation").
  if (alg.toLowerCase() === 'none') deny('alg_not_allowed', 'unsecured JWS ("none") refused', role);
  if (/^hs/i.test(alg)) deny('alg_not_allowed', 'HMAC algorithms are refused', role);

  // RFC 7515 §4.1.11: "If any of the listed extension Header Parameters are not understood and
  // supported by the recipient, then the JWS is invalid." Writ understands none, and an empty
  // or malformed `crit` is itself invalid, so any `crit` member is refused.
  if (Object.hasOwn(header, 'crit')) deny('crit_unsupported', 'header "crit" is not supported', role);

  for (const name of KEY_SOURCE_MEMBERS) {
    if (Object.hasOwn(header, name)) deny('header_not_allowed', `header "${name}" is not allowed`, role);
  }
  for (const name of NON_JWS_MEMBERS) {
    if (Object.hasOwn(header, name)) deny('header_not_allowed', `header "${name}" is not allowed`, role);
  }
  // RFC 7519 §5.2: `cty` is used only to signal a nested JWT. Writ accepts only a plain JWS
  // whose payload is the claims set (RFC 8725 §3.3, profile J3), so a content type is refused.
  if (Object.hasOwn(header, 'cty')) deny('header_not_allowed', 'header "cty" is not allowed', role);

  // `kid` is only ever a map lookup (RFC 8725 §3.10); `typ` is compared as a string later.
  if (Object.hasOwn(header, 'kid') && typeof header.kid !== 'string') {
    deny('token_malformed', 'header "kid" is not a string', role);
  }
  if (Object.hasOwn(header, 'typ') && typeof header.typ !== 'string') {
    deny('token_malformed', 'header "typ" is not a string', role);
  }
}

/** Results of `inspectCompactJws` under its default limits: only these may be kept for reuse. */
const underDefaults = new WeakSet<InspectedJws>();

/** Whether `inspected` came from `inspectCompactJws` with its default limits. */
export function inspectedUnderDefaults(inspected: InspectedJws): boolean {
  return underDefaults.has(inspected);
}

/**
 * Splits and decodes a compact JWS and applies every check that needs no key. The returned
 * header and payload are NOT verified: use them only to choose a verifier and its key.
 */
export function inspectCompactJws(token: string, limits: InspectOptions = {}): InspectedJws {
  const { role } = limits;
  const maxLength = limits.maxLength ?? DEFAULT_MAX_TOKEN_LENGTH;
  const maxDepth = limits.maxDepth ?? DEFAULT_MAX_JSON_DEPTH;
  if (typeof token !== 'string' || token.length === 0) deny('token_malformed', 'token is empty', role);
  // Checked first, before any splitting or decoding work is spent on it.
  if (token.length > maxLength) deny('token_too_large', `token longer than ${maxLength} characters`, role);

  const segments = token.split('.');
  // RFC 7516 §9: a compact JWE has five segments, a JWS three. Profile J3: only compact JWS.
  if (segments.length === 5) deny('token_malformed', 'JWE (5 segments) is not accepted', role);
  if (segments.length !== 3) deny('token_malformed', `expected 3 segments, got ${segments.length}`, role);
  const [h, p, s] = segments as [string, string, string];
  if (h.length === 0) deny('token_malformed', 'empty header segment', role);

  // The header first, so that e.g. an unsecured `alg: none` token (empty signature) is reported
  // as what it is rather than as a generic malformed token.
  const { value: header, escapedNames: escapedHeader } = decodeJsonObject(h, 'header', maxDepth, role);
  checkHeader(header, role);

  // An empty payload is a detached-content JWS (RFC 7515 Appendix F); a JWT carries its claims.
  if (p.length === 0) deny('token_malformed', 'empty payload segment (detached content)', role);
  if (s.length === 0) deny('token_malformed', 'empty signature segment', role);
  decodeSegment(s, 'signature', role);
  const { value: payload, escapedNames: escapedPayload } = decodeJsonObject(p, 'payload', maxDepth, role);
  const inspected: InspectedJws = { header, payload, escapedNames: escapedHeader || escapedPayload };
  if (limits.maxLength === undefined && limits.maxDepth === undefined) underDefaults.add(inspected);
  return inspected;
}
