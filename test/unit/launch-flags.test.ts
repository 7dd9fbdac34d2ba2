import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { SERVING_NODE_FLAGS } from '../../src/cli/heap-tuning.ts';

const ROOT = path.resolve(import.meta.dirname, '../..');
const read = (file: string): string => readFileSync(path.join(ROOT, file), 'utf8');

/** The arguments `node` gets before the entry point, from a command split into words. */
function nodeFlags(words: readonly string[], entry: string): string[] {
  const node = words.indexOf('node');
  const main = words.indexOf(entry);
  expect(node, `${words.join(' ')} runs node`).toBeGreaterThanOrEqual(0);
  expect(main, `${words.join(' ')} runs ${entry}`).toBeGreaterThan(node);
  return words.slice(node + 1, main);
}

// Node options that cannot be set from inside the process (src/cli/heap-tuning.ts) have to be on
// the command line of every way Writ is started, or the one started without them pauses ~100 ms
// whenever its load falls.
describe('every shipped launcher starts node with the serving flags', () => {
  it('has at least one flag to check', () => {
    expect(SERVING_NODE_FLAGS.length).toBeGreaterThan(0);
  });

  const scripts = (JSON.parse(read('package.json')) as { scripts: Record<string, string> }).scripts;
  it.each(['start', 'writ', 'demo'])('npm run %s', (name) => {
    expect(scripts[name], `package.json has a "${name}" script`).toBeDefined();
    expect(nodeFlags(scripts[name]!.split(/\s+/), 'src/main.ts')).toEqual(expect.arrayContaining([...SERVING_NODE_FLAGS]));
  });

  it('the Dockerfile ENTRYPOINT', () => {
    const entrypoint = /^ENTRYPOINT (\[.*\])$/m.exec(read('Dockerfile'));
    expect(entrypoint).not.toBeNull();
    expect(nodeFlags(JSON.parse(entrypoint![1]!) as string[], 'src/main.ts')).toEqual(expect.arrayContaining([...SERVING_NODE_FLAGS]));
  });

  it.each(['bin/writ.js', 'src/main.ts'])('the shebang of %s', (file) => {
    const shebang = read(file).split('\n', 1)[0]!;
    expect(shebang.startsWith('#!/usr/bin/env -S ')).toBe(true);
    expect(nodeFlags(shebang.slice('#!/usr/bin/env -S '.length).split(/\s+/).concat(file), file)).toEqual(expect.arrayContaining([...SERVING_NODE_FLAGS]));
  });

  it('bin/writ.js runs as a command, and node accepts the flags its shebang gives', () => {
    // The node first on PATH is the one this test runs on, as it is for `npx writ`.
    const PATH = `${path.dirname(process.execPath)}${path.delimiter}${process.env.PATH ?? ''}`;
    const run = spawnSync(path.join(ROOT, 'bin/writ.js'), ['help'], { cwd: ROOT, env: { PATH }, encoding: 'utf8', timeout: 30_000 });
    expect(run.stderr).not.toMatch(/bad option|not allowed/);
    expect(run.status).toBe(0);
    expect(run.stdout).toMatch(/^usage: writ /);
  });
});
