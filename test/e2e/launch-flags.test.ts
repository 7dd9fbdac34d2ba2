import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { missingServingFlags, SERVING_NODE_FLAGS } from '../../src/cli/heap-tuning.ts';
import { freePort } from '../support/harness.ts';
import { MAIN, ROOT } from '../support/cli.ts';

const read = (file: string): string => readFileSync(path.join(ROOT, file), 'utf8');

/** The arguments `node` gets before the entry point, from a command split into words. */
function nodeFlags(words: readonly string[], entry: string): string[] {
  const node = words.indexOf('node');
  const main = words.indexOf(entry);
  expect(node, `${words.join(' ')} runs node`).toBeGreaterThanOrEqual(0);
  expect(main, `${words.join(' ')} runs ${entry}`).toBeGreaterThan(node);
  return words.slice(node + 1, main);
}

// Node options that only node's command line takes (src/cli/heap-tuning.ts) have to be on the
// command line of every way Writ is started, or the one started without them pauses ~100 ms
// whenever its load falls.
describe('the ways Writ is started pass node the serving flags', () => {
  it('has at least one flag to check', () => {
    expect(SERVING_NODE_FLAGS.length).toBeGreaterThan(0);
  });

  const scripts = (JSON.parse(read('package.json')) as { scripts: Record<string, string> }).scripts;
  it.each(['start', 'writ', 'demo'])('npm run %s', (name) => {
    expect(scripts[name], `package.json has a "${name}" script`).toBeDefined();
    expect(nodeFlags(scripts[name]!.split(/\s+/), 'src/main.ts')).toEqual(expect.arrayContaining([...SERVING_NODE_FLAGS]));
  });

  it('npm start and the Docker image serve, with no command of their own', () => {
    expect(scripts.start!.split(/\s+/).slice(-2)).toEqual(['src/main.ts', 'serve']);
    expect(/^CMD \["serve"\]$/m.test(read('Dockerfile'))).toBe(true);
  });

  it('the Dockerfile ENTRYPOINT', () => {
    const entrypoint = /^ENTRYPOINT (\[.*\])$/m.exec(read('Dockerfile'));
    expect(entrypoint).not.toBeNull();
    expect(nodeFlags(JSON.parse(entrypoint![1]!) as string[], 'src/main.ts')).toEqual(expect.arrayContaining([...SERVING_NODE_FLAGS]));
  });

  it('names what a command line lacks', () => {
    expect(missingServingFlags([...SERVING_NODE_FLAGS, '--enable-source-maps'])).toEqual([]);
    expect(missingServingFlags(['--enable-source-maps'])).toEqual([...SERVING_NODE_FLAGS]);
  });
});

describe('writ serve started another way', () => {
  const dirs: string[] = [];
  afterAll(() => {
    for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
  });

  /** Starts `writ serve` on a fresh embedded database with these node flags; its log once ready. */
  async function serveLog(nodeFlags: readonly string[]): Promise<string> {
    const dataDir = mkdtempSync(path.join(tmpdir(), 'writ-flags-'));
    dirs.push(dataDir);
    const port = await freePort();
    const env = { PATH: process.env.PATH ?? '', WRIT_DATA_DIR: dataDir, PORT: String(port), WRIT_ISSUER: `http://localhost:${port}`, LOG_LEVEL: 'warn', WRIT_METRICS_ADDR: '127.0.0.1:0' };
    const server = spawn(process.execPath, [...nodeFlags, MAIN, 'serve'], { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let log = '';
    server.stdout.on('data', (d: Buffer) => { log += d.toString(); });
    server.stderr.on('data', (d: Buffer) => { log += d.toString(); });
    const exited = new Promise<number | null>((resolve) => server.on('close', resolve));
    try {
      await expect.poll(async () => (await fetch(`http://127.0.0.1:${port}/healthz`).catch(() => undefined))?.status, { timeout: 30_000, interval: 200 }).toBe(200);
    } finally {
      server.kill('SIGTERM');
    }
    expect(await exited).toBe(0);
    return log;
  }

  it('warns at start, naming the flag and how to start it, and serves all the same', async () => {
    const log = await serveLog([]);
    const warning = log.split('\n').find((line) => line.includes('was started without'));
    expect(warning, log).toBeDefined();
    const entry = JSON.parse(warning!) as { level: number; missing: string[]; msg: string };
    expect(entry.level).toBe(40);
    expect(entry.missing).toEqual([...SERVING_NODE_FLAGS]);
    expect(entry.msg).toContain(`node ${SERVING_NODE_FLAGS.join(' ')} src/main.ts serve`);
  }, 60_000);

  it('says nothing of it when started with the flags', async () => {
    const log = await serveLog(SERVING_NODE_FLAGS);
    expect(log).not.toContain('was started without');
  }, 60_000);
});
