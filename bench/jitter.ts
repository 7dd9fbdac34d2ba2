/**
 * The machine's own latency floor: how long a process that does almost nothing is held up.
 *
 * A child process pre-faults a heap-sized buffer, then every millisecond touches a few hundred
 * of its pages and notes how late its timer fired. On an idle, well-behaved machine it is never
 * late by more than a millisecond or two. On these VMs the kernel's DAMON memory reclaim
 * (`kdamond`, sampling physical pages every ~0.5 s) holds up any process that touches memory,
 * for several milliseconds each time and longer under load. No server on the box can answer
 * faster than that, so the bench prints it beside the p99 targets.
 *
 * `node bench/jitter.ts [seconds] [MiB]` runs the probe alone and prints its JSON.
 */
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { kdamondNs, percentile } from './load.ts';

export interface Jitter {
  seconds: number;
  /** Timer lateness beyond its 1 ms period, ms. */
  stall_ms: { p99: number; p999: number; max: number };
  /** Stalls of 3 ms or more, per second. */
  stalls_3ms_per_s: number;
  /** CPU of the kernel's DAMON threads over the same time, % of one core (null: none here). */
  kdamond_percent: number | null;
}

/** The probe itself (runs in the child). */
async function probe(seconds: number, mib: number): Promise<Omit<Jitter, 'kdamond_percent'>> {
  const heap = Buffer.alloc(mib * 1024 * 1024);
  heap.fill(1);
  const late: number[] = [];
  let cursor = 0;
  const started = performance.now();
  let last = started;
  await new Promise<void>((resolve) => {
    const tick = (): void => {
      const now = performance.now();
      late.push(Math.max(0, now - last - 1));
      last = now;
      for (let i = 0; i < 200; i += 1) {
        cursor = (cursor + 4096 * 7919) % heap.length;
        heap[cursor] = (heap[cursor]! + 1) & 0xff;
      }
      if (now - started < seconds * 1000) setTimeout(tick, 1);
      else resolve();
    };
    setTimeout(tick, 1);
  });
  const sorted = [...late].sort((a, b) => a - b);
  const round = (n: number): number => Math.round(n * 10) / 10;
  return {
    seconds,
    stall_ms: { p99: round(percentile(sorted, 99)), p999: round(percentile(sorted, 99.9)), max: round(sorted.at(-1) ?? 0) },
    stalls_3ms_per_s: round(late.filter((l) => l >= 3).length / seconds),
  };
}

/** Runs the probe in its own process (so the bench's event loop does not colour it). */
export async function measureJitter(seconds = 5, mib = 256): Promise<Jitter> {
  const before = kdamondNs();
  const t0 = performance.now();
  const child = spawn(process.execPath, [fileURLToPath(import.meta.url), String(seconds), String(mib)], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  child.stdout.on('data', (chunk: Buffer) => {
    out += chunk.toString();
  });
  const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
  if (code !== 0) throw new Error(`jitter probe exited with ${code}`);
  const after = kdamondNs();
  const elapsedNs = (performance.now() - t0) * 1e6;
  const result = JSON.parse(out) as Omit<Jitter, 'kdamond_percent'>;
  return {
    ...result,
    kdamond_percent: before === null || after === null ? null : Math.round(((after - before) / elapsedNs) * 1000) / 10,
  };
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const [seconds, mib] = process.argv.slice(2).map(Number);
  process.stdout.write(`${JSON.stringify(await probe(seconds || 5, mib || 256))}\n`);
}
