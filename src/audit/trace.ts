import type { Knex } from 'knex';
import { OCCURRED_AT_SQL } from './chain.ts';
import type { AuditTextColumns } from './event.ts';
import { markSeconds, revocationOf, rootKey, subjectTaskKey } from '../revocation/state.ts';

/** One issued token, as its lineage row records it. */
export interface TraceHop {
  jti: string;
  parent_jti: string | null;
  /** The client that obtained the token (its current actor). */
  client_id: string;
  /** Acting clients along the chain, oldest first; the last is client_id. */
  actors: string[];
  audience: string;
  scopes: string[];
  rule_id: string;
  policy_version: number;
  task_id: string | null;
  depth: number;
  iat: string;
  exp: string;
  /** Inactive for any reason below: introspection answers `active: false` for it. */
  revoked: boolean;
  /** When it, or an ancestor's revocation cascading to it, was revoked by jti. */
  revoked_at: string | null;
  /**
   * Why it is inactive: revoked by jti (itself or a parent), its task ended, or a kill switch
   * (a revoke-before mark on a client of its chain, its root subject or issuer, or its rule,
   * dated after the token was issued, as disabling a client sets one). Null while active.
   */
  inactive_reason: 'revoked' | 'task_ended' | 'kill_switch' | null;
  /** The request that obtained it (from its exchange.granted event), when recorded. */
  request_id: string | null;
  /**
   * The lineage row against its exchange.granted event, the sealed record of the grant: whether
   * they agree on who obtained the token, for whom, for what and under which rule; `unsealed`
   * while the event is not yet chained (for a moment after the grant: until then it proves
   * nothing); `absent` when it is not there (archived by retention, or removed).
   * `record_differs` names the fields that disagree: the row was changed after the grant, and
   * the event is the one to trust.
   */
  record: 'matches' | 'differs' | 'unsealed' | 'absent';
  record_differs: string[];
}

export interface TraceNode extends TraceHop {
  children: TraceNode[];
}

export interface TokenTrace {
  jti: string;
  /** The human (or upstream principal) at the root of the chain. */
  root: { issuer: string; sub: string };
  /** From the first token issued for the root subject down to the traced token (last). */
  ancestry: TraceHop[];
  /** True when a parent named in the chain has no lineage row (purged). */
  ancestry_incomplete: boolean;
  /** Tokens derived from the traced token, as a tree. */
  descendants: TraceNode[];
  /** True when the tree was cut at MAX_DESCENDANTS or MAX_DEPTH. */
  descendants_truncated: boolean;
}

const MAX_DEPTH = 32;
const MAX_DESCENDANTS = 5000;

interface LineageRow {
  jti: string;
  parent_jti: string | null;
  client_id: string;
  actors: string[] | string;
  audience: string;
  scopes: string[] | string;
  root_issuer: string;
  root_sub: string;
  rule_id: string;
  policy_version: number;
  task_id: string | null;
  depth: number;
  iat: Date | string;
  exp: Date | string;
  revoked_at: Date | string | null;
  granted: GrantedEvent | string | null;
  lvl: number;
}

/** The exchange.granted event's account of a grant (what RECORD_GRANT wrote beside the row). */
interface GrantedEvent {
  request_id: string | null;
  client_id: string | null;
  parent_jti: string | null;
  audience: string | null;
  task_id: string | null;
  subject: string | null;
  policy_version: number | null;
  rule: unknown;
  scope: unknown;
  exp: unknown;
  depth: unknown;
  actors: unknown;
  sealed: boolean;
}

const HOP_COLUMNS = `l.jti, l.parent_jti, l.client_id, l.actors, l.audience, l.scopes, l.root_issuer, l.root_sub, l.rule_id,
  l.policy_version, l.task_id, l.depth, l.iat, l.exp, l.revoked_at`;

