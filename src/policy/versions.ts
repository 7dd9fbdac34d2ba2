import type { Knex } from 'knex';
import { Document, isScalar, visit } from 'yaml';
import { applyPolicyFiles, type ApplyOutcome } from './apply.ts';
import { diffPolicies, type PolicyChange, type SecretStatus } from './diff.ts';
import { loadPolicyFiles, type LoadOptions, type PolicyFile, type PolicyIssue } from './load.ts';
import type {
  AudiencePolicy, ClientPolicy, IssuerPolicy, PolicyDocument, RootSelector, RulePolicy, SubjectSelector,
} from './model.ts';
import { applyPolicy, currentVersion, loadCredentials, PolicyApplyError, policyAppliedEvent, type AppliedVersion, type StoredVersion } from './store.ts';
import { validatePolicy, type ValidateOptions } from './validate.ts';
import { verifyClientSecret } from '../tokens/kek.ts';

/**
 * Policy versions as the CLI and admin API see them: history, one version, secret status for a
 * diff, rollback, and export as YAML. Every version is kept; a rollback is a new version.
 * Credentials live outside versions (docs/DESIGN.md §6): nothing here reads or writes a secret value,
 * and nothing here returns a stored hash.
 */

export type VersionSummary = Omit<StoredVersion, 'document'>;

interface VersionRow {
  version: number;
  created_at: Date;
  applied_by: string;
  message: string;
  digest: string;
  document?: PolicyDocument;
}

function summaryOf(row: VersionRow): VersionSummary {
  return { version: row.version, createdAt: row.created_at, appliedBy: row.applied_by, message: row.message, digest: row.digest };
}

/** The newest `limit` versions, newest first, without their documents. */
export async function listVersions(knex: Knex, limit: number): Promise<VersionSummary[]> {
  const rows = await knex<VersionRow>('policy_versions')
    .select('version', 'created_at', 'applied_by', 'message', 'digest')
    .orderBy('version', 'desc')
    .limit(Math.max(1, Math.floor(limit)));
  return rows.map(summaryOf);
}

/** One version with its document, or undefined when there is no such version. */
export async function getVersion(knex: Knex, version: number): Promise<StoredVersion | undefined> {
  const row = await knex<VersionRow>('policy_versions').where({ version }).first();
  if (!row || row.document === undefined) return undefined;
  return { ...summaryOf(row), document: row.document };
}

/**
 * What an apply of `document` with `secrets` (client id → secret from the environment) would do
 * to each client's stored secret. A secret is compared with the stored keyed hash, never read
 * back. Clients with neither a given nor a stored secret get no entry (an apply refuses those
 * that need one); private_key_jwt clients without a given secret get none either.
 */
export async function secretChanges(
  knex: Knex, secretKey: Buffer, document: PolicyDocument, secrets: ReadonlyMap<string, string>,
): Promise<Map<string, SecretStatus>> {
  const stored = await loadCredentials(knex);
  const status = new Map<string, SecretStatus>();
  for (const client of document.clients) {
    const id = client.client_id;
    const given = secrets.get(id);
    const hash = stored.get(id);
    if (given !== undefined) {
      if (hash === undefined) status.set(id, 'new');
      else status.set(id, verifyClientSecret(secretKey, id, given, hash) ? 'unchanged' : 'changed');
    } else if (hash !== undefined && client.auth !== 'private_key_jwt') {
      status.set(id, 'kept');
    }
  }
  return status;
}

/** Clients that need a secret (client_secret_*) and would have none: neither given nor stored. */
export async function clientsWithoutSecret(
  knex: Knex, document: PolicyDocument, secrets: ReadonlyMap<string, string>,
): Promise<string[]> {
  const stored = await loadCredentials(knex);
  return document.clients
    .filter((c) => c.auth !== 'private_key_jwt' && !secrets.has(c.client_id) && !stored.has(c.client_id))
    .map((c) => c.client_id);
}

export type ApplyWithDiffOutcome =
  | (Extract<ApplyOutcome, { ok: true }> & { previousVersion: number | undefined; changes: PolicyChange[] })
  | Extract<ApplyOutcome, { ok: false }>;

/**
 * `applyPolicyFiles`, and the exact diff it applied: the previous version and the secret status
 * are read in the same transaction, under the same lock, as the apply itself.
 */
