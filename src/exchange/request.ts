import { isPlainText } from '../store/text.ts';
import { ExchangeDenied } from './reasons.ts';
import { TOKEN_TYPE_URN, type ExchangeRequest } from './types.ts';

/** The parameters the grant declares to oidc-provider; everything else is stripped before us. */
export const EXCHANGE_PARAMS = [
  'subject_token', 'subject_token_type', 'actor_token', 'actor_token_type', 'requested_token_type',
  'audience', 'resource', 'scope', 'task_id',
] as const;
/** RFC 8693 §2.1: only these may repeat; oidc-provider refuses duplicates of any other. */
export const REPEATABLE_PARAMS = ['audience', 'resource'] as const;

type RawParams = Partial<Record<(typeof EXCHANGE_PARAMS)[number], string | string[] | undefined>>;

const TYPE_BY_URN = new Map<string, ExchangeRequest['subjectTokenType']>(
  Object.entries(TOKEN_TYPE_URN).map(([name, urn]) => [urn, name as ExchangeRequest['subjectTokenType']]),
);

function single(params: RawParams, name: keyof RawParams): string | undefined {
  const value = params[name];
  if (Array.isArray(value)) throw new ExchangeDenied('duplicate_parameter', `${name} given more than once`);
  return value === '' ? undefined : value;
}

function tokenType(value: string, name: string): ExchangeRequest['subjectTokenType'] {
  const type = TYPE_BY_URN.get(value);
  // RFC 8693 §3: only the token types this deployment supports are accepted.
  if (!type) throw new ExchangeDenied('unsupported_token_type', `${name} is not a supported token type`);
  return type;
}

/** RFC 3986 §4.3 absolute URI, and RFC 8707 §2 "MUST NOT include a fragment component". */
function isAbsoluteUriWithoutFragment(value: string): boolean {
  if (value.includes('#') || /\s/.test(value) || !isPlainText(value)) return false;
  if (!/^[A-Za-z][A-Za-z0-9+.-]*:/.test(value)) return false;
  try {
    new URL(value);
    return true;
  } catch {
    return false;
  }
}

/** RFC 6749 §3.3 scope-token: 1*( %x21 / %x23-5B / %x5D-7E ). */
const SCOPE_TOKEN = /^[\x21\x23-\x5B\x5D-\x7E]+$/;

/** RFC 8693 §2.1 request validation, before any token is looked at. */
export function parseExchangeRequest(params: RawParams): ExchangeRequest {
  // "subject_token REQUIRED" / "subject_token_type REQUIRED" (RFC 8693 §2.1).
  const subjectToken = single(params, 'subject_token');
  const subjectTokenTypeRaw = single(params, 'subject_token_type');
  if (!subjectToken) throw new ExchangeDenied('missing_parameter', 'subject_token is required');
  if (!subjectTokenTypeRaw) throw new ExchangeDenied('missing_parameter', 'subject_token_type is required');
  const subjectTokenType = tokenType(subjectTokenTypeRaw, 'subject_token_type');

  // "actor_token_type ... REQUIRED when the actor_token parameter is present in the request
  // but MUST NOT be included otherwise" (RFC 8693 §2.1).
  const actorToken = single(params, 'actor_token');
  const actorTokenTypeRaw = single(params, 'actor_token_type');
  if (actorToken && !actorTokenTypeRaw) throw new ExchangeDenied('missing_parameter', 'actor_token_type is required with actor_token');
  if (!actorToken && actorTokenTypeRaw) throw new ExchangeDenied('invalid_parameter', 'actor_token_type must not be sent without actor_token');
  const actorTokenType = actorTokenTypeRaw ? tokenType(actorTokenTypeRaw, 'actor_token_type') : undefined;

  // Writ issues access tokens only.
  const requested = single(params, 'requested_token_type');
  if (requested !== undefined && requested !== TOKEN_TYPE_URN.access_token) {
    throw new ExchangeDenied('requested_token_type_unsupported', 'requested_token_type must be access_token');
  }

  const targets = new Set<string>();
  for (const name of REPEATABLE_PARAMS) {
    const value = params[name];
    for (const v of Array.isArray(value) ? value : value === undefined ? [] : [value]) targets.add(v);
  }
  if (targets.size === 0) throw new ExchangeDenied('target_missing', 'audience or resource is required');
  if (targets.size > 1) throw new ExchangeDenied('target_multiple', 'exactly one distinct audience or resource is allowed');
  const [audience] = targets as unknown as [string];
  if (!isAbsoluteUriWithoutFragment(audience)) {
    throw new ExchangeDenied('target_invalid', 'the target must be an absolute URI without a fragment');
  }

  const scopeRaw = params.scope;
  if (Array.isArray(scopeRaw)) throw new ExchangeDenied('duplicate_parameter', 'scope given more than once');
  let scope: string[] | undefined;
  if (scopeRaw !== undefined) {
    scope = [...new Set(scopeRaw.split(' ').filter((s) => s.length > 0))];
    if (scope.length === 0 || !scope.every((s) => SCOPE_TOKEN.test(s))) {
      throw new ExchangeDenied('invalid_parameter', 'scope is malformed');
    }
  }

  const taskId = single(params, 'task_id');
  return {
    subjectToken,
    subjectTokenType,
    audience,
    ...(actorToken ? { actorToken, actorTokenType } : {}),
    ...(scope ? { scope } : {}),
    ...(taskId !== undefined ? { taskId } : {}),
  };
}
