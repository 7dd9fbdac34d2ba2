/**
 * The privileges of the role Writ serves as, when it is not the owner of its tables: every
 * row operation Writ makes, and on the audit record (events, chain, checkpoints, retention
 * markers) no UPDATE, DELETE or TRUNCATE at all, so the append-only rule holds by privilege as
 * well as by trigger (a role without TRIGGER or ownership cannot disable the triggers either);
 * on token lineage and revocation marks, no DELETE and only the updates a revocation makes.
 * Schema changes, retention and key-encryption work stay with the owner: `writ migrate` and
 * `writ audit retain` run as the owner.
 */
export const AUDIT_TABLES = ['audit_events', 'audit_chain', 'audit_checkpoints', 'audit_retention'] as const;

/** Tables whose rows only move towards revoked, with the columns a revocation updates. */
export const REVOKE_ONLY_TABLES: ReadonlyArray<readonly [string, readonly string[]]> = [
  ['token_lineage', ['revoked_at']],
  ['revocations', ['not_before', 'created_at', 'revoked_by']],
];

const ROLE = /^[a-z_][a-z0-9_]{0,62}$/;

export function isRoleName(name: string): boolean {
  return ROLE.test(name);
}

/** Statements to run as the owner after every `writ migrate` (new tables need their grants). */
export function grantStatements(role: string, database: string): string[] {
  if (!isRoleName(role)) throw new Error(`role names are lower-case letters, digits and underscores (got "${role}")`);
  const db = `"${database.replaceAll('"', '""')}"`;
  return [
    `GRANT CONNECT ON DATABASE ${db} TO ${role}`,
    `GRANT USAGE ON SCHEMA public TO ${role}`,
    `GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO ${role}`,
    `REVOKE UPDATE, DELETE, TRUNCATE ON ${AUDIT_TABLES.join(', ')} FROM ${role}`,
    // What introspection and the trace rest on may only move towards revoked (migration 010):
    // no DELETE, and UPDATE of the columns a revocation sets. A REVOKE on a table takes its
    // column grants with it, so these come after it, every time.
    `REVOKE UPDATE, DELETE ON ${REVOKE_ONLY_TABLES.map(([table]) => table).join(', ')} FROM ${role}`,
    ...REVOKE_ONLY_TABLES.map(([table, columns]) => `GRANT UPDATE (${columns.join(', ')}) ON ${table} TO ${role}`),
    `REVOKE TRUNCATE, REFERENCES, TRIGGER ON ALL TABLES IN SCHEMA public FROM ${role}`,
    `GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO ${role}`,
    `GRANT EXECUTE ON FUNCTION writ_audit_ensure_partitions(int, int) TO ${role}`,
    // The monthly partitions are reached through audit_events, whose privileges are the ones
    // checked then; directly, not at all (the grant on all tables above included them).
    `DO $$ DECLARE part record; BEGIN
  FOR part IN SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'audit_events'::regclass LOOP
    EXECUTE format('REVOKE ALL ON %I FROM %I', part.relname, '${role}');
  END LOOP;
END $$`,
  ];
}
