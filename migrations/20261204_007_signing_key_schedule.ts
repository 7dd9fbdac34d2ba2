import type { Knex } from 'knex';

/**
 * Signing keys get a schedule instead of a status. A key is published from `created_at`,
 * signs from `activates_at` until the next key of its algorithm activates, and stays published
 * for the longest token it can have signed (src/tokens/key-schedule.ts). `removed_at` is the
 * emergency path: a removed key is neither published nor accepted.
 */
export async function up(knex: Knex): Promise<void> {
  await knex.schema.alterTable('signing_keys', (t) => {
    t.timestamp('activates_at', { useTz: true });
    t.timestamp('removed_at', { useTz: true });
  });
  await knex.raw('UPDATE signing_keys SET activates_at = created_at');
  await knex.raw('ALTER TABLE signing_keys ALTER COLUMN activates_at SET NOT NULL');
  await knex.schema.alterTable('signing_keys', (t) => {
    t.dropColumn('status');
    t.dropColumn('retired_at');
  });
}

export async function down(knex: Knex): Promise<void> {
  await knex.schema.alterTable('signing_keys', (t) => {
    t.text('status').notNullable().defaultTo('active');
    t.timestamp('retired_at', { useTz: true });
  });
  await knex.raw("UPDATE signing_keys SET status = 'retired', retired_at = removed_at WHERE removed_at IS NOT NULL");
  await knex.schema.alterTable('signing_keys', (t) => {
    t.dropColumn('activates_at');
    t.dropColumn('removed_at');
  });
}
