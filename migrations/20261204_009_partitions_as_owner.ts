import type { Knex } from 'knex';

/**
 * Writ may run as a role that can only read and write rows (`writ db grants`), while creating
 * a partition of audit_events takes the table's owner. The sealer creates the coming months'
 * partitions through writ_audit_ensure_partitions, which now runs with its owner's rights: it
 * takes only two integers and creates only the monthly partitions it names itself, with a fixed
 * search_path (public, then pg_temp last) so nothing the caller puts first is resolved instead.
 */
export async function up(knex: Knex): Promise<void> {
  await knex.raw('ALTER FUNCTION writ_audit_ensure_partitions(int, int) SECURITY DEFINER SET search_path = public, pg_temp');
}

export async function down(knex: Knex): Promise<void> {
  await knex.raw('ALTER FUNCTION writ_audit_ensure_partitions(int, int) SECURITY INVOKER RESET search_path');
}
