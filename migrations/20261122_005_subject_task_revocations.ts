import type { Knex } from 'knex';

/**
 * A task ended by an agent ends it for the subjects it acted for: `subject_task` marks, keyed
 * `issuer|sub|task_id`, beside the global `task` marks an admin sets.
 */
export async function up(knex: Knex): Promise<void> {
  await knex.raw('ALTER TABLE revocations DROP CONSTRAINT revocations_kind_check');
  await knex.raw(`ALTER TABLE revocations ADD CONSTRAINT revocations_kind_check
    CHECK (kind IN ('jti', 'task', 'subject_task', 'client', 'subject', 'issuer', 'rule'))`);
}

export async function down(knex: Knex): Promise<void> {
  await knex('revocations').where({ kind: 'subject_task' }).delete();
  await knex.raw('ALTER TABLE revocations DROP CONSTRAINT revocations_kind_check');
  await knex.raw(`ALTER TABLE revocations ADD CONSTRAINT revocations_kind_check
    CHECK (kind IN ('jti', 'task', 'client', 'subject', 'issuer', 'rule'))`);
}
