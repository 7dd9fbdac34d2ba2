import { importJWK, type CryptoKey, type JWK, type KeyObject } from 'jose';
import { ExchangeDenied } from '../exchange/reasons.ts';
import { parseStrictJson } from './strict-json.ts';

/**
 * Upstream issuers' verification keys (docs/standards.md O5): fetched only from the configured
 * `jwks_uri`, HTTPS, no redirects, 5 s timeout, 64 KiB cap; an unknown `kid` triggers at most
 * one fetch per 30 s (per 5 s while fetching fails), single-flight; the last good keys are kept
 * through failures for up to an hour. A JWKS that cannot be fetched denies with `jwks_unavailable` (HTTP 503); a `kid` still
 * unknown after a successful fetch denies with `kid_unknown` (400).
 */

export type VerificationKey = CryptoKey | KeyObject;

/** The two header members a key is chosen by. `kid` is a lookup key only (RFC 8725 §3.10). */
export interface JwsKeyHeader {
  alg: string;
  kid?: string;
}

/** Anything that can hand out the verification key for a token header. */
export interface KeyResolver {
  getKey(header: JwsKeyHeader): Promise<VerificationKey>;
}

/**
 * Asymmetric JWS algorithms Writ can verify, with the JWK each needs. RFC 8725 §3.1 (J1): "each
 * key MUST be used with exactly one algorithm", so a key is offered for an `alg` only if its
 * type and curve fit that algorithm. HMAC and `none` are absent by design (J2, J5).
 */
const ALG_KEY_SHAPE: Readonly<Record<string, { kty: string; crv?: string }>> = {
  RS256: { kty: 'RSA' }, RS384: { kty: 'RSA' }, RS512: { kty: 'RSA' },
  PS256: { kty: 'RSA' }, PS384: { kty: 'RSA' }, PS512: { kty: 'RSA' },
  ES256: { kty: 'EC', crv: 'P-256' }, ES384: { kty: 'EC', crv: 'P-384' }, ES512: { kty: 'EC', crv: 'P-521' },
  EdDSA: { kty: 'OKP', crv: 'Ed25519' }, Ed25519: { kty: 'OKP', crv: 'Ed25519' },
};

export const ASYMMETRIC_JWS_ALGS: readonly string[] = Object.freeze(Object.keys(ALG_KEY_SHAPE));

/** The public members each key type needs; nothing else is handed to the importer. */
const PUBLIC_MEMBERS: Readonly<Record<string, readonly string[]>> = {
  RSA: ['n', 'e'],
  EC: ['crv', 'x', 'y'],
  OKP: ['crv', 'x'],
};

/** Private or symmetric key material: a set that carries it is misconfigured; such keys are skipped. */
const SECRET_MEMBERS = ['d', 'p', 'q', 'dp', 'dq', 'qi', 'oth', 'k', 'priv'] as const;

export interface RemoteJwksOptions {
  /** Clock in epoch milliseconds; injectable for tests. */
  now?: () => number;
  /** How long fetched keys count as fresh. Default 10 min. */
  ttlMs?: number;
  /** Minimum gap between fetches caused by an unknown `kid`. Default 30 s. */
  unknownKidCooldownMs?: number;
  /** How long the last good keys are served while fetching fails. Default 1 h. */
  staleIfErrorMs?: number;
  /** After a failed fetch, requests wait this long before another attempt. Default 5 s. */
  retryAfterErrorMs?: number;
  /** Whole-request timeout, body included. Default 5 s. */
  timeoutMs?: number;
  /** Response body cap in bytes. Default 64 KiB. */
  maxBodyBytes?: number;
  /** Told of every fetch's outcome (metrics, logs): an issuer's keys going stale must be visible. */
  onFetch?: (outcome: { ok: true } | { ok: false; error: string }) => void;
}

interface KeyEntry {
  kid: string | undefined;
  jwk: Readonly<Record<string, unknown>>;
  /** Canonical JSON of the key, so an unchanged key keeps its imported form across refreshes. */
  fingerprint: string;
  /** Imported keys, per algorithm (a key set may list one key for several algorithms). */
  imported: Map<string, Promise<VerificationKey>>;
}

class JwksFetchError extends Error {
  override name = 'JwksFetchError';
}