export async function applyPolicyFilesWithDiff(
  knex: Knex,
  files: PolicyFile[],
  options: LoadOptions & { appliedBy: string; message: string; secretKey: Buffer; keepSomeClient?: boolean },
): Promise<ApplyWithDiffOutcome> {
  const loaded = loadPolicyFiles(files, options);
  if (!loaded.ok) return loaded;
  return knex.transaction(async (trx) => {
    // The same lock applyPolicy takes (re-entrant within a session), held until commit.
    await trx.raw('SELECT pg_advisory_xact_lock(7369658)');
    const previous = await currentVersion(trx);
    const status = await secretChanges(trx, options.secretKey, loaded.document, loaded.secrets);
    const outcome = await applyPolicyFiles(trx, files, options);
    if (!outcome.ok) return outcome;
    return {
      ...outcome,
      previousVersion: previous?.version,
      changes: diffPolicies(previous?.document, loaded.document, status),
    };
  });
}

export class RollbackError extends Error {
  override name = 'RollbackError';
  /** The version asked for does not exist. */
  readonly missing: boolean;

  constructor(message: string, options: { missing?: boolean } = {}) {
    super(message);
    this.missing = options.missing ?? false;
  }
}

export interface RollbackResult {
  /** The version in force after the rollback: the new one, or the current one when `unchanged`. */
  version: StoredVersion;
  /** The version that was current before the rollback. */
  previousVersion: number;
  changes: PolicyChange[];
  /**
   * The target's document equals the current one (a rollback to the version in force, or to one
   * with the same digest): no version was created and nothing audited; `version` is the current one.
   */
  unchanged: boolean;
}

/**
 * Sets version `target`'s document as a new version, recorded like an apply (audit event
 * `policy.applied` with `details.rollback_of`). A rollback to the document in force changes
 * nothing and creates no version (`unchanged`), as an apply of it would not. Credentials are
 * untouched: no secret is restored, so a client of the old version that needs a secret and has
 * none stored now makes the rollback fail; credentials of clients the old version lacks are deleted, as an apply does.
 * With `validate`, the old document must still pass today's semantic checks (WRIT_ISSUER and
 * WRIT_MAX_TTL may have changed since).
 */
export async function rollbackTo(knex: Knex, target: number, options: {
  appliedBy: string;
  message: string;
  secretKey: Buffer;
  validate?: ValidateOptions;
  /** The admin scopes the caller holds, which are all it may give admin clients. Unset: any. */
  callerScopes?: ReadonlySet<string>;
}): Promise<RollbackResult> {
  return knex.transaction(async (trx) => {
    await trx.raw('SELECT pg_advisory_xact_lock(7369658)');
    const old = await getVersion(trx, target);
    if (!old) throw new RollbackError(`there is no policy version ${target}`, { missing: true });
    const current = await currentVersion(trx);
    if (!current) throw new RollbackError('no policy has been applied yet');
    if (options.validate) {
      const errors = validatePolicy(old.document, options.validate).filter((i) => i.severity === 'error');
      if (errors.length > 0) {
        throw new RollbackError(`version ${target} is no longer valid: ${errors.map((e) => `${e.path}: ${e.message}`).join('; ')}`);
      }
    }
    const missing = await clientsWithoutSecret(trx, old.document, new Map());
    if (missing.length > 0) {
      throw new RollbackError(
        `cannot roll back to version ${target}: client(s) ${missing.join(', ')} authenticate with a client secret but have none stored `
        + '(they were removed after that version, which deleted their secrets), and a rollback never restores secrets. '
        + 'Apply a policy that includes them with a secret instead.',
      );
    }
    let stored: AppliedVersion;
    try {
      stored = await applyPolicy(trx, {
        document: old.document,
        secrets: new Map(),
        appliedBy: options.appliedBy,
        message: options.message,
        secretKey: options.secretKey,
        ...(options.callerScopes ? { callerScopes: options.callerScopes } : {}),
        // A rollback to a version without clients would delete every secret, and nothing rolls
        // that back: such a version is reached by applying it, with --allow-empty, not this way.
        keepSomeClient: true,
        audit: policyAppliedEvent(options.appliedBy, options.message, { rollback_of: target, secrets_set: [] }),
      });
    } catch (err) {
      if (err instanceof PolicyApplyError) throw new RollbackError(`cannot roll back to version ${target}: ${err.message}`);
      throw err;
    }
    const { unchanged, ...version } = stored;
    return { version, previousVersion: current.version, changes: diffPolicies(current.document, old.document), unchanged };
  });
}

// Export: fields in the order the model and the example write them, whatever order the
// database returns (jsonb does not keep key order). Unknown extra fields follow, so nothing is lost.
function ordered<T extends object>(value: T, keys: ReadonlyArray<keyof T & string>, omit: (key: string, v: unknown) => boolean = () => false): Record<string, unknown> {
  const source = value as Record<string, unknown>;
  const out: Record<string, unknown> = {};
  for (const key of [...keys, ...Object.keys(source).filter((k) => !(keys as readonly string[]).includes(k))]) {
    const v = source[key];
    if (v === undefined || key === 'secret' || omit(key, v)) continue;
    out[key] = v;
  }
  return out;
}

