import { randomBytes } from 'node:crypto';
import { rmSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { inject } from 'vitest';
import {
  consumeLoginToken,
  consumeLoginTokenFor,
  createLoginToken,
  signSession,
  verifySession,
} from '../../src/audit/view-login.ts';
import { migrate, openDatabase, type Database } from '../../src/store/db.ts';
import { createTestDatabase } from '../support/harness.ts';

const KEY = Buffer.alloc(32, 9);
const NOW = new Date('2026-11-22T12:00:00Z');

describe('chain view session cookie', () => {
  it('verifies its own signature until it expires', () => {
    const cookie = signSession(KEY, NOW);
    expect(cookie).toMatch(/^v1\.\d+\.[A-Za-z0-9_-]{43}$/);
    expect(verifySession(KEY, cookie, NOW)).toBe(true);
    expect(verifySession(KEY, cookie, new Date(NOW.getTime() + 8 * 3600_000 - 1000))).toBe(true);
    expect(verifySession(KEY, cookie, new Date(NOW.getTime() + 8 * 3600_000))).toBe(false);
    expect(verifySession(KEY, signSession(KEY, NOW, 60), new Date(NOW.getTime() + 61_000))).toBe(false);
  });

  it('refuses tampered, foreign and malformed values', () => {
    const cookie = signSession(KEY, NOW);
    const [v, exp, mac] = cookie.split('.') as [string, string, string];
    // A later expiry with the old MAC.
    expect(verifySession(KEY, `${v}.${Number(exp) + 3600}.${mac}`, NOW)).toBe(false);
    // One character of the MAC changed.
    const flipped = `${mac.slice(0, -1)}${mac.endsWith('A') ? 'B' : 'A'}`;
    expect(verifySession(KEY, `${v}.${exp}.${flipped}`, NOW)).toBe(false);
    // Another key.
    expect(verifySession(Buffer.alloc(32, 10), cookie, NOW)).toBe(false);
    // Version, shape, length.
    expect(verifySession(KEY, `v2.${exp}.${mac}`, NOW)).toBe(false);
    expect(verifySession(KEY, `${cookie}.x`, NOW)).toBe(false);
    expect(verifySession(KEY, `${v}.${exp}.${mac}A`, NOW)).toBe(false);
    expect(verifySession(KEY, '', NOW)).toBe(false);
    expect(verifySession(KEY, undefined, NOW)).toBe(false);
    expect(verifySession(KEY, 'v1.0.', NOW)).toBe(false);
  });

  it('does not honour a validly signed value that lives longer than a session may', () => {
    const long = signSession(KEY, NOW, 30 * 24 * 3600);
    expect(verifySession(KEY, long, NOW)).toBe(false);
  });
});

function loginTests(open: () => Promise<Database>, kind: string, concurrency: number): void {
  describe(`one-time login tokens (${kind})`, () => {
    let db: Database;
    beforeAll(async () => {
      db = await open();
      await migrate(db);
    });
    afterAll(async () => {
      await db?.close();
    });

    it('stores only a hash of the token and lets it work once', async () => {
      const { token, expiresAt } = await createLoginToken(db.knex, { createdBy: 'test' });
      expect(token).toMatch(/^[A-Za-z0-9_-]{43}$/);
      expect(expiresAt.getTime() - Date.now()).toBeGreaterThan(290_000);
      expect(expiresAt.getTime() - Date.now()).toBeLessThan(310_000);
      const rows = await db.knex('audit_view_logins').select('*');
      expect(JSON.stringify(rows)).not.toContain(token);
      expect(await consumeLoginTokenFor(db.knex, token)).toEqual({ createdBy: 'test' });
      expect(await consumeLoginToken(db.knex, token)).toBe(false);
    });

    it(`gives the token to exactly one of ${concurrency} concurrent consumers`, async () => {
      const { token } = await createLoginToken(db.knex, { createdBy: 'race' });
      const results = await Promise.all(Array.from({ length: concurrency }, () => consumeLoginToken(db.knex, token)));
      expect(results.filter(Boolean)).toHaveLength(1);
    });

    it('refuses an expired token', async () => {
      const { token } = await createLoginToken(db.knex, { createdBy: 'test', ttlSeconds: 1 });
      await db.knex('audit_view_logins').update({ expires_at: db.knex.raw("now() - interval '1 second'") }).whereNull('used_at');
      expect(await consumeLoginToken(db.knex, token)).toBe(false);
    });

    it('refuses unknown and malformed tokens and odd TTLs', async () => {
      expect(await consumeLoginToken(db.knex, randomBytes(32).toString('base64url'))).toBe(false);
      expect(await consumeLoginToken(db.knex, "' OR 1=1 --")).toBe(false);
      expect(await consumeLoginToken(db.knex, '')).toBe(false);
      await expect(createLoginToken(db.knex, { createdBy: 'x', ttlSeconds: 0 })).rejects.toThrow(RangeError);
      await expect(createLoginToken(db.knex, { createdBy: 'x', ttlSeconds: 86_400 })).rejects.toThrow(RangeError);
    });
  });
}

// PostgreSQL: several pooled connections race on the same row, as separate instances would.
loginTests(async () => openDatabase({ databaseUrl: await createTestDatabase('view_login'), dataDir: '/nonexistent', poolMax: 8 }), 'PostgreSQL', 8);

// PGlite (the embedded default): the migration and the statements work there too.
const embeddedDir = path.join('/tmp', `writ-test-${inject('runId')}-view-login-${randomBytes(3).toString('hex')}`);
loginTests(async () => openDatabase({ databaseUrl: undefined, dataDir: embeddedDir }), 'PGlite', 4);
afterAll(() => rmSync(embeddedDir, { recursive: true, force: true }));
