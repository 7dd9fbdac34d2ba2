import { writeFile } from 'node:fs/promises';
import { parseArgs } from 'node:util';
import type { Knex } from 'knex';
import { emptinessWarnings, type ApplyOutcome } from '../policy/apply.ts';
import { formatDiff, type PolicyChange } from '../policy/diff.ts';
import { formatIssue, loadPolicyDir, loadPolicyFiles, readPolicyDir, type LoadOptions, type PolicyFile, type PolicyIssue } from '../policy/load.ts';
import { checkJwksUris } from '../policy/reachability.ts';
import { formatReport, scopeCreepReport } from '../policy/report.ts';
import type { PolicyDocument } from '../policy/model.ts';
import { currentVersion, everyClientRemoved } from '../policy/store.ts';
import {
  applyPolicyFilesWithDiff, diffPolicyFiles, exportVersion, listVersions, rollbackTo, RollbackError, type VersionSummary,
} from '../policy/versions.ts';
import { openCliDatabase, type CliDatabaseOptions } from './cli-database.ts';
import { deriveKeys } from '../tokens/kek.ts';
import { assertKeyEncryptionKey, ensureSigningKeys } from '../tokens/signing-keys.ts';
import { UsageError, type CliContext, cliActor } from './context.ts';
import { callServer, heldByServer, onDatabase as withDatabase } from './local-server.ts';

