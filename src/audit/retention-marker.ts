import { createHmac, timingSafeEqual } from 'node:crypto';
import type { Knex } from 'knex';
import { CHAIN_VERSION } from './chain.ts';

/** What a signed marker vouches for: one monthly partition, gone from the database, archived. */
export interface RetentionFields {
  partition: string;
  rangeStart: Date;
  rangeEnd: Date;
  events: number;
  firstEventId: number | null;
  lastEventId: number | null;
  firstSeq: number | null;
  lastSeq: number | null;
  archiveSha256: string;
  retainedBy: string;
  createdAt: Date;
}

export interface RetentionMarker extends RetentionFields {
  id: number;
  signature: string;
}

function retentionMessage(m: RetentionFields): string {
  return [
    `writ-audit-retention/v${CHAIN_VERSION}`, m.partition, m.rangeStart.toISOString(), m.rangeEnd.toISOString(), m.events,
    m.firstEventId ?? '', m.lastEventId ?? '', m.firstSeq ?? '', m.lastSeq ?? '', m.archiveSha256, m.retainedBy, m.createdAt.toISOString(),
  ].join('\n');
}

/** base64url HMAC-SHA-256 under the audit checkpoint key (a message of its own kind, never a checkpoint's). */
export function signRetention(key: Buffer, m: RetentionFields): string {
  return createHmac('sha256', key).update(retentionMessage(m)).digest('base64url');
}

export function verifyRetention(key: Buffer, m: RetentionMarker): boolean {
  const expected = Buffer.from(signRetention(key, m));
  const presented = Buffer.from(String(m.signature));
  return expected.length === presented.length && timingSafeEqual(expected, presented);
}

export const num = (v: unknown): number | null => (v === null || v === undefined ? null : Number(v));

export async function loadRetentionMarkers(knex: Knex): Promise<RetentionMarker[]> {
  // A database migrated only as far as the audit chain has no markers to read.
  const { rows: [table] } = await knex.raw<{ rows: Array<{ t: string | null }> }>(`SELECT to_regclass('audit_retention') AS t`);
  if (!table?.t) return [];
  const rows = await knex('audit_retention').orderBy('id') as Array<Record<string, unknown>>;
  return rows.map((r) => ({
    id: Number(r.id), partition: String(r.partition), rangeStart: new Date(r.range_start as Date), rangeEnd: new Date(r.range_end as Date),
    events: Number(r.events), firstEventId: num(r.first_event_id), lastEventId: num(r.last_event_id), firstSeq: num(r.first_seq),
    lastSeq: num(r.last_seq), archiveSha256: String(r.archive_sha256), retainedBy: String(r.retained_by),
    createdAt: new Date(r.created_at as Date), signature: String(r.signature),
  }));
}

/**
 * Markers whose ranges overlap, as one: months whose events interleave by id (around a month's
 * end) cannot say which of them a missing event was in, only how many they hold together.
 */
export interface RetainedSpan {
  firstEventId: number;
  lastEventId: number;
  firstSeq: number;
  lastSeq: number;
  events: number;
  markers: number[];
}

export function retainedSpans(markers: readonly RetentionMarker[]): RetainedSpan[] {
  const spans: RetainedSpan[] = [];
  const ranged = markers.filter((m) => m.firstEventId !== null && m.lastEventId !== null && m.firstSeq !== null && m.lastSeq !== null)
    .sort((a, b) => a.firstEventId! - b.firstEventId!);
  for (const m of ranged) {
    const last = spans.at(-1);
    if (last && m.firstEventId! <= last.lastEventId) {
      last.lastEventId = Math.max(last.lastEventId, m.lastEventId!);
      last.firstSeq = Math.min(last.firstSeq, m.firstSeq!);
      last.lastSeq = Math.max(last.lastSeq, m.lastSeq!);
      last.events += m.events;
      last.markers.push(m.id);
    } else {
      spans.push({ firstEventId: m.firstEventId!, lastEventId: m.lastEventId!, firstSeq: m.firstSeq!, lastSeq: m.lastSeq!, events: m.events, markers: [m.id] });
    }
  }
  return spans;
}
