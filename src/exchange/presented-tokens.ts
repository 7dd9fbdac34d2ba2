import type { Knex } from 'knex';
import type { CompiledPolicy } from '../policy/compiled.ts';
import { rootKey, type RevocationState } from '../revocation/state.ts';
import type { KeyResolver } from '../tokens/key-resolver.ts';
import { inspectCompactJws, type InspectedJws } from '../tokens/jws-structure.ts';
import { verifyUpstreamToken, verifyWritToken } from '../tokens/verify-jwt.ts';
import type { VerifiedSignatures } from '../tokens/verified-signatures.ts';
import type { LineageCache } from './lineage-store.ts';
import { ExchangeDenied } from './reasons.ts';
import type { ExchangeRequest, VerifiedActor, VerifiedSubject } from './types.ts';

export interface PresentedTokenContext {
  policy: CompiledPolicy;
  selfIssuer: string;
  now: number;
  writKeys: KeyResolver;
  upstreamKeys: (issuer: string) => KeyResolver;
  revocations: RevocationState;
  lineage: LineageCache;
  knex: Knex;
  /** Tokens verified before (same token string, same key, same options), with their structure. */
  signatures: VerifiedSignatures;
}

/**
 * The token's structure: kept from when it was verified before (a pure function of the string),
 * else checked now.
 */
function inspect(token: string, role: 'subject' | 'actor', ctx: PresentedTokenContext): InspectedJws {
  return ctx.signatures.structureOf(token) ?? inspectCompactJws(token, { role });
}

/** The unverified `iss`, only to route the token to the verifier that will check it. */
function issuerOf(inspected: InspectedJws): string | undefined {
  return typeof inspected.payload.iss === 'string' ? inspected.payload.iss : undefined;
}

/** Every client acting in a chain, from the `act` claim: an actor's `client_id`, else its `sub`. */
export function clientsInAct(act: { sub: string; client_id?: string; act?: unknown } | undefined): string[] {
  const out: string[] = [];
  let level = act as { sub: string; client_id?: string; act?: unknown } | undefined;
  while (level) {
    out.push(level.client_id ?? level.sub);
    level = level.act as typeof level;
  }
  return out;
}

/**
 * Validates the subject token (docs/DESIGN.md §7, "subject token"): either one Writ issued — then it
 * must not be revoked, nor any ancestor, nor its task — or one from a trusted upstream issuer.
 * An unacceptable subject token is `invalid_request` (RFC 8693 §2.2.2).
 */
export async function verifySubjectToken(req: ExchangeRequest, ctx: PresentedTokenContext): Promise<VerifiedSubject> {
  const inspected = inspect(req.subjectToken, 'subject', ctx);
  const iss = issuerOf(inspected);
  if (iss === ctx.selfIssuer) {
    if (req.subjectTokenType === 'id_token') {
      throw new ExchangeDenied('token_type_mismatch', 'a Writ token is an access token', 'subject');
    }
    const claims = await verifyWritToken(req.subjectToken, {
      selfIssuer: ctx.selfIssuer, keys: ctx.writKeys, now: ctx.now, role: 'subject', inspected, signatures: ctx.signatures,
    });
    const lineage = await ctx.lineage.get(ctx.knex, claims.jti, ctx.now);
    if (!lineage) throw new ExchangeDenied('token_revoked', 'no lineage for this Writ token', 'subject', { jti: claims.jti, root: rootKey(claims.sub_id.iss, claims.sub_id.sub), taskId: claims.task_id ?? null });
    const revoked = ctx.revocations.check({
      jti: claims.jti,
      iat: claims.iat,
      taskId: claims.task_id ?? null,
      clients: lineage.actors,
      rootIssuer: lineage.root.issuer,
      rootSubject: lineage.root.sub,
      ruleId: lineage.ruleId,
    });
    if (revoked) {
      throw new ExchangeDenied(revoked === 'task_revoked' ? 'task_revoked' : 'parent_revoked', 'the subject token, an ancestor or its task is revoked', 'subject',
        { jti: claims.jti, root: rootKey(lineage.root.issuer, lineage.root.sub), taskId: claims.task_id ?? null });
    }
    return {
      kind: 'writ',
      issuer: claims.iss,
      sub: claims.sub,
      claims: claims.raw,
      iat: claims.iat,
      exp: claims.exp,
      jti: claims.jti,
      aud: claims.aud,
      act: claims.act,
      lineage,
    };
  }
  const issuer = iss === undefined ? undefined : ctx.policy.issuers.get(iss);
  if (!issuer || iss === undefined) throw new ExchangeDenied('issuer_untrusted', 'the subject token issuer is not trusted', 'subject');
  const verified = await verifyUpstreamToken(req.subjectToken, {
    role: 'subject',
    declaredType: req.subjectTokenType,
    issuer,
    keys: ctx.upstreamKeys(iss),
    selfIssuer: ctx.selfIssuer,
    now: ctx.now,
    inspected,
    signatures: ctx.signatures,
  });
  // A kill switch on this subject or issuer covers tokens issued before it, upstream ones too.
  const revoked = ctx.revocations.check({
    jti: '',
    iat: verified.iat,
    taskId: null,
    clients: [],
    rootIssuer: verified.issuer,
    rootSubject: verified.sub,
  });
  if (revoked) throw new ExchangeDenied('token_revoked', 'the subject or its issuer is under a kill switch', 'subject', { root: rootKey(verified.issuer, verified.sub) });
  return {
    kind: 'upstream',
    issuer: verified.issuer,
    sub: verified.sub,
    claims: verified.claims,
    iat: verified.iat,
    exp: verified.exp,
    ...(verified.act ? { act: verified.act } : {}),
  };
}

/** The actor token: "never a Writ token", from a trusted upstream issuer (docs/DESIGN.md §7). */
export async function verifyActorToken(req: ExchangeRequest, ctx: PresentedTokenContext): Promise<VerifiedActor | undefined> {
  if (!req.actorToken || !req.actorTokenType) return undefined;
  const inspected = inspect(req.actorToken, 'actor', ctx);
  const iss = issuerOf(inspected);
  if (iss === ctx.selfIssuer) throw new ExchangeDenied('actor_token_writ', 'a Writ token cannot be an actor token', 'actor');
  const issuer = iss === undefined ? undefined : ctx.policy.issuers.get(iss);
  if (!issuer || iss === undefined) throw new ExchangeDenied('issuer_untrusted', 'the actor token issuer is not trusted', 'actor');
  const verified = await verifyUpstreamToken(req.actorToken, {
    role: 'actor',
    declaredType: req.actorTokenType,
    issuer,
    keys: ctx.upstreamKeys(iss),
    selfIssuer: ctx.selfIssuer,
    now: ctx.now,
    inspected,
    signatures: ctx.signatures,
  });
  return { issuer: verified.issuer, sub: verified.sub, claims: verified.claims, exp: verified.exp };
}
