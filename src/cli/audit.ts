import { readFile } from 'node:fs/promises';
import { parseArgs } from 'node:util';
import { checkpointsFromNdjson } from '../audit/chain.ts';
import { AuditQueryError, exportAudit, formatTraceTree, searchAudit, traceToken, type AuditEventView, type AuditSearch } from '../audit/trace.ts';
import { formatVerifyReport, verifyAuditChain } from '../audit/verify.ts';
import { retainAudit, RetentionError } from '../audit/retention.ts';
import type { Database } from '../store/db.ts';
import { openCliDatabase } from './cli-database.ts';
import { deriveKeys } from '../tokens/kek.ts';
import { assertKeyEncryptionKey } from '../tokens/signing-keys.ts';
import { auditOpen } from './audit-open.ts';
import { UsageError, type CliContext, cliActor } from './context.ts';
import { heldByServer } from './local-server.ts';

/**
 * Opens the database the way `writ policy apply` does. On the embedded database only one
 * process may hold the data dir: while a `writ serve` runs there, these commands need it
 * stopped (or DATABASE_URL); undefined is returned after saying so.
 */
async function withDatabase<T>(ctx: CliContext, command: string, run: (db: Database) => Promise<T>, options: { maintenance?: boolean } = {}): Promise<T | undefined> {
  const server = heldByServer(ctx);
  if (server) {
    ctx.err(`writ audit ${command} reads the database directly, and the embedded database in ${ctx.config.dataDir} is held by a running writ serve (pid ${server.pid}).`);
    ctx.err('Stop that server and run the command again, or run Writ on PostgreSQL (DATABASE_URL) so both can use it at once.');
    return undefined;
  }
  const db = await openCliDatabase(ctx, { poolMax: 2, maintenance: options.maintenance ?? false });
  try {
    return await run(db);
  } finally {
    await db.close();
  }
}

function parseTime(name: string, value: string | undefined): Date | undefined {
  if (value === undefined) return undefined;
  const d = new Date(value);
  if (!/^\d{4}-\d{2}-\d{2}/.test(value) || Number.isNaN(d.getTime())) throw new UsageError(`--${name} must be an ISO 8601 time, e.g. 2026-11-01 or 2026-11-01T12:00:00Z`);
  return d;
}

async function verify(ctx: CliContext, args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({ args, allowPositionals: true, options: {
    json: { type: 'boolean' },
    checkpoints: { type: 'string' },
  } });
  if (positionals.length > 0) throw new UsageError('audit verify takes no arguments');
  const externalCheckpoints = values.checkpoints ? checkpointsFromNdjson(await readFile(values.checkpoints, 'utf8')) : undefined;
  // Checkpoints signed under another key would all read as forged: refuse that key outright.
  const report = await withDatabase(ctx, 'verify', async (db) => {
    await assertKeyEncryptionKey(db.knex, deriveKeys(ctx.config.kek).keyEncryption);
    return verifyAuditChain(db.knex, deriveKeys(ctx.config.kek).auditCheckpoint, externalCheckpoints ? { externalCheckpoints } : {});
  });
  if (!report) return 1;
  if (values.json) ctx.out(JSON.stringify(report, null, 2));
  else for (const line of formatVerifyReport(report)) ctx.out(line);
  return report.ok ? 0 : 1;
}

async function trace(ctx: CliContext, args: string[]): Promise<number> {
  // A jti is 24 base64url characters, so one in 32 begins with '-': parseArgs would take it for an
  // option, so the only option is matched by hand and everything else is the jti.
  const json = args.includes('--json');
  const positionals = args.filter((a) => a !== '--json' && a !== '--');
  if (positionals.length !== 1) throw new UsageError('audit trace needs exactly one jti');
  const jti = positionals[0]!;
  const found = await withDatabase(ctx, 'trace', async (db) => ({ trace: await traceToken(db.knex, jti) }));
  if (!found) return 1;
  if (!found.trace) {
    ctx.err(`no token with jti ${jti} was issued by this Writ`);
    return 1;
  }
  ctx.out(json ? JSON.stringify(found.trace, null, 2) : formatTraceTree(found.trace));
  return 0;
}

function eventLine(e: AuditEventView): string {
  const parts = [`#${e.id}`, e.occurred_at.replace(/\.(\d{3})\d{3}Z$/, '.$1Z'), e.type, e.outcome];
  if (e.reason) parts.push(`reason=${e.reason}`);
  if (e.client_id) parts.push(`client=${e.client_id}`);
  if (e.audience) parts.push(`aud=${e.audience}`);
  if (e.subject) parts.push(`subject=${e.subject}`);
  if (e.jti) parts.push(`jti=${e.jti}`);
  if (e.parent_jti) parts.push(`parent=${e.parent_jti}`);
  if (e.task_id) parts.push(`task=${e.task_id}`);
  if (e.request_id) parts.push(`request=${e.request_id}`);
  return parts.join('  ');
}

