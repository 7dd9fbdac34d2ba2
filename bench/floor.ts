/**
 * The floor server (docs: bench/README.md): the least work any token exchange over HTTP has to do
 * on this machine, with nothing of Writ in it. Bare Koa 3 on one Node process, and per request:
 *
 *   - the same form parse as Writ's (oidc-provider reads the raw body with a 56 KiB cap and runs
 *     `querystring.parse`);
 *   - one ES256 verify of `subject_token` with jose (issuer, audience, algorithm and typ checks);
 *   - one ES256 sign of an RFC 9068 `at+jwt` with a nested `act`;
 *   - one awaited INSERT of an audit row into the same PostgreSQL database (pg.Pool, max 16,
 *     Writ's pool size), before the response leaves.
 *
 * No client authentication, no policy, no lineage, no revocation checks: Writ's throughput
 * divided by this one is what all of those cost together.
 *
 * Run as a child process by bench/run.ts: `node bench/floor.ts` with FLOOR_PORT, DATABASE_URL,
 * FLOOR_ISSUER, FLOOR_AUDIENCE and FLOOR_ISSUER_JWK (the upstream IdP's public key, JSON) set.
 * Prints `listening <url>` on stdout once ready; exits on SIGTERM.
 */
import { randomUUID } from 'node:crypto';
import * as querystring from 'node:querystring';
import type { IncomingMessage } from 'node:http';
import { CompactSign, generateKeyPair, importJWK, jwtVerify, type CryptoKey, type JWK } from 'jose';
import Koa from 'koa';
import pg from 'pg';

const encoder = new TextEncoder();

const LIMIT = 56 * 1024;

function env(name: string): string {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is required`);
  return value;
}

/** oidc-provider's selective_body.js, reduced to what a form POST needs. */
async function readForm(req: IncomingMessage, length: number | undefined): Promise<Record<string, string | string[] | undefined>> {
  if (length !== undefined && length > LIMIT) throw new Error('request entity too large');
  const chunks: Buffer[] = [];
  let received = 0;
  for await (const chunk of req.iterator({ destroyOnReturn: false }) as AsyncIterable<Buffer>) {
    received += chunk.length;
    if (received > LIMIT) throw new Error('request entity too large');
    chunks.push(chunk);
  }
  return querystring.parse(Buffer.concat(chunks, received).toString());
}

export async function startFloor(options: {
  port: number;
  databaseUrl: string;
  issuer: string;
  audience: string;
  issuerJwk: JWK;
}): Promise<{ url: string; close: () => Promise<void> }> {
  const pool = new pg.Pool({ connectionString: options.databaseUrl, max: 16 });
  // Shaped like Writ's audit_events row.
  await pool.query(`
    CREATE TABLE IF NOT EXISTS floor_audit (
      jti uuid PRIMARY KEY,
      event_type text NOT NULL,
      client_id text,
      subject text,
      occurred_at timestamptz NOT NULL,
      expires_at timestamptz,
      recorded_at timestamptz NOT NULL DEFAULT now(),
      details jsonb NOT NULL
    )`);
  await pool.query('CREATE INDEX IF NOT EXISTS floor_audit_occurred ON floor_audit (occurred_at)');
  await pool.query('CREATE INDEX IF NOT EXISTS floor_audit_client ON floor_audit (client_id, occurred_at)');

  const verifyKey = await importJWK(options.issuerJwk, 'ES256') as CryptoKey;
  const { privateKey: signKey } = await generateKeyPair('ES256');
  const kid = 'floor-1';
  const selfIssuer = `http://127.0.0.1:${options.port}`;

  const app = new Koa();
  app.silent = true;
  app.use(async (ctx) => {
    if (ctx.method !== 'POST' || ctx.path !== '/token') {
      ctx.status = 404;
      return;
    }
    const length = ctx.request.length;
    let form: Record<string, string | string[] | undefined>;
    try {
      form = await readForm(ctx.req, length === undefined ? undefined : Number(length));
    } catch {
      ctx.status = 400;
      ctx.body = { error: 'invalid_request' };
      return;
    }
    const subjectToken = form.subject_token;
    if (typeof subjectToken !== 'string' || typeof form.audience !== 'string') {
      ctx.status = 400;
      ctx.body = { error: 'invalid_request' };
      return;
    }
    let claims: Record<string, unknown>;
    try {
      ({ payload: claims } = await jwtVerify(subjectToken, verifyKey, {
        issuer: options.issuer, audience: options.audience, algorithms: ['ES256'], typ: 'at+jwt',
        requiredClaims: ['iss', 'sub', 'aud', 'exp', 'iat'],
      }));
    } catch {
      ctx.status = 400;
      ctx.body = { error: 'invalid_request' };
      return;
    }
    const now = Math.floor(Date.now() / 1000);
    const exp = now + 120;
    const jti = randomUUID();
    const act = { sub: 'planner-agent' };
    // Signed as Writ signs (jose's CompactSign over claims built here), so neither pays for
    // SignJWT's copy of the claims.
    const accessToken = await new CompactSign(encoder.encode(JSON.stringify({
      iss: selfIssuer, sub: claims.sub as string, aud: form.audience, iat: now, exp, jti,
      client_id: 'planner-agent', scope: 'payment.read',
      sub_id: { format: 'iss_sub', iss: claims.iss, sub: claims.sub }, act,
    }))).setProtectedHeader({ alg: 'ES256', typ: 'at+jwt', kid }).sign(signKey);
    await pool.query(
      'INSERT INTO floor_audit (jti, event_type, client_id, subject, occurred_at, expires_at, details) VALUES ($1, $2, $3, $4, to_timestamp($5), to_timestamp($6), $7)',
      [jti, 'exchange.granted', 'planner-agent', `${String(claims.iss)}|${String(claims.sub)}`, now, exp,
        JSON.stringify({ rule: 'planner-reads-payments', requested_scope: null, scope: ['payment.read'], act, exp, depth: 1, kid })],
    );
    ctx.set('Cache-Control', 'no-store');
    ctx.set('Pragma', 'no-cache');
    ctx.body = {
      access_token: accessToken,
      issued_token_type: 'urn:ietf:params:oauth:token-type:access_token',
      token_type: 'Bearer',
      expires_in: exp - now,
      scope: 'payment.read',
    };
  });

  const server = app.listen(options.port, '127.0.0.1');
  await new Promise<void>((resolve, reject) => {
    server.once('listening', resolve);
    server.once('error', reject);
  });
  return {
    url: selfIssuer,
    async close() {
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeIdleConnections();
      });
      await pool.end();
    },
  };
}

if (import.meta.main) {
  const floor = await startFloor({
    port: Number(env('FLOOR_PORT')),
    databaseUrl: env('DATABASE_URL'),
    issuer: env('FLOOR_ISSUER'),
    audience: env('FLOOR_AUDIENCE'),
    issuerJwk: JSON.parse(env('FLOOR_ISSUER_JWK')) as JWK,
  });
  process.stdout.write(`listening ${floor.url}\n`);
  const stop = (): void => {
    void floor.close().then(() => process.exit(0));
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
}
