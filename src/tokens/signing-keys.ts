import { randomUUID } from 'node:crypto';
import { exportJWK, generateKeyPair, importJWK, type CryptoKey, type JWK } from 'jose';
import type { Knex } from 'knex';
import type { Logger } from 'pino';
import { toRow } from '../audit/event.ts';
import { ConfigError, MAX_TTL_LIMIT_SECONDS } from '../config.ts';
import type { SigningAlg } from '../policy/model.ts';
import { open, seal } from './kek.ts';
import { PUBLISHED_STATES, scheduleKeys, type KeySchedule, type StoredKeyTimes } from './key-schedule.ts';

export const SIGNING_ALGS: readonly SigningAlg[] = ['ES256', 'RS256', 'PS256'];

/**
 * How long a key stays published after it stops signing: the longest life a minted token can
 * have (the ceiling of WRIT_MAX_TTL, not its current value: lowering the setting must not drop
 * a key that tokens issued before still need, and instances configured differently must
 * publish the same set), plus the 60 s inbound clock leeway (docs/standards.md O3, O4).
 */
export const KEY_RETENTION_MS = (MAX_TTL_LIMIT_SECONDS + 60) * 1000;

/**
 * Resource servers cache the JWKS for at most this long (its Cache-Control max-age). A
 * scheduled key must be published at least this long before it signs.
 */
export const JWKS_MAX_AGE_SECONDS = 300;

/** Serialises key generation, rotation and removal between instances and the CLI. */
const KEY_LOCK = 7369657;

export interface SigningKey {
  kid: string;
  alg: SigningAlg;
  privateKey: CryptoKey;
  publicKey: CryptoKey;
  publicJwk: JWK;
  privateJwk: JWK;
}

export interface SigningKeys {
  /** The active key for each algorithm: each key is used with exactly one algorithm (RFC 8725 §3.1). */
  active: ReadonlyMap<SigningAlg, SigningKey>;
  /** Every published key (pending, active, retired), looked up by kid to verify Writ's tokens. */
  byKid: ReadonlyMap<string, SigningKey>;
  publicJwks: { keys: JWK[] };
}

interface KeyRow {
  kid: string;
  alg: string;
  public_jwk: JWK;
  private_jwk_enc: string;
  created_at: Date;
  activates_at: Date;
  removed_at: Date | null;
}

export interface NewKey {
  kid: string;
  alg: SigningAlg;
  activatesAt: Date;
}

async function generate(alg: SigningAlg): Promise<{ kid: string; publicJwk: JWK; privateJwk: JWK }> {
  const { publicKey, privateKey } = await generateKeyPair(alg, { extractable: true, modulusLength: 2048 });
  const kid = `${alg.toLowerCase()}-${randomUUID()}`;
  const publicJwk = { ...(await exportJWK(publicKey)), kid, alg, use: 'sig' };
  const privateJwk = { ...(await exportJWK(privateKey)), kid, alg, use: 'sig' };
  return { kid, publicJwk, privateJwk };
}

function times(row: KeyRow): StoredKeyTimes {
  return { kid: row.kid, alg: row.alg as SigningAlg, createdAt: row.created_at, activatesAt: row.activates_at, removedAt: row.removed_at };
}

export async function loadKeyRows(knex: Knex): Promise<KeyRow[]> {
  return knex<KeyRow>('signing_keys').select('kid', 'alg', 'public_jwk', 'private_jwk_enc', 'created_at', 'activates_at', 'removed_at');
}

/** The stored schedule at `now` (for listing; no private part is opened). */
export async function loadKeySchedule(knex: Knex, now: Date): Promise<KeySchedule> {
  return scheduleKeys((await loadKeyRows(knex)).map(times), now, KEY_RETENTION_MS);
}

/**
 * Generates and stores a key for `alg` that signs from `activatesAt`, audited in the caller's
 * transaction. The private part is sealed under the key-encryption key before it is stored.
 */
