import type { Knex } from 'knex';

/**
 * The tamper-evident audit log (docs/DESIGN.md §8), on PostgreSQL and on PGlite alike, as first laid
 * out. Migration 006 moves the chain (seq, prev_hash, hash, sealed_at) into its own insert-only
 * table audit_chain and makes audit_events refuse every UPDATE; read its header for the design
 * in force and the production role. What follows describes this migration's own layout.
 *
 * audit_events becomes
 * - partitioned by month on occurred_at (primary key (id, occurred_at)), with a DEFAULT
 *   partition; retention detaches or drops whole partitions after export, the only way rows
 *   ever leave;
 * - append-only: DELETE and TRUNCATE are refused by trigger, and the one UPDATE allowed is
 *   the sealer setting seq, prev_hash, hash and sealed_at together, once, on a row where they
 *   are all NULL (and seq not used by any other row). An INSERT may not carry them;
 * - sealable: the sealer (src/audit/sealer.ts) chains committed rows in id order. So that it
 *   never seals past a row still in flight, every transaction that inserts audit rows holds
 *   a shared advisory lock (class WRIT_AUDIT_INFLIGHT_LOCK, key = its first id mod 2^31)
 *   until it ends; the sealer reads them from pg_locks. The lock never conflicts with
 *   anything: it only makes uncommitted ids visible.
 *
 * audit_checkpoints holds the signed (seq, hash, count) checkpoints, append-only the same way.
 *
 * The triggers are the guard, since Writ may connect as a superuser (and the tests do). In
 * production Writ should run as a role that can do no more than the triggers allow, e.g.:
 *
 *   CREATE ROLE writ_app LOGIN PASSWORD '…';
 *   GRANT CONNECT ON DATABASE writ TO writ_app;
 *   GRANT USAGE ON SCHEMA public TO writ_app;
 *   GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO writ_app;
 *   REVOKE UPDATE, DELETE, TRUNCATE ON audit_events, audit_checkpoints FROM writ_app;
 *   GRANT UPDATE (seq, prev_hash, hash, sealed_at) ON audit_events TO writ_app;
 *   GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO writ_app;   -- the sealer reads audit_events_id_seq
 *
 * with migrations and partition retention run by the owner. A superuser can still disable
 * the triggers; that is what the hash chain and the signed checkpoints detect.
 */

/** Advisory lock class (first int4 key) of the in-flight markers; see src/audit/sealer.ts. */
export const WRIT_AUDIT_INFLIGHT_LOCK = 1465008449;

const EVENT_COLUMNS = 'id, occurred_at, type, outcome, reason, request_id, client_id, jti, parent_jti, task_id, subject, audience, policy_version, details';

