import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync, existsSync } from 'node:fs';
import path from 'node:path';

/** The longest WRIT_MAX_TTL allowed: no token Writ mints lives longer. */
export const MAX_TTL_LIMIT_SECONDS = 86400;

/** docs/DESIGN.md §3: the environment, typed and validated once at start. */
export interface Config {
  env: 'development' | 'production';
  databaseUrl: string | undefined;
  dataDir: string;
  issuer: string;
  port: number;
  host: string;
  /** 32 bytes: encrypts signing keys at rest and keys the client-secret hashes. */
  kek: Buffer;
  /** Where `kek` came from: WRIT_KEK, or the data dir's development key (development only). */
  kekSource?: 'env' | 'data-dir';
  trustProxy: boolean;
  maxTtl: number;
  metricsAddr: { host: string; port: number };
  logLevel: string;
  /** Worker processes `writ serve` runs on one port (1: Writ serves from its own process). */
  workers: number;
}

export class ConfigError extends Error {
  override name = 'ConfigError';
}

type Env = Readonly<Record<string, string | undefined>>;

const LOG_LEVELS = new Set(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']);

function integer(env: Env, name: string, fallback: number, min: number, max: number): number {
  const raw = env[name];
  if (raw === undefined || raw === '') return fallback;
  if (!/^\d+$/.test(raw)) throw new ConfigError(`${name} must be a whole number, got "${raw}"`);
  const n = Number(raw);
  if (n < min || n > max) throw new ConfigError(`${name} must be between ${min} and ${max}, got ${n}`);
  return n;
}

function bool(env: Env, name: string): boolean {
  const raw = (env[name] ?? '').toLowerCase();
  if (['', '0', 'false', 'off', 'no'].includes(raw)) return false;
  if (['1', 'true', 'on', 'yes'].includes(raw)) return true;
  throw new ConfigError(`${name} must be true or false, got "${env[name]}"`);
}

function isLoopbackHost(hostname: string): boolean {
  return hostname === 'localhost' || hostname === '127.0.0.1' || hostname === '[::1]';
}

/** Accepts standard base64 or base64url, exactly 32 bytes once decoded. */
export function decodeKek(raw: string): Buffer {
  const trimmed = raw.trim();
  if (!/^[A-Za-z0-9+/_-]+={0,2}$/.test(trimmed)) {
    throw new ConfigError('WRIT_KEK must be base64 or base64url (openssl rand -base64 32)');
  }
  const key = Buffer.from(trimmed.replace(/-/g, '+').replace(/_/g, '/'), 'base64');
  if (key.length !== 32) {
    throw new ConfigError(`WRIT_KEK must decode to 32 bytes, got ${key.length}`);
  }
  return key;
}

/** WRIT_ISSUER's rules: an http(s) URL, the root of its host, https outside localhost; no trailing slash. */
export function parseIssuer(raw: string, production: boolean): string {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new ConfigError(`WRIT_ISSUER must be an absolute URL, got "${raw}"`);
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:') {
    throw new ConfigError('WRIT_ISSUER must be an http(s) URL');
  }
  if (url.search || url.hash || url.username || url.password) {
    throw new ConfigError('WRIT_ISSUER must not carry a query, fragment or credentials (RFC 8414 §2)');
  }
  if (url.pathname !== '/' && url.pathname !== '') {
    throw new ConfigError('WRIT_ISSUER must be the root of its host (no path): Writ serves its endpoints there');
  }
  if (url.protocol === 'http:' && (production || !isLoopbackHost(url.hostname))) {
    throw new ConfigError('WRIT_ISSUER must be https outside localhost, and always in production');
  }
  // The issuer is compared as an exact string everywhere; keep it without a trailing slash.
  return raw.replace(/\/+$/, '');
}

function parseAddr(raw: string): { host: string; port: number } {
  const match = /^(.*):(\d+)$/.exec(raw);
  if (!match) throw new ConfigError(`WRIT_METRICS_ADDR must be host:port, got "${raw}"`);
  const port = Number(match[2]);
  if (port > 65535) throw new ConfigError('WRIT_METRICS_ADDR port out of range');
  return { host: match[1]!.replace(/^\[(.*)\]$/, '$1'), port };
}

/**
 * The development KEK lives in the data dir so that restarts can decrypt the keys they made;
 * production refuses to start without an operator-provided one.
 */
function developmentKek(dataDir: string): Buffer {
  const file = path.join(dataDir, 'dev-kek');
  if (existsSync(file)) return decodeKek(readFileSync(file, 'utf8'));
  mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  const key = randomBytes(32);
  writeFileSync(file, key.toString('base64'), { mode: 0o600, flag: 'wx' });
  return key;
}

export function loadConfig(env: Env = process.env): Config {
  const mode = env.WRIT_ENV ?? 'development';
  if (mode !== 'development' && mode !== 'production') {
    throw new ConfigError(`WRIT_ENV must be development or production, got "${mode}"`);
  }
  const production = mode === 'production';
  const dataDir = path.resolve(env.WRIT_DATA_DIR || './.writ');
  const port = integer(env, 'PORT', 4000, 0, 65535);
  // Unset, the issuer is this machine at the port it listens on: discovery's URLs must reach it.
  const issuer = parseIssuer(env.WRIT_ISSUER || `http://localhost:${port}`, production);
  const logLevel = env.LOG_LEVEL || 'info';
  if (!LOG_LEVELS.has(logLevel)) throw new ConfigError(`LOG_LEVEL must be one of ${[...LOG_LEVELS].join(', ')}`);
  let kek: Buffer;
  if (env.WRIT_KEK) kek = decodeKek(env.WRIT_KEK);
  else if (production) throw new ConfigError('WRIT_KEK is required in production (openssl rand -base64 32)');
  else kek = developmentKek(dataDir);
  const databaseUrl = env.DATABASE_URL || undefined;
  if (databaseUrl && !/^postgres(ql)?:\/\//.test(databaseUrl)) {
    throw new ConfigError('DATABASE_URL must be a postgres:// or postgresql:// URL');
  }
  const workers = integer(env, 'WRIT_WORKERS', 1, 1, 64);
  if (workers > 1 && !databaseUrl) {
    throw new ConfigError('WRIT_WORKERS above 1 needs DATABASE_URL: the embedded database belongs to a single process');
  }
  return {
    env: mode,
    databaseUrl,
    dataDir,
    issuer,
    port,
    host: env.HOST || '127.0.0.1',
    kek,
    kekSource: env.WRIT_KEK ? 'env' : 'data-dir',
    trustProxy: bool(env, 'WRIT_TRUST_PROXY'),
    maxTtl: integer(env, 'WRIT_MAX_TTL', 900, 1, MAX_TTL_LIMIT_SECONDS),
    metricsAddr: parseAddr(env.WRIT_METRICS_ADDR || '127.0.0.1:9464'),
    logLevel,
    workers,
  };
}
