import { randomUUID } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import { AggregatorRegistry, Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

/** Instance state read at scrape time. */
export interface GaugeSources {
  auditQueue(): number;
  auditDropped(): number;
  sealerLagSeconds(): number;
  policyVersion(): number;
  revocationsFresh(): boolean;
  /** Subject and actor token signatures found already verified, and not. */
  signatureCache(): { hits: number; misses: number };
}

/**
 * Prometheus metrics, one registry per Writ instance. Label values come from policy (clients,
 * audiences) and the published reason list, so their number stays bounded.
 */
export class Metrics {
  readonly registry = new Registry();
  readonly exchanges = new Counter({
    name: 'writ_exchanges_total',
    help: 'Token exchanges by outcome (granted|denied|unavailable), reason code, requested audience and client. Denials per client over time is the denial rate per agent; grants by audience and client the grant-request rate per tool per agent.',
    labelNames: ['outcome', 'reason', 'audience', 'client'] as const,
    registers: [this.registry],
  });
  readonly exchangeSeconds = new Histogram({
    name: 'writ_exchange_duration_seconds',
    help: 'End-to-end token exchange latency inside Writ, from grant start to response.',
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
    registers: [this.registry],
  });
  readonly decisionSeconds = new Histogram({
    name: 'writ_decision_duration_seconds',
    help: 'Time spent in the pure policy decision.',
    buckets: [0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.001],
    registers: [this.registry],
  });
  readonly auditBatchSize = new Histogram({
    name: 'writ_audit_batch_size',
    help: 'Denials and protocol refusals whose audit events were committed per statement (group commit) before the answer left: 1 when idle, more under a flood.',
    buckets: [1, 2, 4, 8, 16, 32, 64],
    registers: [this.registry],
  });
  readonly grantBatchSize = new Histogram({
    name: 'writ_grant_batch_size',
    help: 'Grants committed per statement (group commit): 1 when idle, more under load.',
    buckets: [1, 2, 4, 8, 16, 32, 64],
    registers: [this.registry],
  });
  readonly introspections = new Counter({
    name: 'writ_introspections_total',
    help: 'Introspections by answer (active|inactive) and caller.',
    labelNames: ['active', 'client'] as const,
    registers: [this.registry],
  });
  readonly suspiciousIntrospections = new Counter({
    name: 'writ_introspections_suspicious_total',
    help: 'Introspections of tokens Writ never granted (bad signature or not a Writ token), of revoked tokens, or of tokens the caller may not see.',
    labelNames: ['kind', 'client'] as const,
    registers: [this.registry],
  });
  readonly revocations = new Counter({
    name: 'writ_revocations_total',
    help: 'Revocations by kind (token|task|client|subject|issuer|rule) and the tokens they revoked.',
    labelNames: ['kind'] as const,
    registers: [this.registry],
  });
  readonly jwksFetches = new Counter({
    name: 'writ_jwks_fetches_total',
    help: 'Fetches of upstream issuers\' JWKS by issuer (from policy) and outcome (ok|failed). Failures while keys are cached are served from the last good set until it is an hour old.',
    labelNames: ['issuer', 'outcome'] as const,
    registers: [this.registry],
  });
  private sources: GaugeSources | undefined;
  // Each gauge reads its value when scraped. The aggregator says how worker processes' values
  // combine on the primary's /metrics (WRIT_WORKERS > 1).
  readonly auditQueue = this.gauge('writ_audit_queue_events', 'Events waiting in the batched audit writer.', 'sum', (s) => s.auditQueue());
  readonly auditDropped = this.counterOf('writ_audit_queue_dropped_total', 'Events the batched audit writer could not queue.', (s) => s.auditDropped());
  readonly sealerLag = this.gauge('writ_audit_sealer_lag_seconds', 'Age of the oldest audit event not yet sealed into the hash chain.', 'max', (s) => s.sealerLagSeconds());
  readonly policyVersion = this.gauge('writ_policy_version', 'Policy version in force on this instance (the oldest among its worker processes).', 'min', (s) => s.policyVersion());
  readonly signatureCacheHits = this.counterOf('writ_signature_cache_hits_total', 'Presented tokens whose signature had already been verified under the same key (the exact token string), so it was not verified again.', (s) => s.signatureCache().hits);
  readonly signatureCacheMisses = this.counterOf('writ_signature_cache_misses_total', 'Presented tokens whose signature had to be verified.', (s) => s.signatureCache().misses);
  readonly revocationsFresh = this.gauge('writ_revocations_fresh', '1 while the in-memory revoked set is known to be current (in every worker process).', 'min', (s) => (s.revocationsFresh() ? 1 : 0));

  constructor() {
    collectDefaultMetrics({ register: this.registry, prefix: 'writ_' });
  }

  private gauge(name: string, help: string, aggregator: 'sum' | 'min' | 'max', read: (sources: GaugeSources) => number): Gauge {
    const sources = (): GaugeSources | undefined => this.sources;
    return new Gauge({
      name, help, aggregator, registers: [this.registry],
      collect(this: Gauge) {
        const current = sources();
        if (current) this.set(read(current));
      },
    });
  }

  /**
   * A counter read from the instance's own running count when scraped: a `_total` is a counter to
   * Prometheus (rate() and resets are counter semantics), though Writ keeps the count elsewhere.
   */
  private counterOf(name: string, help: string, read: (sources: GaugeSources) => number): Counter {
    const sources = (): GaugeSources | undefined => this.sources;
    return new Counter({
      name, help, aggregator: 'sum', registers: [this.registry],
      collect(this: Counter) {
        const current = sources();
        if (!current) return;
        this.reset();
        this.inc(read(current));
      },
    });
  }

  /** Where the gauges read the instance's state. */
  bind(sources: GaugeSources): void {
    this.sources = sources;
  }

  /** In a worker process: answer the primary's scrapes (prom-client's cluster protocol). */
  serveToPrimary(): void {
    AggregatorRegistry.setRegistries([this.registry]);
    // Constructing one installs the worker's message listener.
    void new AggregatorRegistry();
  }
}

/** What a scrape answers: one instance's registry, or the sum over worker processes. */
interface Scrapable {
  contentType: string;
  metrics(): Promise<string>;
}

/** The separate listener of WRIT_METRICS_ADDR: `/metrics` only. */
export function serveMetrics(source: Metrics | 'workers', addr: { host: string; port: number }): Promise<Server> {
  const scrapable: Scrapable = source === 'workers'
    ? (() => {
        const aggregator = new AggregatorRegistry();
        return { contentType: aggregator.contentType, metrics: () => aggregator.clusterMetrics() };
      })()
    : source.registry;
  const server = createServer((req, res) => {
    res.setHeader('X-Request-Id', randomUUID());
    if (req.url !== '/metrics' || req.method !== 'GET') {
      res.writeHead(404).end();
      return;
    }
    scrapable.metrics().then(
      (body) => res.writeHead(200, { 'content-type': scrapable.contentType }).end(body),
      () => res.writeHead(500).end(),
    );
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(addr.port, addr.host, () => resolve(server));
  });
}
