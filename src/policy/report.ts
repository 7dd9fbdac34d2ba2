import type { Knex } from 'knex';
import { escapeControls } from './diff.ts';
import type { ClaimCondition, PolicyDocument, RulePolicy, SubjectSelector } from './model.ts';

/**
 * The scope-creep report (ISSUE item 6), for review before access is re-attested: what policy
 * allows that nobody used in the last N days, agents whose denials are climbing, and who may
 * obtain what. Read from the audit record (`exchange.granted` / `exchange.denied`), whose
 * `occurred_at` is indexed; the current policy document says what is allowed.
 */

export interface ReportOptions {
  /** Window length, days (fractions allowed). */
  days: number;
  /** End of the window. */
  now: Date;
  /** WRIT_MAX_TTL, seconds: also caps the effective TTL in the matrix when given. */
  maxTtl?: number;
  /** A rising denial rate is flagged only with at least this many denials in the recent half. Default 3. */
  minDenials?: number;
  /** …and only when the recent half's denial rate is at least this. Default 0.1. */
  minRate?: number;
}

export interface UnusedRule {
  rule: string;
  actor: string;
  audience: string;
  scopes: string[];
}

export interface UnusedScopes {
  audience: string;
  /** Scopes the audience defines that no grant in the window carried. */
  scopes: string[];
  /** Of those, the ones no rule can grant at all (dead definitions). */
  notGrantable: string[];
}

export interface OverbroadRule {
  rule: string;
  audience: string;
  grants: number;
  /** Scopes the rule allows that none of its grants in the window carried. */
  unusedScopes: string[];
}

export interface DenialRate {
  denied: number;
  total: number;
  /** denied / total; 0 when there were no exchanges. */
  rate: number;
}

export interface RisingDenials {
  agent: string;
  /** The older half of the window. */
  earlier: DenialRate;
  /** The most recent half of the window. */
  recent: DenialRate;
  /** Most frequent denial reasons in the recent half, most frequent first. */
  topReasons: Array<{ reason: string; count: number }>;
}

export interface Capability {
  agent: string;
  /** Whether the agent is enabled (a disabled agent obtains nothing). */
  enabled: boolean;
  rule: string;
  /** For whom: the rule's subject selector in words. */
  subject: string;
  /** Effective lifetime, seconds: min(rule ttl, audience max_ttl[, WRIT_MAX_TTL]). */
  ttl: number;
  maxDepth: number;
  requireTask: boolean;
  /** Grants of this scope through this rule in the window. */
  grants: number;
}

export interface AudienceCapabilities {
  audience: string;
  maxTtl: number;
  /** The client the audience's tokens are addressed to, if any. */
  owner?: string;
  scopes: Array<{ scope: string; capabilities: Capability[] }>;
}

export interface ScopeCreepReport {
  days: number;
  from: string;
  to: string;
  unusedRules: UnusedRule[];
  unusedScopes: UnusedScopes[];
  overbroadRules: OverbroadRule[];
  risingDenials: RisingDenials[];
  capabilityMatrix: AudienceCapabilities[];
}

const DAY_MS = 86_400_000;

/** `jsonb_array_elements_text` of the granted scopes, tolerating a row without an array. */
const GRANTED_SCOPES = `jsonb_array_elements_text(CASE WHEN jsonb_typeof(details->'scope') = 'array' THEN details->'scope' ELSE '[]'::jsonb END)`;

function rate(denied: number, total: number): DenialRate {
  return { denied, total, rate: total === 0 ? 0 : denied / total };
}

function conditionText(name: string, condition: ClaimCondition): string {
  return typeof condition === 'string' ? `${name}=${condition}` : `${name} in [${condition.join(', ')}]`;
}

function claimsText(claims: Readonly<Record<string, ClaimCondition>> | undefined): string {
  const entries = Object.entries(claims ?? {});
  return entries.length === 0 ? '' : ` where ${entries.map(([n, c]) => conditionText(n, c)).join(' and ')}`;
}

/** A rule's subject selector in words: for whom an agent may obtain the token. */
export function describeSubject(subject: SubjectSelector): string {
  if (subject.issuer !== 'self') return `users of ${subject.issuer}${claimsText(subject.claims)}`;
  let text = 'a Writ token';
  if (subject.after) text += ` obtained by ${subject.after.join(' or ')}`;
  text += claimsText(subject.claims);
  if (subject.root) text += `, on behalf of users of ${subject.root.issuer}${claimsText(subject.root.claims)}`;
  return text;
}

function effectiveTtl(rule: RulePolicy, audienceMaxTtl: number | undefined, maxTtl: number | undefined): number {
  return Math.min(rule.ttl, audienceMaxTtl ?? rule.ttl, maxTtl ?? rule.ttl);
}

