import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
// @ts-expect-error plain JavaScript run by npm at install; its shapes are asserted here.
import { PATCHES, PatchError, applyPatches, patchText } from '../../bin/patch-dependencies.js';

interface Patch { pkg: string; version: string; file: string; from: string; to: string }
const patches = PATCHES as Patch[];
const apply = applyPatches as (nodeModules: string) => string[];
const patch = patchText as (text: string, p: Patch) => { text: string; changed: boolean };

const dirs: string[] = [];
afterEach(() => {
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
});

/** A node_modules holding each patched package at `version` with `body` around its original text. */
function fakeNodeModules(version: (p: Patch) => string, body: (p: Patch) => string): string {
  const root = mkdtempSync(path.join(os.tmpdir(), 'writ-patch-'));
  dirs.push(root);
  for (const p of patches) {
    const file = path.join(root, p.pkg, p.file);
    mkdirSync(path.dirname(file), { recursive: true });
    writeFileSync(path.join(root, p.pkg, 'package.json'), JSON.stringify({ name: p.pkg, version: version(p) }));
    writeFileSync(file, body(p));
  }
  return root;
}

describe('bin/patch-dependencies.js', () => {
  it('replaces the original text once and leaves the rest of the file as it was', () => {
    const root = fakeNodeModules((p) => p.version, (p) => `// head\n${p.from}\n// tail\n`);
    const lines = apply(root);
    expect(lines.every((l) => l.includes(': patched'))).toBe(true);
    for (const p of patches) {
      expect(readFileSync(path.join(root, p.pkg, p.file), 'utf8')).toBe(`// head\n${p.to}\n// tail\n`);
    }
  });

  it('changes nothing on a second run', () => {
    const root = fakeNodeModules((p) => p.version, (p) => p.from);
    apply(root);
    const lines = apply(root);
    expect(lines.every((l) => l.includes('already patched'))).toBe(true);
    for (const p of patches) expect(readFileSync(path.join(root, p.pkg, p.file), 'utf8')).toBe(p.to);
  });

  it('refuses another version of the package', () => {
    const root = fakeNodeModules((p) => `${p.version}-next`, (p) => p.from);
    expect(() => apply(root)).toThrow(PatchError as new () => Error);
    for (const p of patches) expect(readFileSync(path.join(root, p.pkg, p.file), 'utf8')).toBe(p.from);
  });

  it('refuses text that changed, or occurs twice', () => {
    for (const p of patches) {
      expect(() => patch(p.from.replace(/\w+/, (word) => `${word}_changed`), p)).toThrow(/not there exactly once/);
      expect(() => patch(`${p.from}\n${p.from}`, p)).toThrow(/not there exactly once/);
    }
  });

  it('runs as npm runs it, through a symlinked path too, and fails the install on another version', () => {
    const script = path.resolve(import.meta.dirname, '../../bin/patch-dependencies.js');
    const project = (version: (p: Patch) => string): string => {
      const root = mkdtempSync(path.join(os.tmpdir(), 'writ-patch-project-'));
      dirs.push(root);
      mkdirSync(path.join(root, 'bin'));
      copyFileSync(script, path.join(root, 'bin', 'patch-dependencies.js'));
      const nodeModules = fakeNodeModules(version, (p) => p.from);
      symlinkSync(nodeModules, path.join(root, 'node_modules'));
      return root;
    };

    const ok = project((p) => p.version);
    const link = path.join(ok, 'linked-patch.js');
    symlinkSync(path.join(ok, 'bin', 'patch-dependencies.js'), link);
    const run = spawnSync(process.execPath, [link], { cwd: ok, encoding: 'utf8' });
    expect(run.status).toBe(0);
    expect(run.stdout).toContain(': patched');
    for (const p of patches) expect(readFileSync(path.join(ok, 'node_modules', p.pkg, p.file), 'utf8')).toBe(p.to);

    const stale = project((p) => `${p.version}-next`);
    const refused = spawnSync(process.execPath, ['bin/patch-dependencies.js'], { cwd: stale, encoding: 'utf8' });
    expect(refused.status).toBe(1);
    expect(refused.stderr).toMatch(/the patch is for/);
  });

  it('is in effect in the installed packages', () => {
    const root = path.resolve(import.meta.dirname, '../..');
    for (const p of patches) {
      const installed = readFileSync(path.join(root, 'node_modules', p.pkg, p.file), 'utf8');
      expect(installed).toContain(p.to);
      expect(installed).not.toContain(p.from);
    }
  });
});