const GRANTED = `SELECT %s FROM audit_events e WHERE e.jti = t.jti AND e.type = 'exchange.granted' ORDER BY e.id LIMIT 1`;
/**
 * The grant's exchange.granted event, as one JSON value: a sealed one before any that is not
 * (the serving role may insert events, but not chain them), then the first recorded.
 */
const GRANTED_EVENT = `(SELECT jsonb_build_object('request_id', e.request_id, 'client_id', e.client_id,
    'parent_jti', e.parent_jti, 'audience', e.audience, 'task_id', e.task_id, 'subject', e.subject,
    'policy_version', e.policy_version, 'rule', e.details->'rule', 'scope', e.details->'scope',
    'exp', e.details->'exp', 'depth', e.details->'depth', 'actors', e.details->'actors', 'sealed', c.event_id IS NOT NULL)
  FROM audit_events e LEFT JOIN audit_chain c ON c.event_id = e.id
  WHERE e.jti = t.jti AND e.type = 'exchange.granted'
  ORDER BY c.event_id IS NULL, e.id LIMIT 1) AS granted`;
/** Siblings in the order they were issued: iat has one-second resolution, the audit id does not. */
const ISSUED_ORDER = `t.iat, (${GRANTED.replace('%s', 'e.id')}), t.jti`;

function iso(v: Date | string | null): string | null {
  if (v === null) return null;
  return (v instanceof Date ? v : new Date(v)).toISOString();
}

function jsonArray(v: string[] | string): string[] {
  return typeof v === 'string' ? JSON.parse(v) as string[] : v;
}

/** The fields on which a lineage row and its exchange.granted event disagree. */
function differences(r: LineageRow, e: GrantedEvent): string[] {
  const epoch = (v: Date | string): number => Math.floor(new Date(v).getTime() / 1000);
  const checks: Array<[string, boolean]> = [
    ['client_id', e.client_id === r.client_id],
    ['parent_jti', e.parent_jti === r.parent_jti],
    ['audience', e.audience === r.audience],
    ['task_id', e.task_id === r.task_id],
    ['subject', e.subject === rootKey(r.root_issuer, r.root_sub)],
    ['policy_version', Number(e.policy_version) === Number(r.policy_version)],
    ['rule_id', e.rule === r.rule_id],
    ['scopes', JSON.stringify(e.scope) === JSON.stringify(jsonArray(r.scopes))],
    ['exp', e.exp === epoch(r.exp)],
    ['depth', e.depth === Number(r.depth)],
    // (Events recorded before the actors were part of them say nothing either way.)
    ['actors', e.actors === null || e.actors === undefined || JSON.stringify(e.actors) === JSON.stringify(jsonArray(r.actors))],
  ];
  return checks.filter(([, same]) => !same).map(([field]) => field);
}

function hopOf(r: LineageRow): TraceHop {
  const granted = typeof r.granted === 'string' ? JSON.parse(r.granted) as GrantedEvent : r.granted;
  // An event not yet chained proves nothing either way (the serving role may insert events).
  const differs = granted?.sealed ? differences(r, granted) : [];
  return {
    jti: r.jti,
    parent_jti: r.parent_jti,
    client_id: r.client_id,
    actors: jsonArray(r.actors),
    audience: r.audience,
    scopes: jsonArray(r.scopes),
    rule_id: r.rule_id,
    policy_version: Number(r.policy_version),
    task_id: r.task_id,
    depth: Number(r.depth),
    iat: iso(r.iat)!,
    exp: iso(r.exp)!,
    revoked: r.revoked_at !== null,
    revoked_at: iso(r.revoked_at),
    inactive_reason: r.revoked_at !== null ? 'revoked' : null,
    request_id: granted?.request_id ?? null,
    record: granted === null ? 'absent' : !granted.sealed ? 'unsealed' : differs.length > 0 ? 'differs' : 'matches',
    record_differs: differs,
  };
}

interface MarkRow {
  kind: string;
  value: string;
  not_before: Date | string | null;
}

