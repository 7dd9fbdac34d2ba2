import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type Koa from 'koa';
import type { Logger } from 'pino';
import type Provider from 'oidc-provider';
import { BatchedAuditWriter } from './audit/batch-writer.ts';
import { auditCommitter, recordAudit } from './audit/event.ts';
import type { Config } from './config.ts';
import { throttledWarning } from './log.ts';
import { LineageCache } from './exchange/lineage-store.ts';
import { EXCHANGE_PARAMS, REPEATABLE_PARAMS } from './exchange/request.ts';
import { GrantBatcher } from './exchange/grant-batcher.ts';
import { isStorageError, type ExchangeDeps } from './exchange/service.ts';
import { authenticateAdmin } from './admin/auth.ts';
import { adminRoutes } from './admin/routes.ts';
import { AuditSealer } from './audit/sealer.ts';
import { adminAuditRoutes } from './http/admin-audit.ts';
import { chainViewRoutes } from './http/chain-view.ts';
import { localAdmin } from './http/admin-local.ts';
import { createApp } from './http/app.ts';
import { DEFAULT_AUTH_FAILURE_LIMIT, RateLimiter } from './http/rate-limit.ts';
import { introspectionHandler, revocationHandler, tokenExchangeHandler } from './http/handlers.ts';
import { VerifiedTokenCache } from './http/introspection.ts';
import { VerifiedSignatures } from './tokens/verified-signatures.ts';
import { findClientMetadata } from './oauth/client-metadata.ts';
import { requestContextPatched } from './oauth/internals.ts';
import { createProvider, ROUTES } from './oauth/provider.ts';
import { Metrics, serveMetrics } from './metrics.ts';
import { PolicyState } from './policy/state.ts';
import { RevocationState } from './revocation/state.ts';
import { migrate, openDatabase, type Database } from './store/db.ts';
import { checkIssuer } from './store/issuer-binding.ts';
import { deriveKeys, type DerivedKeys } from './tokens/kek.ts';
import { UpstreamKeys, writKeyResolver } from './tokens/key-resolver.ts';
import { SIGNING_ALGS, SigningKeyRing } from './tokens/signing-keys.ts';
import { jwksRoute } from './http/jwks.ts';

export interface Writ {
  config: Config;
  db: Database;
  app: Koa;
  provider: Provider;
  policy: PolicyState;
  revocations: RevocationState;
  keys: SigningKeyRing;
  derived: DerivedKeys;
  auditQueue: BatchedAuditWriter;
  auditSealer: AuditSealer;
  metrics: Metrics;
  /** Starts listening; resolves with the bound URL. */
  listen(): Promise<string>;
  /** Stops accepting, lets in-flight requests finish, flushes the audit queue, closes the database. */
  close(): Promise<void>;
}

export interface WritOptions {
  /** An already-open database (tests and the CLI share one); otherwise opened from config. */
  db?: Database;
  /** Poll intervals, shortened in tests. */
  pollMs?: number;
  /** Serve `/metrics` on WRIT_METRICS_ADDR (off in tests unless asked for). */
  metrics?: boolean;
  /** The local admin credential (`writ serve` on the embedded database). */
  localToken?: () => string | undefined;
  /**
   * Set in a worker process of `writ serve` with WRIT_WORKERS > 1: its metrics are scraped
   * through the primary, and only worker 0 runs the audit sealer (the others would only wait
   * on its lock).
   */
  worker?: { index: number };
}

