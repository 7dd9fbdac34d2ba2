import { createWrit, type Writ } from '../server.ts';
import { createLogger } from '../log.ts';
import { migrate, openDatabase } from '../store/db.ts';
import type { CliContext } from './context.ts';
import { claimDataDir, releaseDataDir, runningServer, type LocalServer } from './local-server.ts';
import { policyApply } from './policy.ts';

export interface Serving {
  writ: Writ;
  url: string;
  stop: () => Promise<void>;
}

/** Starts Writ: migrate, load keys and policy, listen. On the embedded database it claims the data dir. */
export async function startServing(ctx: CliContext, options: { applyDir?: string; logLevel?: string; metrics?: boolean } = {}): Promise<Serving> {
  const { config } = ctx;
  const embedded = !config.databaseUrl;
  if (embedded) {
    const other = runningServer(config.dataDir);
    if (other) throw new Error(`writ serve (pid ${other.pid}) already holds ${config.dataDir}; stop it or set WRIT_DATA_DIR`);
  }
  if (options.applyDir) {
    // Before the server holds the data dir, so the CLI path can open it directly.
    const code = await policyApply(ctx, options.applyDir, 'applied at start');
    if (code !== 0) throw new Error(`policy in ${options.applyDir} could not be applied`);
  }
  const logger = createLogger(options.logLevel ?? config.logLevel);
  let local: LocalServer | undefined;
  const writ = await createWrit(config, logger, { localToken: () => local?.token, metrics: options.metrics ?? true });
  const url = await writ.listen();
  if (embedded) local = claimDataDir(config.dataDir, url);
  logger.info({ url, issuer: config.issuer, database: writ.db.kind, policyVersion: writ.policy.policy.version }, 'writ serving');
  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> => {
    stopping ??= (async () => {
      await writ.close();
      if (embedded) releaseDataDir(config.dataDir);
    })();
    return stopping;
  };
  return { writ, url, stop };
}

export async function serve(ctx: CliContext, options: { applyDir?: string }): Promise<number> {
  const serving = await startServing(ctx, options);
  await new Promise<void>((resolve) => {
    const onSignal = (signal: NodeJS.Signals): void => {
      process.stderr.write(`${signal}: finishing in-flight requests\n`);
      void serving.stop().then(resolve);
    };
    process.once('SIGTERM', onSignal);
    process.once('SIGINT', onSignal);
  });
  return 0;
}

export async function migrateCommand(ctx: CliContext): Promise<number> {
  const { config } = ctx;
  if (!config.databaseUrl) {
    const server = runningServer(config.dataDir);
    if (server) {
      ctx.out(`writ serve (pid ${server.pid}) holds ${config.dataDir} and migrated it at start; nothing to do`);
      return 0;
    }
  }
  const db = await openDatabase({ databaseUrl: config.databaseUrl, dataDir: config.dataDir });
  try {
    const applied = await migrate(db);
    ctx.out(applied.length ? `applied ${applied.join(', ')}` : 'database is up to date');
  } finally {
    await db.close();
  }
  return 0;
}