/**
 * Tokens made inactive without a jti of their own: an ended task, or a revoke-before mark. The
 * marks the traced rows name are read in one statement and judged by the revoked set's own
 * rule (`revocationOf`); a jti revocation is the lineage row's `revoked_at`.
 */
async function applyMarks(knex: Knex, rows: readonly LineageRow[], hops: readonly TraceHop[]): Promise<void> {
  const candidates = new Set<string>();
  for (const r of rows) {
    for (const actor of jsonArray(r.actors)) candidates.add(actor);
    candidates.add(rootKey(r.root_issuer, r.root_sub)).add(r.root_issuer).add(r.rule_id);
    if (r.task_id !== null) candidates.add(r.task_id).add(subjectTaskKey(r.root_issuer, r.root_sub, r.task_id));
  }
  const found = await knex<MarkRow>('revocations').select('kind', 'value', 'not_before')
    .whereIn('kind', ['client', 'subject', 'issuer', 'rule', 'task', 'subject_task'])
    .whereIn('value', [...candidates]);
  if (found.length === 0) return;
  const tasks = new Set<string>();
  const marks = new Map<string, number>();
  for (const m of found) {
    if (m.kind === 'task' || m.kind === 'subject_task') tasks.add(`${m.kind}\n${m.value}`);
    else if (m.not_before !== null) marks.set(`${m.kind}\n${m.value}`, markSeconds(new Date(m.not_before)));
  }
  const set = { jtis: new Map<string, number | null>(), tasks, marks };
  rows.forEach((r, i) => {
    const hop = hops[i]!;
    const why = revocationOf(set, {
      jti: hop.jti, iat: Math.floor(new Date(hop.iat).getTime() / 1000), taskId: r.task_id, clients: hop.actors,
      rootIssuer: r.root_issuer, rootSubject: r.root_sub, ruleId: r.rule_id,
    });
    if (why === null) return;
    // Ending a task also marks its rows revoked: the task is the reason worth telling.
    if (why === 'task_revoked') hop.inactive_reason = 'task_ended';
    else hop.inactive_reason ??= 'kill_switch';
    hop.revoked = true;
  });
}

/**
 * The chain from the root subject through every agent hop to `jti`, and every token derived
 * from it; undefined when Writ never issued that jti (or its lineage was purged).
 */
export async function traceToken(knex: Knex, jti: string): Promise<TokenTrace | undefined> {
  const up = await knex.raw<{ rows: LineageRow[] }>(`
    WITH RECURSIVE up AS (
      SELECT ${HOP_COLUMNS}, 0 AS lvl FROM token_lineage l WHERE l.jti = ?
      UNION ALL
      SELECT ${HOP_COLUMNS}, up.lvl + 1 FROM token_lineage l JOIN up ON l.jti = up.parent_jti WHERE up.lvl < ${MAX_DEPTH}
    )
    SELECT t.*, ${GRANTED_EVENT} FROM up AS t ORDER BY t.lvl DESC`, [jti]);
  if (up.rows.length === 0) return undefined;
  const ancestry = up.rows.map(hopOf);
  await applyMarks(knex, up.rows, ancestry);
  const token = up.rows[up.rows.length - 1]!;
  const top = up.rows[0]!;

  const down = await knex.raw<{ rows: LineageRow[] }>(`
    WITH RECURSIVE down AS (
      SELECT ${HOP_COLUMNS}, 1 AS lvl FROM token_lineage l WHERE l.parent_jti = ?
      UNION ALL
      SELECT ${HOP_COLUMNS}, down.lvl + 1 FROM token_lineage l JOIN down ON l.parent_jti = down.jti WHERE down.lvl < ${MAX_DEPTH}
    )
    SELECT t.*, ${GRANTED_EVENT} FROM (SELECT * FROM down ORDER BY lvl, iat, jti LIMIT ${MAX_DESCENDANTS + 1}) AS t
    ORDER BY t.lvl, ${ISSUED_ORDER}`, [jti]);
  const truncated = down.rows.length > MAX_DESCENDANTS || down.rows.some((r) => Number(r.lvl) >= MAX_DEPTH);
  const nodes = new Map<string, TraceNode>();
  const descendants: TraceNode[] = [];
  const kept = down.rows.slice(0, MAX_DESCENDANTS);
  const hops = kept.map(hopOf);
  await applyMarks(knex, kept, hops);
  for (const [i, row] of kept.entries()) {
    const node: TraceNode = { ...hops[i]!, children: [] };
    if (nodes.has(node.jti)) continue;
    nodes.set(node.jti, node);
    if (row.parent_jti === jti) descendants.push(node);
    else nodes.get(row.parent_jti ?? '')?.children.push(node);
  }
  return {
    jti,
    root: { issuer: token.root_issuer, sub: token.root_sub },
    ancestry,
    ancestry_incomplete: top.parent_jti !== null,
    descendants,
    descendants_truncated: truncated,
  };
}

