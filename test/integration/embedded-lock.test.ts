import { spawnSync } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { DataDirLocked } from '../../src/store/data-dir-lock.ts';
import { openDatabase } from '../../src/store/db.ts';
import { tempDirs } from '../support/temp-dirs.ts';

describe('embedded database: one process at a time', () => {
  const fresh = tempDirs('writ-lock-');

  it('refuses a second open of the same data directory while the first holds it, and allows it after close', async () => {
    const dir = fresh();
    const first = await openDatabase({ databaseUrl: undefined, dataDir: dir });
    await expect(openDatabase({ databaseUrl: undefined, dataDir: dir })).rejects.toThrow(DataDirLocked);
    // The refused open left the holder's lock and database as they were.
    await first.knex.raw('CREATE TABLE t (x int)');
    await first.close();
    expect(existsSync(path.join(dir, 'lock'))).toBe(false);
    const second = await openDatabase({ databaseUrl: undefined, dataDir: dir });
    expect((await second.knex.raw<{ rows: unknown[] }>('SELECT * FROM t')).rows).toEqual([]);
    await second.close();
  });

  it('takes over a lock naming this very pid: an earlier process that had it died (a container restarted)', async () => {
    const dir = fresh();
    writeFileSync(path.join(dir, 'lock'), String(process.pid));
    const db = await openDatabase({ databaseUrl: undefined, dataDir: dir });
    await expect(openDatabase({ databaseUrl: undefined, dataDir: dir })).rejects.toThrow(DataDirLocked);
    await db.close();
  });

  it('takes over a lock left by a process that died', async () => {
    const dir = fresh();
    const dead = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))']);
    writeFileSync(path.join(dir, 'lock'), dead.stdout.toString());
    const db = await openDatabase({ databaseUrl: undefined, dataDir: dir });
    await db.close();
  });
});
