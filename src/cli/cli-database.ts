import { existsSync } from 'node:fs';
import path from 'node:path';
import { ConfigError } from '../config.ts';
import { migrate, openDatabase, type Database, type DatabaseLog } from '../store/db.ts';
import { checkIssuer } from '../store/issuer-binding.ts';
import type { CliContext } from './context.ts';

export interface CliDatabaseOptions {
  /**
   * Whether this command may create a new embedded database: `writ serve` always; the commands
   * that set one up (a policy apply, the first admin, signing keys) only in development; any
   * other never, since on a data dir with no database it would act on an empty one and report
   * success: a kill switch run from the wrong directory, or without DATABASE_URL, would revoke
   * nothing.
   */
  creates?: 'never' | 'development' | 'always';
  /** Say on stderr when a database is created or migrated (the demo keeps its output its own). */
  announce?: boolean;
  /**
   * The issuer this command serves as (`writ serve --apply`): checked against the database's,
   * or stored, before the command changes anything, since an instance refused for another
   * issuer must not have applied its policy to the database first (src/store/issuer-binding.ts).
   */
  issuer?: string;
  poolMax?: number;
  maintenance?: boolean;
}

/**
 * knex's warnings, for a command: a connection it could not make is left out, since the command
 * fails with that very error, said once (src/cli/database-error.ts).
 */
export function cliDatabaseLog(ctx: CliContext): DatabaseLog {
  return { warn: (message) => { if (!message.startsWith('Acquire connection error')) ctx.err(message); } };
}

/** Whether `dataDir` holds an embedded database already. */
function embeddedExists(dataDir: string): boolean {
  return existsSync(path.join(dataDir, 'pgdata', 'PG_VERSION'));
}

/**
 * The database a CLI command works on, migrated, with what happened said on stderr: which
 * database it is when it is new, and the migrations it applied.
 */
export async function openCliDatabase(ctx: CliContext, options: CliDatabaseOptions = {}): Promise<Database> {
  const { databaseUrl, dataDir, env } = ctx.config;
  const creates = options.creates ?? 'never';
  const announce = options.announce ?? true;
  if (databaseUrl === undefined && !embeddedExists(dataDir)) {
    if (creates === 'never' || (creates === 'development' && env === 'production')) {
      throw new ConfigError(`no Writ database: DATABASE_URL is not set, and ${dataDir} holds no embedded database. Set DATABASE_URL, or WRIT_DATA_DIR to the data dir of the Writ you mean${creates === 'development' ? ' (in production only writ serve creates one)' : ''}`);
    }
    if (announce) ctx.err(`writ: DATABASE_URL is not set: creating a new embedded database in ${dataDir}`);
  }
  const db = await openDatabase({
    databaseUrl, dataDir, log: cliDatabaseLog(ctx),
    ...(options.poolMax !== undefined ? { poolMax: options.poolMax } : {}),
    ...(options.maintenance !== undefined ? { maintenance: options.maintenance } : {}),
  });
  try {
    const { applied, newer } = await migrate(db);
    if (announce && applied.length > 0) ctx.err(`writ: migrated the database: ${applied.join(', ')}`);
    if (newer.length > 0) ctx.err(`writ: the database was migrated by a newer Writ (${newer.join(', ')}); this one runs on it without migrating`);
    if (options.issuer !== undefined) await checkIssuer(db.knex, options.issuer);
  } catch (err) {
    await db.close();
    throw err;
  }
  return db;
}
