import { closeSync, openSync, readFileSync, unlinkSync, writeSync } from 'node:fs';
import path from 'node:path';

/** Another live process has the embedded database open. */
export class DataDirLocked extends Error {
  override name = 'DataDirLocked';
}

function alive(pid: number): boolean {
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
 * closes; a lock left by a process that died is taken over.
 */
export function lockDataDir(dir: string): () => void {
  const file = path.join(dir, 'lock');
  for (let attempt = 0; attempt < 2; attempt += 1) {
    let fd: number;
    try {
      fd = openSync(file, 'wx', 0o600);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      const holder = Number.parseInt(readFileSync(file, 'utf8'), 10);
      if (Number.isInteger(holder) && holder > 0 && alive(holder)) {
        throw new DataDirLocked(`the embedded database in ${dir} is open in process ${holder} (writ serve?); stop it, or run this while it serves so the command goes through it`);
      }
      unlinkSync(file);
      continue;
    }
    writeSync(fd, String(process.pid));
    closeSync(fd);
    return () => {
      try {
        if (readFileSync(file, 'utf8') === String(process.pid)) unlinkSync(file);
      } catch {
        // Already gone.
      }
    };
  }
  throw new DataDirLocked(`could not take the lock on the embedded database in ${dir}`);
}
