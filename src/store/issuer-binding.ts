import type { Knex } from 'knex';
import { toRow } from '../audit/event.ts';
import { ConfigError } from '../config.ts';

/**
 * The database remembers the issuer it serves (migrations/20261205_011_served_issuer.ts).
 * Instances sharing a database must share WRIT_ISSUER: a token's `iss` is compared with the
 * instance's own, so another instance's tokens would introspect as inactive and their
 * revocation would answer 200 and revoke nothing. The first instance to start stores its issuer;
 * every later one must match it, or refuses to start. `writ db issuer --set` changes it.
 */
const TABLE = 'served_issuer';

/** An instance whose WRIT_ISSUER is not the one its database serves. */
export class IssuerMismatch extends ConfigError {
  override name = 'IssuerMismatch';
}

/** The issuer the database serves, or undefined before any instance started on it. */
export async function storedIssuer(knex: Knex): Promise<string | undefined> {
  const row = await knex(TABLE).first<{ issuer: string } | undefined>('issuer');
  return row?.issuer;
}

/**
 * Stores `issuer` if the database serves none yet and returns the one it serves. Race-safe: of
 * instances starting at once on an empty database one row goes in, and every one reads back
 * that row (the read is a statement of its own, so it sees the row a concurrent insert
 * committed while this one waited on it). Needs INSERT and SELECT only.
 */
async function bindIssuer(knex: Knex, issuer: string): Promise<{ issuer: string; stored: boolean }> {
  return knex.transaction(async (trx) => {
    const inserted = await trx.raw<{ rows: unknown[] }>(`INSERT INTO ${TABLE} (issuer) VALUES (?) ON CONFLICT DO NOTHING RETURNING issuer`, [issuer]);
    const current = await storedIssuer(trx);
    if (current === undefined) throw new Error(`${TABLE}: no issuer stored after inserting one`);
    return { issuer: current, stored: inserted.rows.length > 0 };
  });
}

/**
 * At start: binds the database to `issuer`, or refuses (IssuerMismatch, exit 78 from the CLI)
 * when it serves another one.
 */
export async function checkIssuer(knex: Knex, issuer: string): Promise<{ stored: boolean }> {
  const bound = await bindIssuer(knex, issuer);
  if (bound.issuer !== issuer) {
    throw new IssuerMismatch(
      `WRIT_ISSUER is ${issuer}, but this database serves the issuer ${bound.issuer}. Every instance on one database `
      + `needs the same WRIT_ISSUER: tokens issued as one issuer are inactive at an instance of another, and revoking them there revokes nothing. `
      + `Set WRIT_ISSUER=${bound.issuer} (WRIT_ISSUER unset means http://localhost:$PORT), or, to move this database to ${issuer} deliberately `
      + `(tokens of ${bound.issuer} then stop being accepted), run \`writ db issuer --set ${issuer}\` as the owner of its tables and restart every instance with the new WRIT_ISSUER.`,
    );
  }
  return { stored: bound.stored };
}

/**
 * `writ db issuer --set`: makes the database serve `issuer`, recording an `admin.action` audit
 * event (action `issuer_changed`) in the same transaction. Needs UPDATE on the table: the owner's.
 */
export async function changeIssuer(knex: Knex, issuer: string, by: string): Promise<{ old: string | undefined; changed: boolean }> {
  return knex.transaction(async (trx) => {
    const row = await trx(TABLE).forUpdate().first<{ issuer: string } | undefined>('issuer');
    const old = row?.issuer;
    if (old === issuer) return { old, changed: false };
    await trx.raw(`INSERT INTO ${TABLE} (issuer) VALUES (?) ON CONFLICT (singleton) DO UPDATE SET issuer = EXCLUDED.issuer, set_at = now()`, [issuer]);
    await trx('audit_events').insert(toRow({
      type: 'admin.action', outcome: 'ok', clientId: by,
      details: { action: 'issuer_changed', old: old ?? null, new: issuer },
    }));
    return { old, changed: true };
  });
}
