import type { Knex } from 'knex';
import type { Logger } from 'pino';
import type { AuditEvent } from '../audit/event.ts';
import type { RateDecision } from '../http/rate-limit.ts';
import type { CompiledPolicy } from '../policy/compiled.ts';
import { rootKey, type RevocationState } from '../revocation/state.ts';
import type { KeyResolver } from '../tokens/key-resolver.ts';
import type { SigningKeys } from '../tokens/signing-keys.ts';
import { decide } from './decide.ts';
import type { LineageCache } from './lineage-store.ts';
import { mint } from './mint.ts';
import { verifyActorToken, verifySubjectToken, type PresentedTokenContext } from './presented-tokens.ts';
import { ExchangeDenied, REASONS, type OAuthErrorCode, type PresentedSubject, type ReasonCode } from './reasons.ts';
import type { GrantRecord } from './record.ts';
import type { VerifiedSignatures } from '../tokens/verified-signatures.ts';
import { parseExchangeRequest } from './request.ts';
import { TOKEN_TYPE_URN, type Decision, type ExchangeRequest, type Grant, type Lineage, type VerifiedSubject } from './types.ts';

export interface ExchangeDeps {
  issuer: string;
  maxTtl: number;
  policy: () => CompiledPolicy;
  keys: () => SigningKeys;
  writKeys: KeyResolver;
  upstreamKeys: (issuer: string) => KeyResolver;
  revocations: RevocationState;
  lineage: LineageCache;
  /** Signatures of presented tokens verified before (same token, same key): not verified again. */
  signatures: VerifiedSignatures;
  knex: Knex;
  /** Commits one denial's audit event (an auditCommitter's `write`, shared with concurrent ones). */
  recordDenial: (event: AuditEvent) => Promise<void>;
  /** Commits a grant's lineage row and audit event (a GrantBatcher's `record`): true if granted. */
  recordGrant: (record: GrantRecord) => Promise<boolean>;
  logger: Logger;
  /** Called with the pure decision's duration, for metrics. */
  onDecision?: (seconds: number) => void;
  /** The per-subject limit (settings.subject_rate_limit), spent once the subject is verified. */
  limitSubject?: (rootKey: string) => RateDecision | undefined;
  /** Records without a round trip: refusals under a flood must not cost a write each. */
  enqueueAudit?: (event: AuditEvent) => void;
}

export interface ExchangeCall {
  clientId: string;
  params: Record<string, string | string[] | undefined>;
  requestId: string;
  /** A DPoP proof was sent: refused until sender-constrained tokens exist. */
  dpop: boolean;
  now: number;
}

/** RFC 8693 §2.2.1 success response. */
export interface TokenResponse {
  access_token: string;
  issued_token_type: typeof TOKEN_TYPE_URN.access_token;
  token_type: 'Bearer';
  expires_in: number;
  scope: string;
}

export type ExchangeResult =
  | { ok: true; body: TokenResponse; grant: Grant; jti: string }
  | { ok: false; error: OAuthErrorCode; reason: ReasonCode; rate?: RateDecision };

class StorageUnavailable extends Error {
  override name = 'StorageUnavailable';
}

function rootOf(subject: VerifiedSubject | undefined): string | null {
  if (!subject) return null;
  return subject.kind === 'writ' ? rootKey(subject.lineage.root.issuer, subject.lineage.root.sub) : rootKey(subject.issuer, subject.sub);
}

/** Why the token a grant would mint is already inactive by a revocation this instance knows, if it is. */
function bornRevoked(revocations: RevocationState, grant: Grant): 'token_revoked' | 'task_revoked' | null {
  return revocations.check({
    jti: '', iat: grant.iat, taskId: grant.taskId, clients: grant.actors,
    rootIssuer: grant.root.issuer, rootSubject: grant.root.sub, ruleId: grant.ruleId,
  });
}

/**
 * The token-exchange grant, free of HTTP: validate → decide → mint → record. Nothing leaves
 * unless its audit record committed; a database failure answers `temporarily_unavailable`.
 */
