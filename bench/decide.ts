/**
 * Microbenchmark of the pure policy decision (src/exchange/decide.ts) with the docs/DESIGN.md §6
 * example policy: the direct hop (planner-agent, upstream subject → payments) and the chained
 * hop (executor-agent, Writ subject → payments). Each call is timed on its own with
 * `process.hrtime.bigint()` (whose own cost, ~0.05 µs, is included) after a warm-up.
 *
 * `node bench/decide.ts [iterations]` prints p50/p99 in µs; bench/run.ts calls `runDecideBench`.
 */
import { decide } from '../src/exchange/decide.ts';
import type { DecisionInput, UpstreamSubject } from '../src/exchange/types.ts';
import { EXECUTOR, EXECUTOR_AUD, IDP, PAYMENTS, PLANNER, examplePolicy } from '../test/support/example-policy.ts';
import { writSubjectFromGrant } from '../test/support/writ-subject.ts';

export interface DecideCaseResult {
  case: string;
  iterations: number;
  p50_us: number;
  p90_us: number;
  p99_us: number;
  p999_us: number;
  mean_us: number;
}

const SELF = 'http://127.0.0.1:4000';

function percentile(sorted: Float64Array, p: number): number {
  if (sorted.length === 0) return Number.NaN;
  const index = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[index]!;
}

function timeCase(name: string, iterations: number, input: DecisionInput, policy: ReturnType<typeof examplePolicy>): DecideCaseResult {
  // Warm-up: let the JIT settle before anything is recorded.
  for (let i = 0; i < Math.min(20_000, iterations); i++) {
    if (!decide(policy, input).ok) throw new Error(`${name}: the decision denied during warm-up`);
  }
  const samples = new Float64Array(iterations);
  let sum = 0;
  for (let i = 0; i < iterations; i++) {
    const start = process.hrtime.bigint();
    const decision = decide(policy, input);
    const elapsed = Number(process.hrtime.bigint() - start) / 1000;
    if (!decision.ok) throw new Error(`${name}: the decision denied`);
    samples[i] = elapsed;
    sum += elapsed;
  }
  samples.sort();
  const round = (n: number): number => Math.round(n * 100) / 100;
  return {
    case: name,
    iterations,
    p50_us: round(percentile(samples, 50)),
    p90_us: round(percentile(samples, 90)),
    p99_us: round(percentile(samples, 99)),
    p999_us: round(percentile(samples, 99.9)),
    mean_us: round(sum / iterations),
  };
}

export function runDecideBench(iterations = 100_000): DecideCaseResult[] {
  const policy = examplePolicy();
  const now = Math.floor(Date.now() / 1000);
  const upstream: UpstreamSubject = {
    kind: 'upstream',
    issuer: IDP,
    sub: 'alice',
    claims: { iss: IDP, sub: 'alice', aud: SELF, iat: now, exp: now + 600, jti: 'bench-1', groups: ['finance'], scope: 'openid profile' },
    iat: now,
    exp: now + 600,
  };
  const direct: DecisionInput = {
    now, selfIssuer: SELF, maxTtl: 900, clientId: PLANNER,
    request: { subjectToken: 'x', subjectTokenType: 'access_token', audience: PAYMENTS, scope: ['payment.read'] },
    subject: upstream,
  };

  // The chained hop's subject: the token planner-agent got for the executor, as Writ re-reads it.
  const hop1 = decide(policy, {
    now, selfIssuer: SELF, maxTtl: 900, clientId: PLANNER,
    request: { subjectToken: 'x', subjectTokenType: 'access_token', audience: EXECUTOR_AUD, scope: ['payment.read'], taskId: 'invoice-run-42' },
    subject: upstream,
  });
  if (!hop1.ok) throw new Error(`hop 1 denied: ${hop1.reason}`);
  const chained: DecisionInput = {
    now, selfIssuer: SELF, maxTtl: 900, clientId: EXECUTOR,
    request: { subjectToken: 'x', subjectTokenType: 'access_token', audience: PAYMENTS },
    subject: writSubjectFromGrant(hop1.grant, SELF, 'bench-hop1-jti'),
  };

  const denied: DecisionInput = { ...direct, request: { ...direct.request, scope: ['payment.transfer'] } };
  const results = [
    timeCase('direct (upstream subject)', iterations, direct, policy),
    timeCase('chained (Writ subject)', iterations, chained, policy),
  ];
  // A denial walks the same steps up to scopes; timed too, without the "must grant" check.
  const samples = new Float64Array(iterations);
  for (let i = 0; i < 20_000; i++) decide(policy, denied);
  for (let i = 0; i < iterations; i++) {
    const start = process.hrtime.bigint();
    decide(policy, denied);
    samples[i] = Number(process.hrtime.bigint() - start) / 1000;
  }
  samples.sort();
  const round = (n: number): number => Math.round(n * 100) / 100;
  results.push({
    case: 'denied (scope_not_allowed)',
    iterations,
    p50_us: round(percentile(samples, 50)),
    p90_us: round(percentile(samples, 90)),
    p99_us: round(percentile(samples, 99)),
    p999_us: round(percentile(samples, 99.9)),
    mean_us: round(samples.reduce((a, b) => a + b, 0) / iterations),
  });
  return results;
}

export function formatDecideResults(results: DecideCaseResult[]): string {
  const lines = ['decide() microbenchmark (example policy, µs per call)'];
  lines.push(`  ${'case'.padEnd(28)} ${'iterations'.padStart(10)} ${'p50'.padStart(7)} ${'p90'.padStart(7)} ${'p99'.padStart(7)} ${'p99.9'.padStart(7)} ${'mean'.padStart(7)}`);
  for (const r of results) {
    lines.push(`  ${r.case.padEnd(28)} ${String(r.iterations).padStart(10)} ${r.p50_us.toFixed(2).padStart(7)} ${r.p90_us.toFixed(2).padStart(7)} ${r.p99_us.toFixed(2).padStart(7)} ${r.p999_us.toFixed(2).padStart(7)} ${r.mean_us.toFixed(2).padStart(7)}`);
  }
  return lines.join('\n');
}

if (import.meta.main) {
  const iterations = Number(process.argv[2] ?? 100_000);
  process.stdout.write(`${formatDecideResults(runDecideBench(iterations))}\n`);
}
