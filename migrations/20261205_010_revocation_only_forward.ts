import type { Knex } from 'knex';

/**
 * A token's lineage row and the revocation marks decide what introspection answers and what
 * `writ audit trace` shows, so once written they may only move towards "revoked":
 * - token_lineage: the one change Writ makes is setting revoked_at where it is null. Anything
 *   else (un-revoking, or rewriting who obtained a token, for whom, for what) is refused.
 * - revocations: a kill switch's not_before only moves forward (a later mark for the same
 *   target wins); kind, value and expires_at never change.
 * - Neither loses rows: a deleted mark would un-revoke every token it covered (introspection
 *   reads the revoked set built from these rows), and lineage and marks are kept past expiry
 *   for the trace.
 * The triggers hold for every role but one that can turn them off (the owner, a superuser);
 * `writ db grants` also leaves the serving role no DELETE on either table and UPDATE of those
 * columns only. A later migration that must rewrite or purge these rows disables the triggers
 * for its own statements.
 */
export async function up(knex: Knex): Promise<void> {
  await knex.raw(`CREATE FUNCTION writ_lineage_revoke_only() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
  IF OLD.revoked_at IS NOT NULL THEN
    RAISE EXCEPTION 'token_lineage: % is already revoked and stays so', OLD.jti USING ERRCODE = 'insufficient_privilege';
  END IF;
  IF (to_jsonb(NEW) - 'revoked_at') IS DISTINCT FROM (to_jsonb(OLD) - 'revoked_at') THEN
    RAISE EXCEPTION 'token_lineage: only revoked_at may be set' USING ERRCODE = 'insufficient_privilege';
  END IF;
  RETURN NEW;
END $fn$`);
  await knex.raw('CREATE TRIGGER writ_lineage_revoke_only BEFORE UPDATE ON token_lineage FOR EACH ROW EXECUTE FUNCTION writ_lineage_revoke_only()');

  await knex.raw(`CREATE FUNCTION writ_revocation_forward_only() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
  IF NEW.kind IS DISTINCT FROM OLD.kind OR NEW.value IS DISTINCT FROM OLD.value OR NEW.expires_at IS DISTINCT FROM OLD.expires_at
    OR (OLD.not_before IS NOT NULL AND (NEW.not_before IS NULL OR NEW.not_before < OLD.not_before))
    OR (OLD.not_before IS NULL AND NEW.not_before IS NOT NULL) THEN
    RAISE EXCEPTION 'revocations: a mark only moves forward' USING ERRCODE = 'insufficient_privilege';
  END IF;
  RETURN NEW;
END $fn$`);
  await knex.raw('CREATE TRIGGER writ_revocation_forward_only BEFORE UPDATE ON revocations FOR EACH ROW EXECUTE FUNCTION writ_revocation_forward_only()');

  await knex.raw(`CREATE FUNCTION writ_revocation_kept() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
  RAISE EXCEPTION '%: revocations and lineage are kept', TG_TABLE_NAME USING ERRCODE = 'insufficient_privilege';
END $fn$`);
  for (const table of ['token_lineage', 'revocations']) {
    await knex.raw(`CREATE TRIGGER writ_${table}_kept BEFORE DELETE ON ${table} FOR EACH ROW EXECUTE FUNCTION writ_revocation_kept()`);
    await knex.raw(`CREATE TRIGGER writ_${table}_not_truncated BEFORE TRUNCATE ON ${table} FOR EACH STATEMENT EXECUTE FUNCTION writ_revocation_kept()`);
  }
}

export async function down(knex: Knex): Promise<void> {
  for (const table of ['token_lineage', 'revocations']) {
    await knex.raw(`DROP TRIGGER writ_${table}_not_truncated ON ${table}`);
    await knex.raw(`DROP TRIGGER writ_${table}_kept ON ${table}`);
  }
  await knex.raw('DROP FUNCTION writ_revocation_kept()');
  await knex.raw('DROP TRIGGER writ_revocation_forward_only ON revocations');
  await knex.raw('DROP FUNCTION writ_revocation_forward_only()');
  await knex.raw('DROP TRIGGER writ_lineage_revoke_only ON token_lineage');
  await knex.raw('DROP FUNCTION writ_lineage_revoke_only()');
}
