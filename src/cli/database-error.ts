/**
 * A failure to reach or use the database, as an operator needs it said: which database (never
 * its password), why, and an exit code a process manager can tell from a crash.
 */

/** sysexits.h: the service is unavailable (it may come back), or the configuration is wrong. */
const EX_UNAVAILABLE = 69;
const EX_CONFIG = 78;

/**
 * A server that could not be reached at all (Node's codes), or that answered it cannot take a
 * session now: starting up or shutting down (57P01–57P03), or out of connections (53300).
 */
const UNREACHABLE = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EHOSTUNREACH', 'ENETUNREACH', 'ETIMEDOUT', 'ECONNRESET', 'EAI_AGAIN', '57P01', '57P02', '57P03', '53300']);

/**
 * PostgreSQL's SQLSTATEs that mean DATABASE_URL names something that is not there or not
 * allowed: no such database (3D000), a failed or refused login (28000, 28P01).
 */
const MISCONFIGURED = new Set(['3D000', '28000', '28P01']);

/** Where DATABASE_URL points, without its credentials. */
export function databaseLocation(databaseUrl: string): string {
  try {
    const url = new URL(databaseUrl);
    // A password with a raw '/' is misread as the end of the host: its tail then sits in the
    // path, before an '@'. Say nothing of such a URL rather than part of its password.
    if (url.pathname.includes('@') || url.pathname.includes('%40')) return 'DATABASE_URL';
    return `${url.hostname}${url.port ? `:${url.port}` : ''}${url.pathname}`;
  } catch {
    return 'DATABASE_URL';
  }
}

export function databaseFailure(err: unknown, databaseUrl: string | undefined): { message: string; exitCode: number } | undefined {
  if (databaseUrl === undefined || typeof err !== 'object' || err === null) return undefined;
  const code = (err as { code?: unknown }).code;
  if (typeof code !== 'string') return undefined;
  const where = `the database at DATABASE_URL (${databaseLocation(databaseUrl)})`;
  const why = (err as Error).message;
  if (UNREACHABLE.has(code) || code.startsWith('08')) return { message: `cannot reach ${where}: ${why}`, exitCode: EX_UNAVAILABLE };
  if (MISCONFIGURED.has(code)) return { message: `cannot use ${where}: ${why}`, exitCode: EX_CONFIG };
  return undefined;
}
