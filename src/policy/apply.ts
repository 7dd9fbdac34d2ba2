import type { Knex } from 'knex';
import { loadPolicyFiles, type LoadOptions, type PolicyFile, type PolicyIssue } from './load.ts';
import type { PolicyDocument } from './model.ts';
import { applyPolicy, PolicyApplyError, policyAppliedEvent } from './store.ts';

export type ApplyOutcome =
  /**
   * `unchanged`: the files equal the policy in force (same digest, no secret changed), so no
   * version was created and nothing audited; `version` and `digest` are those that stay in force.
   */
  | { ok: true; version: number; digest: string; unchanged: boolean; warnings: PolicyIssue[] }
  | { ok: false; errors: PolicyIssue[]; warnings: PolicyIssue[] };

/**
 * Validates files and sets them as the new policy version; the apply is audited in the same
 * transaction. Files equal to the policy in force change nothing (`unchanged`, applyPolicy).
 */
export async function applyPolicyFiles(knex: Knex, files: PolicyFile[], options: LoadOptions & {
  appliedBy: string;
  message: string;
  secretKey: Buffer;
  /** Applied only if this is still the current version (else PolicyVersionMoved is thrown). */
  baseVersion?: number;
  /** The admin scopes the caller holds, which are all it may give admin clients. Unset: any. */
  callerScopes?: ReadonlySet<string>;
  /** Refuse files that define no client while the current policy has some (applyPolicy). */
  keepSomeClient?: boolean;
}): Promise<ApplyOutcome> {
  const loaded = loadPolicyFiles(files, options);
  if (!loaded.ok) return loaded;
  try {
    const stored = await applyPolicy(knex, {
      document: loaded.document,
      secrets: loaded.secrets,
      appliedBy: options.appliedBy,
      message: options.message,
      secretKey: options.secretKey,
      ...(options.baseVersion !== undefined ? { baseVersion: options.baseVersion } : {}),
      ...(options.callerScopes ? { callerScopes: options.callerScopes } : {}),
      ...(options.keepSomeClient ? { keepSomeClient: true } : {}),
      audit: policyAppliedEvent(options.appliedBy, options.message, { secrets_set: [...loaded.secrets.keys()].sort() }),
    });
    return { ok: true, version: stored.version, digest: stored.digest, unchanged: stored.unchanged, warnings: loaded.warnings };
  } catch (err) {
    if (err instanceof PolicyApplyError) {
      return { ok: false, errors: [{ severity: 'error', path: '', code: 'apply', message: err.message }], warnings: loaded.warnings };
    }
    throw err;
  }
}

/**
 * A policy without clients or rules is valid (a directory of comments loads as one) but is hardly
 * ever meant: it shuts every agent out.
 */
export function emptinessWarnings(document: PolicyDocument): PolicyIssue[] {
  const warnings: PolicyIssue[] = [];
  if (document.clients.length === 0) {
    warnings.push({ severity: 'warning', path: '', code: 'no_clients', message: 'the policy defines no clients: no agent or resource server can authenticate, and applying it removes every client the current policy defines' });
  }
  if (document.rules.length === 0) {
    warnings.push({ severity: 'warning', path: '', code: 'no_rules', message: 'the policy defines no rules: every token exchange will be refused' });
  }
  return warnings;
}
