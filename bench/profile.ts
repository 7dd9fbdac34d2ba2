/**
 * Summarises a V8 `.cpuprofile` (as written by `node --cpu-prof`): self time by function and by
 * where the code lives (Writ's own modules, each dependency, Node internals, GC), idle excluded.
 *
 * `node bench/profile.ts FILE.cpuprofile [top]`; bench/run.ts --cpu-prof calls `summariseProfile`.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
}

interface ProfileNode {
  id: number;
  callFrame: CallFrame;
  children?: number[];
}

interface CpuProfile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

export interface ProfileSummary {
  /** Milliseconds of samples that were not idle. */
  busyMs: number;
  idleMs: number;
  byFunction: Array<{ name: string; where: string; ms: number; percent: number }>;
  byArea: Array<{ area: string; ms: number; percent: number }>;
  /** Time with the function anywhere on the stack (counted once per sample): Writ's own code and the main dependencies. */
  inclusive: Array<{ name: string; where: string; ms: number; percent: number }>;
}

/** Frames worth an inclusive figure: Writ's modules and the libraries on the request path. */
function isInteresting(frame: CallFrame): boolean {
  const url = frame.url;
  if (url === '' || frame.functionName === '' || frame.functionName === '(anonymous)') return false;
  if (url.includes('/node_modules/')) return /\/node_modules\/(oidc-provider|jose|knex|pg|koa|koa-compose|@koa\/[^/]+|ajv|pino)\//.test(url);
  return !url.startsWith('node:') && url.includes('/src/');
}

const ROOT = path.resolve(import.meta.dirname, '..');

function areaOf(frame: CallFrame): string {
  const { url, functionName } = frame;
  if (url === '') return functionName.startsWith('(') ? functionName : '(native)';
  if (url.startsWith('node:')) return `node:${url.slice(5).split('/')[0]}`;
  const file = url.startsWith('file://') ? decodeURIComponent(new URL(url).pathname) : url;
  const nm = file.lastIndexOf('/node_modules/');
  if (nm >= 0) {
    const rest = file.slice(nm + '/node_modules/'.length).split('/');
    return rest[0]!.startsWith('@') ? `${rest[0]}/${rest[1]}` : rest[0]!;
  }
  const relative = path.relative(ROOT, file);
  if (!relative.startsWith('..')) {
    const parts = relative.split('/');
    return parts.length > 2 ? `${parts[0]}/${parts[1]}` : relative;
  }
  return file;
}

function whereOf(frame: CallFrame): string {
  const { url } = frame;
  if (url === '') return '';
  const file = url.startsWith('file://') ? decodeURIComponent(new URL(url).pathname) : url;
  const nm = file.lastIndexOf('/node_modules/');
  const shown = nm >= 0 ? file.slice(nm + '/node_modules/'.length) : path.relative(ROOT, file).startsWith('..') ? file : path.relative(ROOT, file);
  return `${shown}:${frame.lineNumber + 1}`;
}

/**
 * `servingOnly`: ignore everything before the first sample with koa's `handleRequest` on the
 * stack, i.e. start-up (module loading, type stripping, migrations, policy apply).
 */
