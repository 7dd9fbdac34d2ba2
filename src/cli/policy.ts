import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { parseArgs } from 'node:util';
import type { Knex } from 'knex';
import type { ApplyOutcome } from '../policy/apply.ts';
import { diffPolicies, formatDiff, type PolicyChange } from '../policy/diff.ts';
import { formatIssue, loadPolicyDir, loadPolicyFiles, readPolicyDir, type LoadOptions, type PolicyFile, type PolicyIssue } from '../policy/load.ts';
import { checkJwksUris } from '../policy/reachability.ts';
import { formatReport, scopeCreepReport } from '../policy/report.ts';
import { currentVersion } from '../policy/store.ts';
import {
  applyPolicyFilesWithDiff, clientsWithoutSecret, exportYaml, getVersion, listVersions, rollbackTo, RollbackError,
  secretChanges,
} from '../policy/versions.ts';
import { migrate, openDatabase } from '../store/db.ts';
import { deriveKeys } from '../tokens/kek.ts';
import { UsageError, type CliContext } from './context.ts';
import { runningServer } from './local-server.ts';

const USAGE = `usage: writ policy <command>

  validate DIR                   check policy files (and whether each jwks_uri answers) without applying them
  diff DIR                       show what apply would change: objects, fields, rule order, secrets (changed or not, never the value)
  apply DIR [-m MSG]             set DIR's policy as a new version, all or nothing, and print what changed
  export [--version N] [--out FILE]
                                 the current (or version N's) policy as YAML, without secrets
  history [--limit N]            versions, newest first: who applied each and why
  rollback VERSION [-m MSG]      a new version equal to VERSION (secrets are never restored)
  report --days N [--json]       rules and scopes unused in N days, agents with rising denials,
                                 and who may obtain which scope for which tool`;

/** How long `validate` and `apply` wait for each jwks_uri. */
const JWKS_CHECK_TIMEOUT_MS = 5000;

function printIssues(ctx: CliContext, issues: readonly PolicyIssue[]): void {
  for (const issue of issues) ctx.err(formatIssue(issue));
}

function appliedBy(): string {
  return `cli:${process.env.USER ?? 'unknown'}`;
}

function loadOptions(ctx: CliContext): LoadOptions {
  return { env: process.env, selfIssuer: ctx.config.issuer, maxTtl: ctx.config.maxTtl };
}



/**
 * On the embedded database while `writ serve` holds it, only the server may open it; commands
 * without a local endpoint say so (and the caller exits 1).
 */
function heldByServer(ctx: CliContext, command: string): boolean {
  const server = ctx.config.databaseUrl ? undefined : runningServer(ctx.config.dataDir);
  if (!server) return false;
  ctx.err(`writ serve (pid ${server.pid}) holds the embedded database in ${ctx.config.dataDir}; `
    + `to run "writ policy ${command}", stop writ serve or use DATABASE_URL`);
  return true;
}

/** Runs `body` on the database (migrated first, as apply does). */
async function withDatabase(ctx: CliContext, command: string, body: (knex: Knex) => Promise<number>): Promise<number> {
  if (heldByServer(ctx, command)) return 1;
  const db = await openDatabase({ databaseUrl: ctx.config.databaseUrl, dataDir: ctx.config.dataDir });
  try {
    await migrate(db);
    return await body(db.knex);
  } finally {
    await db.close();
  }
}

export async function policyValidate(ctx: CliContext, dir: string): Promise<number> {
  const result = await loadPolicyDir(dir, loadOptions(ctx));
  printIssues(ctx, result.ok ? result.warnings : [...result.errors, ...result.warnings]);
  if (!result.ok) {
    ctx.err(`policy in ${dir} is invalid: ${result.errors.length} error(s)`);
    return 1;
  }
  const read = await readPolicyDir(dir);
  printIssues(ctx, await checkJwksUris(result.document, { timeoutMs: JWKS_CHECK_TIMEOUT_MS, ...(read.ok && { files: read.files }) }));
  const d = result.document;
  ctx.out(`policy in ${dir} is valid: ${d.issuers.length} issuer(s), ${d.clients.length} client(s), ${d.audiences.length} audience(s), ${d.rules.length} rule(s)`);
  return 0;
}

export async function policyDiff(ctx: CliContext, dir: string): Promise<number> {
  if (heldByServer(ctx, 'diff')) return 1;
  const read = await readPolicyDir(dir);
  if (!read.ok) {
    printIssues(ctx, read.errors);
    return 1;
  }
  const loaded = loadPolicyFiles(read.files, loadOptions(ctx));
  printIssues(ctx, loaded.ok ? loaded.warnings : [...loaded.errors, ...loaded.warnings]);
  if (!loaded.ok) {
    ctx.err(`policy in ${dir} is invalid: ${loaded.errors.length} error(s)`);
    return 1;
  }
  return withDatabase(ctx, 'diff', async (knex) => {
    const current = await currentVersion(knex);
    const status = await secretChanges(knex, deriveKeys(ctx.config.kek).clientSecret, loaded.document, loaded.secrets);
    const changes = diffPolicies(current?.document, loaded.document, status);
    ctx.out(current
      ? `policy in ${dir} compared with version ${current.version} (${current.digest.slice(0, 12)}):`
      : `policy in ${dir} compared with no policy (nothing applied yet):`);
    ctx.out(formatDiff(changes));
    const missing = await clientsWithoutSecret(knex, loaded.document, loaded.secrets);
    if (missing.length > 0) {
      ctx.err(`warning: apply would fail: client(s) ${missing.join(', ')} authenticate with a client secret but neither the files nor the database have one`);
    }
    return 0;
  });
}

