import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import path from 'node:path';
import { exportJWK, generateKeyPair, SignJWT, type CryptoKey, type JWK, type JWTPayload } from 'jose';
import pg from 'pg';
import { inject } from 'vitest';
import { loadConfig, type Config } from '../../src/config.ts';
import { createLogger } from '../../src/log.ts';
import { applyPolicyFiles } from '../../src/policy/apply.ts';
import { inlineIssuerKeys } from '../../src/policy/overlay.ts';
import { createWrit, type Writ } from '../../src/server.ts';

export const TX = 'urn:ietf:params:oauth:grant-type:token-exchange';
export const AT = 'urn:ietf:params:oauth:token-type:access_token';
export const JWT_TYPE = 'urn:ietf:params:oauth:token-type:jwt';
export const IDP = 'https://idp.example.com';
export const PAYMENTS = 'https://payments.example.com';
export const EXECUTOR_AUD = 'https://agents.example.com/executor';

export const EXAMPLE_POLICY = readFileSync(path.resolve(import.meta.dirname, '../../policy/example.yaml'), 'utf8');

/** A PostgreSQL database of this test run's own; dropped with the run (test/global-setup.ts). */
export async function createTestDatabase(name: string): Promise<string> {
  const admin = inject('adminDatabaseUrl');
  const dbName = `${inject('runId')}_${name}_${randomBytes(3).toString('hex')}`.toLowerCase().replace(/[^a-z0-9_]/g, '_');
  const client = new pg.Client({ connectionString: admin });
  await client.connect();
  try {
    await client.query(`CREATE DATABASE "${dbName}"`);
  } finally {
    await client.end();
  }
  const url = new URL(admin);
  url.pathname = `/${dbName}`;
  return url.href;
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
    server.once('error', reject);
  });
}

/** A stand-in upstream IdP: an ES256 key whose public half the policy holds inline. */
export class TestIdp {
  readonly issuer: string;
  readonly kid: string;
  private readonly key: CryptoKey;
  readonly publicJwk: JWK;

  private constructor(issuer: string, key: CryptoKey, publicJwk: JWK, kid: string) {
    this.issuer = issuer;
    this.key = key;
    this.publicJwk = publicJwk;
    this.kid = kid;
  }

  static async create(issuer = IDP): Promise<TestIdp> {
    const { privateKey, publicKey } = await generateKeyPair('ES256');
    const kid = `idp-${randomBytes(4).toString('hex')}`;
    const publicJwk = { ...(await exportJWK(publicKey)), kid, alg: 'ES256', use: 'sig' };
    return new TestIdp(issuer, privateKey, publicJwk, kid);
  }

  /** A user's access token addressed to Writ; `claims` and `header` override the defaults. */
  async token(audience: string, claims: JWTPayload = {}, header: Record<string, unknown> = {}): Promise<string> {
    const now = Math.floor(Date.now() / 1000);
    return new SignJWT({
      iss: this.issuer, sub: 'alice', aud: audience, iat: now, exp: now + 600, jti: randomBytes(8).toString('hex'),
      groups: ['finance'],
      ...claims,
    }).setProtectedHeader({ alg: 'ES256', typ: 'at+jwt', kid: this.kid, ...header }).sign(this.key);
  }
}

export const SECRETS = {
  PLANNER_SECRET: 'planner-secret-0123456789abcdefghijklmnop',
  EXECUTOR_SECRET: 'executor-secret-0123456789abcdefghijklmno',
  PAYMENTS_API_SECRET: 'payments-secret-0123456789abcdefghijklmno',
} as const;

export const CLIENT_SECRETS: Record<string, string> = {
  'planner-agent': SECRETS.PLANNER_SECRET,
  'executor-agent': SECRETS.EXECUTOR_SECRET,
  'payments-api': SECRETS.PAYMENTS_API_SECRET,
};

export function basicAuth(clientId: string, secret = CLIENT_SECRETS[clientId] ?? ''): string {
  return `Basic ${Buffer.from(`${encodeURIComponent(clientId)}:${encodeURIComponent(secret)}`).toString('base64')}`;
}

