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
  // Published keys signed from their creation; a newer key of the same algorithm supersedes an
  // older one. Anything the old layout did not publish stays unpublished, placed before every
  // other key so that it supersedes none of them.
  await knex.raw(`UPDATE signing_keys SET activates_at = created_at WHERE status IN ('active', 'retired')`);
  await knex.raw(`UPDATE signing_keys SET activates_at = to_timestamp(0), removed_at = coalesce(retired_at, now())
    WHERE status NOT IN ('active', 'retired')`);
  await knex.raw('ALTER TABLE signing_keys ALTER COLUMN activates_at SET NOT NULL');
  await knex.schema.alterTable('signing_keys', (t) => {
    t.dropColumn('status');
    t.dropColumn('retired_at');
  });
}

/**
 * Back to statuses, as the schedule stands now: the key each algorithm signs with is `active`,
 * a superseded key still within its publication window `retired`, and every other key (removed,
 * expired, or not yet signing) `removed`, which the old code neither publishes nor accepts.
 */
export async function down(knex: Knex): Promise<void> {
  await knex.schema.alterTable('signing_keys', (t) => {
    t.text('status').notNullable().defaultTo('removed');
    t.timestamp('retired_at', { useTz: true });
  });
  await knex.raw(`
    WITH due AS (
      SELECT kid, removed_at,
        lead(activates_at) OVER (PARTITION BY alg ORDER BY activates_at, created_at, kid) AS superseded_at
      FROM signing_keys WHERE activates_at <= now() AND (removed_at IS NULL OR removed_at >= activates_at)
    )
    UPDATE signing_keys k SET
      status = CASE
        WHEN d.removed_at IS NOT NULL THEN 'removed'
        WHEN d.superseded_at IS NULL THEN 'active'
        WHEN d.superseded_at > now() - interval '86460 seconds' THEN 'retired'
        ELSE 'removed' END,
      retired_at = coalesce(d.removed_at, d.superseded_at)
    FROM due d WHERE d.kid = k.kid`);
  // Removed before they signed: the status column's default, 'removed'.
  await knex.schema.alterTable('signing_keys', (t) => {
    t.dropColumn('activates_at');
    t.dropColumn('removed_at');
  });
}
