import { readFile, readdir } from 'node:fs/promises';
import path from 'node:path';
import { applyPolicyFiles, type ApplyOutcome } from '../policy/apply.ts';
import { formatIssue, loadPolicyDir, type PolicyFile, type PolicyIssue } from '../policy/load.ts';
import { deriveKeys } from '../tokens/kek.ts';
import { migrate, openDatabase } from '../store/db.ts';
import { parseArgs } from 'node:util';
import { UsageError, type CliContext } from './context.ts';
import { runningServer } from './local-server.ts';

function printIssues(ctx: CliContext, issues: readonly PolicyIssue[]): void {
  for (const issue of issues) ctx.err(formatIssue(issue));
}

export async function policyValidate(ctx: CliContext, dir: string): Promise<number> {
  const result = await loadPolicyDir(dir, { env: process.env, selfIssuer: ctx.config.issuer, maxTtl: ctx.config.maxTtl });
  printIssues(ctx, result.ok ? result.warnings : [...result.errors, ...result.warnings]);
  if (!result.ok) {
    ctx.err(`policy in ${dir} is invalid: ${result.errors.length} error(s)`);
    return 1;
  }
  const d = result.document;
  ctx.out(`policy in ${dir} is valid: ${d.issuers.length} issuer(s), ${d.clients.length} client(s), ${d.audiences.length} audience(s), ${d.rules.length} rule(s)`);
  return 0;
}

/** The same files `loadPolicyDir` reads, as text, for sending to a running server. */
async function readPolicyFiles(dir: string): Promise<PolicyFile[]> {
  const names = (await readdir(dir)).filter((n) => !n.startsWith('.') && /\.ya?ml$/.test(n)).sort();
  return Promise.all(names.map(async (name) => ({ name, text: await readFile(path.join(dir, name), 'utf8') })));
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

export async function policyApply(ctx: CliContext, dir: string, message: string): Promise<number> {
  const appliedBy = `cli:${process.env.USER ?? 'unknown'}`;
  let outcome: ApplyOutcome;
  const server = ctx.config.databaseUrl ? undefined : runningServer(ctx.config.dataDir);
  if (server) {
    const files = await readPolicyFiles(dir);
    const response = await fetch(`${server.url}/admin/v1/local/policy/apply`, {
      method: 'POST',
      headers: { authorization: `Bearer ${server.token}`, 'content-type': 'application/json' },
      body: JSON.stringify({ files, env: referencedEnv(files), message, appliedBy }),
    });
    if (response.status !== 200 && response.status !== 422) {
      ctx.err(`the running writ serve (pid ${server.pid}) refused the apply: HTTP ${response.status}`);
      return 1;
    }
    outcome = await response.json() as ApplyOutcome;
  } else {
    const db = await openDatabase({ databaseUrl: ctx.config.databaseUrl, dataDir: ctx.config.dataDir });
    try {
      await migrate(db);
      const files = await readPolicyFiles(dir);
      outcome = await applyPolicyFiles(db.knex, files, {
        env: process.env,
        selfIssuer: ctx.config.issuer,
        maxTtl: ctx.config.maxTtl,
        appliedBy,
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
  ctx.out(`applied policy version ${outcome.version} (${outcome.digest.slice(0, 12)})`);
  return 0;
}

/** `writ policy <validate|apply> …` */
export async function policyCommand(ctx: CliContext, argv: string[]): Promise<number> {
  const [sub, ...args] = argv;
  const { values, positionals } = parseArgs({ args, allowPositionals: true, options: { message: { type: 'string', short: 'm' } } });
  if (positionals.length !== 1) throw new UsageError(`policy ${sub ?? ''} needs exactly one directory`);
  if (sub === 'validate') return policyValidate(ctx, positionals[0]!);
  if (sub === 'apply') return policyApply(ctx, positionals[0]!, values.message ?? '');
  throw new UsageError(`unknown policy command "${sub ?? ''}"`);
}