export async function createWrit(config: Config, logger: Logger, options: WritOptions = {}): Promise<Writ> {
  const db = options.db ?? await openDatabase({
    databaseUrl: config.databaseUrl,
    dataDir: config.dataDir,
    log: { warn: throttledWarning(logger, 'database') },
  });
  try {
    const schema = await migrate(db);
    if (schema.applied.length > 0) logger.info({ migrations: schema.applied }, 'database migrated');
    if (schema.newer.length > 0) logger.warn({ migrations: schema.newer }, 'the database was migrated by a newer Writ: running on it without migrating');
    // Instances on one database serve one issuer: the first stores it, another one is refused.
    if ((await checkIssuer(db.knex, config.issuer)).stored) logger.info({ issuer: config.issuer }, 'the database now serves this issuer');
    const derived = deriveKeys(config.kek);
    const keys = new SigningKeyRing(db.knex, derived.keyEncryption, { logger, ...(options.pollMs ? { pollMs: Math.max(options.pollMs, 200) } : {}) });
    await keys.start();
    const policy = new PolicyState(db, logger, options.pollMs ? { pollMs: options.pollMs } : {});
    const metrics = new Metrics();
    const upstream = new UpstreamKeys({
      onFetch: (issuer, outcome) => {
        metrics.jwksFetches.inc({ issuer, outcome: outcome.ok ? 'ok' : 'failed' });
        if (!outcome.ok) logger.warn({ issuer, error: outcome.error }, 'upstream JWKS fetch failed');
      },
    });
    policy.onChange((p) => upstream.sync(p));
    await policy.start();
    const revocations = new RevocationState(db, logger);
    await revocations.start();
    // After a policy change made here: the new policy, and the revocation marks of any client it
    // disabled, hold at this instance from the answer on, not only once their NOTIFY arrives.
    const reloadPolicy = async (): Promise<void> => {
      await policy.reload();
      await revocations.sync();
    };
    const auditQueue = new BatchedAuditWriter(db.knex, logger);
    const lineage = new LineageCache();
    const writKeys = writKeyResolver(() => keys.current());
    const limiter = new RateLimiter();
    const signatures = new VerifiedSignatures();

    const grants = new GrantBatcher(db.knex, { isStorageError, onBatch: (size) => metrics.grantBatchSize.observe(size) });
    const refusals = auditCommitter(db.knex, { isStorageError, onBatch: (size) => metrics.auditBatchSize.observe(size) });
    const exchangeDeps: ExchangeDeps = {
      issuer: config.issuer,
      maxTtl: config.maxTtl,
      policy: () => policy.policy,
      keys: () => keys.current(),
      writKeys,
      upstreamKeys: (iss) => upstream.resolver(iss),
      revocations,
      lineage,
      signatures,
      knex: db.knex,
      recordGrant: (record) => grants.record(record),
      recordDenial: (event) => refusals.write(event),
      logger,
      onDecision: (seconds) => metrics.decisionSeconds.observe(seconds),
      limitSubject: (root) => {
        const limit = policy.policy.settings.subject_rate_limit;
        return limit ? limiter.take(`subject:${root}`, limit) : undefined;
      },
      enqueueAudit: (event) => auditQueue.enqueue(event),
    };
    const introspected = new VerifiedTokenCache();
    keys.onChange(() => introspected.clear());
    if (!requestContextPatched()) {
      logger.warn('oidc-provider is not patched (installed with --ignore-scripts?): finished requests stay in memory until a full GC; run npm ci');
    }
    const provider = createProvider({
      issuer: config.issuer,
      keys: keys.current(),
      knex: () => db.knex,
      findClient: (id) => findClientMetadata(policy.policy, policy.credentials, id),
      secretKey: derived.clientSecret,
      trustProxy: config.trustProxy,
      grant: { params: EXCHANGE_PARAMS, repeatable: REPEATABLE_PARAMS, handler: tokenExchangeHandler({ ...exchangeDeps, metrics, limiter, auditQueue }) },
      introspect: introspectionHandler({ issuer: config.issuer, writKeys, revocations, lineage, policy: () => policy.policy, auditQueue, metrics, limiter, verified: introspected }),
      revoke: revocationHandler({ issuer: config.issuer, writKeys, knex: db.knex, syncRevocations: () => revocations.sync(), policy: () => policy.policy, metrics, limiter, auditQueue }),
      extraRevocationParams: (ctx) => ((ctx.state as Record<string, unknown>).writTaskRevocation ? ['task_id'] : []),
      onStorageError: (message, requestId) => logger.error({ err: message, requestId }, 'storage unavailable while issuing an admin token'),
    });
    provider.on('server_error', (_ctx: unknown, err: Error) => logger.error({ err: err.message }, 'provider server_error'));

    const app = createApp({
      provider,
      logger,
      trustProxy: config.trustProxy,
      auditQueue,
      auditNow: (event) => refusals.write(event),
      isStorageError,
      limiter,
      draining: () => draining,
      authFailureLimit: () => policy.policy.settings.auth_failure_limit ?? DEFAULT_AUTH_FAILURE_LIMIT,
      clientRateLimit: (clientId) => policy.policy.clients.get(clientId)?.rate_limit,
      routes: [jwksRoute(ROUTES.jwks, () => keys.current()), adminAuditRoutes({
        knex: db.knex,
        authorize: async (ctx, scope) => {
          const auth = await authenticateAdmin(ctx, { provider, policy: () => policy.policy, localToken: options.localToken ?? (() => undefined) }, scope);
          if (auth.ok) return true;
          ctx.status = auth.status;
          ctx.set('WWW-Authenticate', `Bearer realm="writ", error="${auth.error}"`);
          ctx.body = { error: auth.error };
          return false;
        },
      }), chainViewRoutes({
        knex: db.knex,
        sessionKey: derived.localAdmin,
        issuer: config.issuer,
        audit: (event) => recordAudit(db.knex, event),
        localToken: options.localToken ?? (() => undefined),
      }), adminRoutes({
        provider,
        knex: db.knex,
        policy: () => policy.policy,
        reloadPolicy,
        localToken: options.localToken ?? (() => undefined),
        lineage,
        issuer: config.issuer,
        maxTtl: config.maxTtl,
        secretKey: derived.clientSecret,
        keys: { ring: keys, encryptionKey: derived.keyEncryption },
        syncRevocations: () => revocations.sync(),
      }), localAdmin({
        localToken: options.localToken ?? (() => undefined),
        knex: db.knex,
        selfIssuer: config.issuer,
        maxTtl: config.maxTtl,
        secretKey: derived.clientSecret,
        reloadPolicy,
      })],
      ready: async () => {
        await db.knex.raw('SELECT 1');
        // Not ready without a key for every algorithm: an audience's tokens could not be signed.
        return revocations.isFresh() && keys.current().active.size === SIGNING_ALGS.length;
      },
    });

    // Seals committed audit events into the hash chain, off the request path.
    const auditSealer = new AuditSealer(db.knex, { checkpointKey: derived.auditCheckpoint, logger });
    let server: Server | undefined;
    let metricsServer: Server | undefined;
    let draining = false;
    metrics.bind({
      auditQueue: () => auditQueue.pending,
      auditDropped: () => auditQueue.dropped,
      sealerLagSeconds: () => auditSealer.lag() / 1000,
      policyVersion: () => policy.policy.version,
      revocationsFresh: () => revocations.isFresh(),
      signatureCache: () => ({ hits: signatures.hits, misses: signatures.misses }),
    });
    if (options.worker) metrics.serveToPrimary();
    const runsSealer = (options.worker?.index ?? 0) === 0;
    const writ: Writ = {
      config, db, app, provider, policy, revocations, keys, derived, auditQueue, auditSealer, metrics,
      listen: async () => {
        const hostPort = (host: string, port: number): string => `${host.includes(':') ? `[${host}]` : host}:${port}`;
        // Node's message names the address but not the setting the operator has to change.
        const cannotListen = (setting: string, addr: string) => (err: Error): never => {
          throw new Error(`cannot listen on ${addr} (${setting}): ${err.message}`, { cause: err });
        };
        if (options.metrics && !options.worker) {
          metricsServer = await serveMetrics(metrics, config.metricsAddr)
            .catch(cannotListen('WRIT_METRICS_ADDR', hostPort(config.metricsAddr.host, config.metricsAddr.port)));
        }
        const bound = await new Promise<AddressInfo>((resolve, reject) => {
          server = app.listen(config.port, config.host);
          server.once('error', reject);
          server.once('listening', () => resolve(server!.address() as AddressInfo));
        }).catch(cannotListen('PORT, HOST', hostPort(config.host, config.port)));
        return `http://${hostPort(config.host, bound.port)}`;
      },
      async close() {
        draining = true;
        metricsServer?.close();
        if (server) {
          const closing = new Promise<void>((resolve) => server!.close(() => resolve()));
          server.closeIdleConnections();
          await closing;
        }
        keys.stop();
        await policy.stop();
        await revocations.stop();
        await auditQueue.close();
        if (runsSealer) await auditSealer.stop();
        if (!options.db) await db.close();
      },
    };
    if (runsSealer) auditSealer.start();
    return writ;
  } catch (err) {
    if (!options.db) await db.close().catch(() => undefined);
    throw err;
  }
}
