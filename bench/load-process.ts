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

interface JobBase {
  /** Writ or the floor server, for the CPU columns. */
  serverPid: number;
  /** Other load processes running beside this one, whose CPU counts as the load generator's. */
  driverPids?: number[];
}

export type LoadJob =
  | (JobBase & { kind: 'open'; options: Options<typeof openLoop> })
  | (JobBase & { kind: 'closed'; options: Options<typeof closedLoop> });

export interface LoadOutcome {
  result: Omit<RunResult, 'scenario' | 'server'>;
  /** An open loop's latencies, ms, in the order they completed. */
  samples: number[];
}

/** The fields of a result that are null when they do not apply (see RunResult and CpuShare). */
const NULLABLE = new Set(['offered', 'kdamond']);

/**
 * A load process's output. JSON has no NaN (CPU per 2xx response when there was none, a
 * percentile of no samples): it arrives as null, and is turned back into NaN everywhere except
 * in the fields where null means "does not apply".
 */
export function parseOutcome(text: string): LoadOutcome {
  return JSON.parse(text, (key, value: unknown) => (value === null && !NULLABLE.has(key) ? Number.NaN : value)) as LoadOutcome;
}

const SELF = fileURLToPath(import.meta.url);

export interface LoadProcess {
  /** The load process's pid (to count its CPU beside another's). */
  pid: number;
  /** Settles once the process has read its job and is starting the load, or has ended. */
  started: Promise<void>;
  /** The run's outcome; rejects with the process's output if it fails or is stopped. */
  done: Promise<LoadOutcome>;
  /** Ends the run early (a run beside it failed); `done` then rejects. */
  stop: () => void;
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
    const fail = (error: Error): void => {
      markStarted();
      reject(error);
    };
    child.stdout.on('data', (chunk: Buffer) => out.push(chunk));
    child.stderr.on('data', (chunk: Buffer) => {
      err += chunk.toString();
      if (err.includes(STARTED)) markStarted();
    });
    child.once('error', fail);
    child.once('close', (code, signal) => {
      if (code !== 0) {
        fail(new Error(`load process ${signal ? `stopped by ${signal}` : `exited ${code}`}:\n${err}`));
        return;
      }
      markStarted();
      try {
        resolve(parseOutcome(Buffer.concat(out).toString()));
      } catch (error) {
        reject(new Error(`load process wrote no result (${(error as Error).message}):\n${err}`));
      }
    });
  });
  // The job (with every request body) outgrows a pipe's buffer: a process that dies before
  // reading it all breaks the pipe, and 'close' reports why.
  child.stdin.on('error', () => {});
  child.stdin.end(JSON.stringify(job));
  return { pid: child.pid ?? 0, started, done, stop: () => void child.kill('SIGTERM') };
}

async function main(): Promise<void> {
  const input: Buffer[] = [];
  for await (const chunk of process.stdin) input.push(chunk as Buffer);
  const job = JSON.parse(Buffer.concat(input).toString()) as LoadJob;
  const cpu = new CpuMeter(job.serverPid, job.driverPids ?? []);
  process.stderr.write(STARTED);
  const samples: number[] = [];
  const result = job.kind === 'open'
    ? await openLoop({ ...job.options, cpu, samples })
    : await closedLoop({ ...job.options, cpu });
  process.stdout.write(JSON.stringify({ result, samples } satisfies LoadOutcome));
}

if (process.argv[1] === SELF) await main();