const LOOPBACK_HOSTS = new Set(['localhost', '127.0.0.1', '[::1]']);
const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/** Validates a configured `jwks_uri`: HTTPS, or plain HTTP to loopback for development and tests. */
export function checkJwksUri(uri: string): URL {
  let url: URL;
  try {
    url = new URL(uri);
  } catch {
    throw new TypeError('jwks_uri is not an absolute URL');
  }
  if (url.username !== '' || url.password !== '') throw new TypeError('jwks_uri must not contain credentials');
  if (url.hash !== '') throw new TypeError('jwks_uri must not contain a fragment');
  if (url.protocol === 'https:') return url;
  if (url.protocol === 'http:' && LOOPBACK_HOSTS.has(url.hostname)) return url;
  throw new TypeError('jwks_uri must use https (plain http only for localhost)');
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === 'object' && !Array.isArray(value);
}

/**
 * RFC 7517 §5: a JWK Set is an object with a `keys` array. Keys Writ cannot or must not use
 * (unknown types, symmetric or private material, non-string `kid`) are dropped, not fatal:
 * "Implementations SHOULD ignore JWKs within a JWK Set that use 'kty' values that are not
 * understood by them" (§5).
 */
function parseJwkSet(value: unknown): KeyEntry[] {
  if (!isPlainObject(value) || !Array.isArray(value.keys)) throw new JwksFetchError('not a JWK Set ({"keys": [...]})');
  const entries: KeyEntry[] = [];
  for (const key of value.keys as unknown[]) {
    if (!isPlainObject(key) || typeof key.kty !== 'string') continue;
    const members = PUBLIC_MEMBERS[key.kty];
    if (members === undefined) continue;
    if (SECRET_MEMBERS.some((m) => Object.hasOwn(key, m))) continue;
    if (key.kid !== undefined && typeof key.kid !== 'string') continue;
    if (!members.every((m) => typeof key[m] === 'string')) continue;
    const fingerprint = JSON.stringify(Object.keys(key).sort().map((k) => [k, key[k]]));
    entries.push({ kid: key.kid, jwk: Object.freeze({ ...key }), fingerprint, imported: new Map() });
  }
  return entries;
}

/**
 * Whether a key may verify `alg` (RFC 7517 §4.2–4.4): `use`, when present, must be `sig`;
 * `key_ops`, when present, must include `verify`; `alg`, when present, must equal the header's.
 */
function usableFor(entry: KeyEntry, alg: string): boolean {
  const shape = ALG_KEY_SHAPE[alg];
  const jwk = entry.jwk;
  if (shape === undefined || jwk.kty !== shape.kty) return false;
  if (shape.crv !== undefined && jwk.crv !== shape.crv) return false;
  if (jwk.use !== undefined && jwk.use !== 'sig') return false;
  if (jwk.key_ops !== undefined && !(Array.isArray(jwk.key_ops) && jwk.key_ops.includes('verify'))) return false;
  if (jwk.alg !== undefined && jwk.alg !== alg) return false;
  return true;
}

type Selection =
  | { kind: 'found'; entry: KeyEntry }
  | { kind: 'miss'; detail: string }
  | { kind: 'ambiguous'; detail: string };

function select(entries: readonly KeyEntry[], header: JwsKeyHeader): Selection {
  let candidates: KeyEntry[];
  if (header.kid !== undefined) {
    const withKid = entries.filter((e) => e.kid === header.kid);
    if (withKid.length === 0) return { kind: 'miss', detail: 'no key with this kid' };
    candidates = withKid.filter((e) => usableFor(e, header.alg));
    if (candidates.length === 0) return { kind: 'miss', detail: `key with this kid is not usable for ${header.alg}` };
  } else {
    candidates = entries.filter((e) => usableFor(e, header.alg));
    if (candidates.length === 0) return { kind: 'miss', detail: `no kid, and no key usable for ${header.alg}` };
  }
  // The same key listed twice is not ambiguous.
  const distinct = new Set(candidates.map((e) => e.fingerprint));
  if (distinct.size > 1) {
    return { kind: 'ambiguous', detail: header.kid === undefined ? `no kid, and several keys fit ${header.alg}` : 'several keys share this kid' };
  }
  return { kind: 'found', entry: candidates[0]! };
}

async function importEntry(entry: KeyEntry, alg: string): Promise<VerificationKey> {
  const members = PUBLIC_MEMBERS[entry.jwk.kty as string] ?? [];
  const minimal: Record<string, unknown> = { kty: entry.jwk.kty };
  for (const m of members) minimal[m] = entry.jwk[m];
  const key = await importJWK(minimal as JWK, alg);
  if (key instanceof Uint8Array) throw new TypeError('symmetric key material is never used');
  return key;
}

