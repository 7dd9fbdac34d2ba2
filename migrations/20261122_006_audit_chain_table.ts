import type { Knex } from 'knex';
import { FUNCTIONS_002, WRIT_AUDIT_INFLIGHT_LOCK } from './20261122_002_audit_chain.ts';

/**
 * The audit hash chain moves out of audit_events into its own insert-only table (docs/DESIGN.md §8),
 * on PostgreSQL and on PGlite alike. This supersedes what migration 002 says about sealing.
 *
 * Sealing used to UPDATE each audit_events row (seq, prev_hash, hash, sealed_at): a new
 * version of a wide row, re-inserted into every index of the table, behind a trigger comparing
 * the whole old and new rows. It was a third of the database's work per token exchange. Now
 *
 * - audit_chain holds one narrow row per sealed event: (seq, event_id, prev_hash, hash,
 *   sealed_at), seq dense from 1 in event id order. The sealer (src/audit/sealer.ts) appends a
 *   pass's worth in a single multi-row INSERT; UPDATE, DELETE and TRUNCATE are refused by
 *   trigger, as for audit_checkpoints. The primary key refuses a seq used twice and the unique
 *   event_id an event sealed twice (audit_events could not have such a unique index: on a
 *   partitioned table it would have to contain occurred_at). "Unsealed" is "no audit_chain row";
 *   the sealer only ever looks above the head's event id, along the primary key of audit_events.
 *   There is no foreign key to audit_events: it cannot have one on id alone, and checking one
 *   would cost every seal a probe into each partition. `audit verify` joins the two instead,
 *   and names an event whose chain row is gone, a chain row whose event is gone, and a chain
 *   row altered.
 * - audit_events is immutable: every UPDATE is refused, as DELETE and TRUNCATE already were.
 *   Its insert trigger only raises the in-flight marker (a shared advisory lock, class
 *   WRIT_AUDIT_INFLIGHT_LOCK, key = the transaction's first id mod 2^31, held until it ends)
 *   that keeps the sealer from sealing past a row still in flight.
 *
 * The triggers are the guard, since Writ may connect as a superuser (and the tests do). In
 * production Writ should run as a role that can do no more than the triggers allow, e.g.:
 *
 *   CREATE ROLE writ_app LOGIN PASSWORD '…';
 *   GRANT CONNECT ON DATABASE writ TO writ_app;
 *   GRANT USAGE ON SCHEMA public TO writ_app;
 *   GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO writ_app;
 *   REVOKE UPDATE, DELETE, TRUNCATE ON audit_events, audit_chain, audit_checkpoints FROM writ_app;
 *   GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO writ_app;   -- the sealer reads audit_events_id_seq
 *
 * i.e. INSERT and SELECT on audit_events, audit_chain and audit_checkpoints, and no UPDATE of
 * audit_events at all. On a database set up for 002, the column grant UPDATE (seq, prev_hash,
 * hash, sealed_at) goes with the columns; run `GRANT SELECT, INSERT ON audit_chain TO writ_app`.
 * A superuser can still disable the triggers; that is what the hash chain and the signed
 * checkpoints detect.
 *
 * Retention (migration 008, src/audit/retention.ts) drops whole old partitions and leaves their
 * chain rows behind; `audit verify` takes them as archived only under a signed marker.
 */

const FUNCTIONS = [
  `CREATE OR REPLACE FUNCTION writ_audit_before_insert() RETURNS trigger LANGUAGE plpgsql AS $fn$
  BEGIN
    -- Mark this transaction's first (lowest) id as in flight until it commits or aborts.
    IF coalesce(current_setting('writ.audit_inflight', true), '') = '' THEN
      PERFORM pg_advisory_xact_lock_shared(${WRIT_AUDIT_INFLIGHT_LOCK}, (NEW.id % 2147483648)::int);
      PERFORM set_config('writ.audit_inflight', NEW.id::text, true);
    END IF;
    RETURN NEW;
  END
  $fn$`,
];