export function summariseProfile(file: string, top = 25, options: { servingOnly?: boolean } = {}): ProfileSummary {
  const profile = JSON.parse(readFileSync(file, 'utf8')) as CpuProfile;
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const parentOf = new Map<number, number>();
  for (const node of profile.nodes) for (const child of node.children ?? []) parentOf.set(child, node.id);
  let first = 0;
  if (options.servingOnly) {
    const serving = new Set<number>();
    for (const node of profile.nodes) {
      if (node.callFrame.functionName === 'handleRequest' && node.callFrame.url.includes('/koa/')) serving.add(node.id);
    }
    const onServingStack = (id: number): boolean => {
      for (let cur: number | undefined = id; cur !== undefined; cur = parentOf.get(cur)) if (serving.has(cur)) return true;
      return false;
    };
    first = profile.samples.findIndex(onServingStack);
    if (first < 0) first = 0;
  }
  const selfUs = new Map<number, number>();
  for (let i = first; i < profile.samples.length; i++) {
    const id = profile.samples[i]!;
    // timeDeltas[i] is the time before sample i; attribute the next delta to this sample.
    const delta = profile.timeDeltas[i + 1] ?? 0;
    selfUs.set(id, (selfUs.get(id) ?? 0) + delta);
  }
  let idleUs = 0;
  let busyUs = 0;
  const fn = new Map<string, { name: string; where: string; us: number }>();
  const area = new Map<string, number>();
  for (const [id, us] of selfUs) {
    const node = byId.get(id);
    if (!node) continue;
    const frame = node.callFrame;
    if (frame.functionName === '(idle)') {
      idleUs += us;
      continue;
    }
    busyUs += us;
    const where = whereOf(frame);
    const key = `${frame.functionName}@${where}`;
    const entry = fn.get(key) ?? { name: frame.functionName || '(anonymous)', where, us: 0 };
    entry.us += us;
    fn.set(key, entry);
    const a = areaOf(frame);
    area.set(a, (area.get(a) ?? 0) + us);
  }
  // Inclusive: walk each busy sample's stack once.
  const parent = parentOf;
  const inclusive = new Map<string, { name: string; where: string; us: number }>();
  for (const [id, us] of selfUs) {
    const leaf = byId.get(id);
    if (!leaf || leaf.callFrame.functionName === '(idle)') continue;
    const seen = new Set<string>();
    for (let cur: number | undefined = id; cur !== undefined; cur = parent.get(cur)) {
      const frame = byId.get(cur)!.callFrame;
      if (!isInteresting(frame)) continue;
      const where = whereOf(frame);
      const key = `${frame.functionName}@${where}`;
      if (seen.has(key)) continue;
      seen.add(key);
      const entry = inclusive.get(key) ?? { name: frame.functionName, where, us: 0 };
      entry.us += us;
      inclusive.set(key, entry);
    }
  }
  const pct = (us: number): number => Math.round((us / busyUs) * 1000) / 10;
  return {
    busyMs: Math.round(busyUs / 1000),
    idleMs: Math.round(idleUs / 1000),
    byFunction: [...fn.values()].sort((a, b) => b.us - a.us).slice(0, top)
      .map((e) => ({ name: e.name, where: e.where, ms: Math.round(e.us / 1000), percent: pct(e.us) })),
    byArea: [...area.entries()].sort((a, b) => b[1] - a[1]).slice(0, top)
      .map(([name, us]) => ({ area: name, ms: Math.round(us / 1000), percent: pct(us) })),
    inclusive: [...inclusive.values()].sort((a, b) => b.us - a.us).slice(0, top)
      .map((e) => ({ name: e.name, where: e.where, ms: Math.round(e.us / 1000), percent: pct(e.us) })),
  };
}

export function formatProfile(summary: ProfileSummary): string {
  const lines = [`CPU profile: ${summary.busyMs} ms busy, ${summary.idleMs} ms idle (main thread only; WebCrypto runs on the threadpool and shows up only as its callbacks)`];
  lines.push('  self time by area:');
  for (const a of summary.byArea) lines.push(`    ${a.percent.toFixed(1).padStart(5)}%  ${String(a.ms).padStart(6)} ms  ${a.area}`);
  lines.push('  inclusive (on the stack), Writ and request-path libraries:');
  for (const f of summary.inclusive) lines.push(`    ${f.percent.toFixed(1).padStart(5)}%  ${String(f.ms).padStart(6)} ms  ${f.name}  ${f.where}`);
  lines.push('  top functions by self time:');
  for (const f of summary.byFunction) lines.push(`    ${f.percent.toFixed(1).padStart(5)}%  ${String(f.ms).padStart(6)} ms  ${f.name}  ${f.where}`);
  return lines.join('\n');
}

if (import.meta.main) {
  const file = process.argv[2];
  if (!file) {
    process.stderr.write('usage: node bench/profile.ts FILE.cpuprofile [top]\n');
    process.exit(2);
  }
  process.stdout.write(`${formatProfile(summariseProfile(file, Number(process.argv[3] ?? 25)))}\n`);
}