export async function exchange(deps: ExchangeDeps, call: ExchangeCall): Promise<ExchangeResult> {
  const policy = deps.policy();
  let request: ExchangeRequest | undefined;
  let subject: VerifiedSubject | undefined;

  const deny = async (reason: ReasonCode, detail: string, extra: { role?: string; ruleId?: string; steps?: unknown; presented?: PresentedSubject } = {}): Promise<ExchangeResult> => {
    const event: AuditEvent = {
      type: 'exchange.denied',
      outcome: 'denied',
      reason,
      requestId: call.requestId,
      clientId: call.clientId,
      parentJti: subject?.kind === 'writ' ? subject.jti : extra.presented?.jti ?? null,
      taskId: request?.taskId ?? extra.presented?.taskId ?? null,
      subject: rootOf(subject) ?? extra.presented?.root ?? null,
      audience: request?.audience ?? null,
      policyVersion: policy.version,
      details: {
        detail,
        ...(extra.role ? { token: extra.role } : {}),
        ...(extra.ruleId ? { rule: extra.ruleId } : {}),
        requested_scope: request?.scope ?? null,
        ...(extra.steps ? { steps: extra.steps } : {}),
      },
    };
    try {
      await deps.recordDenial(event);
    } catch (err) {
      deps.logger.error({ err: (err as Error).message, reason }, 'could not record a denial');
      return { ok: false, error: 'temporarily_unavailable', reason: 'storage_unavailable' };
    }
    return { ok: false, error: REASONS[reason], reason };
  };
  const denyDecision = (d: Extract<Decision, { ok: false }>): Promise<ExchangeResult> =>
    deny(d.reason, d.detail, { ...(d.ruleId ? { ruleId: d.ruleId } : {}), steps: d.steps });

  try {
    if (call.dpop) throw new ExchangeDenied('dpop_unsupported', 'DPoP-bound tokens are not supported yet');
    request = parseExchangeRequest(call.params);
    const ctx: PresentedTokenContext = {
      policy,
      selfIssuer: deps.issuer,
      now: call.now,
      writKeys: deps.writKeys,
      upstreamKeys: deps.upstreamKeys,
      revocations: deps.revocations,
      lineage: deps.lineage,
      knex: deps.knex,
      signatures: deps.signatures,
    };
    subject = await verifySubjectToken(request, ctx);
    const rate = deps.limitSubject?.(rootOf(subject)!);
    if (rate && !rate.ok) {
      deps.enqueueAudit?.({
        type: 'exchange.denied', outcome: 'denied', reason: 'rate_limited', requestId: call.requestId, clientId: call.clientId,
        subject: rootOf(subject), audience: request.audience, policyVersion: policy.version, details: { limit: 'subject' },
      });
      return { ok: false, error: 'temporarily_unavailable', reason: 'rate_limited', rate };
    }
    const actor = await verifyActorToken(request, ctx);
    const root = subject.kind === 'writ' ? subject.lineage.root : { issuer: subject.issuer, sub: subject.sub };
    if (request.taskId !== undefined && deps.revocations.isTaskRevoked(request.taskId, root)) {
      throw new ExchangeDenied('task_revoked', 'the task has ended');
    }
    const input = {
      now: call.now,
      selfIssuer: deps.issuer,
      maxTtl: deps.maxTtl,
      clientId: call.clientId,
      request,
      subject,
      ...(actor ? { actor } : {}),
    };
    const decisionStarted = performance.now();
    let decision = decide(policy, input);
    deps.onDecision?.((performance.now() - decisionStarted) / 1000);
    if (!decision.ok) return await denyDecision(decision);
    // A kill switch covers the whole second its time falls in (token times are whole seconds,
    // so a token issued a moment before it cannot be told from one a moment after): a token
    // minted in that second would be inactive as it left. Mint it in the next second instead.
    // A mark is no later than the database's clock when it was set, so one wait normally does;
    // a second covers a mark set after this exchange began, in the second after.
    const deadline = performance.now() + 2_500;
    for (let waits = 0; ; waits += 1) {
      const covered = bornRevoked(deps.revocations, decision.grant);
      if (covered === null) break;
      if (covered === 'task_revoked') throw new ExchangeDenied('task_revoked', 'the task has ended');
      if (waits === 2) throw new ExchangeDenied('token_revoked', 'a kill switch covers the token this exchange would issue');
      // On the wall clock (a timer may fire a little before it gets there: libuv times from its
      // loop's cached now), bounded in case the clock is stepped back meanwhile.
      const next = (decision.grant.iat + 1) * 1000;
      while (Date.now() < next && performance.now() < deadline) {
        await new Promise((resolve) => setTimeout(resolve, Math.min(next - Date.now(), deadline - performance.now()) + 1));
      }
      decision = decide(policy, { ...input, now: Math.max(decision.grant.iat + 1, Math.floor(Date.now() / 1000)) });
      if (!decision.ok) return await denyDecision(decision);
    }
    const { grant } = decision;
    const minted = await mint(grant, deps.issuer, call.clientId, deps.keys());
    const lineage: Lineage = {
      jti: minted.claims.jti,
      parentJti: grant.parentJti,
      clientId: call.clientId,
      audience: grant.audience,
      scopes: grant.scopes,
      root: grant.root,
      taskId: grant.taskId,
      depth: grant.depth,
      depthBound: grant.depthBound,
      actors: grant.actors,
      ruleId: grant.ruleId,
      policyVersion: grant.policyVersion,
      iat: grant.iat,
      exp: grant.exp,
    };
    const common = {
      requestId: call.requestId,
      clientId: call.clientId,
      parentJti: grant.parentJti,
      taskId: grant.taskId,
      subject: rootKey(grant.root.issuer, grant.root.sub),
      audience: grant.audience,
      policyVersion: grant.policyVersion,
    };
    const granted = await deps.recordGrant({
      lineage,
      granted: {
        ...common,
        type: 'exchange.granted',
        outcome: 'granted',
        jti: lineage.jti,
        details: {
          rule: grant.ruleId,
          requested_scope: request.scope ?? null,
          scope: grant.scopes,
          act: grant.act,
          // The acting clients, oldest first, as the lineage row lists them (act may also nest
          // actors an upstream token carried, which are no clients of Writ's).
          actors: grant.actors,
          exp: grant.exp,
          depth: grant.depth,
          kid: minted.kid,
        },
      },
      // Only a chained grant can find its parent revoked when it commits.
      ...(grant.parentJti !== null ? {
        deniedIfParentRevoked: {
          ...common,
          type: 'exchange.denied',
          outcome: 'denied',
          reason: 'parent_revoked',
          details: { detail: 'the parent token was revoked while this exchange ran', rule: grant.ruleId },
        },
      } : {}),
    }).catch((err: unknown) => {
      throw new StorageUnavailable((err as Error).message);
    });
    if (!granted) return { ok: false, error: REASONS.parent_revoked, reason: 'parent_revoked' };
    deps.lineage.remember(lineage);
    return {
      ok: true,
      jti: lineage.jti,
      grant,
      body: {
        access_token: minted.jwt,
        issued_token_type: TOKEN_TYPE_URN.access_token,
        token_type: 'Bearer',
        expires_in: grant.exp - grant.iat,
        scope: grant.scopes.join(' '),
      },
    };
  } catch (err) {
    if (err instanceof ExchangeDenied) {
      if (err.error === 'temporarily_unavailable') {
        // An upstream JWKS that cannot be fetched, or no signing key this instance can open:
        // retry later, and still leave a record.
        await deny(err.reason, err.message, err.role ? { role: err.role } : {});
        return { ok: false, error: 'temporarily_unavailable', reason: err.reason };
      }
      return deny(err.reason, err.message, { ...(err.role ? { role: err.role } : {}), ...(err.presented ? { presented: err.presented } : {}) });
    }
    if (err instanceof StorageUnavailable || isStorageError(err)) {
      deps.logger.error({ err: (err as Error).message }, 'storage unavailable during exchange');
      return { ok: false, error: 'temporarily_unavailable', reason: 'storage_unavailable' };
    }
    throw err;
  }
}

/**
 * Errors that mean the database cannot be used right now (refused or dropped connections,
 * timeouts, a database shut down or not accepting connections), as opposed to a bug.
 */
export function isStorageError(err: unknown): boolean {
  if (!(err instanceof Error)) return false;
  const code = (err as { code?: unknown }).code;
  if (typeof code === 'string') {
    // Node socket errors; SQLSTATE classes 08 connection, 28 authorization, 53 resources,
    // 55 object not in prerequisite state, 57 operator intervention, and 3D000 no such database.
    if (/^(ECONNREFUSED|ECONNRESET|ETIMEDOUT|EPIPE|EHOSTUNREACH|ENOTFOUND|EAI_AGAIN)$/.test(code)) return true;
    if (/^(08|28|53|55|57)[0-9A-Z]{3}$/.test(code) || code === '3D000') return true;
  }
  return err.name === 'KnexTimeoutError' || err.name === 'PostgresNotAnswering'
    || /Connection terminated|ECONNREFUSED|timeout exceeded|Query read timeout|statement timeout|connection error|PGlite is closed/i.test(err.message);
}