export interface TestWrit {
  writ: Writ;
  url: string;
  issuer: string;
  config: Config;
  idp: TestIdp;
  databaseUrl: string | undefined;
  /** Applies policy files (the example with the test IdP's key by default). */
  apply(files?: Array<{ name: string; text: string }>, env?: Record<string, string>): Promise<number>;
  post(path: string, form: Record<string, string | string[]>, auth?: string, headers?: Record<string, string>): Promise<{ status: number; headers: Headers; body: Record<string, unknown> }>;
  exchange(clientId: string, form: Record<string, string | string[]>): Promise<{ status: number; headers: Headers; body: Record<string, unknown> }>;
  introspect(clientId: string, token: string): Promise<Record<string, unknown>>;
  auditRows(where?: Record<string, unknown>): Promise<Array<Record<string, unknown>>>;
  close(): Promise<void>;
}

export function examplePolicyFor(idp: TestIdp): string {
  return inlineIssuerKeys(EXAMPLE_POLICY, idp.issuer, { keys: [idp.publicJwk as Record<string, unknown>] });
}

export async function startTestWrit(options: {
  name: string;
  embedded?: boolean;
  dataDir?: string;
  databaseUrl?: string;
  env?: Record<string, string>;
  idp?: TestIdp;
  applyExample?: boolean;
  port?: number;
  /**
   * WRIT_ISSUER (default: http://localhost at its port). Instances sharing a database need the
   * same one: give a second instance the first's.
   */
  issuer?: string;
}): Promise<TestWrit> {
  const port = options.port ?? await freePort();
  const issuer = options.issuer ?? `http://localhost:${port}`;
  const databaseUrl = options.embedded ? undefined : options.databaseUrl ?? await createTestDatabase(options.name);
  const dataDir = options.dataDir ?? path.join('/tmp', `writ-test-${inject('runId')}-${options.name}-${randomBytes(3).toString('hex')}`);
  const config = loadConfig({
    WRIT_ISSUER: issuer,
    PORT: String(port),
    HOST: '127.0.0.1',
    WRIT_DATA_DIR: dataDir,
    WRIT_KEK: Buffer.alloc(32, 7).toString('base64'),
    LOG_LEVEL: 'silent',
    ...(databaseUrl ? { DATABASE_URL: databaseUrl } : {}),
    ...options.env,
  });
  const logger = createLogger(process.env.WRIT_TEST_LOG ?? 'silent');
  const writ = await createWrit(config, logger, { pollMs: 100 });
  const url = await writ.listen();
  const idp = options.idp ?? await TestIdp.create();

  const post: TestWrit['post'] = async (p, form, auth, headers = {}) => {
    const body = new URLSearchParams();
    for (const [k, v] of Object.entries(form)) for (const item of Array.isArray(v) ? v : [v]) body.append(k, item);
    const response = await fetch(`${url}${p}`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded', ...(auth ? { authorization: auth } : {}), ...headers },
      body,
    });
    const text = await response.text();
    let parsed: Record<string, unknown> = {};
    try {
      parsed = text ? JSON.parse(text) as Record<string, unknown> : {};
    } catch {
      parsed = { raw: text };
    }
    return { status: response.status, headers: response.headers, body: parsed };
  };

  const harness: TestWrit = {
    writ, url, issuer, config, idp, databaseUrl,
    async apply(files = [{ name: 'example.yaml', text: examplePolicyFor(idp) }], env = {}) {
      const outcome = await applyPolicyFiles(writ.db.knex, files, {
        env: { ...SECRETS, ...env },
        selfIssuer: issuer,
        maxTtl: config.maxTtl,
        appliedBy: 'test',
        message: 'test',
        secretKey: writ.derived.clientSecret,
      });
      if (!outcome.ok) throw new Error(`policy did not apply: ${JSON.stringify(outcome.errors)}`);
      await writ.policy.reload();
      return outcome.version;
    },
    post,
    exchange: (clientId, form) => post('/token', { grant_type: TX, ...form }, basicAuth(clientId)),
    async introspect(clientId, token) {
      return (await post('/token/introspection', { token }, basicAuth(clientId))).body;
    },
    async auditRows(where = {}) {
      await writ.auditQueue.flush();
      return writ.db.knex('audit_events').where(where).orderBy('id', 'asc');
    },
    async close() {
      await writ.close();
    },
  };
  if (options.applyExample !== false) await harness.apply();
  return harness;
}
