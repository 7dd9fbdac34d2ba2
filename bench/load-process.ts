/**
 * One load run in a Node process of its own: `runInProcess` spawns this file, hands it the run on
 * stdin and reads the result from stdout.
 *
 * An open-loop latency counts from when a request was due, so a pause of the load generator is
 * counted against the server. By the flood runs the bench's own process holds every earlier
 * run's buffers and results. In four full benches out of four it stalled 114–154 ms during the
 * first flood run (traced once: a 125 ms full GC triggered by external memory), and that pair's
 * victim p99 under the flood read 1.5–3.3× its p99 alone (bench/README.md, "The load
 * generator's own pauses"). A fresh process per run has none of that to collect, and a flooding
 * client in a process apart from its victim's is how the two would meet. */
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { closedLoop, CpuMeter, openLoop, type RunResult } from './load.ts';

type Options<F extends (options: never) => unknown> = Omit<Parameters<F>[0], 'cpu' | 'samples'>;

export type LoadJob =
  | { kind: 'open'; serverPid: number; options: Options<typeof openLoop> }
  | { kind: 'closed'; serverPid: number; options: Options<typeof closedLoop> };

export interface LoadOutcome {
  result: Omit<RunResult, 'scenario' | 'server'>;
  /** An open loop's latencies, ms, in the order they completed. */
  samples: number[];
}

const SELF = fileURLToPath(import.meta.url);

export interface LoadProcess {
  /** Settles once the process has read its job and is starting the load. */
  started: Promise<void>;
  /** The run's outcome; rejects with the process's output if it fails. */
  done: Promise<LoadOutcome>;
}

const STARTED = 'load started\n';

/** Runs `job` in a new Node process. */
export function runInProcess(job: LoadJob): LoadProcess {
  const child = spawn(process.execPath, [SELF], { stdio: ['pipe', 'pipe', 'pipe'] });
  const out: Buffer[] = [];
  let err = '';
  let markStarted: () => void = () => {};
  const started = new Promise<void>((resolve) => {
    markStarted = resolve;
  });
  const done = new Promise<LoadOutcome>((resolve, reject) => {
    child.stdout.on('data', (chunk: Buffer) => out.push(chunk));
    child.stderr.on('data', (chunk: Buffer) => {
      err += chunk.toString();
      if (err.includes(STARTED)) markStarted();
    });
    child.once('error', reject);
    child.once('close', (code) => {
      markStarted();
      if (code !== 0) {
        reject(new Error(`load process exited ${code}:\n${err}`));
        return;
      }
      // JSON has no NaN (CPU per 2xx response with none, a percentile of no samples): it comes
      // back as null, as do the two fields that are null when they do not apply.
      const nullable = new Set(['offered', 'kdamond']);
      resolve(JSON.parse(Buffer.concat(out).toString(), (key, value: unknown) => (value === null && !nullable.has(key) ? Number.NaN : value)) as LoadOutcome);
    });
  });
  child.stdin.end(JSON.stringify(job));
  return { started, done };
}

async function main(): Promise<void> {
  const input: Buffer[] = [];
  for await (const chunk of process.stdin) input.push(chunk as Buffer);
  const job = JSON.parse(Buffer.concat(input).toString()) as LoadJob;
  const cpu = new CpuMeter(job.serverPid);
  process.stderr.write(STARTED);
  const samples: number[] = [];
  const result = job.kind === 'open'
    ? await openLoop({ ...job.options, cpu, samples })
    : await closedLoop({ ...job.options, cpu });
  process.stdout.write(JSON.stringify({ result, samples } satisfies LoadOutcome));
}

if (process.argv[1] === SELF) await main();
