import type { Knex } from 'knex';
import type { Logger } from 'pino';
import type { Database } from '../store/db.ts';

export const REVOCATION_CHANNEL = 'writ_revocation';

export type RevocationKind = 'jti' | 'task' | 'subject_task' | 'client' | 'subject' | 'issuer' | 'rule';

/**
 * A root subject as a kill switch's value and an audit event's `subject` name it: `issuer|sub`.
 */
export function rootKey(rootIssuer: string, rootSubject: string): string {
  return `${rootIssuer}|${rootSubject}`;
}

/** The key of a task ended for one root subject. */
export function subjectTaskKey(rootIssuer: string, rootSubject: string, taskId: string): string {
  return `${rootKey(rootIssuer, rootSubject)}|${taskId}`;
}

export interface RevocationEntry {
  kind: RevocationKind;
  value: string;
  /** For kill switches: tokens issued before this (epoch seconds) are inactive. */
  notBefore: number | null;
  /** Epoch seconds after which the mark can no longer affect a live token; null = never expires. */
  expiresAt: number | null;
}

/** What a token presents to the revocation check; all of it is in the JWT or its lineage. */
export interface RevocationSubject {
  jti: string;
  iat: number;
  taskId: string | null;
  /** Every client in the chain (`client_id`, and each actor's client). */
  clients: readonly string[];
  rootIssuer: string;
  rootSubject: string;
  ruleId?: string;
}

/**
 * What is revoked, as the revoked set holds it: jtis (→ their exp), ended tasks
 * (`task\n<id>`, `subject_task\n<key>`) and revoke-before marks (`<kind>\n<value>` → epoch
 * seconds). The rules that read it are `taskEnded` and `revocationOf`.
 */
export interface RevokedSet {
  readonly jtis: ReadonlyMap<string, number | null>;
  readonly tasks: ReadonlySet<string>;
  readonly marks: ReadonlyMap<string, number>;
}

/** Whether the task was ended everywhere, or for this root subject. */
export function taskEnded(set: RevokedSet, taskId: string, root?: { issuer: string; sub: string }): boolean {
  return set.tasks.has(`task\n${taskId}`)
    || (root !== undefined && set.tasks.has(`subject_task\n${subjectTaskKey(root.issuer, root.sub, taskId)}`));
}

/** Why a token is inactive, or null. A mark covers tokens whose `iat` is before its time. */
export function revocationOf(set: RevokedSet, t: RevocationSubject): 'token_revoked' | 'task_revoked' | null {
  if (t.taskId !== null && taskEnded(set, t.taskId, { issuer: t.rootIssuer, sub: t.rootSubject })) return 'task_revoked';
  if (set.jtis.has(t.jti)) return 'token_revoked';
  if (set.marks.size === 0) return null;
  const covered = (kind: RevocationKind, value: string): boolean => {
    const nb = set.marks.get(`${kind}\n${value}`);
    return nb !== undefined && t.iat < nb;
  };
  if (t.clients.some((c) => covered('client', c))) return 'token_revoked';
  if (covered('subject', rootKey(t.rootIssuer, t.rootSubject))) return 'token_revoked';
  if (covered('issuer', t.rootIssuer)) return 'token_revoked';
  if (t.ruleId !== undefined && covered('rule', t.ruleId)) return 'token_revoked';
  return null;
}

interface RevocationRow {
  kind: RevocationKind;
  value: string;
  not_before: Date | null;
  expires_at: Date | null;
  created_at: Date;
}

/**
 * Token times are whole seconds: a mark set within a second covers every token of that second,
 * since a token issued a moment before the mark cannot be told from one issued a moment after.
 */
export function markSeconds(d: Date): number {
  return Math.ceil(d.getTime() / 1000);
}

const toSeconds = (d: Date | null): number | null => (d ? Math.floor(d.getTime() / 1000) : null);

/**
 * Each instance's copy of every revocation and kill switch, so introspection never reads the
 * database (docs/DESIGN.md §8). Fed by LISTEN/NOTIFY, with a short poll as backstop; if neither has
 * succeeded lately the set is stale and callers must fail closed.
 */
