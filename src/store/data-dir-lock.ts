import { randomBytes } from 'node:crypto';
import { linkSync, readFileSync, unlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';

/** Another live process (or this one) has the embedded database open. */
export class DataDirLocked extends Error {
  override name = 'DataDirLocked';
}

/** Data directories this process holds: a second open here is refused without the file. */
const held = new Set<string>();

function alive(pid: number): boolean {
  // Our own pid in the file is a lock left by an earlier process that had it (a container's
  // PID 1 restarted after a kill): what this process holds is in `held`.
  if (pid === process.pid) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    // EPERM: it exists, under another user.
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * PGlite keeps no lock of its own: two processes opening one data directory both write to it,
 * and committed rows are lost. Whoever opens it first holds `<dir>/lock` (its pid) until it
 * closes; a lock left by a process that died is taken over. The file appears with its pid
 * already in it (written aside, then linked into place), so nobody reads it empty.
 */
export function lockDataDir(dir: string): () => void {
  const resolved = path.resolve(dir);
  if (held.has(resolved)) throw new DataDirLocked(`the embedded database in ${dir} is already open in this process`);
  const file = path.join(resolved, 'lock');
  const aside = path.join(resolved, `lock.${process.pid}.${randomBytes(4).toString('hex')}`);
  writeFileSync(aside, String(process.pid), { mode: 0o600 });
  try {
    for (let attempt = 0; attempt < 3; attempt += 1) {
      try {
        linkSync(aside, file);
        held.add(resolved);
        return () => {
          held.delete(resolved);
          try {
            if (readFileSync(file, 'utf8') === String(process.pid)) unlinkSync(file);
          } catch {
            // Already gone.
          }
        };
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      }
      const content = readFileSync(file, 'utf8');
      const holder = Number.parseInt(content, 10);
      if (Number.isInteger(holder) && holder > 0 && alive(holder)) {
        throw new DataDirLocked(`the embedded database in ${dir} is open in process ${holder} (writ serve?); stop it, or run this while it serves so the command goes through it`);
      }
      // Stale: removed only if it is still the one read (another process may have taken it over).
      if (readFileSync(file, 'utf8') === content) unlinkSync(file);
    }
    throw new DataDirLocked(`could not take the lock on the embedded database in ${dir}`);
  } finally {
    unlinkSync(aside);
  }
}
