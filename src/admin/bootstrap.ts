import { randomBytes } from 'node:crypto';
import type { Knex } from 'knex';
import { toRow } from '../audit/event.ts';
import type { AdminScope } from '../policy/model.ts';
import { currentVersion, PolicyApplyError, POLICY_CHANNEL } from '../policy/store.ts';
import { hashClientSecret } from '../tokens/kek.ts';

export const ADMIN_SCOPES: readonly AdminScope[] = ['writ:policy.read', 'writ:policy.write', 'writ:audit.read', 'writ:revoke', 'writ:keys'];

/**
 * Creates an admin client outside policy versions and returns its generated secret, which is
 * shown once and stored only as a keyed hash. Re-running for the same id rotates the secret:
 * `replaced` says so, and the audit event records it.
 */
export async function bootstrapAdmin(knex: Knex, input: { clientId: string; scopes: readonly AdminScope[]; secretKey: Buffer; by: string }): Promise<{ secret: string; replaced: boolean }> {
  if (!/^[A-Za-z0-9._:-]{1,128}$/.test(input.clientId)) throw new PolicyApplyError('client id may use letters, digits and . _ : - (at most 128)');
  const secret = randomBytes(32).toString('base64url');
  return knex.transaction(async (trx) => {
    await trx.raw('SELECT pg_advisory_xact_lock(7369658)');
    const stored = await currentVersion(trx);
    if (stored?.document.clients.some((c) => c.client_id === input.clientId)) {
      throw new PolicyApplyError(`client ${input.clientId} is defined in policy; choose another id`);
    }
    const replaced = (await trx('bootstrap_admins').where({ client_id: input.clientId }).first('client_id')) !== undefined;
    await trx('bootstrap_admins')
      .insert({ client_id: input.clientId, scopes: JSON.stringify(input.scopes), enabled: true })
      .onConflict('client_id').merge();
    await trx('client_credentials')
      .insert({ client_id: input.clientId, secret_hash: hashClientSecret(input.secretKey, input.clientId, secret), updated_at: trx.fn.now() })
      .onConflict('client_id').merge();
    await trx('audit_events').insert(toRow({
      type: 'admin.action', outcome: 'ok', clientId: input.by,
      details: { action: 'bootstrap_admin', admin: input.clientId, scopes: input.scopes, ...(replaced && { replaced_secret: true }) },
    }));
    await trx.raw('SELECT pg_notify(?, ?)', [POLICY_CHANNEL, 'admins']);
    return { secret, replaced };
  });
}