function exportRoot(root: RootSelector): Record<string, unknown> {
  return ordered(root, ['issuer', 'claims']);
}

function exportSubject(subject: SubjectSelector): Record<string, unknown> {
  const out = ordered(subject, ['issuer', 'claims', 'after', 'root']);
  if (subject.root) out.root = exportRoot(subject.root);
  return out;
}

function exportIssuer(issuer: IssuerPolicy): Record<string, unknown> {
  return ordered(issuer, ['issuer', 'jwks_uri', 'jwks', 'algorithms', 'audience', 'token_types', 'typ', 'subject_prefix', 'act', 'max_token_age']);
}

function exportClient(client: ClientPolicy): Record<string, unknown> {
  // Empty lists are the loader's defaults; leaving them out keeps the file close to hand-written policy.
  return ordered(client, ['client_id', 'kind', 'auth', 'jwks', 'jwks_uri', 'audiences', 'actor_identities', 'scopes', 'enabled'],
    (key, v) => ['audiences', 'actor_identities', 'scopes'].includes(key) && Array.isArray(v) && v.length === 0);
}

function exportAudience(audience: AudiencePolicy): Record<string, unknown> {
  return ordered(audience, ['audience', 'scopes', 'max_ttl', 'signing_alg']);
}

function exportRule(rule: RulePolicy): Record<string, unknown> {
  const out = ordered(rule, ['id', 'actor', 'subject', 'audience', 'scopes', 'ttl', 'max_depth', 'require_task']);
  out.subject = exportSubject(rule.subject);
  return out;
}

/**
 * A stored document as one policy file. There are no secrets to leave out (versions never hold
 * them) and clients get no `secret` key, so applying the export keeps every current secret.
 * `loadPolicyFiles` reads it back to an equal document.
 */
export function exportYaml(document: PolicyDocument, options: { header?: string } = {}): string {
  const data = {
    issuers: document.issuers.map(exportIssuer),
    clients: document.clients.map(exportClient),
    audiences: document.audiences.map(exportAudience),
    rules: document.rules.map(exportRule),
    settings: { ...document.settings },
  };
  // No anchors or aliases: the loader refuses them. Lists of plain values stay on one line, as
  // the example writes them.
  const doc = new Document(data, { version: '1.2', aliasDuplicateObjects: false });
  visit(doc, {
    Seq(_, node) {
      if (node.items.every((item) => isScalar(item))) node.flow = true;
    },
  });
  const body = doc.toString({ lineWidth: 0, flowCollectionPadding: false });
  const header = (options.header ?? '').split('\n').filter((l) => l !== '').map((l) => `# ${l}\n`).join('');
  return `${header}${body}`;
}

export type DiffOutcome =
  | { ok: false; errors: PolicyIssue[]; warnings: PolicyIssue[] }
  | {
    ok: true;
    /** The version compared with; undefined before the first apply. */
    base: VersionSummary | undefined;
    changes: PolicyChange[];
    warnings: PolicyIssue[];
    /** Clients that need a secret and would have none: apply would fail. */
    clientsWithoutSecret: string[];
  };

/** What applying `files` would change now, without applying them (read-only). */
export async function diffPolicyFiles(knex: Knex, files: PolicyFile[], options: LoadOptions & { secretKey: Buffer }): Promise<DiffOutcome> {
  const loaded = loadPolicyFiles(files, options);
  if (!loaded.ok) return loaded;
  const current = await currentVersion(knex);
  const status = await secretChanges(knex, options.secretKey, loaded.document, loaded.secrets);
  return {
    ok: true,
    base: current && summaryOf({ version: current.version, created_at: current.createdAt, applied_by: current.appliedBy, message: current.message, digest: current.digest }),
    changes: diffPolicies(current?.document, loaded.document, status),
    warnings: loaded.warnings,
    clientsWithoutSecret: await clientsWithoutSecret(knex, loaded.document, loaded.secrets),
  };
}

/** A version (the current one by default) as a policy file with a header naming it; undefined if there is none. */
export async function exportVersion(knex: Knex, version?: number): Promise<{ version: StoredVersion; yaml: string } | undefined> {
  const stored = version === undefined ? await currentVersion(knex) : await getVersion(knex, version);
  if (!stored) return undefined;
  const yaml = exportYaml(stored.document, {
    header: [
      `Writ policy version ${stored.version} (sha256 ${stored.digest}), applied ${stored.createdAt.toISOString()} by ${stored.appliedBy}`,
      'Secrets are never exported: clients have no `secret` here, and applying this file keeps their current ones.',
    ].join('\n'),
  });
  return { version: stored, yaml };
}