/** Reads a response body, giving up as soon as it exceeds `cap` bytes. */
async function readCapped(body: ReadableStream<Uint8Array> | null, cap: number): Promise<Uint8Array> {
  if (body === null) return new Uint8Array(0);
  const reader = body.getReader();
  const chunks: Uint8Array[] = [];
  let total = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    total += value.byteLength;
    if (total > cap) {
      reader.cancel().catch(() => undefined);
      throw new JwksFetchError(`body exceeds ${cap} bytes`);
    }
    chunks.push(value);
  }
  return Buffer.concat(chunks);
}

function describeFetchError(err: unknown): string {
  if (err instanceof JwksFetchError) return err.message;
  if (err instanceof Error) {
    if (err.name === 'TimeoutError' || err.name === 'AbortError') return 'timed out';
    // undici reports a refused redirect as a TypeError whose cause names it.
    const cause = (err as { cause?: unknown }).cause;
    const causeMsg = cause instanceof Error ? `: ${cause.message}` : '';
    return `${err.name}${causeMsg}`.slice(0, 200);
  }
  return 'unknown error';
}

function checkKeyHeader(header: JwsKeyHeader): void {
  if (typeof header.alg !== 'string' || ALG_KEY_SHAPE[header.alg] === undefined) {
    throw new ExchangeDenied('alg_not_allowed', 'algorithm not supported for verification');
  }
  if (header.kid !== undefined && typeof header.kid !== 'string') {
    throw new ExchangeDenied('token_malformed', 'header "kid" is not a string');
  }
}

/** The imported key for a selection, imported once per (key, alg); `kid_unknown` otherwise. */
async function keyFor(selection: Selection, alg: string): Promise<VerificationKey> {
  if (selection.kind !== 'found') throw new ExchangeDenied('kid_unknown', selection.detail);
  const entry = selection.entry;
  let imported = entry.imported.get(alg);
  if (imported === undefined) {
    imported = importEntry(entry, alg);
    // A key that fails to import (e.g. an EC point not on its curve, RFC 8725 §3.4) stays failed.
    imported.catch(() => undefined);
    entry.imported.set(alg, imported);
  }
  try {
    return await imported;
  } catch {
    throw new ExchangeDenied('kid_unknown', `key could not be imported for ${alg}`);
  }
}

/** Inline `jwks: {keys}` from policy: the same selection rules, nothing fetched. */
class InlineJwks implements KeyResolver {
  private readonly entries: readonly KeyEntry[];
  constructor(entries: readonly KeyEntry[]) {
    this.entries = entries;
  }

  async getKey(header: JwsKeyHeader): Promise<VerificationKey> {
    checkKeyHeader(header);
    return keyFor(select(this.entries, header), header.alg);
  }
}

/**
 * One issuer's remote key set (`jwks_uri`); `fromInline` serves policy `jwks`. Create one per issuer and keep
 * it for the process lifetime; it holds no token data.
 */
export class RemoteJwks implements KeyResolver {
  private readonly url: URL;
  private readonly now: () => number;
  private readonly ttlMs: number;
  private readonly cooldownMs: number;
  private readonly staleIfErrorMs: number;
  private readonly retryAfterErrorMs: number;
  private readonly timeoutMs: number;
  private readonly maxBodyBytes: number;
  private readonly onFetch: RemoteJwksOptions['onFetch'];

  private entries: KeyEntry[] | undefined;
  /** When the current entries were fetched (ms); -Infinity before the first success. */
  private fetchedAt = Number.NEGATIVE_INFINITY;
  private lastAttemptAt = Number.NEGATIVE_INFINITY;
  private lastAttemptFailed = false;
  private lastError: string | undefined;
  private inflight: Promise<boolean> | undefined;

  constructor(jwksUri: string, options: RemoteJwksOptions = {}) {
    this.url = checkJwksUri(jwksUri);
    this.now = options.now ?? Date.now;
    this.ttlMs = options.ttlMs ?? 10 * 60_000;
    this.cooldownMs = options.unknownKidCooldownMs ?? 30_000;
    this.staleIfErrorMs = options.staleIfErrorMs ?? 60 * 60_000;
    this.retryAfterErrorMs = options.retryAfterErrorMs ?? 5_000;
    this.timeoutMs = options.timeoutMs ?? 5_000;
    this.maxBodyBytes = options.maxBodyBytes ?? 64 * 1024;
    this.onFetch = options.onFetch;
  }

  /** A fixed key set from policy (`jwks: {keys}`); never fetches anything. */
  static fromInline(jwks: { keys: ReadonlyArray<Record<string, unknown>> }): KeyResolver {
    let entries: KeyEntry[];
    try {
      entries = parseJwkSet(jwks);
    } catch {
      throw new TypeError('inline jwks is not a JWK Set ({"keys": [...]})');
    }
    return new InlineJwks(entries);
  }

