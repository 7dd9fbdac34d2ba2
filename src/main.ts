#!/usr/bin/env node
import cluster from 'node:cluster';
import { parseArgs } from 'node:util';
import { ConfigError } from './config.ts';
import { cliContext, UsageError } from './cli/context.ts';
import { databaseFailure } from './cli/database-error.ts';
import { demo } from './cli/demo.ts';
import { adminCommand, revokeCommand } from './cli/admin.ts';
import { auditCommand } from './cli/audit.ts';
import { keysCommand } from './cli/keys.ts';
import { dbCommand } from './cli/db.ts';
import { policyCommand } from './cli/policy.ts';
import { migrateCommand, serve } from './cli/serve.ts';

const USAGE = `usage: writ <command>

  serve [--apply DIR]        start Writ (migrates first; optionally applies a policy directory)
  migrate                    apply database migrations
  db grants [--role R] [--apply]
                             the least privileges of the role Writ serves as (PostgreSQL)
  db issuer [--set URL]      the issuer the database serves (every instance's WRIT_ISSUER);
                             --set moves it to another, as the owner of the tables
  policy validate DIR        check policy files without applying them
  policy apply DIR [-m MSG]  set DIR's policy as a new version
  policy diff|export|history|rollback|report   see writ policy help
  revoke --client ID | --subject ISS|SUB | --issuer ISS | --rule ID [--before TIME]
                             kill switch: revoke every token issued before TIME (default now)
  admin bootstrap [--client-id ID] [--scope S]...
                             create an admin client outside policy (prints its secret once)
  keys list [--json]         Writ's signing keys and their schedule
  keys rotate [--alg A]... [--activate-in 24h | --now]
                             publish a new key now that signs from 24h on (default)
  keys remove KID            emergency: withdraw a key; an active one is replaced at once
  audit verify|trace|search|export|open           the tamper-evident record; open prints a one-time
                             login URL for the chain view
  audit retain --before YYYY-MM --archive DIR
                             archive, then drop, the months of audit events that ended by then
  demo [--exit]              start Writ on the embedded database with the example policy and
                             walk a delegation chain through it (--exit: stop afterwards)

Configuration comes from the environment: DATABASE_URL, WRIT_DATA_DIR, WRIT_ISSUER, PORT, HOST,
WRIT_ENV, WRIT_KEK, WRIT_TRUST_PROXY, WRIT_MAX_TTL, WRIT_METRICS_ADDR, LOG_LEVEL, WRIT_WORKERS.`;

async function run(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (command === undefined || command === 'help' || command === '--help' || command === '-h') {
    process.stdout.write(`${USAGE}\n`);
    return command === undefined ? 2 : 0;
  }
  const ctx = cliContext();
  switch (command) {
    case 'serve': {
      const { values } = parseArgs({ args: rest, options: { apply: { type: 'string' } } });
      return serve(ctx, values.apply ? { applyDir: values.apply } : {});
    }
    case 'migrate':
      parseArgs({ args: rest, options: {} });
      return migrateCommand(ctx);
    case 'policy':
      return policyCommand(ctx, rest);
    case 'audit':
      return auditCommand(ctx, rest);
    case 'revoke':
      return revokeCommand(ctx, rest);
    case 'admin':
      return adminCommand(ctx, rest);
    case 'keys':
      return keysCommand(ctx, rest);
    case 'db':
      return dbCommand(ctx, rest);
    case 'demo': {
      const { values } = parseArgs({ args: rest, options: { exit: { type: 'boolean' } } });
      return demo(ctx, { exit: values.exit ?? false });
    }
    default:
      throw new UsageError(`unknown command "${command}"`);
  }
}

run(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    if (err instanceof UsageError || (err as { code?: string }).code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION') {
      process.stderr.write(`writ: ${(err as Error).message}\n\n${USAGE}\n`);
      process.exitCode = 2;
    } else if (err instanceof ConfigError) {
      process.stderr.write(`writ: configuration error: ${err.message}\n`);
      process.exitCode = 78;
    } else if (databaseFailure(err, process.env.DATABASE_URL || undefined)) {
      const failure = databaseFailure(err, process.env.DATABASE_URL || undefined)!;
      process.stderr.write(`writ: ${failure.message}\n`);
      process.exitCode = failure.exitCode;
    } else {
      process.stderr.write(`writ: ${(err as Error).message}\n`);
      process.exitCode = 1;
    }
  },
).finally(() => {
  // A worker of `writ serve` is done: its channel to the primary would keep it alive.
  if (cluster.isWorker) process.disconnect();
});
