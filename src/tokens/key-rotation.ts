import type { Knex } from 'knex';
import { toRow } from '../audit/event.ts';
import type { SigningAlg } from '../policy/model.ts';
import { insertKey, JWKS_MAX_AGE_SECONDS, lockedSchedule, SIGNING_ALGS, type NewKey } from './signing-keys.ts';

/** A rotation or removal that cannot be done as asked; the message says why, for the operator. */
export class KeyOperationError extends Error {
  override name = 'KeyOperationError';
  readonly code: 'already_pending' | 'unknown_kid' | 'already_removed' | 'invalid_request';

  constructor(code: KeyOperationError['code'], message: string) {
    super(message);
    this.code = code;
  }
}

/**
 * Pre-publication by default: a new key appears in the JWKS this long before it signs, so every
 * resource server that refreshes its JWKS cache within the window knows it first (standards
 * notes O4: at least max(resource servers' JWKS cache TTL, 24 h)).
 */
export const DEFAULT_PREPUBLISH_SECONDS = 24 * 3600;
export const MAX_PREPUBLISH_SECONDS = 90 * 86400;

export interface RotateInput {
  algs?: readonly SigningAlg[];
  /** Seconds from now until the new keys sign; 0 activates at once (an emergency). */
  activateInSeconds: number;
  by: string;
  requestId?: string;
}

/**
 * Schedules a new key for each algorithm. The current key keeps signing until the new one
 * activates, then stays published for the longest token it can have signed.
 */
export async function rotateKeys(knex: Knex, encryptionKey: Buffer, input: RotateInput): Promise<NewKey[]> {
  const algs = input.algs?.length ? input.algs : SIGNING_ALGS;
  const delay = input.activateInSeconds;
  // Between 0 and the JWKS cache age, a key would sign before caches could know it: neither
  // an announced rotation nor an immediate one.
  if (!Number.isInteger(delay) || (delay !== 0 && delay < JWKS_MAX_AGE_SECONDS) || delay > MAX_PREPUBLISH_SECONDS) {
    throw new KeyOperationError('invalid_request', `the activation delay must be 0 (at once) or a whole number of seconds from ${JWKS_MAX_AGE_SECONDS} (the JWKS cache age) to ${MAX_PREPUBLISH_SECONDS}`);
  }
  return knex.transaction(async (trx) => {
    const { schedule, now } = await lockedSchedule(trx, encryptionKey);
    // An immediate rotation is the emergency path and is never held up by a scheduled one.
    for (const alg of delay === 0 ? [] : algs) {
      const pending = schedule.keys.find((k) => k.alg === alg && k.state === 'pending');
      // A second pending key would make the first one's pre-publication pointless: it would
      // sign only until the second activates. Remove it first if that is really meant.
      if (pending) throw new KeyOperationError('already_pending', `${alg} key ${pending.kid} is already scheduled to sign from ${pending.activatesAt.toISOString()}`);
    }
    const activatesAt = new Date(now.getTime() + delay * 1000);
    const created: NewKey[] = [];
    for (const alg of algs) {
      created.push(await insertKey(trx, encryptionKey, {
        alg, activatesAt, by: input.by, reason: delay === 0 ? 'rotation_immediate' : 'rotation',
        ...(input.requestId ? { requestId: input.requestId } : {}),
      }));
    }
    return created;
  });
}

export interface RemoveInput {
  kid: string;
  by: string;
  requestId?: string;
}

/**
 * The emergency path for a key that must not be trusted again: it leaves the JWKS, and Writ
 * stops accepting tokens it signed (introspection answers inactive, exchange refuses them).
 * Removing the key an algorithm signs with puts a new key in its place at once; resource
 * servers that cached the JWKS learn it on their next fetch.
 */
export async function removeKey(knex: Knex, encryptionKey: Buffer, input: RemoveInput): Promise<{ removed: string; replacement: NewKey | null }> {
  return knex.transaction(async (trx) => {
    const { schedule, now } = await lockedSchedule(trx, encryptionKey);
    const key = schedule.keys.find((k) => k.kid === input.kid);
    if (!key) throw new KeyOperationError('unknown_kid', `no signing key has kid ${input.kid}`);
    if (key.state === 'removed') throw new KeyOperationError('already_removed', `key ${input.kid} was removed at ${key.removedAt!.toISOString()}`);
    await trx('signing_keys').where({ kid: input.kid }).update({ removed_at: now });
    await trx('audit_events').insert(toRow({
      type: 'key.removed',
      outcome: 'ok',
      clientId: input.by,
      requestId: input.requestId ?? null,
      details: { kid: key.kid, alg: key.alg, state: key.state },
    }));
    // The replacement takes the removed key's place in the schedule (its activation time), so
    // it signs at once on every instance whatever its clock, and the key before keeps the
    // retirement it had.
    const replacement = key.state === 'active'
      ? await insertKey(trx, encryptionKey, {
        alg: key.alg, activatesAt: key.activatesAt, by: input.by, reason: 'replaces_removed',
        ...(input.requestId ? { requestId: input.requestId } : {}),
      })
      : null;
    return { removed: key.kid, replacement };
  });
}
