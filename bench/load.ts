/**
 * Load generation for bench/run.ts: closed-loop runs with autocannon, an open-loop (paced)
 * runner for the fixed-rate target, CPU accounting from /proc, and percentiles.
 */
import { readFileSync, readdirSync } from 'node:fs';
import os from 'node:os';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import autocannon, { type AutocannonRequest } from 'autocannon';
import { RawPool, serialiseRequest } from './raw-http.ts';

export interface LoadRequest {
  method: 'GET' | 'POST';
  path: string;
  headers: Record<string, string>;
  /** Bodies used round-robin across all connections (empty for GET). */
  bodies: string[];
}

export interface CpuShare {
  /** Writ or the floor server: % of one core over the run. */
  server: number;
  /** Every `postgres` process on the box. */
  postgres: number;
  /** The load generator: this process, and any load process running beside it. */
  driver: number;
  /** The whole machine, % of all cores busy. */
  machine: number;
  /** Everything else on the box (other processes), % of one core: a noisy neighbour shows here. */
  other: number;
  /** Of `other`: the kernel's DAMON memory reclaim threads (null where there are none); see jitter.ts. */
  kdamond: number | null;
}

export interface RunResult {
  scenario: string;
  server: 'writ' | 'floor';
  mode: 'closed' | 'open' | 'autocannon-rate';
  connections: number;
  /** Offered rate for open-loop and rate-limited runs, req/s. */
  offered: number | null;
  duration_s: number;
  /** Completed requests, whatever their status. */
  requests: number;
  /** 2xx responses per second. */
  rps: number;
  /** Milliseconds, from when the request was sent (closed loop) or was due (open loop). */
  latency_ms: { p50: number; p95: number; p99: number; max: number; mean: number };
  non2xx: number;
  errors: number;
  cpu_percent: CpuShare;
  /**
   * Server CPU (all its threads) per 2xx response, ms. Far less sensitive to other load on the
   * box than req/s: a neighbour steals wall time, not the work each request needs.
   */
  server_cpu_ms_per_request: number;
  /**
   * Open loop only: the load generator's own longest event-loop stall, ms. Latency is counted
   * from when a request was due, so a stall here shows up as server latency that it is not.
   */
  driver_stall_ms?: number;
  /**
   * Writ's open-loop runs only: its garbage-collection pauses during the run, from its own
   * `writ_nodejs_gc_duration_seconds` (each pause holds up every request in flight).
   */
  gc?: { minor: GcPauses; major: GcPauses };
}

export interface GcPauses {
  count: number;
  mean_ms: number;
}

export function percentile(sorted: ArrayLike<number>, p: number): number {
  if (sorted.length === 0) return Number.NaN;
  const index = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[index]!;
}

export function summarise(latencies: number[]): RunResult['latency_ms'] {
  const sorted = Float64Array.from(latencies).sort();
  const round = (n: number): number => Math.round(n * 100) / 100;
  const mean = sorted.length === 0 ? Number.NaN : sorted.reduce((a, b) => a + b, 0) / sorted.length;
  return {
    p50: round(percentile(sorted, 50)),
    p95: round(percentile(sorted, 95)),
    p99: round(percentile(sorted, 99)),
    max: round(sorted.length === 0 ? Number.NaN : sorted[sorted.length - 1]!),
    mean: round(mean),
  };
}

// ---------------------------------------------------------------------------------------------
// CPU accounting (Linux /proc; zeros elsewhere)

/** % of one core at `rps` successful requests per second → ms of CPU per request. */
function perRequest(percent: number, rps: number): number {
  return rps > 0 ? Math.round((percent / 100 / rps) * 1000 * 1000) / 1000 : Number.NaN;
}

const CLK_TCK = 100;

function statFields(pid: number | string): string[] | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The fields after the parenthesised command name: state, ppid, …; utime and stime are 11 and 12.
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  } catch {
    return undefined;
  }
}

/** A process's own CPU ticks (utime + stime) from its stat fields; 0 once it has gone. */
const ticks = (fields: string[] | undefined): number => (fields ? Number(fields[11]) + Number(fields[12]) : 0);

/** CPU ticks of a process and its direct children (Writ's worker processes). */
function processTicks(pid: number): number {
  let total = ticks(statFields(pid));
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const fields = statFields(entry);
    if (fields && Number(fields[1]) === pid) total += ticks(fields);
  }
  return total;
}

