import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { readdir } from 'node:fs/promises';
import knexFactory, { type Knex } from 'knex';
import pg from 'pg';
import { ConfigError } from '../config.ts';
import { lockDataDir } from './data-dir-lock.ts';
import { PostgresNotAnswering, StatementWatchdog } from './statement-watchdog.ts';

// Keep PostgreSQL types as the code expects them: bigint counts as numbers (they stay far
// below 2^53 here) and timestamps as Date.
pg.types.setTypeParser(20, (v) => Number(v));

export interface Database {
  knex: Knex;
  kind: 'postgres' | 'embedded';
  /** Runs `run` with no limit on how long PostgreSQL may take to answer a statement. */
  unlimited<T>(run: () => Promise<T>): Promise<T>;
  /** Subscribes to a NOTIFY channel; resolves once listening. */
  listen(channel: string, onPayload: (payload: string) => void): Promise<() => Promise<void>>;
  close(): Promise<void>;
}

const MIGRATIONS_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../migrations');

/** Loads `migrations/*.ts` in name order; Node runs them directly. */
class DirectoryMigrations implements Knex.MigrationSource<string> {
  async getMigrations(): Promise<string[]> {
    return (await readdir(MIGRATIONS_DIR)).filter((f) => /^\d.*\.ts$/.test(f)).sort();
  }
  getMigrationName(name: string): string {
    return name;
  }
  async getMigration(name: string): Promise<Knex.Migration> {
    return import(path.join(MIGRATIONS_DIR, name)) as Promise<Knex.Migration>;
  }
}

/** A database whose schema this Writ cannot use: it lacks migrations and has others it does not know. */
export class SchemaMismatch extends ConfigError {
  override name = 'SchemaMismatch';
}

/**
 * Brings the schema up to this Writ's migrations. A database already migrated by a newer Writ,
 * with every migration of this one applied, is left as it is and its newer migrations returned
 * in `newer`: during a rolling upgrade the instances not yet replaced must still start (knex
 * alone calls that database corrupt). Migrations are therefore written to be additive.
 */
export async function migrate(db: Database): Promise<{ applied: string[]; newer: string[] }> {
  const source = new DirectoryMigrations();
  const known = new Set(await source.getMigrations());
  const done = await db.knex.schema.hasTable('knex_migrations')
    ? (await db.knex<{ name: string }>('knex_migrations').select('name')).map((r) => r.name)
    : [];
  const newer = done.filter((name) => !known.has(name));
  if (newer.length > 0) {
    const missing = [...known].filter((name) => !done.includes(name));
    if (missing.length > 0) {
      throw new SchemaMismatch(`the database was migrated by another version of Writ: it has ${newer.join(', ')}, which this one does not know, and lacks ${missing.join(', ')}`);
    }
    return { applied: [], newer };
  }
  // A migration may rewrite a large table; its statements lift statement_timeout themselves.
  try {
    const [, applied] = await db.unlimited(() => db.knex.migrate.latest({ migrationSource: source })) as [number, string[]];
    return { applied, newer: [] };
  } catch (err) {
    // A serving role (writ db grants) may not change the schema: say what to do, not the SQL.
    if ((err as { code?: unknown }).code === '42501') {
      const pending = [...known].filter((name) => !done.includes(name));
      throw new SchemaMismatch(`the database needs migrations this role may not apply (${pending.join(', ')}): run writ migrate as the owner of the tables, then writ db grants (PostgreSQL said: ${(err as Error).message})`);
    }
    throw err;
  }
}

/** Where knex's own warnings go (it prints to the console otherwise). */
export interface DatabaseLog {
  warn(message: string): void;
}

/**
 * PostgreSQL cancels a statement after 2 s itself; one it has not answered 500 ms after that
 * means the server is hung or cut off (docs/DESIGN.md §8, O1: fail closed with 503).
 */
const STATEMENT_TIMEOUT_MS = 2000;
const UNANSWERED_LIMIT_MS = 2500;

