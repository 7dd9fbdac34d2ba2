import { createHash, createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import type { Knex } from 'knex';

/**
 * Getting a human into the chain view without pasting tokens: `writ audit open` creates a
 * one-time login token (only its SHA-256 is stored), the browser trades it once for a
 * stateless session cookie signed with HMAC-SHA-256.
 */

export const DEFAULT_LOGIN_TTL_SECONDS = 300;
export const MAX_LOGIN_TTL_SECONDS = 3600;
export const DEFAULT_SESSION_TTL_SECONDS = 8 * 60 * 60;

/** 32 random bytes, base64url: exactly 43 characters. */
const TOKEN = /^[A-Za-z0-9_-]{43}$/;

function hashToken(token: string): string {
  return createHash('sha256').update(token, 'utf8').digest('hex');
}

export interface LoginToken {
  token: string;
  expiresAt: Date;
}

export async function createLoginToken(
  knex: Knex,
  options: { createdBy: string; ttlSeconds?: number },
): Promise<LoginToken> {
  const ttl = options.ttlSeconds ?? DEFAULT_LOGIN_TTL_SECONDS;
  if (!Number.isInteger(ttl) || ttl < 1 || ttl > MAX_LOGIN_TTL_SECONDS) {
    throw new RangeError(`ttlSeconds must be an integer from 1 to ${MAX_LOGIN_TTL_SECONDS}`);
  }
  if (options.createdBy.length === 0 || options.createdBy.length > 200) throw new RangeError('createdBy must be 1 to 200 characters');
  const token = randomBytes(32).toString('base64url');
  // The database clock decides expiry, as it does when the token is consumed.
  const result = await knex.raw<{ rows: Array<{ expires_at: Date | string }> }>(`
    INSERT INTO audit_view_logins (token_hash, expires_at, created_by)
    VALUES (?, now() + CAST(? AS integer) * interval '1 second', ?)
    RETURNING expires_at`, [hashToken(token), ttl, options.createdBy]);
  // Rows past any use are of no further interest; keep the table small.
  await knex.raw(`DELETE FROM audit_view_logins WHERE expires_at < now() - interval '1 day'`);
  const expiresAt = result.rows[0]!.expires_at;
  return { token, expiresAt: expiresAt instanceof Date ? expiresAt : new Date(expiresAt) };
}

/**
 * Marks the token used if it exists, is unused and has not expired, in one statement: of any
 * number of concurrent consumers (on any instance) exactly one gets it. Returns who created
 * it, or undefined.
 */
export async function consumeLoginTokenFor(knex: Knex, token: string): Promise<{ createdBy: string } | undefined> {
  if (typeof token !== 'string' || !TOKEN.test(token)) return undefined;
  const result = await knex.raw<{ rows: Array<{ created_by: string }> }>(`
    UPDATE audit_view_logins SET used_at = now()
    WHERE token_hash = ? AND used_at IS NULL AND expires_at > now()
    RETURNING created_by`, [hashToken(token)]);
  const row = result.rows[0];
  return row ? { createdBy: row.created_by } : undefined;
}

export async function consumeLoginToken(knex: Knex, token: string): Promise<boolean> {
  return (await consumeLoginTokenFor(knex, token)) !== undefined;
}

/** Domain separation: this key signs nothing else with this prefix. */
const SESSION_LABEL = 'writ/audit-view/session/v1\0';
const CLOCK_LEEWAY_SECONDS = 60;
const SESSION = /^v1\.([1-9][0-9]{0,11})\.([A-Za-z0-9_-]{43})$/;

function sessionMac(key: Buffer, exp: string): string {
  return createHmac('sha256', key).update(SESSION_LABEL).update(exp).digest('base64url');
}

function seconds(now: Date | number): number {
  return Math.floor((now instanceof Date ? now.getTime() : now) / 1000);
}

/** A session cookie value, `v1.<exp unix seconds>.<HMAC-SHA-256 base64url>`. */
export function signSession(key: Buffer, now: Date | number, ttlSeconds = DEFAULT_SESSION_TTL_SECONDS): string {
  if (key.length < 32) throw new RangeError('the session key must be at least 32 bytes');
  if (!Number.isInteger(ttlSeconds) || ttlSeconds < 1) throw new RangeError('ttlSeconds must be a positive integer');
  const exp = String(seconds(now) + ttlSeconds);
  return `v1.${exp}.${sessionMac(key, exp)}`;
}

/**
 * True for a cookie this key signed that has not expired (and whose expiry is no further away
 * than `maxTtlSeconds`, give or take a minute, so no stray long-lived value is ever honoured).
 */
export function verifySession(
  key: Buffer,
  cookie: string | undefined,
  now: Date | number,
  maxTtlSeconds = DEFAULT_SESSION_TTL_SECONDS,
): boolean {
  if (typeof cookie !== 'string' || cookie.length > 80) return false;
  const match = SESSION.exec(cookie);
  if (!match) return false;
  const exp = Number(match[1]);
  const presented = Buffer.from(match[2]!);
  const expected = Buffer.from(sessionMac(key, match[1]!));
  const macOk = presented.length === expected.length && timingSafeEqual(presented, expected);
  const t = seconds(now);
  // A minute of leeway for instances whose clocks differ a little.
  return macOk && exp > t && exp <= t + maxTtlSeconds + CLOCK_LEEWAY_SECONDS;
}
