import type { Knex } from 'knex';
import pg from 'pg';

/**
 * A statement on the request path, run outside knex's query builder. On PostgreSQL it is a
 * named prepared statement: each pooled connection parses and plans it once, and every later
 * call sends only the parameters (no statement text, no binding rewrite). On the embedded
 * database it is the same text with the same parameters.
 *
 * The connection comes from knex's own pool, so timeouts, the pool size and the handling of
 * broken connections are the ones every other query has.
 */
export interface PreparedStatement {
  /** Unique per statement text: PostgreSQL keys prepared statements by name per connection. */
  readonly name: string;
  /** SQL with positional parameters $1…$n, each with an explicit type where it is ambiguous. */
  readonly text: string;
}

/** The least a pooled connection offers: pg.Client and PGlite both answer `query(text, values)`. */
interface TextQueryable {
  query(text: string, values: unknown[]): Promise<{ rows: unknown[] }>;
}

interface KnexClientPool {
  acquireConnection(): Promise<pg.Client | TextQueryable>;
  releaseConnection(connection: unknown): Promise<unknown>;
}

export async function runPrepared<Row>(knex: Knex, statement: PreparedStatement, values: unknown[]): Promise<Row[]> {
  const pool = knex.client as unknown as KnexClientPool;
  const connection = await pool.acquireConnection();
  try {
    const result = connection instanceof pg.Client
      ? await connection.query({ name: statement.name, text: statement.text, values })
      : await connection.query(statement.text, values);
    return result.rows as Row[];
  } finally {
    await pool.releaseConnection(connection);
  }
}