function postgresTicks(): number {
  let total = 0;
  let entries: string[] = [];
  try {
    entries = readdirSync('/proc');
  } catch {
    return 0;
  }
  for (const entry of entries) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      if (!stat.includes('(postgres)')) continue;
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      // utime + stime, and cutime + cstime: a backend that exits hands its ticks to the
      // postmaster's child counters, so the sum does not drop when connections close.
      total += Number(fields[11]) + Number(fields[12]) + Number(fields[13]) + Number(fields[14]);
    } catch {
      // The process went away.
    }
  }
  return total;
}

/** Run time of every kernel DAMON thread, ns (null when the machine has none). */
export function kdamondNs(): number | null {
  let total: number | null = null;
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      if (!readFileSync(`/proc/${entry}/comm`, 'utf8').startsWith('kdamond')) continue;
      total = (total ?? 0) + Number(readFileSync(`/proc/${entry}/schedstat`, 'utf8').split(' ')[0]);
    } catch {
      // exited, or not readable
    }
  }
  return total;
}

function machineTicks(): { busy: number; total: number } {
  try {
    const line = readFileSync('/proc/stat', 'utf8').split('\n')[0]!;
    const values = line.trim().split(/\s+/).slice(1).map(Number);
    const idle = (values[3] ?? 0) + (values[4] ?? 0);
    const total = values.reduce((a, b) => a + b, 0);
    return { busy: total - idle, total };
  } catch {
    return { busy: 0, total: 0 };
  }
}

export class CpuMeter {
  private readonly serverPid: number;
  private readonly otherDriverPids: readonly number[];
  private start = { server: 0, postgres: 0, driver: 0, otherDrivers: 0, machine: { busy: 0, total: 0 }, kdamondNs: null as number | null, at: 0 };

  /** `otherDriverPids`: load processes beside this one (a flooding client beside its victim). */
  constructor(serverPid: number, otherDriverPids: readonly number[] = []) {
    this.serverPid = serverPid;
    this.otherDriverPids = otherDriverPids;
  }

  /** Last ticks read per other load process: one that has exited keeps what it used. */
  private readonly otherDriverLast = new Map<number, number>();

  private otherDriverTicks(): number {
    return this.otherDriverPids.reduce((sum, pid) => {
      const fields = statFields(pid);
      if (fields) this.otherDriverLast.set(pid, ticks(fields));
      return sum + (this.otherDriverLast.get(pid) ?? 0);
    }, 0);
  }

  begin(): void {
    const usage = process.cpuUsage();
    this.start = {
      server: processTicks(this.serverPid),
      postgres: postgresTicks(),
      driver: usage.user + usage.system,
      otherDrivers: this.otherDriverTicks(),
      machine: machineTicks(),
      kdamondNs: kdamondNs(),
      at: performance.now(),
    };
  }

  end(): CpuShare {
    const seconds = (performance.now() - this.start.at) / 1000;
    const usage = process.cpuUsage();
    const machine = machineTicks();
    const pct = (ticks: number): number => Math.round((ticks / CLK_TCK / seconds) * 100);
    const machineTotal = machine.total - this.start.machine.total;
    const server = pct(processTicks(this.serverPid) - this.start.server);
    const postgres = pct(postgresTicks() - this.start.postgres);
    const driver = Math.round(((usage.user + usage.system - this.start.driver) / 1e6 / seconds) * 100) + pct(this.otherDriverTicks() - this.start.otherDrivers);
    const machinePct = machineTotal > 0 ? ((machine.busy - this.start.machine.busy) / machineTotal) * 100 : 0;
    const kdamond = kdamondNs();
    return {
      server,
      postgres,
      driver,
      machine: Math.round(machinePct),
      other: Math.max(0, Math.round(machinePct * os.cpus().length - server - postgres - driver)),
      kdamond: kdamond === null || this.start.kdamondNs === null ? null : Math.round((kdamond - this.start.kdamondNs) / 1e7 / seconds),
    };
  }
}

// ---------------------------------------------------------------------------------------------
// Closed loop (autocannon), optionally rate-limited with autocannon's `overallRate`

