import { createHash } from 'node:crypto';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  GENESIS_HASH, canonicalEvent, chainHash, checkpointMessage, checkpointsFromNdjson, eventHash, occurredAtIso,
  signCheckpoint, verifyCheckpoint, type ChainEvent,
} from '../../src/audit/chain.ts';
import { canonicalJson } from '../../src/canonical-json.ts';
import { deriveKeys } from '../../src/tokens/kek.ts';

const event = (over: Partial<ChainEvent> = {}): ChainEvent => ({
  id: 7,
  occurred_at: '2026-11-22T04:29:00.104123Z',
  type: 'exchange.granted',
  outcome: 'granted',
  reason: null,
  request_id: 'req-1',
  client_id: 'planner-agent',
  jti: 'j1',
  parent_jti: null,
  task_id: null,
  subject: 'https://idp.example.com|alice',
  audience: 'https://payments.example.com',
  policy_version: 3,
  details: { rule: 'r', scope: ['payment.read'], act: { sub: 'planner-agent' } },
  ...over,
});

const key = deriveKeys(Buffer.alloc(32, 7)).auditCheckpoint;

/**
 * The chain's definition, written plainly: stable JSON (keys sorted by code unit, undefined members
 * dropped) of the event's columns and its position. Events chained by earlier releases were hashed
 * over exactly these bytes, so the sealer's faster writing of them must not differ by one.
 */
function referenceStableJson(value: unknown): string {
  if (value === null || value === undefined) return 'null';
  if (Array.isArray(value)) return `[${value.map((v) => (v === undefined ? 'null' : referenceStableJson(v))).join(',')}]`;
  if (typeof value === 'object') {
    if (value instanceof Date) return JSON.stringify(value.toISOString());
    const entries = Object.entries(value as Record<string, unknown>)
      .filter(([, v]) => v !== undefined)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${referenceStableJson(v)}`).join(',')}}`;
  }
  if (typeof value === 'bigint') return value.toString();
  if (typeof value === 'number' && !Number.isFinite(value)) return 'null';
  return JSON.stringify(value);
}

function referenceCanonical(e: ChainEvent, seq: number): string {
  const details = typeof e.details === 'string' ? (() => {
    try { return JSON.parse(e.details) as unknown; } catch { return e.details; }
  })() : e.details ?? {};
  return referenceStableJson({
    v: 1, seq: String(seq), id: String(e.id), occurred_at: occurredAtIso(e.occurred_at), type: e.type, outcome: e.outcome,
    reason: e.reason ?? null, request_id: e.request_id ?? null, client_id: e.client_id ?? null, jti: e.jti ?? null,
    parent_jti: e.parent_jti ?? null, task_id: e.task_id ?? null, subject: e.subject ?? null, audience: e.audience ?? null,
    policy_version: e.policy_version === null || e.policy_version === undefined ? null : Number(e.policy_version), details,
  });
}

const anyText = fc.string({ unit: fc.oneof(fc.string({ unit: 'binary', minLength: 1, maxLength: 1 }), fc.constantFrom('"', '\\', '\u0000', '\ud800', 'é')) });
const anyValue = fc.letrec<{ value: unknown }>((tie) => ({
  value: fc.oneof(
    { depthSize: 'small' },
    anyText, fc.integer(), fc.double(), fc.boolean(), fc.constant(null), fc.constant(undefined), fc.bigInt(), fc.date({ noInvalidDate: true }),
    fc.array(tie('value'), { maxLength: 4 }),
    fc.dictionary(anyText, tie('value'), { maxKeys: 5 }),
  ),
})).value;

describe('audit chain canonical form, against its plain definition', () => {
  it('canonicalJson writes exactly the reference bytes for any value', () => {
    fc.assert(fc.property(anyValue, (value) => {
      expect(canonicalJson(value)).toBe(referenceStableJson(value));
    }), { numRuns: 3_000 });
  });

  it('canonicalEvent writes exactly the reference bytes for any event', () => {
    const nullableText = fc.option(anyText, { nil: null });
    const anyEvent = fc.record({
      id: fc.oneof(fc.nat(), fc.bigInt({ min: 0n, max: 2n ** 62n }), fc.nat().map(String)),
      occurred_at: fc.oneof(fc.date({ noInvalidDate: true, min: new Date(0), max: new Date('9999-12-31') }), fc.constant('2026-11-22T04:29:00.104123Z')),
      type: anyText, outcome: anyText, reason: nullableText, request_id: nullableText, client_id: nullableText, jti: nullableText,
      parent_jti: nullableText, task_id: nullableText, subject: nullableText, audience: nullableText,
      policy_version: fc.oneof(fc.constant(null), fc.nat(), fc.nat().map(String)),
      details: fc.oneof(anyValue, fc.jsonValue().map((v) => JSON.stringify(v)), anyText),
    });
    fc.assert(fc.property(anyEvent, fc.nat(), (e, seq) => {
      expect(canonicalEvent(e as ChainEvent, seq)).toBe(referenceCanonical(e as ChainEvent, seq));
    }), { numRuns: 3_000 });
  });
});

