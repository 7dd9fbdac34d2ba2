import { parseArgs } from 'node:util';
import { ConfigError, parseIssuer } from '../config.ts';
import { openDatabase } from '../store/db.ts';
import { grantStatements, isRoleName } from '../store/grants.ts';
import { changeIssuer, storedIssuer } from '../store/issuer-binding.ts';
import { openCliDatabase } from './cli-database.ts';
import { UsageError, cliActor, type CliContext } from './context.ts';
import { heldByServer } from './local-server.ts';

/**
 * `writ db grants --role NAME [--apply]`: what the role Writ serves as may do (src/store/grants.ts).
 * Printed for a DBA to review, or applied as the DATABASE_URL user (the tables' owner). Run it
 * again after every `writ migrate`.
 */
export async function dbCommand(ctx: CliContext, argv: string[]): Promise<number> {
  const [sub, ...args] = argv;
  if (sub === 'issuer') return dbIssuer(ctx, args);
  if (sub !== 'grants') throw new UsageError(`unknown db command "${sub ?? ''}"; expected grants or issuer`);
  const { values, positionals } = parseArgs({ args, allowPositionals: true, options: { role: { type: 'string' }, apply: { type: 'boolean' } } });
  if (positionals.length > 0) throw new UsageError('db grants takes --role and --apply only');
  const role = values.role ?? 'writ_app';
  if (!isRoleName(role)) throw new UsageError('--role takes a lower-case name: letters, digits and underscores');
  if (!ctx.config.databaseUrl) {
    ctx.err('writ db grants is for PostgreSQL (DATABASE_URL): the embedded database has one user, the process that opens it.');
    return 1;
  }
  const database = decodeURIComponent(new URL(ctx.config.databaseUrl).pathname.slice(1)) || 'postgres';
  const statements = grantStatements(role, database);
  if (!values.apply) {
    ctx.out(`-- As the owner of Writ's tables, after writ migrate; the role must exist (CREATE ROLE ${role} LOGIN PASSWORD '…').`);
    for (const s of statements) ctx.out(`${s};`);
    return 0;
  }
  const db = await openDatabase({ databaseUrl: ctx.config.databaseUrl, dataDir: ctx.config.dataDir, poolMax: 1 });
  try {
    await db.knex.transaction(async (trx) => {
      for (const s of statements) await trx.raw(s);
    });
  } finally {
    await db.close();
  }
  ctx.out(`granted ${role} what Writ needs on ${database}; no UPDATE, DELETE or TRUNCATE on the audit record`);
  return 0;
}

/** `--set`'s URL, held to WRIT_ISSUER's rules (https outside localhost, no path) and normalized the same way. */
function issuerArgument(raw: string, env: 'development' | 'production'): string {
  try {
    return parseIssuer(raw, env === 'production');
  } catch (err) {
    if (err instanceof ConfigError) throw new UsageError(`--set: ${err.message.replace(/^WRIT_ISSUER/, 'the issuer')}`);
    throw err;
  }
}

/**
 * `writ db issuer [--set URL]`: the issuer the database serves (src/store/issuer-binding.ts),
 * which every instance on it must have as WRIT_ISSUER; with --set, a deliberate move to another
 * (a domain move), as the owner of the tables, recorded in the audit record.
 */
async function dbIssuer(ctx: CliContext, args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({ args, allowPositionals: true, options: { set: { type: 'string' } } });
  if (positionals.length > 0) throw new UsageError('db issuer takes --set URL only');
  const next = values.set === undefined ? undefined : issuerArgument(values.set, ctx.config.env);
  const server = heldByServer(ctx);
  if (server) {
    ctx.err(`writ serve (pid ${server.pid}) holds the embedded database in ${ctx.config.dataDir}: stop it first${next ? ', then start it again with WRIT_ISSUER set to the new issuer' : ''}`);
    return 1;
  }
  const db = await openCliDatabase(ctx, { poolMax: 1 });
  try {
    if (next === undefined) {
      const issuer = await storedIssuer(db.knex);
      if (issuer === undefined) {
        ctx.err('this database serves no issuer yet: the first writ serve on it stores its WRIT_ISSUER');
        return 1;
      }
      ctx.out(issuer);
      return 0;
    }
    let change: Awaited<ReturnType<typeof changeIssuer>>;
    try {
      change = await changeIssuer(db.knex, next, cliActor());
    } catch (err) {
      if ((err as { code?: string }).code === '42501') {
        ctx.err(`writ: ${(err as Error).message}: run writ db issuer --set as the owner of Writ's tables (the DATABASE_URL user writ migrate runs as)`);
        return 1;
      }
      throw err;
    }
    if (!change.changed) {
      ctx.out(`the database serves ${next} already; nothing changed`);
      return 0;
    }
    ctx.out(change.old === undefined ? `the database now serves ${next}` : `the database now serves ${next} (was ${change.old})`);
    if (change.old !== undefined) {
      ctx.err(`warning: tokens issued as ${change.old} stop being accepted by instances of ${next}: introspection answers inactive for them, and revoking them there revokes nothing. `
        + `Instances still running as ${change.old} keep serving it until restarted; restart every instance with WRIT_ISSUER=${next} (one still set to ${change.old} now refuses to start).`);
    }
    return 0;
  } finally {
    await db.close();
  }
}
