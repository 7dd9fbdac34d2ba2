import type { Knex } from 'knex';

/**
 * Admin clients bootstrapped by the CLI. They live outside policy versions, so applying or
 * rolling back policy can never lock the identity team out.
 */
export async function up(knex: Knex): Promise<void> {
  await knex.schema.createTable('bootstrap_admins', (t) => {
    t.text('client_id').primary();
    t.jsonb('scopes').notNullable();
    t.boolean('enabled').notNullable().defaultTo(true);
    t.timestamp('created_at', { useTz: true }).notNullable().defaultTo(knex.fn.now());
  });
}

export async function down(knex: Knex): Promise<void> {
  await knex.schema.dropTableIfExists('bootstrap_admins');
}
