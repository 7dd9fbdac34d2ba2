import { randomBytes } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { ConfigError, loadConfig } from '../../src/config.ts';
import { tempDirs } from '../support/temp-dirs.ts';

const dataDir = tempDirs('writ-config-');
const kek = randomBytes(32);

describe('configuration (docs/DESIGN.md §3)', () => {
  it('has the documented defaults', () => {
    const dir = dataDir();
    const c = loadConfig({ WRIT_DATA_DIR: dir });
    expect(c).toMatchObject({
      env: 'development', databaseUrl: undefined, dataDir: dir, issuer: 'http://localhost:4000', port: 4000, host: '127.0.0.1',
      trustProxy: false, maxTtl: 900, metricsAddr: { host: '127.0.0.1', port: 9464 }, logLevel: 'info', workers: 1,
    });
    // The development KEK is generated once into the data dir, private to its owner, and reused.
    expect(c.kek).toHaveLength(32);
    expect(statSync(path.join(dir, 'dev-kek')).mode & 0o777).toBe(0o600);
    expect(loadConfig({ WRIT_DATA_DIR: dir }).kek.equals(c.kek)).toBe(true);
    expect(readFileSync(path.join(dir, 'dev-kek'), 'utf8')).toBe(c.kek.toString('base64'));
    // Without WRIT_ISSUER the issuer follows PORT, so discovery names where Writ listens.
    expect(loadConfig({ WRIT_DATA_DIR: dir, PORT: '4100' })).toMatchObject({ port: 4100, issuer: 'http://localhost:4100' });
    expect(loadConfig({ WRIT_DATA_DIR: dir, PORT: '4100', WRIT_ISSUER: 'http://localhost:4000' }).issuer).toBe('http://localhost:4000');
  });

  it('accepts WRIT_KEK as base64 or base64url, exactly 32 bytes', () => {
    expect(loadConfig({ WRIT_DATA_DIR: dataDir(), WRIT_KEK: kek.toString('base64') }).kek.equals(kek)).toBe(true);
    expect(loadConfig({ WRIT_DATA_DIR: dataDir(), WRIT_KEK: kek.toString('base64url') }).kek.equals(kek)).toBe(true);
    expect(() => loadConfig({ WRIT_DATA_DIR: dataDir(), WRIT_KEK: randomBytes(16).toString('base64') })).toThrow(/32 bytes/);
    expect(() => loadConfig({ WRIT_DATA_DIR: dataDir(), WRIT_KEK: 'not base64!' })).toThrow(ConfigError);
  });

  it('runs worker processes only on PostgreSQL', () => {
    const pg = 'postgres://127.0.0.1/writ';
    expect(loadConfig({ WRIT_DATA_DIR: dataDir(), DATABASE_URL: pg, WRIT_WORKERS: '4' }).workers).toBe(4);
    expect(() => loadConfig({ WRIT_DATA_DIR: dataDir(), WRIT_WORKERS: '2' })).toThrow(/needs DATABASE_URL/);
    expect(() => loadConfig({ WRIT_DATA_DIR: dataDir(), DATABASE_URL: pg, WRIT_WORKERS: '0' })).toThrow(/between 1 and 64/);
    expect(() => loadConfig({ WRIT_DATA_DIR: dataDir(), DATABASE_URL: pg, WRIT_WORKERS: 'auto' })).toThrow(/whole number/);
  });

  it('production requires WRIT_KEK and an https issuer', () => {
    expect(() => loadConfig({ WRIT_ENV: 'production', WRIT_ISSUER: 'https://writ.example.com', WRIT_DATA_DIR: dataDir() })).toThrow(/WRIT_KEK is required/);
    expect(() => loadConfig({ WRIT_ENV: 'production', WRIT_ISSUER: 'http://localhost:4000', WRIT_KEK: kek.toString('base64') })).toThrow(/https/);
    expect(loadConfig({ WRIT_ENV: 'production', WRIT_ISSUER: 'https://writ.example.com', WRIT_KEK: kek.toString('base64') }).issuer).toBe('https://writ.example.com');
  });

  it('refuses a plain-http issuer outside localhost, and issuers with path, query or fragment', () => {
    expect(() => loadConfig({ WRIT_ISSUER: 'http://writ.example.com', WRIT_DATA_DIR: dataDir() })).toThrow(/https/);
    for (const bad of ['https://writ.example.com/sts', 'https://writ.example.com?x=1', 'https://writ.example.com#f', 'writ.example.com', 'ftp://writ.example.com']) {
      expect(() => loadConfig({ WRIT_ISSUER: bad, WRIT_DATA_DIR: dataDir() }), bad).toThrow(ConfigError);
    }
    expect(loadConfig({ WRIT_ISSUER: 'https://writ.example.com/', WRIT_DATA_DIR: dataDir() }).issuer).toBe('https://writ.example.com');
  });

  it('validates numbers, booleans, levels and addresses with clear errors', () => {
    const d = dataDir();
    expect(() => loadConfig({ WRIT_DATA_DIR: d, PORT: 'eighty' })).toThrow(/PORT must be a whole number/);
    expect(() => loadConfig({ WRIT_DATA_DIR: d, WRIT_MAX_TTL: '0' })).toThrow(/WRIT_MAX_TTL must be between/);
    expect(() => loadConfig({ WRIT_DATA_DIR: d, WRIT_TRUST_PROXY: 'maybe' })).toThrow(/WRIT_TRUST_PROXY/);
    expect(() => loadConfig({ WRIT_DATA_DIR: d, LOG_LEVEL: 'loud' })).toThrow(/LOG_LEVEL/);
    expect(() => loadConfig({ WRIT_DATA_DIR: d, WRIT_METRICS_ADDR: 'nowhere' })).toThrow(/WRIT_METRICS_ADDR/);
    expect(() => loadConfig({ WRIT_DATA_DIR: d, DATABASE_URL: 'mysql://x' })).toThrow(/DATABASE_URL/);
    expect(() => loadConfig({ WRIT_DATA_DIR: d, WRIT_ENV: 'staging' })).toThrow(/WRIT_ENV/);
    const c = loadConfig({ WRIT_DATA_DIR: d, PORT: '8080', WRIT_MAX_TTL: '300', WRIT_TRUST_PROXY: 'true', WRIT_METRICS_ADDR: '[::1]:9000', DATABASE_URL: 'postgres://u@h/db' });
    expect(c).toMatchObject({ port: 8080, maxTtl: 300, trustProxy: true, metricsAddr: { host: '::1', port: 9000 }, databaseUrl: 'postgres://u@h/db' });
  });
});