/** Only the variables the files reference as `${NAME}` travel to the server. */
function referencedEnv(files: PolicyFile[]): Record<string, string> {
  const env: Record<string, string> = {};
  for (const { text } of files) {
    for (const [, name] of text.matchAll(/\$\{([A-Z_][A-Z0-9_]*)\}/g)) {
      const value = process.env[name!];
      if (value !== undefined) env[name!] = value;
    }
  }
  return env;
}

/** What an apply answers; a running server's answer may lack the diff. */
type ApplyResponse = ApplyOutcome & { changes?: PolicyChange[] };

export async function policyApply(ctx: CliContext, dir: string, message: string, options: { showDiff?: boolean } = {}): Promise<number> {
  const read = await readPolicyDir(dir);
  if (!read.ok) {
    printIssues(ctx, read.errors);
    ctx.err('policy not applied: 1 error(s)');
    return 1;
  }
  const { files } = read;
  // Keys first: an unreachable jwks_uri is worth knowing before the apply, and never blocks it.
  const preview = loadPolicyFiles(files, loadOptions(ctx));
  if (preview.ok) printIssues(ctx, await checkJwksUris(preview.document, { timeoutMs: JWKS_CHECK_TIMEOUT_MS, files }));

  let outcome: ApplyResponse;
  const server = ctx.config.databaseUrl ? undefined : runningServer(ctx.config.dataDir);
  if (server) {
    const response = await fetch(`${server.url}/admin/v1/local/policy/apply`, {
      method: 'POST',
      headers: { authorization: `Bearer ${server.token}`, 'content-type': 'application/json' },
      body: JSON.stringify({ files, env: referencedEnv(files), message, appliedBy: appliedBy() }),
    });
    if (response.status !== 200 && response.status !== 422) {
      ctx.err(`the running writ serve (pid ${server.pid}) refused the apply: HTTP ${response.status}`);
      return 1;
    }
    outcome = await response.json() as ApplyResponse;
  } else {
    const db = await openDatabase({ databaseUrl: ctx.config.databaseUrl, dataDir: ctx.config.dataDir });
    try {
      await migrate(db);
      outcome = await applyPolicyFilesWithDiff(db.knex, files, {
        ...loadOptions(ctx),
        appliedBy: appliedBy(),
        message,
        secretKey: deriveKeys(ctx.config.kek).clientSecret,
      });
    } finally {
      await db.close();
    }
  }
  printIssues(ctx, outcome.ok ? outcome.warnings : [...outcome.errors, ...outcome.warnings]);
  if (!outcome.ok) {
    ctx.err(`policy not applied: ${outcome.errors.length} error(s)`);
    return 1;
  }
  if (options.showDiff !== false) ctx.out(outcome.changes ? formatDiff(outcome.changes) : '(the running writ serve applied the policy but did not report what changed)');
  ctx.out(`applied policy version ${outcome.version} (${outcome.digest.slice(0, 12)})`);
  return 0;
}

export async function policyExport(ctx: CliContext, options: { version?: number; out?: string }): Promise<number> {
  return withDatabase(ctx, 'export', async (knex) => {
    const stored = options.version === undefined ? await currentVersion(knex) : await getVersion(knex, options.version);
    if (!stored) {
      ctx.err(options.version === undefined ? 'no policy has been applied yet' : `there is no policy version ${options.version}`);
      return 1;
    }
    const yaml = exportYaml(stored.document, {
      header: [
        `Writ policy version ${stored.version} (sha256 ${stored.digest}), applied ${stored.createdAt.toISOString()} by ${stored.appliedBy}`,
        'Secrets are never exported: clients have no `secret` here, and applying this file keeps their current ones.',
      ].join('\n'),
    });
    if (options.out === undefined) {
      process.stdout.write(yaml);
    } else {
      await writeFile(options.out, yaml, { mode: 0o644 });
      ctx.err(`wrote policy version ${stored.version} to ${options.out}`);
    }
    return 0;
  });
}