const USAGE = `usage: writ policy <command>

  validate DIR                   check policy files (and whether each jwks_uri answers) without applying them
  diff DIR                       show what apply would change: objects, fields, rule order, secrets (changed or not, never the value)
  apply DIR [-m MSG] [--allow-empty]
                                 set DIR's policy as a new version, all or nothing, and print what changed;
                                 --allow-empty: even if it defines no clients and so removes every one
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
  return cliActor();
}

function loadOptions(ctx: CliContext): LoadOptions {
  return { env: process.env, selfIssuer: ctx.config.issuer, maxTtl: ctx.config.maxTtl };
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
  printIssues(ctx, emptinessWarnings(result.document));
  const d = result.document;
  ctx.out(`policy in ${dir} is valid: ${d.issuers.length} issuer(s), ${d.clients.length} client(s), ${d.audiences.length} audience(s), ${d.rules.length} rule(s)`);
  return 0;
}

export async function policyDiff(ctx: CliContext, dir: string): Promise<number> {
  const read = await readPolicyDir(dir);
  if (!read.ok) {
    printIssues(ctx, read.errors);
    return 1;
  }
  const server = heldByServer(ctx);
  const outcome: DiffView = server
    ? diffFromServer(await callServer(server, 'POST', '/admin/v1/policy/diff', { files: read.files, env: referencedEnv(read.files) }))
    : await withDatabase(ctx, async (knex) => {
      await assertKeyEncryptionKey(knex, deriveKeys(ctx.config.kek).keyEncryption);
      const d = await diffPolicyFiles(knex, read.files, { ...loadOptions(ctx), secretKey: deriveKeys(ctx.config.kek).clientSecret });
      return d.ok ? { ok: true, base: d.base && { version: d.base.version, digest: d.base.digest }, changes: d.changes, warnings: d.warnings, clientsWithoutSecret: d.clientsWithoutSecret } : d;
    });
  printIssues(ctx, outcome.ok ? outcome.warnings : [...outcome.errors, ...outcome.warnings]);
  if (!outcome.ok) {
    ctx.err(`policy in ${dir} is invalid: ${outcome.errors.length} error(s)`);
    return 1;
  }
  ctx.out(outcome.base
    ? `policy in ${dir} compared with version ${outcome.base.version} (${outcome.base.digest.slice(0, 12)}):`
    : `policy in ${dir} compared with no policy (nothing applied yet):`);
  ctx.out(formatDiff(outcome.changes));
  if (outcome.clientsWithoutSecret.length > 0) {
    ctx.err(`warning: apply would fail: client(s) ${outcome.clientsWithoutSecret.join(', ')} authenticate with a client secret but neither the files nor the database have one`);
  }
  return 0;
}

type DiffView =
  | { ok: false; errors: PolicyIssue[]; warnings: PolicyIssue[] }
  | { ok: true; base: { version: number; digest: string } | undefined; changes: PolicyChange[]; warnings: PolicyIssue[]; clientsWithoutSecret: string[] };

function diffFromServer(res: ServerAnswer): DiffView {
  const b = res.body;
  if (res.status === 422) return { ok: false, errors: b.errors as PolicyIssue[], warnings: b.warnings as PolicyIssue[] };
  if (res.status !== 200) throw new Error(refusal('diff', res));
  return {
    ok: true,
    base: typeof b.base_version === 'number' ? { version: b.base_version, digest: String(b.base_digest) } : undefined,
    changes: b.changes as PolicyChange[],
    warnings: b.warnings as PolicyIssue[],
    clientsWithoutSecret: b.clients_without_secret as string[],
  };
}

type ServerAnswer = Awaited<ReturnType<typeof callServer>>;

function refusal(command: string, res: ServerAnswer): string {
  return `the running writ serve refused policy ${command}: ${String(res.body.error_description ?? `HTTP ${res.status}`)}`;
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

/**
 * Refuses (true) a policy that would remove every client the current policy defines, naming them:
 * a directory of comments validates, and applying it deletes every client's stored secret.
 */
function refuseRemovingEveryClient(ctx: CliContext, dir: string, current: { version: number; clients: ReadonlyArray<{ client_id: string }> } | undefined, next: PolicyDocument): boolean {
  const removed = everyClientRemoved(current, next);
  if (removed.length === 0) return false;
  const named = removed.length > 10 ? `${removed.slice(0, 10).join(', ')} and ${removed.length - 10} more` : removed.join(', ');
  printIssues(ctx, [{
    severity: 'error', path: '', code: 'removes_every_client',
    message: `policy in ${dir} defines no clients: applying it would remove all ${removed.length} client(s) of policy version ${current!.version} (${named}) and delete their stored secrets, which a rollback does not restore`,
  }]);
  ctx.err(`policy not applied: to remove every client, run writ policy apply --allow-empty ${dir}`);
  return true;
}

export async function policyApply(ctx: CliContext, dir: string, message: string, options: { showDiff?: boolean; allowEmpty?: boolean; database?: CliDatabaseOptions } = {}): Promise<number> {
  const read = await readPolicyDir(dir);
  if (!read.ok) {
    printIssues(ctx, read.errors);
    ctx.err('policy not applied: 1 error(s)');
    return 1;
  }
  const { files } = read;
  // Keys first: an unreachable jwks_uri is worth knowing before the apply, and never blocks it.
  const preview = loadPolicyFiles(files, loadOptions(ctx));
  if (!preview.ok) {
    // Refused before the database is opened: on a new database nothing, signing keys included,
    // is stored under this WRIT_KEK for a policy that does not apply.
    printIssues(ctx, [...preview.errors, ...preview.warnings]);
    ctx.err(`policy not applied: ${preview.errors.length} error(s)`);
    return 1;
  }
  printIssues(ctx, await checkJwksUris(preview.document, { timeoutMs: JWKS_CHECK_TIMEOUT_MS, files }));
  printIssues(ctx, emptinessWarnings(preview.document));
  const mayEmpty = options.allowEmpty === true || preview.document.clients.length > 0;

  let outcome: ApplyResponse;
  const server = heldByServer(ctx);
  if (server) {
    if (!mayEmpty) {
      const res = await callServer(server, 'GET', '/admin/v1/policy/clients');
      if (res.status !== 200) throw new Error(refusal('apply', res));
      const current = { version: Number(res.body.version), clients: res.body.clients as Array<{ client_id: string }> };
      if (refuseRemovingEveryClient(ctx, dir, current, preview.document)) return 1;
    }
    const response = await fetch(`${server.url}/admin/v1/local/policy/apply`, {
      method: 'POST',
      headers: { authorization: `Bearer ${server.token}`, 'content-type': 'application/json' },
      body: JSON.stringify({ files, env: referencedEnv(files), message, appliedBy: appliedBy(), allow_empty: options.allowEmpty === true }),
    });
    if (response.status !== 200 && response.status !== 422) {
      ctx.err(`the running writ serve (pid ${server.pid}) refused the apply: HTTP ${response.status}`);
      return 1;
    }
    outcome = await response.json() as ApplyResponse;
  } else {
    const db = await openCliDatabase(ctx, options.database ?? { creates: 'development' });
    try {
      // Read apart from the apply's own transaction, for a message naming what would go; the
      // apply checks again under its lock (keepSomeClient).
      if (!mayEmpty) {
        const current = await currentVersion(db.knex);
        if (refuseRemovingEveryClient(ctx, dir, current && { version: current.version, clients: current.document.clients }, preview.document)) return 1;
      }
      // Client secrets are hashed under a key derived from WRIT_KEK: only under the database's own,
      // which the first keys stored fix (generated here on a new database, as a server would).
      await ensureSigningKeys(db.knex, deriveKeys(ctx.config.kek).keyEncryption);
      outcome = await applyPolicyFilesWithDiff(db.knex, files, {
        ...loadOptions(ctx),
        appliedBy: appliedBy(),
        message,
        secretKey: deriveKeys(ctx.config.kek).clientSecret,
        keepSomeClient: !mayEmpty,
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
  ctx.out(outcome.unchanged
    ? `unchanged: policy version ${outcome.version} (${outcome.digest.slice(0, 12)}) stays in force; no version added`
    : `applied policy version ${outcome.version} (${outcome.digest.slice(0, 12)})`);
  return 0;
}

export async function policyExport(ctx: CliContext, options: { version?: number; out?: string }): Promise<number> {
  const server = heldByServer(ctx);
  let exported: { version: number; yaml: string } | undefined;
  if (server) {
    const res = await callServer(server, 'GET', `/admin/v1/policy/export${options.version === undefined ? '' : `?version=${options.version}`}`);
    if (res.status !== 200 && res.status !== 404) throw new Error(refusal('export', res));
    exported = res.status === 200 ? { version: Number(res.headers.get('x-writ-policy-version')), yaml: res.text } : undefined;
  } else {
    exported = await withDatabase(ctx, async (knex) => {
      const e = await exportVersion(knex, options.version);
      return e && { version: e.version.version, yaml: e.yaml };
    });
  }
  if (!exported) {
    ctx.err(options.version === undefined ? 'no policy has been applied yet' : `there is no policy version ${options.version}`);
    return 1;
  }
  if (options.out === undefined) {
    process.stdout.write(exported.yaml);
  } else {
    await writeFile(options.out, exported.yaml, { mode: 0o644 });
    ctx.err(`wrote policy version ${exported.version} to ${options.out}`);
  }
  return 0;
}

export async function policyHistory(ctx: CliContext, limit: number): Promise<number> {
  const server = heldByServer(ctx);
  let versions: VersionSummary[];
  if (server) {
    const res = await callServer(server, 'GET', `/admin/v1/policy/versions?limit=${limit}`);
    if (res.status !== 200) throw new Error(refusal('history', res));
    versions = (res.body.versions as Array<{ version: number; created_at: string; applied_by: string; message: string; digest: string }>)
      .map((v) => ({ version: v.version, createdAt: new Date(v.created_at), appliedBy: v.applied_by, message: v.message, digest: v.digest }));
  } else {
    versions = await withDatabase(ctx, (knex) => listVersions(knex, limit));
  }
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
}

export async function policyRollback(ctx: CliContext, target: number, message: string | undefined): Promise<number> {
  const server = heldByServer(ctx);
  let result: { version: number; digest: string; changes: PolicyChange[]; unchanged: boolean };
  try {
    if (server) {
      const res = await callServer(server, 'POST', '/admin/v1/policy/rollback', { version: target, ...(message !== undefined && { message }) });
      if (res.status === 404 || res.status === 422) throw new RollbackError(String(res.body.error_description));
      if (res.status !== 200) throw new Error(refusal('rollback', res));
      result = { version: Number(res.body.version), digest: String(res.body.digest), changes: res.body.changes as PolicyChange[], unchanged: res.body.unchanged === true };
    } else {
      result = await withDatabase(ctx, async (knex) => {
        const r = await rollbackTo(knex, target, {
          appliedBy: appliedBy(),
          message: message ?? `rollback to version ${target}`,
          secretKey: deriveKeys(ctx.config.kek).clientSecret,
          validate: { selfIssuer: ctx.config.issuer, maxTtl: ctx.config.maxTtl },
        });
        return { version: r.version.version, digest: r.version.digest, changes: r.changes, unchanged: r.unchanged };
      });
    }
  } catch (err) {
    if (!(err instanceof RollbackError)) throw err;
    ctx.err(`policy not rolled back: ${err.message}`);
    return 1;
  }
  if (result.unchanged) {
    ctx.out(`unchanged: version ${target}'s policy is the one in force (version ${result.version}); no version added`);
    return 0;
  }
  ctx.out(formatDiff(result.changes));
  ctx.out(`applied policy version ${result.version} (${result.digest.slice(0, 12)}): version ${target}'s policy; secrets unchanged`);
  return 0;
}

export async function policyReport(ctx: CliContext, days: number, json: boolean): Promise<number> {
  const server = heldByServer(ctx);
  if (server) {
    // The report reads the audit record at length; it has no endpoint of its own.
    ctx.err(`writ serve (pid ${server.pid}) holds the embedded database in ${ctx.config.dataDir}; `
      + 'to run "writ policy report", stop writ serve or use DATABASE_URL');
    return 1;
  }
  return withDatabase(ctx, async (knex) => {
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
      const { values, positionals } = parseArgs({ args, allowPositionals: true, options: { message: { type: 'string', short: 'm' }, 'allow-empty': { type: 'boolean' } } });
      return policyApply(ctx, onePositional(positionals, sub, 'directory'), values.message ?? '', { allowEmpty: values['allow-empty'] ?? false });
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