export async function up(knex: Knex): Promise<void> {
  // Copying a long chain may take longer than the pool's statement timeout.
  await knex.raw('SET LOCAL statement_timeout = 0');

  await knex.raw(`CREATE TABLE audit_chain (
    seq bigint PRIMARY KEY CHECK (seq > 0),
    event_id bigint NOT NULL UNIQUE,
    prev_hash text NOT NULL,
    hash text NOT NULL,
    sealed_at timestamptz NOT NULL DEFAULT clock_timestamp()
  )`);
  await knex.raw('CREATE TRIGGER writ_audit_chain_append_only BEFORE UPDATE OR DELETE ON audit_chain FOR EACH ROW EXECUTE FUNCTION writ_append_only()');
  await knex.raw('CREATE TRIGGER writ_audit_chain_no_update_delete BEFORE UPDATE OR DELETE ON audit_chain FOR EACH STATEMENT EXECUTE FUNCTION writ_append_only()');
  await knex.raw('CREATE TRIGGER writ_audit_chain_no_truncate BEFORE TRUNCATE ON audit_chain FOR EACH STATEMENT EXECUTE FUNCTION writ_append_only()');

  // A chain tampered with before this migration must not stop it (`audit verify` migrates
  // first): a second row claiming a seq or an event is left out, and verify then names that
  // event as unsealed below the head; missing chain values make its hash fail.
  await knex.raw(`INSERT INTO audit_chain (seq, event_id, prev_hash, hash, sealed_at)
    SELECT seq, id, coalesce(prev_hash, ''), coalesce(hash, ''), coalesce(sealed_at, clock_timestamp())
    FROM audit_events WHERE seq IS NOT NULL AND seq > 0 ORDER BY seq, id, occurred_at
    ON CONFLICT DO NOTHING`);

  for (const sql of FUNCTIONS) await knex.raw(sql);
  await knex.raw('DROP TRIGGER writ_audit_before_update ON audit_events');
  await knex.raw('DROP FUNCTION writ_audit_before_update()');
  // The row trigger is cloned to every partition (an UPDATE may name one); the statement
  // trigger also refuses an UPDATE that matches no row.
  await knex.raw('CREATE TRIGGER writ_audit_no_update BEFORE UPDATE ON audit_events FOR EACH ROW EXECUTE FUNCTION writ_append_only()');
  await knex.raw('CREATE TRIGGER writ_audit_no_update_statement BEFORE UPDATE ON audit_events FOR EACH STATEMENT EXECUTE FUNCTION writ_append_only()');

  await knex.raw('DROP INDEX audit_events_seq_index');
  await knex.raw('DROP INDEX audit_events_unsealed_index');
  // Dropping columns only edits the catalog: existing rows are not rewritten.
  await knex.raw('ALTER TABLE audit_events DROP COLUMN seq, DROP COLUMN prev_hash, DROP COLUMN hash, DROP COLUMN sealed_at');
}

/** Back to the layout of 002: the chain columns filled from audit_chain, which is dropped. */
export async function down(knex: Knex): Promise<void> {
  await knex.raw('SET LOCAL statement_timeout = 0');
  await knex.raw('ALTER TABLE audit_events ADD COLUMN seq bigint, ADD COLUMN prev_hash text, ADD COLUMN hash text, ADD COLUMN sealed_at timestamptz');
  await knex.raw('DROP TRIGGER writ_audit_no_update_statement ON audit_events');
  await knex.raw('DROP TRIGGER writ_audit_no_update ON audit_events');
  await knex.raw(`UPDATE audit_events AS e SET seq = c.seq, prev_hash = c.prev_hash, hash = c.hash, sealed_at = c.sealed_at
    FROM audit_chain AS c WHERE c.event_id = e.id`);
  for (const sql of FUNCTIONS_002) await knex.raw(sql);
  await knex.raw('CREATE TRIGGER writ_audit_before_update BEFORE UPDATE ON audit_events FOR EACH ROW EXECUTE FUNCTION writ_audit_before_update()');
  await knex.raw('CREATE INDEX audit_events_seq_index ON audit_events (seq) WHERE seq IS NOT NULL');
  await knex.raw('CREATE INDEX audit_events_unsealed_index ON audit_events (id) WHERE seq IS NULL');
  await knex.raw('DROP TABLE audit_chain');
}