/** This migration's functions (CREATE OR REPLACE); migration 006's `down` restores them. */
export const FUNCTIONS_002 = [
  // Refuses whatever it is attached to (DELETE, TRUNCATE, UPDATE of checkpoints).
  `CREATE OR REPLACE FUNCTION writ_append_only() RETURNS trigger LANGUAGE plpgsql AS $fn$
  BEGIN
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP USING ERRCODE = '42501';
  END
  $fn$`,

  `CREATE OR REPLACE FUNCTION writ_audit_before_insert() RETURNS trigger LANGUAGE plpgsql AS $fn$
  BEGIN
    IF NEW.seq IS NOT NULL OR NEW.prev_hash IS NOT NULL OR NEW.hash IS NOT NULL OR NEW.sealed_at IS NOT NULL THEN
      RAISE EXCEPTION 'audit_events: only the sealer sets seq, prev_hash, hash and sealed_at' USING ERRCODE = '42501';
    END IF;
    -- Mark this transaction's first (lowest) id as in flight until it commits or aborts.
    IF coalesce(current_setting('writ.audit_inflight', true), '') = '' THEN
      PERFORM pg_advisory_xact_lock_shared(${WRIT_AUDIT_INFLIGHT_LOCK}, (NEW.id % 2147483648)::int);
      PERFORM set_config('writ.audit_inflight', NEW.id::text, true);
    END IF;
    RETURN NEW;
  END
  $fn$`,

  `CREATE OR REPLACE FUNCTION writ_audit_before_update() RETURNS trigger LANGUAGE plpgsql AS $fn$
  BEGIN
    IF OLD.seq IS NOT NULL OR OLD.prev_hash IS NOT NULL OR OLD.hash IS NOT NULL OR OLD.sealed_at IS NOT NULL THEN
      RAISE EXCEPTION 'audit_events is append-only: event % is sealed', OLD.id USING ERRCODE = '42501';
    END IF;
    IF NEW.seq IS NULL OR NEW.prev_hash IS NULL OR NEW.hash IS NULL OR NEW.sealed_at IS NULL THEN
      RAISE EXCEPTION 'audit_events is append-only: the only update is sealing (seq, prev_hash, hash, sealed_at together)' USING ERRCODE = '42501';
    END IF;
    IF (to_jsonb(NEW) - ARRAY['seq', 'prev_hash', 'hash', 'sealed_at']) IS DISTINCT FROM (to_jsonb(OLD) - ARRAY['seq', 'prev_hash', 'hash', 'sealed_at']) THEN
      RAISE EXCEPTION 'audit_events is append-only: event % may not be changed', OLD.id USING ERRCODE = '42501';
    END IF;
    IF EXISTS (SELECT 1 FROM audit_events WHERE seq = NEW.seq) THEN
      RAISE EXCEPTION 'audit_events: seq % is already sealed', NEW.seq USING ERRCODE = '23505';
    END IF;
    RETURN NEW;
  END
  $fn$`,

  // Monthly partitions (UTC) from months_back before this month to months_ahead after it.
  // A month whose rows already sit in the DEFAULT partition cannot be created; it is skipped
  // with a warning (those rows stay in DEFAULT, which is still append-only).
  `CREATE OR REPLACE FUNCTION writ_audit_ensure_partitions(months_back int, months_ahead int) RETURNS int LANGUAGE plpgsql AS $fn$
  DECLARE
    this_month timestamp := date_trunc('month', now() AT TIME ZONE 'UTC');
    m timestamp;
    part text;
    created int := 0;
  BEGIN
    FOR i IN -months_back..months_ahead LOOP
      m := this_month + make_interval(months => i);
      part := 'audit_events_y' || to_char(m, 'YYYY') || 'm' || to_char(m, 'MM');
      CONTINUE WHEN to_regclass(part) IS NOT NULL;
      BEGIN
        EXECUTE format('CREATE TABLE %I PARTITION OF audit_events FOR VALUES FROM (%L) TO (%L)',
          part, (m AT TIME ZONE 'UTC')::text, ((m + interval '1 month') AT TIME ZONE 'UTC')::text);
        EXECUTE format('CREATE TRIGGER writ_audit_no_truncate BEFORE TRUNCATE ON %I FOR EACH STATEMENT EXECUTE FUNCTION writ_append_only()', part);
        created := created + 1;
      EXCEPTION WHEN check_violation OR duplicate_table THEN
        RAISE WARNING 'audit partition % not created: %', part, SQLERRM;
      END;
    END LOOP;
    RETURN created;
  END
  $fn$`,
];