export async function policyHistory(ctx: CliContext, limit: number): Promise<number> {
  return withDatabase(ctx, 'history', async (knex) => {
    const versions = await listVersions(knex, limit);
    if (versions.length === 0) {
      ctx.out('no policy has been applied yet');
      return 0;
    }
    ctx.out(['VERSION', 'APPLIED AT', 'APPLIED BY', 'DIGEST', 'MESSAGE'].join('\t'));
    for (const v of versions) {
      // One line per version, whatever the message holds.
      const message = JSON.stringify(v.message).slice(1, -1);
      ctx.out([String(v.version), v.createdAt.toISOString(), v.appliedBy, v.digest.slice(0, 12), message].join('\t'));
    }
    return 0;
  });
}

export async function policyRollback(ctx: CliContext, target: number, message: string | undefined): Promise<number> {
  return withDatabase(ctx, 'rollback', async (knex) => {
    try {
      const result = await rollbackTo(knex, target, {
        appliedBy: appliedBy(),
        message: message ?? `rollback to version ${target}`,
        secretKey: deriveKeys(ctx.config.kek).clientSecret,
        validate: { selfIssuer: ctx.config.issuer, maxTtl: ctx.config.maxTtl },
      });
      ctx.out(formatDiff(result.changes));
      ctx.out(`applied policy version ${result.version.version} (${result.version.digest.slice(0, 12)}): version ${target}'s policy; secrets unchanged`);
      return 0;
    } catch (err) {
      if (!(err instanceof RollbackError)) throw err;
      ctx.err(`policy not rolled back: ${err.message}`);
      return 1;
    }
  });
}

export async function policyReport(ctx: CliContext, days: number, json: boolean): Promise<number> {
  return withDatabase(ctx, 'report', async (knex) => {
    const current = await currentVersion(knex);
    if (!current) {
      ctx.err('no policy has been applied yet');
      return 1;
    }
    const report = await scopeCreepReport(knex, current.document, { days, now: new Date(), maxTtl: ctx.config.maxTtl });
    if (json) ctx.out(JSON.stringify({ policyVersion: current.version, ...report }, null, 2));
    else ctx.out(formatReport(report, { policyVersion: current.version }));
    return 0;
  });
}

function positiveInteger(value: string | undefined, what: string): number | undefined {
  if (value === undefined) return undefined;
  if (!/^[1-9][0-9]{0,8}$/.test(value)) throw new UsageError(`${what} must be a positive integer`);
  return Number(value);
}

function onePositional(positionals: string[], sub: string, what: string): string {
  if (positionals.length !== 1) throw new UsageError(`policy ${sub} needs exactly one ${what}`);
  return positionals[0]!;
}

/** `writ policy <validate|diff|apply|export|history|rollback|report> …` */
export async function policyCommand(ctx: CliContext, argv: string[]): Promise<number> {
  const [sub, ...args] = argv;
  switch (sub) {
    case 'validate': {
      const { positionals } = parseArgs({ args, allowPositionals: true, options: {} });
      return policyValidate(ctx, onePositional(positionals, sub, 'directory'));
    }
    case 'diff': {
      const { positionals } = parseArgs({ args, allowPositionals: true, options: {} });
      return policyDiff(ctx, onePositional(positionals, sub, 'directory'));
    }
    case 'apply': {
      const { values, positionals } = parseArgs({ args, allowPositionals: true, options: { message: { type: 'string', short: 'm' } } });
      return policyApply(ctx, onePositional(positionals, sub, 'directory'), values.message ?? '');
    }
    case 'export': {
      const { values, positionals } = parseArgs({ args, allowPositionals: true, options: { version: { type: 'string' }, out: { type: 'string', short: 'o' } } });
      if (positionals.length > 0) throw new UsageError('policy export takes no arguments besides --version and --out');
      const version = positiveInteger(values.version, '--version');
      return policyExport(ctx, { ...(version !== undefined && { version }), ...(values.out !== undefined && { out: values.out }) });
    }
    case 'history': {
      const { values, positionals } = parseArgs({ args, allowPositionals: true, options: { limit: { type: 'string', short: 'n' } } });
      if (positionals.length > 0) throw new UsageError('policy history takes no arguments besides --limit');
      return policyHistory(ctx, positiveInteger(values.limit, '--limit') ?? 20);
    }
    case 'rollback': {
      const { values, positionals } = parseArgs({ args, allowPositionals: true, options: { message: { type: 'string', short: 'm' } } });
      const version = positiveInteger(onePositional(positionals, sub, 'version'), 'VERSION')!;
      return policyRollback(ctx, version, values.message);
    }
    case 'report': {
      const { values, positionals } = parseArgs({ args, allowPositionals: true, options: { days: { type: 'string' }, json: { type: 'boolean' } } });
      if (positionals.length > 0) throw new UsageError('policy report takes no arguments besides --days and --json');
      const days = positiveInteger(values.days, '--days');
      if (days === undefined) throw new UsageError('policy report needs --days N');
      return policyReport(ctx, days, values.json ?? false);
    }
    case undefined:
    case 'help':
    case '--help':
    case '-h':
      ctx.out(USAGE);
      return sub === undefined ? 2 : 0;
    default:
      throw new UsageError(`unknown policy command "${sub}"`);
  }
}