/**
 * A message knex logs, fit for an operator's log: knex appends the error's stack to a failed
 * connection ("Acquire connection error: Error: connect ECONNREFUSED …\n    at …"), which only
 * buries the cause, and DATABASE_URL's password must not reach a log whatever a message quotes.
 */
export function knexLogLine(message: unknown, databaseUrl: string): string {
  const text = message instanceof Error ? message.message : String(message);
  // V8 writes each stack frame as four spaces and "at " (not any line that starts with "at").
  let line = text.split('\n').filter((l) => !l.startsWith('    at ')).map((l) => l.trim()).filter(Boolean).join(' ');
  let password = '';
  try {
    password = new URL(databaseUrl).password;
  } catch {
    // Not a URL (a libpq keyword string): nothing to take a password from here.
  }
  // This password first, as written and decoded, before anything else rewrites the text.
  for (const form of new Set([password, safeDecode(password)])) {
    if (form) line = line.split(form).join('***');
  }
  // Then any connection string quoted, up to its last "@": a password may hold a raw "@" or "/".
  // Word by word, each looked at once, so no input makes this slower than linear.
  line = line.replace(/\S+/g, (word) => {
    const userinfo = /^(.*?\b[a-z][a-z0-9+.-]{0,31}:\/\/[^/\s:@]*:)/i.exec(word);
    const at = word.lastIndexOf('@');
    return userinfo && at > userinfo[1]!.length ? `${userinfo[1]}***${word.slice(at)}` : word;
  });
  return line;
}

function safeDecode(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}

/** Resolves once PostgreSQL answers `SELECT 1` on a connection of its own, within ~1 s. */
async function answers(url: string): Promise<void> {
  // A rare statement (only while stalled), so pg's own per-statement timer is fine here.
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 1000, query_timeout: 1000 });
  client.on('error', () => undefined);
  try {
    await client.connect();
    await client.query('SELECT 1');
  } finally {
    void client.end().catch(() => undefined);
  }
}