export class RevocationState {
  private readonly jtis = new Map<string, number | null>();
  private readonly tasks = new Set<string>();
  /** `${kind}\n${value}` → not_before (epoch seconds). */
  private readonly marks = new Map<string, number>();
  /** The three above, as the rules read them; made once, not per check. */
  private readonly view: RevokedSet = { jtis: this.jtis, tasks: this.tasks, marks: this.marks };
  private lastSeen: Date | undefined;
  private lastSyncOk = 0;
  private pollTimer: NodeJS.Timeout | undefined;
  private unlisten: (() => Promise<void>) | undefined;
  private readonly db: Database;
  private readonly logger: Logger;
  private readonly pollMs: number;
  /** How long without a successful sync before the set is considered stale. */
  readonly staleAfterMs: number;

  constructor(db: Database, logger: Logger, options: { pollMs?: number; staleAfterMs?: number } = {}) {
    this.db = db;
    this.logger = logger;
    this.pollMs = options.pollMs ?? 250;
    this.staleAfterMs = options.staleAfterMs ?? 1000;
  }

  async start(): Promise<void> {
    this.unlisten = await this.db.listen(REVOCATION_CHANNEL, (payload) => this.onNotify(payload));
    await this.poll(true);
    this.pollTimer = setInterval(() => void this.poll(false), this.pollMs);
    this.pollTimer.unref();
  }

  async stop(): Promise<void> {
    if (this.pollTimer) clearInterval(this.pollTimer);
    await this.unlisten?.();
  }

  /** True while the set is known to be current. */
  isFresh(nowMs = Date.now()): boolean {
    return nowMs - this.lastSyncOk <= this.staleAfterMs;
  }

  /**
   * Reads what was revoked since the last poll, now: after this instance committed a change
   * that revokes (a revocation, a task ended, a kill switch, a client disabled by policy), so
   * that its answers reflect it from that answer on, not only once its NOTIFY arrives.
   */
  sync(): Promise<void> {
    // Unlike the timer's poll, a failure reaches the caller, which promised read-your-writes.
    return this.poll(false, true);
  }

  apply(entry: RevocationEntry): void {
    switch (entry.kind) {
      case 'jti':
        this.jtis.set(entry.value, entry.expiresAt);
        break;
      case 'task':
      case 'subject_task':
        this.tasks.add(`${entry.kind}\n${entry.value}`);
        break;
      default: {
        const key = `${entry.kind}\n${entry.value}`;
        const previous = this.marks.get(key) ?? 0;
        this.marks.set(key, Math.max(previous, entry.notBefore ?? 0));
      }
    }
  }

  isJtiRevoked(jti: string): boolean {
    return this.jtis.has(jti);
  }

  /** Whether the task was ended everywhere, or for this root subject. */
  isTaskRevoked(taskId: string, root?: { issuer: string; sub: string }): boolean {
    return taskEnded(this.view, taskId, root);
  }

  /** Why a token is inactive, or null (`revocationOf`). */
  check(t: RevocationSubject): 'token_revoked' | 'task_revoked' | null {
    return revocationOf(this.view, t);
  }

  private onNotify(payload: string): void {
    try {
      const entries = JSON.parse(payload) as RevocationEntry[];
      for (const e of entries) this.apply(e);
    } catch {
      // A payload too large to send arrives as a hint only; the poll picks the rows up.
      void this.poll(false);
    }
  }

  private async poll(initial: boolean, rethrow = false): Promise<void> {
    try {
      const knex: Knex = this.db.knex;
      const query = knex<RevocationRow>('revocations').select('kind', 'value', 'not_before', 'expires_at', 'created_at');
      if (initial || !this.lastSeen) {
        query.where((q) => q.whereNull('expires_at').orWhere('expires_at', '>', knex.fn.now()));
      } else {
        // Overlap the window: rows are stamped when written and become visible at commit.
        query.where('created_at', '>', new Date(this.lastSeen.getTime() - 5000));
      }
      const rows = await query;
      for (const row of rows) {
        this.apply({ kind: row.kind, value: row.value, notBefore: row.not_before ? markSeconds(row.not_before) : null, expiresAt: toSeconds(row.expires_at) });
        if (!this.lastSeen || row.created_at > this.lastSeen) this.lastSeen = row.created_at;
      }
      this.lastSeen ??= new Date();
      this.lastSyncOk = Date.now();
      if (!initial) this.purge(Math.floor(Date.now() / 1000));
    } catch (err) {
      if (initial || rethrow) throw err;
      this.logger.warn({ err: (err as Error).message }, 'revocation poll failed');
    }
  }

  private purge(now: number): void {
    if (this.jtis.size < 10_000) return;
    for (const [jti, exp] of this.jtis) if (exp !== null && exp < now) this.jtis.delete(jti);
  }
}
