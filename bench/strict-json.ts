/**
 * How the strict JSON reader (src/tokens/strict-json.ts, which checks every presented token's
 * header and claims for duplicate members) scales on large and adversarial inputs: each input
 * is parsed at size n and 4n, best of three, and the ratio printed. A linear scan reads ~4×;
 * a quadratic one (a duplicate check that rescans, say) ~16×.
 *
 * `node bench/strict-json.ts` prints the table; bench/run.ts calls `runStrictJsonBench`.
 */
import { parseStrictJson } from '../src/tokens/strict-json.ts';

export interface StrictJsonResult {
  input: string;
  n: number;
  ms_n: number;
  ms_4n: number;
  ratio: number;
}

const INPUTS: Array<[string, number, (n: number) => string]> = [
  ['object members', 25_000, (n) => `{${Array.from({ length: n }, (_, i) => `"k${i}":${i}`).join(',')}}`],
  ['escaped string', 50_000, (n) => `"${'\\u0061'.repeat(n)}"`],
  ['long, alike keys', 500, (n) => `{${Array.from({ length: n }, (_, i) => `"${'a'.repeat(500)}${i}":0`).join(',')}}`],
];

function bestOf(text: string, runs = 3): number {
  let best = Infinity;
  for (let i = 0; i < runs; i++) {
    const started = performance.now();
    parseStrictJson(text);
    best = Math.min(best, performance.now() - started);
  }
  return best;
}

export function runStrictJsonBench(): StrictJsonResult[] {
  return INPUTS.map(([input, n, make]) => {
    const small = make(n);
    const large = make(4 * n);
    bestOf(small); // warm-up: the first parse compiles the reader
    const msN = bestOf(small);
    const ms4n = bestOf(large);
    return { input, n, ms_n: round(msN), ms_4n: round(ms4n), ratio: round(ms4n / msN) };
  });
}

function round(x: number): number {
  return Math.round(x * 100) / 100;
}

export function formatStrictJsonResults(results: StrictJsonResult[]): string {
  return [
    'strict JSON reader, input n and 4n (ms, best of 3; linear ≈ 4×, quadratic ≈ 16×)',
    `  ${'input'.padEnd(20)} ${'n'.padStart(8)} ${'ms(n)'.padStart(8)} ${'ms(4n)'.padStart(8)} ${'ratio'.padStart(6)}`,
    ...results.map((r) => `  ${r.input.padEnd(20)} ${String(r.n).padStart(8)} ${r.ms_n.toFixed(2).padStart(8)} ${r.ms_4n.toFixed(2).padStart(8)} ${r.ratio.toFixed(1).padStart(6)}`),
  ].join('\n');
}

if (import.meta.url === `file://${process.argv[1]}`) {
  process.stdout.write(`${formatStrictJsonResults(runStrictJsonBench())}\n`);
}