function hopLine(h: TraceHop): string {
  const parts = [
    `${h.client_id} → ${h.audience}`,
    `[${h.scopes.join(' ')}]`,
    `rule ${h.rule_id} (v${h.policy_version})`,
    `at ${h.iat.replace(/\.000Z$/, 'Z')}`,
    `exp ${h.exp.replace(/\.000Z$/, 'Z')}`,
    ...(h.task_id ? [`task ${h.task_id}`] : []),
    `jti ${h.jti}`,
  ];
  if (h.inactive_reason === 'revoked') parts.push(`REVOKED${h.revoked_at ? ` ${h.revoked_at.replace(/\.\d{3}Z$/, 'Z')}` : ''}`);
  else if (h.inactive_reason === 'task_ended') parts.push('INACTIVE (task ended)');
  else if (h.inactive_reason === 'kill_switch') parts.push('INACTIVE (kill switch)');
  if (h.record === 'differs') parts.push(`CHANGED SINCE GRANTED (${h.record_differs.join(', ')}; the audit event differs)`);
  return parts.join('  ');
}

/** The trace as an indented tree: root subject, each hop, the traced token, its descendants. */
export function formatTraceTree(trace: TokenTrace): string {
  const lines: string[] = [`${trace.root.sub}  (${trace.root.issuer})`];
  if (trace.ancestry_incomplete) lines.push('└─ … (earlier hops purged)');
  let indent = trace.ancestry_incomplete ? '   ' : '';
  trace.ancestry.forEach((hop, i) => {
    const isToken = i === trace.ancestry.length - 1;
    lines.push(`${indent}└─ ${hopLine(hop)}${isToken ? '  ◀' : ''}`);
    indent += '   ';
  });
  const walk = (nodes: TraceNode[], prefix: string): void => {
    nodes.forEach((n, i) => {
      const last = i === nodes.length - 1;
      lines.push(`${prefix}${last ? '└─ ' : '├─ '}${hopLine(n)}`);
      walk(n.children, `${prefix}${last ? '   ' : '│  '}`);
    });
  };
  walk(trace.descendants, indent);
  if (trace.descendants_truncated) lines.push(`${indent}… (more descendants not shown)`);
  return lines.join('\n');
}

/** An audit event as the API, the CLI and the export present it. */
export interface AuditEventView extends AuditTextColumns {
  id: number;
  occurred_at: string;
  policy_version: number | null;
  details: Record<string, unknown>;
  seq: number | null;
  prev_hash: string | null;
  hash: string | null;
}

/**
 * An event (`e`) with its chain row (`c`: seq, prev_hash and hash are null until it is sealed),
 * joined as in VIEW_FROM. (OCCURRED_AT_SQL's bare occurred_at is e's: audit_chain has none.)
 */
const VIEW_SELECT = `e.id, ${OCCURRED_AT_SQL} AS occurred_at, e.type, e.outcome, e.reason, e.request_id, e.client_id, e.jti,
  e.parent_jti, e.task_id, e.subject, e.audience, e.policy_version, e.details, c.seq, c.prev_hash, c.hash`;

