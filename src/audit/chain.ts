import { createHash, createHmac, timingSafeEqual } from 'node:crypto';
import { canonicalJson } from '../canonical-json.ts';
import type { AuditTextColumns } from './event.ts';

/**
 * The audit hash chain, free of I/O.
 *
 *   hash(n) = sha256_hex(hash(n-1) || canonical(event n))      hash(0) = GENESIS_HASH
 *
 * canonical(event) is stable JSON (sorted keys, no whitespace) of the event's recorded
 * columns plus its chain position `seq`, so a row cannot be moved along the chain without
 * its hash changing. The chain alone is recomputable by anyone who can write the table;
 * the checkpoints (seq, hash, count) are what an attacker without WRIT_KEK cannot forge:
 * each is signed with HMAC-SHA-256 under deriveKeys(kek).auditCheckpoint.
 */

export const GENESIS_HASH = '0'.repeat(64);

export const CHAIN_VERSION = 1;

/** The columns of an audit_events row that the chain covers. */
export interface ChainEvent extends AuditTextColumns {
  id: number | string | bigint;
  /**
   * ISO 8601 in UTC with microseconds, as PostgreSQL stores it: read it with
   * OCCURRED_AT_SQL. A Date is taken at its millisecond precision.
   */
  occurred_at: string | Date;
  policy_version: number | string | null;
  /** The jsonb column, parsed or as JSON text. */
  details: unknown;
}

/** Selects occurred_at exactly (to the microsecond) as the chain expects it. */
export const OCCURRED_AT_SQL = `to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')`;

/** `2026-11-22T04:29:00.104000Z` for a Date (ms precision), a string as it is. */
export function occurredAtIso(value: string | Date): string {
  if (typeof value === 'string') return value;
  return value.toISOString().replace(/\.(\d{3})Z$/, '.$1000Z');
}

function detailsValue(details: unknown): unknown {
  if (typeof details === 'string') {
    try {
      return JSON.parse(details) as unknown;
    } catch {
      return details;
    }
  }
  return details ?? {};
}

const json = (v: string | null | undefined): string => (v === null || v === undefined ? 'null' : JSON.stringify(v));

/**
 * The canonical bytes of an event at chain position `seq`: canonicalJson of
 * `{ v, seq, id, occurred_at, type, outcome, reason, request_id, client_id, jti, parent_jti,
 * task_id, subject, audience, policy_version, details }`, written out with its members already in
 * sorted order (test/unit/audit-chain.test.ts holds it to exactly that).
 */
export function canonicalEvent(event: ChainEvent, seq: number): string {
  const policyVersion = event.policy_version === null || event.policy_version === undefined ? null : Number(event.policy_version);
  return `{"audience":${json(event.audience)},"client_id":${json(event.client_id)}`
    + `,"details":${canonicalJson(detailsValue(event.details))},"id":${JSON.stringify(String(event.id))}`
    + `,"jti":${json(event.jti)},"occurred_at":${JSON.stringify(occurredAtIso(event.occurred_at))}`
    + `,"outcome":${json(event.outcome)},"parent_jti":${json(event.parent_jti)}`
    + `,"policy_version":${canonicalJson(policyVersion)},"reason":${json(event.reason)}`
    + `,"request_id":${json(event.request_id)},"seq":${JSON.stringify(String(seq))}`
    + `,"subject":${json(event.subject)},"task_id":${json(event.task_id)}`
    + `,"type":${json(event.type)},"v":${CHAIN_VERSION}}`;
}

export function chainHash(prevHash: string, canonical: string): string {
  return createHash('sha256').update(prevHash, 'utf8').update(canonical, 'utf8').digest('hex');
}

/** The hash an event gets at position `seq` after `prevHash`. */
export function eventHash(prevHash: string, seq: number, event: ChainEvent): string {
  return chainHash(prevHash, canonicalEvent(event, seq));
}

export interface CheckpointFields {
  /** The chain position the checkpoint vouches for. */
  seq: number;
  /** hash(seq). */
  hash: string;
  /** Events in the chain up to and including seq (= seq: the chain is dense from 1). */
  count: number;
}

export interface SignedCheckpoint extends CheckpointFields {
  signature: string;
}

export function checkpointMessage(c: CheckpointFields): string {
  return `writ-audit-checkpoint/v${CHAIN_VERSION}\n${c.seq}\n${c.hash}\n${c.count}`;
}

/** base64url HMAC-SHA-256 of the checkpoint under the audit checkpoint key. */
export function signCheckpoint(key: Buffer, c: CheckpointFields): string {
  return createHmac('sha256', key).update(checkpointMessage(c)).digest('base64url');
}

export function verifyCheckpoint(key: Buffer, c: SignedCheckpoint): boolean {
  if (typeof c.signature !== 'string') return false;
  const expected = Buffer.from(signCheckpoint(key, { seq: Number(c.seq), hash: String(c.hash), count: Number(c.count) }));
  const presented = Buffer.from(c.signature);
  return expected.length === presented.length && timingSafeEqual(expected, presented);
}

/**
 * Checkpoints from NDJSON text (Writ's pino log lines or `writ audit export` output): every
 * line holding `{"checkpoint": {seq, hash, count, signature}}`. Other lines are ignored.
 */
export function checkpointsFromNdjson(text: string): SignedCheckpoint[] {
  const found: SignedCheckpoint[] = [];
  for (const line of text.split('\n')) {
    if (!line.includes('"checkpoint"')) continue;
    let parsed: unknown;
    try {
      parsed = JSON.parse(line);
    } catch {
      continue;
    }
    const c = (parsed as { checkpoint?: Record<string, unknown> } | null)?.checkpoint;
    if (!c || typeof c !== 'object') continue;
    const seq = Number(c.seq);
    const count = Number(c.count);
    if (!Number.isSafeInteger(seq) || !Number.isSafeInteger(count) || typeof c.hash !== 'string' || typeof c.signature !== 'string') continue;
    found.push({ seq, count, hash: c.hash, signature: c.signature });
  }
  return found;
}