export async function insertKey(trx: Knex.Transaction, encryptionKey: Buffer, input: { alg: SigningAlg; activatesAt: Date; by: string; reason: string; requestId?: string }): Promise<NewKey> {
  const key = await generate(input.alg);
  await trx('signing_keys').insert({
    kid: key.kid,
    alg: input.alg,
    public_jwk: JSON.stringify(key.publicJwk),
    private_jwk_enc: seal(encryptionKey, JSON.stringify(key.privateJwk), `signing-key:${key.kid}`),
    activates_at: input.activatesAt,
  });
  await trx('audit_events').insert(toRow({
    type: 'key.generated',
    outcome: 'ok',
    clientId: input.by,
    requestId: input.requestId ?? null,
    details: { kid: key.kid, alg: input.alg, activates_at: input.activatesAt.toISOString(), reason: input.reason },
  }));
  return { kid: key.kid, alg: input.alg, activatesAt: input.activatesAt };
}

/**
 * Takes the key lock for the rest of the transaction, then reads the schedule under it, refusing
 * a key-encryption key that opens none of the keys read: every writer of signing keys comes
 * through here, so whoever first stores keys fixes the key-encryption key for everyone after.
 */
export async function lockedSchedule(trx: Knex.Transaction, encryptionKey: Buffer): Promise<{ schedule: KeySchedule; now: Date }> {
  await trx.raw('SELECT pg_advisory_xact_lock(?)', [KEY_LOCK]);
  const { rows } = await trx.raw<{ rows: Array<{ now: Date }> }>('SELECT clock_timestamp() AS now');
  const now = rows[0]!.now;
  const keyRows = await loadKeyRows(trx);
  checkKeyEncryptionKey(keyRows, encryptionKey);
  return { schedule: scheduleKeys(keyRows.map(times), now, KEY_RETENTION_MS), now };
}

/**
 * Refuses a key-encryption key that opens none of the stored signing keys: it is not the one this
 * database was set up with (another data dir's development key, say). An instance started with
 * it would publish no keys and sign nothing, seal audit checkpoints that no other instance can
 * verify, for good, and hash client secrets that no other instance recognises.
 */
export class KeyEncryptionKeyMismatch extends ConfigError {
  override name = 'KeyEncryptionKeyMismatch';
}

/**
 * The stored signing keys are sealed under the key-encryption key, so they are its check: one
 * that opens is enough (a key sealed under another is left out by the ring, and logged). With no
 * keys stored yet there is nothing to check against.
 */
function checkKeyEncryptionKey(rows: ReadonlyArray<Pick<KeyRow, 'kid' | 'private_jwk_enc'>>, encryptionKey: Buffer): void {
  if (rows.length === 0) return;
  for (const row of rows) {
    try {
      open(encryptionKey, row.private_jwk_enc, `signing-key:${row.kid}`);
      return;
    } catch {
      // Sealed under another key: try the next.
    }
  }
  throw new KeyEncryptionKeyMismatch(`WRIT_KEK opens none of the ${rows.length} signing keys in this database: it is not the key-encryption key this database was set up with. Every instance and every writ command using this database needs the same WRIT_KEK (without WRIT_KEK, development mode uses the one generated in the data dir, WRIT_DATA_DIR, ./.writ by default).`);
}

/** The same check for a command that reads with a derived key but stores no signing key. */
export async function assertKeyEncryptionKey(knex: Knex, encryptionKey: Buffer, options: { requireKeys?: boolean } = {}): Promise<void> {
  const rows = await knex<KeyRow>('signing_keys').select('kid', 'private_jwk_enc');
  if (rows.length === 0 && options.requireKeys) {
    throw new KeyEncryptionKeyMismatch('this database has no signing keys yet, so WRIT_KEK cannot be checked against it: start writ serve on it (or apply a policy) first');
  }
  checkKeyEncryptionKey(rows, encryptionKey);
}

/**
 * Makes sure every algorithm has a key that signs now, generating (once, across every instance
 * sharing the database) the ones missing: on first start, and never again unless an operator
 * removed a key without its replacement. Under the key lock, and only with the database's own
 * key-encryption key: of two instances with different keys starting on a new database at once,
 * the second to take the lock is refused.
 */
