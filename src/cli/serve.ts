import cluster from 'node:cluster';
import { createWrit, type Writ } from '../server.ts';
import { createLogger } from '../log.ts';
import { migrate, openDatabase } from '../store/db.ts';
import type { CliContext } from './context.ts';
import { cliDatabaseLog } from './cli-database.ts';
import { claimDataDir, releaseDataDir, runningServer, type LocalServer } from './local-server.ts';
import { policyApply } from './policy.ts';
import { superviseWorkers, workerIndex } from './workers.ts';
import { missingServingFlags, tuneHeapForServing } from './heap-tuning.ts';

export interface Serving {
  writ: Writ;
  url: string;
  stop: () => Promise<void>;
}

/** Starts Writ: migrate, load keys and policy, listen. On the embedded database it claims the data dir. */
export async function startServing(ctx: CliContext, options: { applyDir?: string; logLevel?: string; metrics?: boolean; worker?: { index: number }; checkNodeFlags?: boolean } = {}): Promise<Serving> {
  const { config } = ctx;
  const embedded = !config.databaseUrl;
  if (embedded) {
    const other = runningServer(config.dataDir);
    if (other) throw new Error(`writ serve (pid ${other.pid}) already holds ${config.dataDir}; stop it or set WRIT_DATA_DIR`);
  }
  if (options.applyDir) {
    // Before the server holds the data dir, so the CLI path can open it directly.
    const code = await policyApply(ctx, options.applyDir, 'applied at start', { database: { creates: 'always', issuer: config.issuer } });
    if (code !== 0) throw new Error(`policy in ${options.applyDir} could not be applied`);
  }
  const base = createLogger(options.logLevel ?? config.logLevel);
  const logger = options.worker ? base.child({ worker: options.worker.index }) : base;
  // `writ serve` only: the demo's walk-through is no place for advice on running in production.
  const missing = options.checkNodeFlags ? missingServingFlags() : [];
  if (missing.length > 0) {
    logger.warn({ missing }, `node was started without ${missing.join(' ')}: V8 may hold every request for ~100 ms to hand memory back when the load falls; start Writ with \`node ${missing.join(' ')} src/main.ts serve\`, as npm start and the Docker image do`);
  }
  // The data dir's development key ties a shared database to that one directory: an instance or
  // command run from another would find the keys sealed under a key it does not have.
  if (config.databaseUrl && config.kekSource === 'data-dir' && !options.worker) {
    logger.warn({ data_dir: config.dataDir }, 'WRIT_KEK is not set: signing keys on this PostgreSQL are sealed with the development key in the data dir; every instance and command on this database needs that same key, so set WRIT_KEK');
  }
  let local: LocalServer | undefined;
  const writ = await createWrit(config, logger, {
    localToken: () => local?.token,
    metrics: options.metrics ?? true,
    ...(options.worker ? { worker: options.worker } : {}),
  });
  let url: string;
  try {
    url = await writ.listen();
  } catch (err) {
    // A server that cannot take requests must not linger holding database connections and
    // running the audit sealer (or the metrics listener that did bind).
    await writ.close().catch((closeErr: unknown) => logger.error({ err: (closeErr as Error).message }, 'closing after a failed start'));
    throw err;
  }
  if (embedded) local = claimDataDir(config.dataDir, url);
  logger.info({ url, issuer: config.issuer, database: writ.db.kind, policyVersion: writ.policy.policy.version }, options.worker ? 'worker serving' : 'writ serving');
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
  if (cluster.isPrimary && ctx.config.workers > 1) return superviseWorkers(ctx, options);
  tuneHeapForServing();
  // A worker: the primary has prepared the database and applied any policy already.
  const worker = cluster.isWorker ? { index: workerIndex() } : undefined;
  const serving = await startServing(ctx, { ...(worker ? { worker } : options), checkNodeFlags: true });
  await new Promise<void>((resolve) => {
    const stop = (): void => void serving.stop().then(resolve);
    const onSignal = (signal: NodeJS.Signals): void => {
      if (!worker) process.stderr.write(`${signal}: finishing in-flight requests\n`);
      stop();
    };
    process.once('SIGTERM', onSignal);
    process.once('SIGINT', onSignal);
    // A worker whose primary is gone has no one to hand it connections or restart it.
    if (worker) process.once('disconnect', stop);
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
  const db = await openDatabase({ databaseUrl: config.databaseUrl, dataDir: config.dataDir, log: cliDatabaseLog(ctx) });
  try {
    const { applied, newer } = await migrate(db);
    if (newer.length > 0) ctx.out(`the database was migrated by a newer Writ (${newer.join(', ')}); nothing to do`);
    else ctx.out(applied.length ? `applied ${applied.join(', ')}` : 'database is up to date');
  } finally {
    await db.close();
  }
  return 0;
}