export async function scopeCreepReport(knex: Knex, document: PolicyDocument, options: ReportOptions): Promise<ScopeCreepReport> {
  if (!(options.days > 0)) throw new RangeError('days must be positive');
  const to = options.now;
  const from = new Date(to.getTime() - options.days * DAY_MS);
  const mid = new Date(to.getTime() - (options.days * DAY_MS) / 2);
  const minDenials = options.minDenials ?? 3;
  const minRate = options.minRate ?? 0.1;

  const { rows: ruleRows } = await knex.raw<{ rows: Array<{ rule: string | null; grants: number }> }>(`
    SELECT details->>'rule' AS rule, count(*)::int AS grants
    FROM audit_events
    WHERE type = 'exchange.granted' AND occurred_at >= ? AND occurred_at <= ?
    GROUP BY 1`, [from, to]);
  const { rows: scopeRows } = await knex.raw<{ rows: Array<{ rule: string | null; audience: string | null; scope: string; grants: number }> }>(`
    SELECT details->>'rule' AS rule, audience, s.scope, count(*)::int AS grants
    FROM audit_events CROSS JOIN LATERAL ${GRANTED_SCOPES} AS s(scope)
    WHERE type = 'exchange.granted' AND occurred_at >= ? AND occurred_at <= ?
    GROUP BY 1, 2, 3`, [from, to]);
  const { rows: denialRows } = await knex.raw<{ rows: Array<{ client_id: string; recent: boolean; denied: number; total: number }> }>(`
    SELECT client_id, occurred_at >= ? AS recent,
           (count(*) FILTER (WHERE type = 'exchange.denied'))::int AS denied, count(*)::int AS total
    FROM audit_events
    WHERE type IN ('exchange.granted', 'exchange.denied') AND client_id IS NOT NULL
      AND occurred_at >= ? AND occurred_at <= ?
    GROUP BY 1, 2`, [mid, from, to]);

  const grantsByRule = new Map(ruleRows.filter((r) => r.rule !== null).map((r) => [r.rule as string, r.grants]));
  const usedByAudience = new Map<string, Set<string>>();
  const usedByRule = new Map<string, Map<string, number>>();
  for (const row of scopeRows) {
    if (row.audience !== null) {
      const set = usedByAudience.get(row.audience) ?? new Set<string>();
      set.add(row.scope);
      usedByAudience.set(row.audience, set);
    }
    if (row.rule !== null) {
      const counts = usedByRule.get(row.rule) ?? new Map<string, number>();
      counts.set(row.scope, (counts.get(row.scope) ?? 0) + row.grants);
      usedByRule.set(row.rule, counts);
    }
  }

  const unusedRules: UnusedRule[] = document.rules
    .filter((r) => !grantsByRule.has(r.id))
    .map((r) => ({ rule: r.id, actor: r.actor, audience: r.audience, scopes: [...r.scopes] }));

  const unusedScopes: UnusedScopes[] = [];
  for (const audience of document.audiences) {
    const used = usedByAudience.get(audience.audience) ?? new Set<string>();
    const scopes = audience.scopes.filter((s) => !used.has(s));
    if (scopes.length === 0) continue;
    const grantable = new Set(document.rules.filter((r) => r.audience === audience.audience).flatMap((r) => r.scopes));
    unusedScopes.push({ audience: audience.audience, scopes, notGrantable: scopes.filter((s) => !grantable.has(s)) });
  }

  const overbroadRules: OverbroadRule[] = [];
  for (const rule of document.rules) {
    const grants = grantsByRule.get(rule.id);
    if (grants === undefined) continue;
    const used = usedByRule.get(rule.id) ?? new Map<string, number>();
    const unused = rule.scopes.filter((s) => !used.has(s));
    if (unused.length > 0) overbroadRules.push({ rule: rule.id, audience: rule.audience, grants, unusedScopes: unused });
  }

  const halves = new Map<string, { earlier: DenialRate; recent: DenialRate }>();
  for (const row of denialRows) {
    const entry = halves.get(row.client_id) ?? { earlier: rate(0, 0), recent: rate(0, 0) };
    entry[row.recent ? 'recent' : 'earlier'] = rate(row.denied, row.total);
    halves.set(row.client_id, entry);
  }
  const rising = [...halves].filter(([, h]) =>
    h.recent.rate > h.earlier.rate && h.recent.denied >= minDenials && h.recent.rate >= minRate);
  const risingDenials: RisingDenials[] = [];
  if (rising.length > 0) {
    const { rows: reasonRows } = await knex.raw<{ rows: Array<{ client_id: string; reason: string | null; count: number }> }>(`
      SELECT client_id, reason, count(*)::int AS count
      FROM audit_events
      WHERE type = 'exchange.denied' AND occurred_at >= ? AND occurred_at <= ? AND client_id IN (${rising.map(() => '?').join(', ')})
      GROUP BY 1, 2`, [mid, to, ...rising.map(([agent]) => agent)]);
    for (const [agent, h] of rising) {
      const topReasons = reasonRows
        .filter((r) => r.client_id === agent)
        .map((r) => ({ reason: r.reason ?? 'unknown', count: r.count }))
        .sort((a, b) => b.count - a.count || (a.reason < b.reason ? -1 : 1))
        .slice(0, 3);
      risingDenials.push({ agent, earlier: h.earlier, recent: h.recent, topReasons });
    }
    risingDenials.sort((a, b) => (b.recent.rate - b.earlier.rate) - (a.recent.rate - a.earlier.rate) || (a.agent < b.agent ? -1 : 1));
  }

  const clients = new Map(document.clients.map((c) => [c.client_id, c]));
  const capabilityMatrix: AudienceCapabilities[] = document.audiences.map((audience) => {
    const owner = document.clients.find((c) => c.audiences.includes(audience.audience))?.client_id;
    const rules = document.rules.filter((r) => r.audience === audience.audience);
    return {
      audience: audience.audience,
      maxTtl: audience.max_ttl,
      ...(owner !== undefined && { owner }),
      scopes: audience.scopes.map((scope) => ({
        scope,
        capabilities: rules.filter((r) => r.scopes.includes(scope)).map((r) => ({
          agent: r.actor,
          enabled: clients.get(r.actor)?.enabled ?? false,
          rule: r.id,
          subject: describeSubject(r.subject),
          ttl: effectiveTtl(r, audience.max_ttl, options.maxTtl),
          maxDepth: Math.min(r.max_depth, document.settings.max_depth_cap),
          requireTask: r.require_task,
          grants: usedByRule.get(r.id)?.get(scope) ?? 0,
        })),
      })),
    };
  });

  return {
    days: options.days,
    from: from.toISOString(),
    to: to.toISOString(),
    unusedRules,
    unusedScopes,
    overbroadRules,
    risingDenials,
    capabilityMatrix,
  };
}