export async function ensureSigningKeys(knex: Knex, encryptionKey: Buffer): Promise<NewKey[]> {
  return knex.transaction(async (trx) => {
    const { schedule, now } = await lockedSchedule(trx, encryptionKey);
    const signing = new Set(schedule.keys.filter((k) => k.state === 'active').map((k) => k.alg));
    const created: NewKey[] = [];
    for (const alg of SIGNING_ALGS) {
      if (!signing.has(alg)) created.push(await insertKey(trx, encryptionKey, { alg, activatesAt: now, by: 'writ', reason: 'no_signing_key' }));
    }
    return created;
  });
}

async function hydrate(row: KeyRow, encryptionKey: Buffer): Promise<SigningKey> {
  const alg = row.alg as SigningAlg;
  const privateJwk = JSON.parse(open(encryptionKey, row.private_jwk_enc, `signing-key:${row.kid}`)) as JWK;
  return {
    kid: row.kid,
    alg,
    privateKey: await importJWK(privateJwk, alg) as CryptoKey,
    publicKey: await importJWK(row.public_jwk, alg) as CryptoKey,
    publicJwk: row.public_jwk,
    privateJwk,
  };
}

export interface KeyRingOptions {
  /** How often the stored keys are checked for rotations and removals made elsewhere. */
  pollMs?: number;
  logger?: Logger;
  now?: () => Date;
}

/**
 * The keys this instance signs with and publishes. The schedule is recomputed from the stored
 * rows at each of its own transitions (a timer), and the rows are re-read when another instance
 * or the CLI adds or removes a key (a cheap poll: rows are never deleted or un-removed, so their
 * count and the count of removed ones change exactly when the set does).
 *
 * A key keeps its object identity across reloads, so verification caches keyed on the key
 * object stay warm through a rotation and drop a removed key's entries.
 */
export class SigningKeyRing {
  private snapshot: SigningKeys = { active: new Map(), byKid: new Map(), publicJwks: { keys: [] } };
  private rows: KeyRow[] = [];
  /** The stamp of the rows applied; set only once they are in force. */
  private stamp = '';
  private readonly hydrated = new Map<string, SigningKey>();
  private readonly listeners: Array<(keys: SigningKeys) => void> = [];
  private poll: NodeJS.Timeout | undefined;
  private transition: NodeJS.Timeout | undefined;
  /** Loads and transitions run one at a time, in order, so a later read is never overwritten by an earlier one. */
  private queue: Promise<void> = Promise.resolve();
  private checking = false;
  private readonly knex: Knex;
  private readonly encryptionKey: Buffer;
  private readonly options: KeyRingOptions;
  private readonly now: () => Date;

  constructor(knex: Knex, encryptionKey: Buffer, options: KeyRingOptions = {}) {
    this.knex = knex;
    this.encryptionKey = encryptionKey;
    this.options = options;
    this.now = options.now ?? (() => new Date());
  }

  current(): SigningKeys {
    return this.snapshot;
  }

  schedule(): KeySchedule {
    return scheduleKeys(this.rows.map(times), this.now(), KEY_RETENTION_MS);
  }

  onChange(listener: (keys: SigningKeys) => void): void {
    this.listeners.push(listener);
  }

  async start(): Promise<void> {
    await ensureSigningKeys(this.knex, this.encryptionKey);
    await this.reload();
    this.poll = setInterval(() => void this.check(), this.options.pollMs ?? 1000);
    this.poll.unref();
  }

  stop(): void {
    if (this.poll) clearInterval(this.poll);
    if (this.transition) clearTimeout(this.transition);
  }

  /**
   * Re-reads the stored keys and applies their schedule now. Always a new read, queued after
   * any under way: a caller that just committed a change sees it in force when this resolves.
   */
  reload(): Promise<void> {
    return this.enqueue(async () => {
      const rows = await loadKeyRows(this.knex);
      await this.apply(rows);
    });
  }