/**
 * LATERAL with LIMIT 1 (event_id is unique anyway) has PostgreSQL probe audit_chain's event_id
 * index for each event: joined plainly, it may read the chain from its start for every page.
 */
const VIEW_FROM = `audit_events AS e
  LEFT JOIN LATERAL (SELECT seq, prev_hash, hash FROM audit_chain WHERE event_id = e.id LIMIT 1) AS c ON true`;

function viewOf(r: Record<string, unknown>): AuditEventView {
  return {
    id: Number(r.id),
    occurred_at: String(r.occurred_at),
    type: r.type as string,
    outcome: r.outcome as string,
    reason: (r.reason as string | null) ?? null,
    request_id: (r.request_id as string | null) ?? null,
    client_id: (r.client_id as string | null) ?? null,
    jti: (r.jti as string | null) ?? null,
    parent_jti: (r.parent_jti as string | null) ?? null,
    task_id: (r.task_id as string | null) ?? null,
    subject: (r.subject as string | null) ?? null,
    audience: (r.audience as string | null) ?? null,
    policy_version: r.policy_version === null || r.policy_version === undefined ? null : Number(r.policy_version),
    details: (typeof r.details === 'string' ? JSON.parse(r.details) : r.details ?? {}) as Record<string, unknown>,
    seq: r.seq === null || r.seq === undefined ? null : Number(r.seq),
    prev_hash: (r.prev_hash as string | null) ?? null,
    hash: (r.hash as string | null) ?? null,
  };
}

export interface AuditSearch {
  /** The root subject, `issuer|sub`. */
  subject?: string;
  /** A client: the one that acted or asked, or any actor in the chain of the token concerned. */
  actor?: string;
  audience?: string;
  taskId?: string;
  /** occurred_at ≥ since */
  since?: Date;
  /** occurred_at < until */
  until?: Date;
  type?: string;
  /** 1..500, default 50. */
  limit?: number;
  /** next_cursor of the previous page. */
  cursor?: string;
}

export interface AuditPage {
  events: AuditEventView[];
  /** Pass as `cursor` for the next (older) page; null on the last page. */
  next_cursor: string | null;
}

export const MAX_SEARCH_LIMIT = 500;

export class AuditQueryError extends Error {
  override name = 'AuditQueryError';
}

/** Newest first, keyset-paginated on id. */
export async function searchAudit(knex: Knex, q: AuditSearch): Promise<AuditPage> {
  const limit = q.limit ?? 50;
  if (!Number.isInteger(limit) || limit < 1 || limit > MAX_SEARCH_LIMIT) throw new AuditQueryError(`limit must be an integer from 1 to ${MAX_SEARCH_LIMIT}`);
  if (q.cursor !== undefined && !/^[1-9][0-9]{0,15}$/.test(q.cursor)) throw new AuditQueryError('cursor is malformed');
  for (const [name, d] of [['since', q.since], ['until', q.until]] as const) {
    if (d !== undefined && Number.isNaN(d.getTime())) throw new AuditQueryError(`${name} is not a valid time`);
  }
  const query = knex.select(knex.raw(VIEW_SELECT)).from(knex.raw(VIEW_FROM));
  if (q.subject !== undefined) query.where('e.subject', q.subject);
  if (q.audience !== undefined) query.where('e.audience', q.audience);
  if (q.taskId !== undefined) query.where('e.task_id', q.taskId);
  if (q.type !== undefined) query.where('e.type', q.type);
  if (q.since !== undefined) query.whereRaw('e.occurred_at >= CAST(? AS timestamptz)', [q.since.toISOString()]);
  if (q.until !== undefined) query.whereRaw('e.occurred_at < CAST(? AS timestamptz)', [q.until.toISOString()]);
  if (q.actor !== undefined) {
    const actor = q.actor;
    query.where((w) => {
      w.where('e.client_id', actor).orWhereExists(
        knex('token_lineage as l').select(knex.raw('1'))
          .whereRaw('l.jti = e.jti')
          .whereRaw('l.actors @> CAST(? AS jsonb)', [JSON.stringify([actor])]),
      );
    });
  }
  if (q.cursor !== undefined) query.where('e.id', '<', Number(q.cursor));
  const rows = await query.orderBy('e.id', 'desc').limit(limit + 1) as Array<Record<string, unknown>>;
  const events = rows.slice(0, limit).map(viewOf);
  return { events, next_cursor: rows.length > limit ? String(events[events.length - 1]!.id) : null };
}

