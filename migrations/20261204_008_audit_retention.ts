import type { Knex } from 'knex';

/**
 * Retention: a month of audit events leaves the database only as a whole partition, after it
 * was written to an archive, and leaves behind a signed marker (src/audit/retention.ts). The
 * chain rows of those events stay, so the chain still links across them; `audit verify` takes
 * a chain row whose event is gone as archived only inside a validly signed marker's id range,
 * and only as many as the marker counts. Markers are append-only like the rest of the record.
 */
export async function up(knex: Knex): Promise<void> {
  await knex.schema.createTable('audit_retention', (t) => {
    t.bigIncrements('id');
    t.text('partition').notNullable();
    t.timestamp('range_start', { useTz: true }).notNullable();
    t.timestamp('range_end', { useTz: true }).notNullable();
    t.bigInteger('events').notNullable();
    t.bigInteger('first_event_id');
    t.bigInteger('last_event_id');
    t.bigInteger('first_seq');
    t.bigInteger('last_seq');
    t.text('archive_sha256').notNullable();
    t.text('retained_by').notNullable();
    t.timestamp('created_at', { useTz: true }).notNullable().defaultTo(knex.fn.now());
    t.text('signature').notNullable();
  });
  await knex.raw('CREATE TRIGGER writ_audit_retention_append_only BEFORE UPDATE OR DELETE ON audit_retention FOR EACH ROW EXECUTE FUNCTION writ_append_only()');
  await knex.raw('CREATE TRIGGER writ_audit_retention_no_truncate BEFORE TRUNCATE ON audit_retention FOR EACH STATEMENT EXECUTE FUNCTION writ_append_only()');
}

export async function down(knex: Knex): Promise<void> {
  await knex.schema.dropTableIfExists('audit_retention');
}
