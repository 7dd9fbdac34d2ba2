import type { Knex } from 'knex';
import type { Lineage } from './types.ts';

/** A token_lineage row as the driver returns it. */
export interface LineageRow {
  jti: string;
  parent_jti: string | null;
  client_id: string;
  audience: string;
  scopes: string[];
  root_issuer: string;
  root_sub: string;
  root_claims: Record<string, unknown>;
  task_id: string | null;
  depth: number;
  depth_bound: number;
  actors: string[];
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
 * Lineage of tokens this instance minted stays in memory until they expire, so a chained
 * exchange usually needs no read before its one write; a miss (a token minted elsewhere, or
 * before a restart) reads the row.
 */
export class LineageCache {
  private readonly entries = new Map<string, Lineage>();
  private readonly maxEntries: number;

  constructor(maxEntries = 200_000) {
    this.maxEntries = maxEntries;
  }

  remember(lineage: Lineage): void {
    if (this.entries.size >= this.maxEntries) this.evict(Math.floor(Date.now() / 1000));
    this.entries.set(lineage.jti, lineage);
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
