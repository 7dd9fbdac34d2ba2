import cluster, { type Worker } from 'node:cluster';
import type { Server } from 'node:http';
import type { Logger } from 'pino';
import { createLogger } from '../log.ts';
import { serveMetrics } from '../metrics.ts';
import { migrate, openDatabase } from '../store/db.ts';
import { checkIssuer } from '../store/issuer-binding.ts';
import { deriveKeys } from '../tokens/kek.ts';
import { ensureSigningKeys } from '../tokens/signing-keys.ts';
import type { CliContext } from './context.ts';
import { policyApply } from './policy.ts';

/**
 * `writ serve` with WRIT_WORKERS > 1: this process supervises that many worker processes
 * sharing one listening port (node:cluster hands connections out round robin). Each worker is
 * a whole Writ instance on the same database — the same model as several instances behind a
 * load balancer: policy and revocations reach every worker through NOTIFY, rate limits are
 * counted per worker. The primary prepares the database first (migrations, signing keys, the
 * `--apply` policy), so that workers never race to create them, serves the workers' summed
 * metrics on WRIT_METRICS_ADDR, replaces a worker that dies, and on SIGTERM lets every worker
 * drain before it exits.
 */

/** The environment variable that tells a forked process which worker it is. */
export const WORKER_INDEX_ENV = 'WRIT_WORKER_INDEX';

/** A worker dying more often than this gives up the whole server: something is wrong for good. */
const MAX_RESTARTS = 5;
const RESTART_WINDOW_MS = 60_000;
const RESTART_DELAY_MS = 1_000;
/** Workers still running this long after SIGTERM are killed. */
const DRAIN_TIMEOUT_MS = 30_000;

export function workerIndex(): number {
  return Number(process.env[WORKER_INDEX_ENV] ?? 0);
}

async function prepareDatabase(ctx: CliContext): Promise<void> {
  const db = await openDatabase({ databaseUrl: ctx.config.databaseUrl, dataDir: ctx.config.dataDir });
  try {
    await migrate(db);
    // Refused here, once, rather than by every worker in turn (src/store/issuer-binding.ts).
    await checkIssuer(db.knex, ctx.config.issuer);
    await ensureSigningKeys(db.knex, deriveKeys(ctx.config.kek).keyEncryption);
  } finally {
    await db.close();
  }
}

export async function superviseWorkers(ctx: CliContext, options: { applyDir?: string }): Promise<number> {
  const { config } = ctx;
  const logger: Logger = createLogger(config.logLevel).child({ role: 'primary' });
  if (options.applyDir) {
    const code = await policyApply(ctx, options.applyDir, 'applied at start', { database: { creates: 'always', issuer: config.issuer } });
    if (code !== 0) throw new Error(`policy in ${options.applyDir} could not be applied`);
  }
  await prepareDatabase(ctx);
  const metricsServer: Server = await serveMetrics('workers', config.metricsAddr);

  const workers = new Map<number, Worker>();
  const restarts: number[] = [];
  let stopping = false;
  let failed = false;
  let listening = 0;
  let done: (code: number) => void = () => undefined;
  const finished = new Promise<number>((resolve) => {
    done = resolve;
  });

  const shutdown = (reason: string): void => {
    if (stopping) return;
    stopping = true;
    logger.info({ reason }, 'stopping workers');
    for (const worker of workers.values()) worker.process.kill('SIGTERM');
    const kill = setTimeout(() => {
      for (const worker of workers.values()) worker.process.kill('SIGKILL');
    }, DRAIN_TIMEOUT_MS);
    kill.unref();
    if (workers.size === 0) done(failed ? 1 : 0);
  };

  const fork = (index: number): void => {
    const worker = cluster.fork({ [WORKER_INDEX_ENV]: String(index) });
    let up = false;
    workers.set(index, worker);
    worker.once('listening', (address) => {
      up = true;
      listening += 1;
      if (listening === config.workers) {
        const host = config.host.includes(':') ? `[${config.host}]` : config.host;
        logger.info({ url: `http://${host}:${address.port}`, issuer: config.issuer, workers: config.workers }, 'writ serving');
      }
    });
    worker.once('exit', (code, signal) => {
      workers.delete(index);
      if (stopping) {
        if (code !== 0) failed = true;
        if (workers.size === 0) done(failed ? 1 : 0);
        return;
      }
      if (!up) {
        // A worker that cannot start will not start on a retry either (configuration, database).
        logger.error({ worker: index, code, signal }, 'worker failed to start');
        failed = true;
        shutdown('a worker failed to start');
        return;
      }
      const now = Date.now();
      while (restarts.length > 0 && restarts[0]! < now - RESTART_WINDOW_MS) restarts.shift();
      restarts.push(now);
      if (restarts.length > MAX_RESTARTS) {
        logger.error({ worker: index, code, signal, restarts: restarts.length }, 'workers keep dying: stopping');
        failed = true;
        shutdown('workers keep dying');
        return;
      }
      logger.error({ worker: index, code, signal }, 'worker died: replacing it');
      setTimeout(() => {
        if (!stopping) fork(index);
      }, RESTART_DELAY_MS).unref();
    });
  };

  for (let index = 0; index < config.workers; index += 1) fork(index);
  const onSignal = (signal: NodeJS.Signals): void => {
    process.stderr.write(`${signal}: finishing in-flight requests\n`);
    shutdown(signal);
  };
  process.once('SIGTERM', onSignal);
  process.once('SIGINT', onSignal);
  const code = await finished;
  metricsServer.close();
  return code;
}
