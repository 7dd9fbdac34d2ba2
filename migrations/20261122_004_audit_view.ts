import type { Knex } from 'knex';

/**
 * One-time login tokens for the chain view (`writ audit open`). Only the SHA-256 of a token
 * is kept; a token is consumed by a single conditional UPDATE, so it works once even when
 * several instances share the database.
 */
export async function up(knex: Knex): Promise<void> {
  await knex.schema.createTable('audit_view_logins', (t) => {
    t.text('token_hash').primary();
    t.timestamp('expires_at', { useTz: true }).notNullable();
    t.timestamp('used_at', { useTz: true });
    t.text('created_by').notNullable();
    t.timestamp('created_at', { useTz: true }).defaultTo(knex.fn.now());
  });
}

export async function down(knex: Knex): Promise<void> {
  await knex.schema.dropTableIfExists('audit_view_logins');
}
