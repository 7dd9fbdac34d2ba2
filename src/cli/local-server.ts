import { randomBytes } from 'node:crypto';
import { readFileSync, rmSync, writeFileSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import type { Knex } from 'knex';
import { CLI_USER_HEADER } from '../admin/auth.ts';
import type { CliContext } from './context.ts';
import { cliActor } from './context.ts';
import { openCliDatabase, type CliDatabaseOptions } from './cli-database.ts';

/**
 * On the embedded database only one process may open the data dir. `writ serve` records
 * itself here with a local admin credential (file mode 0600), and the CLI talks to it through
 * the admin API instead of opening the database (docs/DESIGN.md §8).
 */
export interface LocalServer {
  pid: number;
  url: string;
  token: string;
}

const FILE = 'serve.json';

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** The running server holding this data dir, if any; a stale record is removed. */
export function runningServer(dataDir: string): LocalServer | undefined {
  const file = path.join(dataDir, FILE);
  let record: LocalServer;
  try {
    record = JSON.parse(readFileSync(file, 'utf8')) as LocalServer;
  } catch {
    return undefined;
  }
  if (record.pid !== process.pid && isAlive(record.pid)) return record;
  if (record.pid !== process.pid) rmSync(file, { force: true });
  return undefined;
}

export function claimDataDir(dataDir: string, url: string): LocalServer {
  const existing = runningServer(dataDir);
  if (existing) throw new Error(`another writ serve (pid ${existing.pid}) holds ${dataDir}`);
  mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  const record: LocalServer = { pid: process.pid, url, token: randomBytes(32).toString('base64url') };
  writeFileSync(path.join(dataDir, FILE), JSON.stringify(record), { mode: 0o600 });
  return record;
}

export function releaseDataDir(dataDir: string): void {
  const file = path.join(dataDir, FILE);
  try {
    const record = JSON.parse(readFileSync(file, 'utf8')) as LocalServer;
    if (record.pid === process.pid) rmSync(file, { force: true });
  } catch {
    // Nothing to release.
  }
}

/**
 * Runs `direct` on the database, or — on the embedded database while `writ serve` holds it —
 * sends the request to the server through its local credential.
 */
export async function onDatabaseOrServer<T>(ctx: CliContext, direct: (knex: Knex) => Promise<T>, viaServer: (server: LocalServer) => Promise<T>, options: CliDatabaseOptions = {}): Promise<T> {
  const server = heldByServer(ctx);
  return server ? viaServer(server) : onDatabase(ctx, direct, options);
}

/** The `writ serve` holding the embedded database, if any: only it may open the database then. */
export function heldByServer(ctx: CliContext): LocalServer | undefined {
  return ctx.config.databaseUrl ? undefined : runningServer(ctx.config.dataDir);
}

/** Runs `direct` on the database, migrated first. */
export async function onDatabase<T>(ctx: CliContext, direct: (knex: Knex) => Promise<T>, options: CliDatabaseOptions = {}): Promise<T> {
  const db = await openCliDatabase(ctx, options);
  try {
    return await direct(db.knex);
  } finally {
    await db.close();
  }
}

/** One admin API call to the running server, with the local credential. */
export async function callServer(server: LocalServer, method: 'GET' | 'POST', path: string, body?: unknown): Promise<{ status: number; body: Record<string, unknown>; text: string; headers: Headers }> {
  let response: Response;
  try {
    response = await fetch(`${server.url}${path}`, {
      method,
      headers: {
        authorization: `Bearer ${server.token}`,
        [CLI_USER_HEADER]: cliActor(),
        ...(body === undefined ? {} : { 'content-type': 'application/json' }),
      },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    });
  } catch (err) {
    throw new Error(`writ serve (pid ${server.pid}) holds the embedded database but does not answer at ${server.url}: ${(err as Error).message}`);
  }
  const text = await response.text();
  let parsed: Record<string, unknown> = {};
  try {
    parsed = JSON.parse(text) as Record<string, unknown>;
  } catch {
    // Not JSON (an export is YAML).
  }
  return { status: response.status, body: parsed, text, headers: response.headers };
}
