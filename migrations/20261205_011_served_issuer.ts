import type { Knex } from 'knex';

/**
 * The issuer the database serves: one row at most, stored by the first instance to start on it
 * (src/store/issuer-binding.ts). An instance whose WRIT_ISSUER differs refuses to start: its
 * tokens would be foreign to the others (inactive at their introspection, their revocation a
 * no-op there). `writ db issuer --set URL`, run as the owner, changes it deliberately.
 */
export async function up(knex: Knex): Promise<void> {
  await knex.schema.createTable('served_issuer', (t) => {
    // Always true: the primary key allows a single row.
    t.boolean('singleton').primary().notNullable().defaultTo(true);
    t.text('issuer').notNullable();
    t.timestamp('set_at', { useTz: true }).notNullable().defaultTo(knex.fn.now());
  });
  await knex.raw('ALTER TABLE served_issuer ADD CONSTRAINT served_issuer_one_row CHECK (singleton)');
}

export async function down(knex: Knex): Promise<void> {
  await knex.schema.dropTableIfExists('served_issuer');
}