export async function up(knex: Knex): Promise<void> {
  // Copying a large table may take longer than the pool's statement timeout.
  await knex.raw('SET LOCAL statement_timeout = 0');
  for (const sql of FUNCTIONS_002) await knex.raw(sql);

  await knex.raw('ALTER TABLE audit_events RENAME TO audit_events_unpartitioned');
  await knex.raw('ALTER TABLE audit_events_unpartitioned RENAME CONSTRAINT audit_events_pkey TO audit_events_unpartitioned_pkey');
  // Keep the id sequence: ids continue where they were.
  await knex.raw('ALTER SEQUENCE audit_events_id_seq OWNED BY NONE');
  await knex.raw(`CREATE TABLE audit_events (
    id bigint NOT NULL DEFAULT nextval('audit_events_id_seq'),
    occurred_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    type text NOT NULL,
    outcome text NOT NULL,
    reason text,
    request_id text,
    client_id text,
    jti text,
    parent_jti text,
    task_id text,
    subject text,
    audience text,
    policy_version integer,
    details jsonb NOT NULL DEFAULT '{}',
    seq bigint,
    prev_hash text,
    hash text,
    sealed_at timestamptz,
    PRIMARY KEY (id, occurred_at)
  ) PARTITION BY RANGE (occurred_at)`);
  await knex.raw('ALTER SEQUENCE audit_events_id_seq OWNED BY audit_events.id');
  // Month partitions first: once DEFAULT holds a month's rows, that month can no longer be created.
  await knex.raw('SELECT writ_audit_ensure_partitions(3, 3)');
  await knex.raw('CREATE TABLE audit_events_default PARTITION OF audit_events DEFAULT');
  await knex.raw('CREATE TRIGGER writ_audit_no_truncate BEFORE TRUNCATE ON audit_events_default FOR EACH STATEMENT EXECUTE FUNCTION writ_append_only()');
  await knex.raw(`INSERT INTO audit_events (${EVENT_COLUMNS}) SELECT ${EVENT_COLUMNS} FROM audit_events_unpartitioned`);
  await knex.raw('DROP TABLE audit_events_unpartitioned');

  await knex.raw('CREATE INDEX audit_events_occurred_at_index ON audit_events (occurred_at)');
  await knex.raw('CREATE INDEX audit_events_jti_index ON audit_events (jti)');
  await knex.raw('CREATE INDEX audit_events_client_id_occurred_at_index ON audit_events (client_id, occurred_at)');
  await knex.raw('CREATE INDEX audit_events_subject_index ON audit_events (subject)');
  await knex.raw('CREATE INDEX audit_events_task_id_index ON audit_events (task_id)');
  // A unique index on a partitioned table must contain occurred_at, so seq cannot have one;
  // the update trigger refuses a seq already used, and `audit verify` reports duplicates.
  await knex.raw('CREATE INDEX audit_events_seq_index ON audit_events (seq) WHERE seq IS NOT NULL');
  // The sealer's work list.
  await knex.raw('CREATE INDEX audit_events_unsealed_index ON audit_events (id) WHERE seq IS NULL');

  // Row triggers are cloned to every partition, present and future; statement triggers are not.
  await knex.raw('CREATE TRIGGER writ_audit_before_insert BEFORE INSERT ON audit_events FOR EACH ROW EXECUTE FUNCTION writ_audit_before_insert()');
  await knex.raw('CREATE TRIGGER writ_audit_before_update BEFORE UPDATE ON audit_events FOR EACH ROW EXECUTE FUNCTION writ_audit_before_update()');
  await knex.raw('CREATE TRIGGER writ_audit_no_delete BEFORE DELETE ON audit_events FOR EACH ROW EXECUTE FUNCTION writ_append_only()');
  await knex.raw('CREATE TRIGGER writ_audit_no_delete_statement BEFORE DELETE ON audit_events FOR EACH STATEMENT EXECUTE FUNCTION writ_append_only()');
  await knex.raw('CREATE TRIGGER writ_audit_no_truncate BEFORE TRUNCATE ON audit_events FOR EACH STATEMENT EXECUTE FUNCTION writ_append_only()');

  await knex.raw(`CREATE TABLE audit_checkpoints (
    id bigserial PRIMARY KEY,
    seq bigint NOT NULL,
    hash text NOT NULL,
    count bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    signature text NOT NULL
  )`);
  await knex.raw('CREATE INDEX audit_checkpoints_seq_index ON audit_checkpoints (seq)');
  await knex.raw('CREATE TRIGGER writ_audit_checkpoints_append_only BEFORE UPDATE OR DELETE ON audit_checkpoints FOR EACH ROW EXECUTE FUNCTION writ_append_only()');
  await knex.raw('CREATE TRIGGER writ_audit_checkpoints_no_delete BEFORE DELETE ON audit_checkpoints FOR EACH STATEMENT EXECUTE FUNCTION writ_append_only()');
  await knex.raw('CREATE TRIGGER writ_audit_checkpoints_no_truncate BEFORE TRUNCATE ON audit_checkpoints FOR EACH STATEMENT EXECUTE FUNCTION writ_append_only()');
}

/** Back to the plain table of 001: the chain columns and the checkpoints are lost. */
export async function down(knex: Knex): Promise<void> {
  await knex.raw('SET LOCAL statement_timeout = 0');
  await knex.raw('DROP TABLE audit_checkpoints');
  await knex.raw('ALTER TABLE audit_events RENAME TO audit_events_partitioned');
  await knex.raw('ALTER TABLE audit_events_partitioned RENAME CONSTRAINT audit_events_pkey TO audit_events_partitioned_pkey');
  await knex.raw('ALTER SEQUENCE audit_events_id_seq OWNED BY NONE');
  await knex.raw(`CREATE TABLE audit_events (
    id bigint PRIMARY KEY DEFAULT nextval('audit_events_id_seq'),
    occurred_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    type text NOT NULL,
    outcome text NOT NULL,
    reason text,
    request_id text,
    client_id text,
    jti text,
    parent_jti text,
    task_id text,
    subject text,
    audience text,
    policy_version integer,
    details jsonb NOT NULL DEFAULT '{}'
  )`);
  await knex.raw('ALTER SEQUENCE audit_events_id_seq OWNED BY audit_events.id');
  await knex.raw(`INSERT INTO audit_events (${EVENT_COLUMNS}) SELECT ${EVENT_COLUMNS} FROM audit_events_partitioned`);
  await knex.raw('DROP TABLE audit_events_partitioned');
  await knex.raw('CREATE INDEX audit_events_occurred_at_index ON audit_events (occurred_at)');
  await knex.raw('CREATE INDEX audit_events_jti_index ON audit_events (jti)');
  await knex.raw('CREATE INDEX audit_events_client_id_occurred_at_index ON audit_events (client_id, occurred_at)');
  for (const fn of ['writ_audit_ensure_partitions(int, int)', 'writ_audit_before_update()', 'writ_audit_before_insert()', 'writ_append_only()']) {
    await knex.raw(`DROP FUNCTION IF EXISTS ${fn}`);
  }
}
