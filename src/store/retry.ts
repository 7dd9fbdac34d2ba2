/**
 * SQLSTATE 40P01 deadlock_detected and 40001 serialization_failure: PostgreSQL rolled the
 * transaction back as the victim of a conflict, and running it again is the documented answer.
 * Grants committed together lock several parent rows `FOR SHARE` in one statement, and a
 * revocation cascade updates several rows, so the two can meet in opposite orders; PostgreSQL
 * then aborts one of them after deadlock_timeout.
 */
export function isRetryableConflict(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return code === '40P01' || code === '40001';
}

/** Runs a whole transaction again when it lost a deadlock or a serialization conflict. */
export async function retryOnConflict<T>(run: () => Promise<T>, attempts = 3): Promise<T> {
  for (let attempt = 1; ; attempt += 1) {
    try {
      return await run();
    } catch (err) {
      if (attempt >= attempts || !isRetryableConflict(err)) throw err;
    }
  }
}
