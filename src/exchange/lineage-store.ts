import type { Knex } from 'knex';
import type { Lineage, RootSubject } from './types.ts';

/** A token_lineage row as the driver returns it. */
export interface LineageRow {
  jti: string;
  parent_jti: string | null;
  client_id: string;
  audience: string;
  scopes: readonly string[];
  root_issuer: string;
  root_sub: string;
  root_claims: Record<string, unknown>;
  task_id: string | null;
  depth: number;
  depth_bound: number;
  actors: readonly string[];
  rule_id: string;
  policy_version: number;
  iat: Date;
  exp: Date;
  revoked_at: Date | null;
}

const seconds = (d: Date): number => Math.floor(d.getTime() / 1000);

export function lineageFromRow(row: LineageRow): Lineage {
  return {
    jti: row.jti,
    parentJti: row.parent_jti,
    clientId: row.client_id,
    audience: row.audience,
    scopes: row.scopes,
    root: { issuer: row.root_issuer, sub: row.root_sub, claims: row.root_claims },
    taskId: row.task_id,
    depth: row.depth,
    depthBound: row.depth_bound,
    actors: row.actors,
    ruleId: row.rule_id,
    policyVersion: row.policy_version,
    iat: seconds(row.iat),
    exp: seconds(row.exp),
  };
}

/**
 * Above this many distinct lists or roots the tables start afresh (entries keep theirs); until
 * then a root stays in the table, with its claims, after the last entry holding it is gone.
 */
const MAX_SHARED = 20_000;

/**
 * Lineage of tokens this instance minted stays in memory until they expire, so a chained
 * exchange usually needs no read before its one write; a miss (a token minted elsewhere, or
 * before a restart) reads the row.
 *
 * Tokens repeat a few scope lists, actor chains and root subjects many times over, so each is
 * kept once, frozen (no holder can change what another holds). 100,000 entries for 1,000
 * subjects took 235 bytes each instead of 521: less for every full GC to mark, which at that
 * size is most of the heap (bench/README.md, "The sealer's parallel workers").
 */
export class LineageCache {
  private readonly entries = new Map<string, Lineage>();
  private readonly maxEntries: number;
  private readonly lists = new Map<string, readonly string[]>();
  private readonly roots = new Map<string, RootSubject>();

  constructor(maxEntries = 200_000) {
    this.maxEntries = maxEntries;
  }

  remember(lineage: Lineage): void {
    if (this.entries.size >= this.maxEntries) this.evict(Math.floor(Date.now() / 1000));
    this.entries.set(lineage.jti, {
      ...lineage,
      scopes: this.sharedList(lineage.scopes),
      actors: this.sharedList(lineage.actors),
      root: this.sharedRoot(lineage.root),
    });
  }

  async get(knex: Knex, jti: string, now: number): Promise<Lineage | undefined> {
    const hit = this.entries.get(jti);
    if (hit) return hit;
    const row = await knex<LineageRow>('token_lineage').where({ jti }).first();
    if (!row) return undefined;
    const lineage = lineageFromRow(row);
    if (lineage.exp > now) this.remember(lineage);
    return lineage;
  }

  peek(jti: string): Lineage | undefined {
    return this.entries.get(jti);
  }

  private sharedList(list: readonly string[]): readonly string[] {
    // A NUL cannot occur in a scope token or a client id, so the joined key is unambiguous.
    const key = list.join('\0');
    const kept = this.lists.get(key);
    if (kept && kept.length === list.length) return kept;
    if (this.lists.size >= MAX_SHARED) this.lists.clear();
    const frozen = Object.freeze([...list]);
    this.lists.set(key, frozen);
    return frozen;
  }

  private sharedRoot(root: RootSubject): RootSubject {
    // A chained token's root is its parent's, already one of these: kept as it is, even when
    // the table has since moved on to a newer root of the same subject.
    if (Object.isFrozen(root)) return root;
    const key = `${root.issuer}\0${root.sub}`;
    const kept = this.roots.get(key);
    // The same subject's claims may change from one of its tokens to the next: only the very
    // same claims object (a subject token presented again) shares a root.
    if (kept && kept.claims === root.claims) return kept;
    if (this.roots.size >= MAX_SHARED) this.roots.clear();
    const frozen = Object.freeze({ issuer: root.issuer, sub: root.sub, claims: root.claims });
    this.roots.set(key, frozen);
    return frozen;
  }

  private evict(now: number): void {
    for (const [jti, l] of this.entries) if (l.exp <= now) this.entries.delete(jti);
    // Still full of live tokens: drop the oldest insertions (Map keeps insertion order).
    const excess = this.entries.size - Math.floor(this.maxEntries * 0.9);
    if (excess > 0) {
      let n = 0;
      for (const jti of this.entries.keys()) {
        if (n++ >= excess) break;
        this.entries.delete(jti);
      }
    }
  }
}