  private enqueue(task: () => Promise<void>): Promise<void> {
    const run = this.queue.then(task);
    this.queue = run.catch(() => undefined);
    return run;
  }

  private async check(): Promise<void> {
    // A slow database must not pile up checks, each reading every key.
    if (this.checking) return;
    this.checking = true;
    try {
      if (await keyStamp(this.knex) !== this.stamp) await this.reload();
    } catch (err) {
      this.options.logger?.warn({ err: (err as Error).message }, 'signing key check failed');
    } finally {
      this.checking = false;
    }
  }

  private async apply(rows: KeyRow[]): Promise<void> {
    const schedule = scheduleKeys(rows.map(times), this.now(), KEY_RETENTION_MS);
    const published = schedule.keys.filter((k) => PUBLISHED_STATES.has(k.state));
    const rowsByKid = new Map(rows.map((r) => [r.kid, r]));
    const byKid = new Map<string, SigningKey>();
    const active = new Map<SigningAlg, SigningKey>();
    for (const entry of published) {
      let key = this.hydrated.get(entry.kid);
      if (!key) {
        try {
          key = await hydrate(rowsByKid.get(entry.kid)!, this.encryptionKey);
        } catch (err) {
          // A row this instance cannot open (sealed under another WRIT_KEK) is left out, not
          // allowed to hold back every other change; its algorithm may then have no key to sign with.
          this.options.logger?.error({ kid: entry.kid, err: (err as Error).message }, 'signing key cannot be opened; not used');
          continue;
        }
        this.hydrated.set(entry.kid, key);
      }
      byKid.set(key.kid, key);
      if (entry.state === 'active') active.set(key.alg, key);
    }
    for (const kid of this.hydrated.keys()) if (!byKid.has(kid)) this.hydrated.delete(kid);
    const order = (k: SigningKey): number => SIGNING_ALGS.indexOf(k.alg);
    const changed = !sameKeys(this.snapshot, byKid, active);
    this.rows = rows;
    this.snapshot = {
      active,
      byKid,
      publicJwks: { keys: [...byKid.values()].sort((a, b) => order(a) - order(b)).map((k) => k.publicJwk) },
    };
    // The stamp of exactly these rows, so a poll never mistakes rows read before a change for after.
    this.stamp = stampOf(rows.length, rows.filter((r) => r.removed_at !== null).length);
    if (changed) {
      this.options.logger?.info({ active: [...active.values()].map((k) => k.kid), published: [...byKid.keys()] }, 'signing keys loaded');
      for (const listener of this.listeners) listener(this.snapshot);
    }
    this.armTransition(schedule.nextChange);
  }

  private armTransition(at: Date | null): void {
    if (this.transition) clearTimeout(this.transition);
    this.transition = undefined;
    if (!at) return;
    // setTimeout holds at most ~24.8 days; a later transition re-arms on the way.
    const delay = Math.min(Math.max(0, at.getTime() - this.now().getTime()), 2 ** 31 - 1);
    this.transition = setTimeout(() => void this.enqueue(() => this.apply(this.rows)).catch((err: unknown) => {
      this.options.logger?.error({ err: (err as Error).message }, 'signing key transition failed');
    }), delay);
    this.transition.unref();
  }
}

const stampOf = (rows: number, removed: number): string => `${rows}/${removed}`;

function sameKeys(before: SigningKeys, byKid: ReadonlyMap<string, SigningKey>, active: ReadonlyMap<SigningAlg, SigningKey>): boolean {
  if (before.byKid.size !== byKid.size || before.active.size !== active.size) return false;
  for (const [kid, key] of byKid) if (before.byKid.get(kid) !== key) return false;
  for (const [alg, key] of active) if (before.active.get(alg) !== key) return false;
  return true;
}

async function keyStamp(knex: Knex): Promise<string> {
  const { rows } = await knex.raw<{ rows: Array<{ n: string | number; r: string | number }> }>(
    'SELECT count(*) AS n, count(removed_at) AS r FROM signing_keys');
  return stampOf(Number(rows[0]?.n ?? 0), Number(rows[0]?.r ?? 0));
}