export async function closedLoop(options: {
  url: string;
  request: LoadRequest;
  connections: number;
  duration: number;
  overallRate?: number;
  cpu: CpuMeter;
}): Promise<Omit<RunResult, 'scenario' | 'server'>> {
  const { request } = options;
  let next = 0;
  const bodies = request.bodies;
  const base: AutocannonRequest = { method: request.method, path: request.path, headers: request.headers };
  if (bodies.length > 0) {
    base.body = bodies[0]!;
    // Round-robin over the pool across every connection, so no two in-flight requests share a token.
    base.setupRequest = (req) => ({ ...req, body: bodies[next++ % bodies.length]! });
  }
  const latencies: number[] = [];
  options.cpu.begin();
  const result = await new Promise<import('autocannon').AutocannonResult>((resolve, reject) => {
    const instance = autocannon({
      url: options.url,
      connections: options.connections,
      duration: options.duration,
      timeout: 10,
      requests: [base],
      ...(options.overallRate ? { overallRate: options.overallRate } : {}),
    }, (err, res) => (err ? reject(err) : resolve(res)));
    instance.on('response', (_client, _status, _bytes, responseTime) => {
      latencies.push(responseTime);
    });
  });
  const cpu = options.cpu.end();
  return {
    mode: options.overallRate ? 'autocannon-rate' : 'closed',
    connections: options.connections,
    offered: options.overallRate ?? null,
    duration_s: result.duration,
    requests: result.requests.total,
    rps: Math.round(result['2xx'] / result.duration),
    latency_ms: summarise(latencies),
    non2xx: result.non2xx,
    errors: result.errors + result.timeouts,
    cpu_percent: cpu,
    server_cpu_ms_per_request: perRequest(cpu.server, result['2xx'] / result.duration),
  };
}

// ---------------------------------------------------------------------------------------------
// Open loop: requests are due at a fixed pace whatever the server does, and latency is measured
// from when each was due (so a stall counts against every request it delayed: no coordinated
// omission). autocannon's `overallRate` is a per-second budget that each connection spends as
// fast as it can, i.e. bursts; this runner is what the "p99 at 1,000/s offered" target uses.

export async function openLoop(options: {
  url: string;
  request: LoadRequest;
  rate: number;
  duration: number;
  maxSockets: number;
  cpu: CpuMeter;
  /** Every latency is also appended here (to pool several runs). */
  samples?: number[];
}): Promise<Omit<RunResult, 'scenario' | 'server'>> {
  const target = new URL(options.url);
  const pool = new RawPool(target.hostname, Number(target.port), options.maxSockets);
  const total = Math.round(options.rate * options.duration);
  const interval = 1000 / options.rate;
  const { method, path, headers } = options.request;
  const serialise = (body: string | undefined): Buffer => serialiseRequest({ method, host: target.host, path, headers, ...(body !== undefined ? { body } : {}) });
  const requests = options.request.bodies.length > 0 ? options.request.bodies.map(serialise) : [serialise(undefined)];
  const latencies: number[] = [];
  let non2xx = 0;
  let ok = 0;
  let errors = 0;
  let done = 0;
  let sent = 0;
  const stall = monitorEventLoopDelay({ resolution: 1 });
  stall.enable();
  options.cpu.begin();
  const t0 = performance.now() + 20;
  await new Promise<void>((resolve) => {
    const finish = (): void => {
      done++;
      if (done === total) resolve();
    };
    const fire = (due: number, index: number): void => {
      pool.request(requests[index % requests.length]!).then((response) => {
        latencies.push(performance.now() - due);
        if (response.status < 200 || response.status >= 300) non2xx++;
        else ok++;
        finish();
      }, () => {
        errors++;
        finish();
      });
    };
    const tick = (): void => {
      const now = performance.now();
      while (sent < total && t0 + sent * interval <= now) {
        fire(t0 + sent * interval, sent);
        sent++;
      }
      if (sent < total) setTimeout(tick, Math.max(0, t0 + sent * interval - performance.now() - 0.5));
    };
    setTimeout(tick, 20);
  });
  const elapsed = (performance.now() - t0) / 1000;
  options.samples?.push(...latencies);
  const cpu = options.cpu.end();
  stall.disable();
  pool.destroy();
  return {
    mode: 'open',
    driver_stall_ms: Math.round(stall.max / 1e5) / 10,
    connections: options.maxSockets,
    offered: options.rate,
    duration_s: Math.round(elapsed * 100) / 100,
    requests: latencies.length,
    rps: Math.round(ok / elapsed),
    latency_ms: summarise(latencies),
    non2xx,
    errors,
    cpu_percent: cpu,
    server_cpu_ms_per_request: perRequest(cpu.server, ok / elapsed),
  };
}
