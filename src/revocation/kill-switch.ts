import type { Knex } from 'knex';
import { toRow } from '../audit/event.ts';
import { retryOnConflict } from '../store/retry.ts';
import { markJtisRevoked, revokeDescendants, setRevokeBefore, type KillSwitchKind, type RevokedToken } from './revoke.ts';
import { markSeconds } from './state.ts';

export const KILL_SWITCH_KINDS: readonly KillSwitchKind[] = ['client', 'subject', 'issuer', 'rule'];

const ISO_TIME = /^\d{4}-\d{2}-\d{2}(?:T\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?(?:Z|[+-]\d{2}:\d{2}))?$/;
/** Clocks of the caller and of Writ may disagree this much. */
const FUTURE_SKEW_MS = 60_000;

/**
 * A kill switch's `before` time. Marks only move forward (a later one for the same target wins),
 * so a time in the future would hold every token of the target inactive until then with no way
 * back: it must be an ISO 8601 time no later than now. A time up to a minute ahead is a caller's
 * clock running fast, and is taken as now: a mark never covers a token issued after it was set
 * (but for the rest of its second, src/exchange/service.ts `bornRevoked`).
 */
export function killSwitchTime(value: string | undefined, now = new Date()): Date | { error: string } {
  if (value === undefined) return now;
  const time = new Date(value);
  if (!ISO_TIME.test(value) || Number.isNaN(time.getTime())) return { error: 'before must be an ISO 8601 time, such as 2026-12-05T10:00:00Z' };
  if (time.getTime() > now.getTime() + FUTURE_SKEW_MS) return { error: 'before must not be in the future: a mark can never be moved back' };
  return time.getTime() > now.getTime() ? now : time;
}

/** The names a kill switch can target in the current policy, to tell a typo from a real target. */
export interface KnownTargets {
  clients: Iterable<string>;
  rules: Iterable<string>;
  issuers: Iterable<string>;
}

/**
 * Warnings for a kill switch whose target the current policy does not name. The mark is still
 * set: a client or rule removed from policy may have live tokens, and subjects are not listed
 * anywhere. But in an emergency a mistyped id must not look like it worked.
 */
export function killSwitchWarnings(known: KnownTargets, kind: KillSwitchKind, value: string): string[] {
  const names = kind === 'client' ? known.clients : kind === 'rule' ? known.rules : kind === 'issuer' ? known.issuers : undefined;
  if (names === undefined) return [];
  for (const name of names) if (name === value) return [];
  return [`no ${kind} "${value}" in the current policy: check the ${kind === 'issuer' ? 'issuer' : 'id'}; the mark covers only tokens issued for it before, if there were any`];
}

/**
 * Sets a revoke-before mark and records it. A rule mark cannot be checked from a token's claims
 * (tokens do not name their rule), so the live tokens that rule granted before the mark, and
 * everything derived from them, are revoked by jti in the same transaction.
 */
export async function killSwitch(knex: Knex, input: { kind: KillSwitchKind; value: string; notBefore: Date; revokedBy: string; requestId?: string }): Promise<{ tokens: number; notBefore: Date }> {
  return retryOnConflict(() => knex.transaction(async (trx) => {
    const notBefore = await setRevokeBefore(trx, input);
    let tokens = 0;
    if (input.kind === 'rule') {
      // The rule's live tokens, then everything derived from them, children committed while
      // this waited on a parent's row lock included (revokeDescendants).
      const live = await trx.raw<{ rows: RevokedToken[] }>(`
        UPDATE token_lineage SET revoked_at = clock_timestamp()
        WHERE rule_id = ? AND iat < to_timestamp(?) AND exp > now() AND revoked_at IS NULL
        RETURNING jti, extract(epoch FROM exp)::bigint AS exp`, [input.value, markSeconds(notBefore)]);
      const rows = await revokeDescendants(trx, live.rows);
      tokens = rows.length;
      await markJtisRevoked(trx, rows, input.revokedBy);
    }
    await trx('audit_events').insert(toRow({
      type: 'kill_switch',
      outcome: 'revoked',
      requestId: input.requestId ?? null,
      clientId: input.revokedBy,
      details: { kind: input.kind, value: input.value, not_before: notBefore.toISOString(), tokens_revoked_by_jti: tokens },
    }));
    return { tokens, notBefore };
  }));
}