async function openPostgres(url: string, poolMax: number, log: DatabaseLog, maintenance: boolean): Promise<Database> {
  const watchdog = maintenance ? undefined : new StatementWatchdog({
    limitMs: UNANSWERED_LIMIT_MS,
    intervalMs: 100,
    onStall: ({ waitedMs }) => log.warn(`PostgreSQL left a statement unanswered for ${waitedMs} ms: its connection was closed, and statements are refused until it answers again`),
    probe: () => answers(url),
    onRecovery: () => log.warn('PostgreSQL answers again'),
  });
  const knex = knexFactory({
    log: {
      warn: (m: unknown) => log.warn(knexLogLine(m, url)),
      error: (m: unknown) => log.warn(knexLogLine(m, url)),
      deprecate: (m: unknown) => log.warn(knexLogLine(m, url)),
      debug: () => undefined,
    },
    client: 'pg',
    connection: {
      connectionString: url,
      // Fail closed quickly when PostgreSQL is unreachable or stuck (docs/DESIGN.md §8, O1).
      connectionTimeoutMillis: 2000,
      // Maintenance (audit retention) scans whole partitions: no statement limit there.
      ...(maintenance ? {} : { statement_timeout: STATEMENT_TIMEOUT_MS }),
    } as Knex.PgConnectionConfig,
    // Idle connections are kept for 10 minutes. A new PostgreSQL backend costs ~20 ms before its
    // first audit insert lands on an idle box (connect ~10 ms, then catalog caches and trigger
    // functions ~9 ms, against 0.6 ms warm), and 60-200 ms when a burst opens several at once;
    // with a 30 s reap every burst after a quiet spell paid that again.
    pool: { min: 0, max: poolMax, acquireTimeoutMillis: 2000, idleTimeoutMillis: 600_000 },
    acquireConnectionTimeout: 2000,
  });
  if (watchdog) {
    // knex's dialect contract: every statement gets its connection from acquireConnection, every
    // pooled connection is opened by acquireRawConnection, which connects with
    // _acquireOnlyConnection before its first statement (the server version). While PostgreSQL
    // is not answering nothing waits on it: a request would otherwise sit out
    // acquireTimeoutMillis or connectionTimeoutMillis on a server already known to be stalled.
    const client = knex.client as unknown as {
      acquireConnection(): Promise<unknown>;
      acquireRawConnection(): Promise<pg.Client>;
      _acquireOnlyConnection(): Promise<pg.Client>;
    };
    const acquire = client.acquireConnection.bind(client);
    const open = client.acquireRawConnection.bind(client);
    const connect = client._acquireOnlyConnection.bind(client);
    client.acquireConnection = () => (watchdog.stalled ? Promise.reject(new PostgresNotAnswering()) : acquire());
    client.acquireRawConnection = () => watchdog.open(open);
    client._acquireOnlyConnection = async () => {
      const connection = await connect();
      watchdog.watch(connection);
      return connection;
    };
  }
  const listeners = new Set<{ stop: () => Promise<void> }>();
  return {
    knex,
    kind: 'postgres',
    unlimited: (run) => (watchdog ? watchdog.unlimited(run) : run()),
    async listen(channel, onPayload) {
      // One dedicated connection per channel, re-established after PostgreSQL comes back;
      // callers keep a poll as backstop for whatever is sent while it is down.
      let client: pg.Client | undefined;
      let stopped = false;
      let retry: NodeJS.Timeout | undefined;
      const connect = async (): Promise<void> => {
        const c = new pg.Client({ connectionString: url, connectionTimeoutMillis: 2000 });
        c.on('notification', (msg) => {
          if (msg.channel === channel) onPayload(msg.payload ?? '');
        });
        const reconnect = (): void => {
          if (stopped || client !== c) return;
          client = undefined;
          void c.end().catch(() => undefined);
          retry = setTimeout(() => void connect().catch(reconnectLater), 1000);
          retry.unref();
        };
        c.on('error', reconnect);
        c.on('end', reconnect);
        client = c;
        await c.connect();
        await c.query(`LISTEN "${channel.replace(/"/g, '')}"`);
      };
      const reconnectLater = (): void => {
        client = undefined;
        if (stopped) return;
        retry = setTimeout(() => void connect().catch(reconnectLater), 1000);
        retry.unref();
      };
      await connect();
      const handle = {
        stop: async () => {
          stopped = true;
          if (retry) clearTimeout(retry);
          await client?.end().catch(() => undefined);
        },
      };
      listeners.add(handle);
      return async () => {
        listeners.delete(handle);
        await handle.stop();
      };
    },
    async close() {
      await Promise.all([...listeners].map((l) => l.stop()));
      await knex.destroy();
      watchdog?.stop();
    },
  };
}

async function openEmbedded(dataDir: string): Promise<Database> {
  const { PGlite } = await import('@electric-sql/pglite');
  const { default: ClientPgLite } = await import('knex-pglite');
  const dir = path.join(dataDir, 'pgdata');
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const unlock = lockDataDir(dataDir);
  let pglite: Awaited<ReturnType<typeof PGlite.create>>;
  try {
    pglite = await PGlite.create(dir);
  } catch (err) {
    unlock();
    throw err;
  }
  const knex = knexFactory({
    client: ClientPgLite as unknown as typeof knexFactory.Client,
    dialect: 'postgres',
    // knex-pglite takes the live instance through the connection factory; it has no typings for it.
    connection: (() => ({ pglite })) as unknown as Knex.StaticConnectionConfig,
  });
  return {
    knex,
    kind: 'embedded',
    unlimited: (run) => run(),
    async listen(channel, onPayload) {
      const unsubscribe = await pglite.listen(channel, onPayload);
      return async () => unsubscribe();
    },
    async close() {
      await knex.destroy();
      if (!pglite.closed) await pglite.close();
      unlock();
    },
  };
}

export async function openDatabase(options: { databaseUrl: string | undefined; dataDir: string; poolMax?: number; log?: DatabaseLog; maintenance?: boolean }): Promise<Database> {
  return options.databaseUrl
    ? openPostgres(options.databaseUrl, options.poolMax ?? 16, options.log ?? { warn: (m) => process.stderr.write(`${m}\n`) }, options.maintenance ?? false)
    : openEmbedded(options.dataDir);
}