describe('audit chain (pure)', () => {
  it('stable JSON sorts keys at every level and drops undefined members', () => {
    expect(canonicalJson({ b: 1, a: { d: [1, { z: 1, y: 2 }], c: undefined } })).toBe('{"a":{"d":[1,{"y":2,"z":1}]},"b":1}');
    expect(canonicalJson(null)).toBe('null');
    expect(canonicalJson([undefined])).toBe('[null]');
  });

  it('canonical form is independent of key order, the form of details and of numeric ids', () => {
    const a = canonicalEvent(event(), 5);
    const b = canonicalEvent(event({ id: '7', policy_version: '3', details: '{"scope":["payment.read"],"act":{"sub":"planner-agent"},"rule":"r"}' }), 5);
    expect(b).toBe(a);
    expect(JSON.parse(a)).toMatchObject({ v: 1, seq: '5', id: '7', occurred_at: '2026-11-22T04:29:00.104123Z' });
  });

  it('every recorded column, and the position, changes the hash', () => {
    const base = eventHash(GENESIS_HASH, 1, event());
    const variants: Array<Partial<ChainEvent>> = [
      { id: 8 }, { occurred_at: '2026-11-22T04:29:00.104124Z' }, { type: 'exchange.denied' }, { outcome: 'denied' },
      { reason: 'x' }, { request_id: 'req-2' }, { client_id: 'other' }, { jti: 'j2' }, { parent_jti: 'p' }, { task_id: 't' },
      { subject: 'https://idp.example.com|bob' }, { audience: 'https://x' }, { policy_version: 4 }, { policy_version: null },
      { details: { rule: 'r', scope: ['payment.transfer'], act: { sub: 'planner-agent' } } },
    ];
    for (const v of variants) expect(eventHash(GENESIS_HASH, 1, event(v)), JSON.stringify(v)).not.toBe(base);
    expect(eventHash(GENESIS_HASH, 2, event())).not.toBe(base);
    expect(eventHash('1'.repeat(64), 1, event())).not.toBe(base);
  });

  it('hash = sha256(prev_hash || canonical), hex', () => {
    const canonical = canonicalEvent(event(), 1);
    const expected = createHash('sha256').update(GENESIS_HASH + canonical).digest('hex');
    expect(chainHash(GENESIS_HASH, canonical)).toBe(expected);
    expect(eventHash(GENESIS_HASH, 1, event())).toMatch(/^[0-9a-f]{64}$/);
  });

  it('a Date occurred_at is read at millisecond precision, as to_char prints it', () => {
    expect(occurredAtIso(new Date('2026-11-22T04:29:00.104Z'))).toBe('2026-11-22T04:29:00.104000Z');
    expect(canonicalEvent(event({ occurred_at: new Date('2026-11-22T04:29:00.104Z') }), 1))
      .toBe(canonicalEvent(event({ occurred_at: '2026-11-22T04:29:00.104000Z' }), 1));
  });

  it('checkpoints are signed with HMAC-SHA-256 under the derived key and verified in constant time', () => {
    const c = { seq: 10, hash: 'a'.repeat(64), count: 10 };
    const signature = signCheckpoint(key, c);
    expect(signature).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect(checkpointMessage(c)).toBe(`writ-audit-checkpoint/v1\n10\n${'a'.repeat(64)}\n10`);
    expect(verifyCheckpoint(key, { ...c, signature })).toBe(true);
    expect(verifyCheckpoint(key, { ...c, seq: 11, signature })).toBe(false);
    expect(verifyCheckpoint(key, { ...c, count: 9, signature })).toBe(false);
    expect(verifyCheckpoint(key, { ...c, hash: 'b'.repeat(64), signature })).toBe(false);
    expect(verifyCheckpoint(key, { ...c, signature: signature.slice(1) })).toBe(false);
    expect(verifyCheckpoint(key, { ...c, signature: '' })).toBe(false);
    expect(verifyCheckpoint(deriveKeys(Buffer.alloc(32, 8)).auditCheckpoint, { ...c, signature })).toBe(false);
    // The audit key is its own: not the key that hashes client secrets.
    expect(signCheckpoint(deriveKeys(Buffer.alloc(32, 7)).clientSecret, c)).not.toBe(signature);
  });

  it('reads checkpoints from log lines and exports, ignoring everything else', () => {
    const c = { seq: 3, hash: 'c'.repeat(64), count: 3, signature: 'sig' };
    const text = [
      JSON.stringify({ level: 30, msg: 'request', path: '/token' }),
      JSON.stringify({ level: 30, checkpoint: { id: 1, ...c, created_at: 'x' }, msg: 'audit checkpoint' }),
      'not json "checkpoint"',
      JSON.stringify({ checkpoint: { seq: 'x', hash: 1 } }),
      JSON.stringify({ id: 4, type: 'introspection' }),
      JSON.stringify({ checkpoint: { ...c, seq: 4, count: 4 } }),
    ].join('\n');
    expect(checkpointsFromNdjson(text)).toEqual([c, { ...c, seq: 4, count: 4 }]);
  });
});