async function search(ctx: CliContext, args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({ args, allowPositionals: true, options: {
    subject: { type: 'string' },
    actor: { type: 'string' },
    audience: { type: 'string' },
    task: { type: 'string' },
    type: { type: 'string' },
    since: { type: 'string' },
    until: { type: 'string' },
    limit: { type: 'string' },
    cursor: { type: 'string' },
    json: { type: 'boolean' },
  } });
  if (positionals.length > 0) throw new UsageError('audit search takes options only');
  const q: AuditSearch = {};
  if (values.subject !== undefined) {
    if (!values.subject.includes('|')) throw new UsageError('--subject is ISSUER|SUB, e.g. "https://idp.example.com|alice"');
    q.subject = values.subject;
  }
  if (values.actor !== undefined) q.actor = values.actor;
  if (values.audience !== undefined) q.audience = values.audience;
  if (values.task !== undefined) q.taskId = values.task;
  if (values.type !== undefined) q.type = values.type;
  const since = parseTime('since', values.since);
  const until = parseTime('until', values.until);
  if (since) q.since = since;
  if (until) q.until = until;
  if (values.limit !== undefined) {
    if (!/^\d+$/.test(values.limit)) throw new UsageError('--limit must be a number from 1 to 500');
    q.limit = Number(values.limit);
  }
  if (values.cursor !== undefined) q.cursor = values.cursor;
  let page;
  try {
    page = await withDatabase(ctx, 'search', (db) => searchAudit(db.knex, q));
  } catch (err) {
    if (err instanceof AuditQueryError) throw new UsageError(err.message);
    throw err;
  }
  if (!page) return 1;
  if (values.json) {
    ctx.out(JSON.stringify(page, null, 2));
    return 0;
  }
  for (const e of page.events) ctx.out(eventLine(e));
  if (page.events.length === 0) ctx.out('no matching events');
  if (page.next_cursor) ctx.out(`more: --cursor ${page.next_cursor}`);
  return 0;
}

async function exportCommand(ctx: CliContext, args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({ args, allowPositionals: true, options: { since: { type: 'string' } } });
  if (positionals.length > 0) throw new UsageError('audit export takes --since only');
  if (values.since === undefined) throw new UsageError('audit export needs --since ISO (e.g. --since 2026-11-01)');
  const since = parseTime('since', values.since)!;
  const write = (line: string): void | Promise<void> => {
    if (process.stdout.write(`${line}\n`)) return undefined;
    return new Promise((resolve) => process.stdout.once('drain', () => resolve()));
  };
  const done = await withDatabase(ctx, 'export', (db) => exportAudit(db.knex, since, write));
  if (!done) return 1;
  ctx.err(`exported ${done.events} event(s) and ${done.checkpoints} checkpoint(s)`);
  return 0;
}

/**
 * `writ audit retain --before YYYY-MM --archive DIR`: archives and drops every monthly
 * partition that ended by the start of that month (never the current one).
 */
async function retain(ctx: CliContext, args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({ args, allowPositionals: true, options: { before: { type: 'string' }, archive: { type: 'string' } } });
  if (positionals.length > 0) throw new UsageError('audit retain takes --before and --archive only');
  const month = /^(\d{4})-(\d{2})$/.exec(values.before ?? '');
  if (!month || Number(month[2]) < 1 || Number(month[2]) > 12) throw new UsageError('audit retain needs --before YYYY-MM: months that ended by the start of that month go');
  if (!values.archive) throw new UsageError('audit retain needs --archive DIR: each month is written there before it leaves the database');
  const before = new Date(Date.UTC(Number(month[1]), Number(month[2]) - 1, 1));
  try {
    const done = await withDatabase(ctx, 'retain', async (db) => {
      // Its marker is signed under a key derived from WRIT_KEK: never under one not yet checked.
      await assertKeyEncryptionKey(db.knex, deriveKeys(ctx.config.kek).keyEncryption, { requireKeys: true });
      return retainAudit(db.knex, deriveKeys(ctx.config.kek).auditCheckpoint, { before, archiveDir: values.archive!, by: cliActor() });
    }, { maintenance: true });
    if (!done) return 1;
    for (const r of done) ctx.out(`${r.partition}: ${r.events} event(s) archived to ${r.archive} (sha256 ${r.archiveSha256}) and dropped`);
    if (done.length === 0) ctx.out(`no audit partition ended by ${before.toISOString().slice(0, 7)}`);
    return 0;
  } catch (err) {
    if (!(err instanceof RetentionError) && (err as NodeJS.ErrnoException).code !== 'EEXIST' && (err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    ctx.err(`writ: audit retain stopped: ${(err as Error).message}`);
    return 1;
  }
}

/** `writ audit <verify|trace|search|export|retain|open> …` */
export async function auditCommand(ctx: CliContext, argv: string[]): Promise<number> {
  const [sub, ...args] = argv;
  switch (sub) {
    case 'verify': return verify(ctx, args);
    case 'trace': return trace(ctx, args);
    case 'search': return search(ctx, args);
    case 'export': return exportCommand(ctx, args);
    case 'retain': return retain(ctx, args);
    case 'open': return auditOpen(ctx, args);
    default: throw new UsageError(`unknown audit command "${sub ?? ''}" (verify, trace, search, export, retain, open)`);
  }
}
