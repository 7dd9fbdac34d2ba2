/**
 * The privileges of the role Writ serves as, when it is not the owner of its tables: exactly
 * the row operations `writ serve` makes (exchange, introspection, revocation, the admin API it
 * serves, the audit sealer, the chain view, oidc-provider's records, and the migration check at
 * start), table by table, and nothing else. On the audit record (events, chain, checkpoints,
 * retention markers) no UPDATE, DELETE or TRUNCATE at all, so the append-only rule holds by
 * privilege as well as by trigger (a role without TRIGGER or ownership cannot disable the
 * triggers either); on token lineage and revocation marks, no DELETE and only the updates a
 * revocation makes; nothing is deleted but oidc-provider's records and the secrets of clients a
 * policy removes.
 *
 * Schema changes, retention and the writes only a command makes stay with the owner: `writ
 * migrate`, `writ audit retain` (it drops partitions and writes retention markers) and `writ
 * admin bootstrap` (bootstrap_admins: an admin client is not the serving role's to make) and `writ
 * db issuer --set` (a deliberate move of the database to another issuer) run as the owner on
 * PostgreSQL. The other commands (policy apply and rollback, keys rotate and
 * remove, revoke, audit open) make the same row operations as the server, so the serving role
 * may run them too.
 */
export const AUDIT_TABLES = ['audit_events', 'audit_chain', 'audit_checkpoints', 'audit_retention'] as const;

/** Tables whose rows only move towards revoked, with the columns a revocation updates. */
export const REVOKE_ONLY_TABLES: ReadonlyArray<readonly [string, readonly string[]]> = [
  ['token_lineage', ['revoked_at']],
  ['revocations', ['not_before', 'created_at', 'revoked_by']],
];

export type RowPrivilege = 'SELECT' | 'INSERT' | 'UPDATE' | 'DELETE';

export interface TableGrant {
  /** Privileges on the whole table. */
  rows: readonly RowPrivilege[];
  /** UPDATE of these columns only (the table-wide UPDATE is not among `rows`). */
  updates?: readonly string[];
}

const revokeOnly = (table: string): TableGrant => ({
  rows: ['SELECT', 'INSERT'],
  updates: REVOKE_ONLY_TABLES.find(([t]) => t === table)![1],
});

/**
 * Every table of Writ's schema (the monthly partitions of audit_events aside: nothing on them,
 * they are reached through audit_events), with what the serving role may do on it. A table a
 * migration adds must be added here: test/integration/least-privilege.test.ts checks that
 * none is missing.
 */
export const SERVING_GRANTS: Readonly<Record<string, TableGrant>> = {
  // Policy apply and rollback add a version; none is ever changed or removed.
  policy_versions: { rows: ['SELECT', 'INSERT'] },
  // An apply sets secrets (insert or replace) and deletes those of the clients it removes.
  client_credentials: { rows: ['SELECT', 'INSERT', 'UPDATE', 'DELETE'] },
  // Read as clients; written by `writ admin bootstrap` (the server's own bootstrap endpoint is the
  // embedded database's, which has no roles).
  bootstrap_admins: { rows: ['SELECT'] },
  // Keys are added (at start, by rotation, to replace a removed one) and removed by marking them.
  signing_keys: { rows: ['SELECT', 'INSERT'], updates: ['removed_at'] },
  token_lineage: revokeOnly('token_lineage'),
  revocations: revokeOnly('revocations'),
  audit_events: { rows: ['SELECT', 'INSERT'] },
  audit_chain: { rows: ['SELECT', 'INSERT'] },
  audit_checkpoints: { rows: ['SELECT', 'INSERT'] },
  // Read to verify; written only by `writ audit retain`.
  audit_retention: { rows: ['SELECT'] },
  // `writ audit open` creates a one-time login and clears out expired ones (an auditor may run it
  // with the serving role's credentials: a login only opens the read-only chain view of a record
  // that role can read anyway); the chain view consumes it.
  audit_view_logins: { rows: ['SELECT', 'INSERT', 'DELETE'], updates: ['used_at'] },
  // oidc-provider's records: stored, replaced, consumed, destroyed (an admin token revoked).
  oidc_payloads: { rows: ['SELECT', 'INSERT', 'UPDATE', 'DELETE'] },
  // The issuer the database serves: read at start, and stored by the first instance to start
  // (INSERT … ON CONFLICT DO NOTHING); changed only by `writ db issuer --set`, as the owner.
  served_issuer: { rows: ['SELECT', 'INSERT'] },
  // Starting, Writ checks for pending migrations: knex reads the list and takes and releases its
  // lock (UPDATE knex_migrations_lock SET is_locked), in one transaction, even with none pending.
  knex_migrations: { rows: ['SELECT'] },
  knex_migrations_lock: { rows: ['SELECT'], updates: ['is_locked'] },
};

/**
 * The sequences behind the serial columns the serving role inserts into; the sealer also reads
 * audit_events_id_seq's last_value.
 */
export const SERVING_SEQUENCES: Readonly<Record<string, string>> = {
  audit_events_id_seq: 'USAGE, SELECT',
  audit_checkpoints_id_seq: 'USAGE',
  revocations_id_seq: 'USAGE',
};

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
    // What the role held before (an earlier version's grants, a hand-made one) goes first, the
    // partitions' and column grants with it, so what follows is all it holds; in one transaction
    // with --apply, so the server never sees the gap.
    `REVOKE ALL ON ALL TABLES IN SCHEMA public FROM ${role}`,
    `REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM ${role}`,
    ...Object.entries(SERVING_GRANTS).flatMap(([table, grant]) => [
      `GRANT ${grant.rows.join(', ')} ON ${table} TO ${role}`,
      ...(grant.updates ? [`GRANT UPDATE (${grant.updates.join(', ')}) ON ${table} TO ${role}`] : []),
    ]),
    ...Object.entries(SERVING_SEQUENCES).map(([sequence, privileges]) => `GRANT ${privileges} ON SEQUENCE ${sequence} TO ${role}`),
    // Partitions ahead are created with the owner's rights, by this function alone.
    `GRANT EXECUTE ON FUNCTION writ_audit_ensure_partitions(int, int) TO ${role}`,
  ];
}