  /** For health reporting: why the last fetch failed, if it did (never key material). */
  get lastFetchError(): string | undefined {
    return this.lastAttemptFailed ? this.lastError : undefined;
  }

  async getKey(header: JwsKeyHeader): Promise<VerificationKey> {
    // Checked before any fetch, so an exotic `alg` or `kid` can never be used to trigger one.
    checkKeyHeader(header);
    let entries = await this.currentEntries();
    let selection = select(entries, header);

    // An unknown kid may mean the issuer rotated keys: refetch, at most once per cooldown. After
    // a failed attempt the kid was answered 503 ("try again"), so the next try comes after the
    // failure backoff instead: once the issuer answers again, an unknown kid is a 400 within
    // seconds, not only when the cooldown has run out.
    if (selection.kind === 'miss') {
      const sinceLastAttempt = this.now() - this.lastAttemptAt;
      const gap = this.lastAttemptFailed ? this.retryAfterErrorMs : this.cooldownMs;
      if (this.inflight !== undefined || sinceLastAttempt >= gap) {
        await this.refresh();
        entries = this.entries ?? entries;
        selection = select(entries, header);
      }
      if (selection.kind === 'miss' && this.lastAttemptFailed) {
        // O5: we cannot tell an unknown kid from an unreachable key set; that is a 503, not a 400.
        throw new ExchangeDenied('jwks_unavailable', `JWKS refresh failed (${this.lastError ?? 'unknown'}); kid not in last good set`);
      }
    }
    return keyFor(selection, header.alg);
  }

  /** Fresh keys, or stale ones within stale-if-error, or `jwks_unavailable`. */
  private async currentEntries(): Promise<KeyEntry[]> {
    if (this.entries !== undefined && this.now() - this.fetchedAt < this.ttlMs) return this.entries;

    const backingOff = this.lastAttemptFailed && this.now() - this.lastAttemptAt < this.retryAfterErrorMs;
    if (this.inflight !== undefined || !backingOff) await this.refresh();

    if (this.entries !== undefined && this.now() - this.fetchedAt <= this.staleIfErrorMs) return this.entries;
    throw new ExchangeDenied(
      'jwks_unavailable',
      this.entries === undefined
        ? `JWKS could not be fetched (${this.lastError ?? 'unknown'})`
        : `JWKS could not be refreshed and the last good keys are too old (${this.lastError ?? 'unknown'})`,
    );
  }

  /** Single-flight: every concurrent caller awaits the same fetch. Never rejects. */
  private refresh(): Promise<boolean> {
    this.inflight ??= this.fetchOnce().then(
      (entries) => {
        this.install(entries);
        this.lastAttemptFailed = false;
        this.lastError = undefined;
        this.onFetch?.({ ok: true });
        return true;
      },
      (err: unknown) => {
        this.lastAttemptFailed = true;
        this.lastError = describeFetchError(err);
        this.onFetch?.({ ok: false, error: this.lastError });
        return false;
      },
    ).finally(() => {
      this.inflight = undefined;
    });
    return this.inflight;
  }

  private install(fresh: KeyEntry[]): void {
    // Keep already-imported keys for keys that did not change.
    const previous = new Map((this.entries ?? []).map((e) => [e.fingerprint, e]));
    this.entries = fresh.map((e) => previous.get(e.fingerprint) ?? e);
    this.fetchedAt = this.now();
  }

  private async fetchOnce(): Promise<KeyEntry[]> {
    const url = this.url;
    this.lastAttemptAt = this.now();
    const response = await fetch(url, {
      method: 'GET',
      // O5 / RFC 8725 §3.10: only the configured URL is ever fetched, so no redirect is followed.
      redirect: 'error',
      signal: AbortSignal.timeout(this.timeoutMs),
      headers: { accept: 'application/jwk-set+json, application/json' },
    });
    if (response.status !== 200) {
      response.body?.cancel().catch(() => undefined);
      throw new JwksFetchError(`HTTP ${response.status}`);
    }
    const declared = response.headers.get('content-length');
    if (declared !== null && Number(declared) > this.maxBodyBytes) {
      response.body?.cancel().catch(() => undefined);
      throw new JwksFetchError(`body exceeds ${this.maxBodyBytes} bytes`);
    }
    const bytes = await readCapped(response.body, this.maxBodyBytes);
    let text: string;
    try {
      text = utf8.decode(bytes);
    } catch {
      throw new JwksFetchError('body is not UTF-8');
    }
    let json: unknown;
    try {
      json = parseStrictJson(text, 8);
    } catch {
      throw new JwksFetchError('body is not strict JSON');
    }
    return parseJwkSet(json);
  }
}
