import { parseArgs } from 'node:util';
import { openDatabase } from '../store/db.ts';
import { grantStatements, isRoleName } from '../store/grants.ts';
import { UsageError, type CliContext } from './context.ts';

/**
 * `writ db grants --role NAME [--apply]`: what the role Writ serves as may do (src/store/grants.ts).
 * Printed for a DBA to review, or applied as the DATABASE_URL user (the tables' owner). Run it
 * again after every `writ migrate`.
 */
export async function dbCommand(ctx: CliContext, argv: string[]): Promise<number> {
  const [sub, ...args] = argv;
  if (sub !== 'grants') throw new UsageError(`unknown db command "${sub ?? ''}"; expected grants`);
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