function percent(r: DenialRate): string {
  return `${Math.round(r.rate * 100)}% (${r.denied}/${r.total})`;
}

/** The report for a terminal. */
export function formatReport(report: ScopeCreepReport, options: { policyVersion?: number } = {}): string {
  const lines: string[] = [];
  const version = options.policyVersion === undefined ? '' : `, policy version ${options.policyVersion}`;
  lines.push(`Scope-creep report: the last ${report.days} day(s), ${report.from} to ${report.to}${version}`);

  lines.push('', `Rules no exchange used (${report.unusedRules.length}):`);
  if (report.unusedRules.length === 0) lines.push('  (none)');
  for (const r of report.unusedRules) lines.push(`  ${r.rule}: ${r.actor} → ${r.audience} [${r.scopes.join(' ')}]`);

  lines.push('', 'Scopes no exchange used, per audience:');
  if (report.unusedScopes.length === 0) lines.push('  (none)');
  for (const a of report.unusedScopes) {
    const dead = a.notGrantable.length === 0 ? '' : ` (no rule grants ${a.notGrantable.join(' ')})`;
    lines.push(`  ${a.audience}: ${a.scopes.join(' ')}${dead}`);
  }

  lines.push('', 'Used rules allowing scopes none of their grants carried:');
  if (report.overbroadRules.length === 0) lines.push('  (none)');
  for (const r of report.overbroadRules) lines.push(`  ${r.rule} (${r.grants} grant(s) for ${r.audience}): never granted ${r.unusedScopes.join(' ')}`);

  lines.push('', 'Agents whose denial rate is rising (earlier half → recent half of the window):');
  if (report.risingDenials.length === 0) lines.push('  (none)');
  for (const d of report.risingDenials) {
    const reasons = d.topReasons.map((r) => `${r.reason} ×${r.count}`).join(', ');
    lines.push(`  ${d.agent}: ${percent(d.earlier)} → ${percent(d.recent)}${reasons === '' ? '' : `; mostly ${reasons}`}`);
  }

  lines.push('', 'Capability matrix (audience → scope → which agents may obtain it, for whom, for how long):');
  if (report.capabilityMatrix.length === 0) lines.push('  (no audiences)');
  for (const a of report.capabilityMatrix) {
    lines.push(`  ${a.audience} (max_ttl ${a.maxTtl}s${a.owner === undefined ? '' : `, addressed to ${a.owner}`})`);
    for (const s of a.scopes) {
      lines.push(`    ${s.scope}`);
      if (s.capabilities.length === 0) lines.push('      (no rule grants it)');
      for (const c of s.capabilities) {
        const flags = [
          `ttl ${c.ttl}s`,
          `depth ≤ ${c.maxDepth}`,
          ...(c.requireTask ? ['task required'] : []),
          ...(c.enabled ? [] : ['agent disabled']),
          `${c.grants} grant(s)`,
        ];
        lines.push(`      ${c.agent} via ${c.rule}, for ${c.subject}; ${flags.join(', ')}`);
      }
    }
  }
  return lines.map(escapeControls).join('\n');
}