/**
 * NDJSON for a SIEM: every event with occurred_at ≥ since in id order (one object per line,
 * the AuditEventView fields), with the signed checkpoints interleaved where the chain reaches
 * them as `{"checkpoint": {id, seq, hash, count, signature, created_at}}` lines, including the
 * one just before the first exported event if any (it anchors the exported segment).
 */
export async function exportAudit(
  knex: Knex,
  since: Date,
  write: (line: string) => void | Promise<void>,
  options: { batchSize?: number } = {},
): Promise<{ events: number; checkpoints: number }> {
  if (Number.isNaN(since.getTime())) throw new AuditQueryError('since is not a valid time');
  const batchSize = options.batchSize ?? 1000;
  let afterId = 0;
  let cpFloor: number | undefined;
  let events = 0;
  let checkpoints = 0;
  const writeCheckpoint = async (c: Record<string, unknown>): Promise<void> => {
    checkpoints += 1;
    await write(JSON.stringify({ checkpoint: {
      id: Number(c.id), seq: Number(c.seq), hash: c.hash, count: Number(c.count), signature: c.signature, created_at: c.created_at,
    } }));
  };
  const checkpointsUpTo = async (from: number, to: number): Promise<Array<Record<string, unknown>>> => {
    const result = await knex.raw<{ rows: Array<Record<string, unknown>> }>(`
      SELECT id, seq, hash, count, signature, to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS created_at
      FROM audit_checkpoints WHERE seq > ? AND seq <= ? ORDER BY seq, id`, [from, to]);
    return result.rows;
  };
  for (;;) {
    const batch = await knex.raw<{ rows: Array<Record<string, unknown>> }>(`
      SELECT ${VIEW_SELECT} FROM ${VIEW_FROM} WHERE e.occurred_at >= CAST(? AS timestamptz) AND e.id > ? ORDER BY e.id LIMIT ?`, [since.toISOString(), afterId, batchSize]);
    const rows = batch.rows.map(viewOf);
    const seqs = rows.map((r) => r.seq).filter((s): s is number => s !== null);
    let pending: Array<Record<string, unknown>> = [];
    if (seqs.length > 0) {
      const max = Math.max(...seqs);
      // The first batch also takes the checkpoint just before its first event.
      const floor = cpFloor ?? Math.min(...seqs) - 2;
      if (max > floor) pending = await checkpointsUpTo(floor, max);
      cpFloor = Math.max(floor, max);
    }
    for (const row of rows) {
      while (row.seq !== null && pending.length > 0 && Number(pending[0]!.seq) < row.seq) await writeCheckpoint(pending.shift()!);
      await write(JSON.stringify(row));
      events += 1;
      while (row.seq !== null && pending.length > 0 && Number(pending[0]!.seq) === row.seq) await writeCheckpoint(pending.shift()!);
    }
    for (const c of pending) await writeCheckpoint(c);
    if (rows.length < batchSize) break;
    afterId = rows[rows.length - 1]!.id;
  }
  // Checkpoints beyond the last exported event (a chain whose tail is gone) still go out.
  if (cpFloor !== undefined) {
    for (const c of await checkpointsUpTo(cpFloor, Number.MAX_SAFE_INTEGER)) await writeCheckpoint(c);
  }
  return { events, checkpoints };
}
