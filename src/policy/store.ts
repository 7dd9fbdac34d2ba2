import { createHash } from 'node:crypto';
import type { Knex } from 'knex';
import { toRow, type AuditEvent } from '../audit/event.ts';
import { canonicalJson } from '../canonical-json.ts';
import { adminScopesGranted } from './admin-grants.ts';
import { setRevokeBefore } from '../revocation/revoke.ts';
import { hashClientSecret, verifyClientSecret } from '../tokens/kek.ts';
import type { AdminScope, ClientPolicy, PolicyDocument } from './model.ts';

export const POLICY_CHANNEL = 'writ_policy';

export interface StoredVersion {
  version: number;
  createdAt: Date;
  appliedBy: string;
  message: string;
  digest: string;
  document: PolicyDocument;
}

/** The result of `applyPolicy`: the version in force after it. */
export interface AppliedVersion extends StoredVersion {
  /**
   * True when the apply changed nothing, so nothing was written: the document equals the current
   * version's (same digest), every secret given matches the stored one and no stored secret
   * would be deleted. No version was created, no `policy.applied` event recorded and no reload
   * signalled; `version` and `digest` are those of the version that stays in force.
   */
  unchanged: boolean;
}

export class PolicyApplyError extends Error {
  override name = 'PolicyApplyError';
}

/** The policy was changed by someone else after the version an edit was based on was read. */
export class PolicyVersionMoved extends Error {
  override name = 'PolicyVersionMoved';
}

/** The audit event of an apply or rollback, for `applyPolicy`'s `audit`. */
export function policyAppliedEvent(appliedBy: string, message: string, details: Record<string, unknown>): (version: number, digest: string) => AuditEvent {
  return (version, digest) => ({
    type: 'policy.applied',
    outcome: 'applied',
    clientId: appliedBy,
    policyVersion: version,
    details: { digest, message, ...details },
  });
}

/** Over canonical JSON (sorted keys), so equal documents have equal digests. */
export function digestOf(document: PolicyDocument): string {
  return createHash('sha256').update(canonicalJson(document)).digest('hex');
}

function withoutSecrets(document: PolicyDocument): PolicyDocument {
  return { ...document, clients: document.clients.map(({ secret: _secret, ...rest }) => rest) };
}

interface VersionRow {
  version: number;
  created_at: Date;
  applied_by: string;
  message: string;
  digest: string;
  document: PolicyDocument;
}

function fromRow(row: VersionRow): StoredVersion {
  return {
    version: row.version,
    createdAt: row.created_at,
    appliedBy: row.applied_by,
    message: row.message,
    digest: row.digest,
    document: row.document,
  };
}

export async function currentVersion(knex: Knex): Promise<StoredVersion | undefined> {
  const row = await knex<VersionRow>('policy_versions').orderBy('version', 'desc').first();
  return row ? fromRow(row) : undefined;
}

/** Changes whenever anything the compiled policy depends on changes. */
export async function policyStamp(knex: Knex): Promise<string> {
  const { rows } = await knex.raw<{ rows: Array<{ v: number | null; a: number; c: Date | null }> }>(`
    SELECT (SELECT max(version) FROM policy_versions) AS v,
           (SELECT count(*) FROM bootstrap_admins WHERE enabled) AS a,
           (SELECT max(updated_at) FROM client_credentials) AS c`);
  const row = rows[0];
  return `${row?.v ?? 0}/${row?.a ?? 0}/${row?.c?.toISOString() ?? ''}`;
}

/** Admins bootstrapped by the CLI, as policy clients. */
export async function loadBootstrapAdmins(knex: Knex): Promise<ClientPolicy[]> {
  const rows = await knex('bootstrap_admins').select<Array<{ client_id: string; scopes: AdminScope[]; enabled: boolean }>>('client_id', 'scopes', 'enabled');
  return rows.map((r) => ({
    client_id: r.client_id,
    kind: 'admin',
    auth: 'client_secret_basic',
    audiences: [],
    actor_identities: [],
    scopes: r.scopes,
    enabled: r.enabled,
  }));
}

export async function loadCredentials(knex: Knex): Promise<Map<string, string>> {
  const rows = await knex('client_credentials').select<Array<{ client_id: string; secret_hash: string }>>('client_id', 'secret_hash');
  return new Map(rows.map((r) => [r.client_id, r.secret_hash]));
}

/**
 * Sets the whole declarative state as a new version, in one transaction: objects absent from
 * the document are gone, secrets given are stored only as keyed hashes, a client whose file
 * omits `secret` keeps its current one, and credentials of removed clients are deleted.
 *
 * An apply that would change nothing (see `AppliedVersion.unchanged`) is a no-op: `writ serve
 * --apply` at every start, or an apply of files already in force, adds no version. A secret
 * given that differs from the stored one is a change (secrets live outside versions, so the
 * document's digest alone cannot tell): such an apply makes a new version, as any other.
 */
export async function applyPolicy(knex: Knex, input: {
  document: PolicyDocument;
  secrets: ReadonlyMap<string, string>;
  appliedBy: string;
  message: string;
  secretKey: Buffer;
  /** The audit event of this apply, committed in the same transaction. */
  audit: (version: number, digest: string) => AuditEvent;
  /** For an edit of the version read earlier: refused (PolicyVersionMoved) if that is no longer the current one. */
  baseVersion?: number;
  /** The admin scopes the caller holds: it may give admin clients no others (src/policy/admin-grants.ts). Unset: any. */
  callerScopes?: ReadonlySet<string>;
  /**
   * Refuse a document without clients while the current version has some: a whole policy
   * replaced by an empty one is a wrong directory far more often than a wish (src/policy/apply.ts
   * everyClientRemoved). Checked here, under the apply lock, against the version it replaces.
   */
  keepSomeClient?: boolean;
}): Promise<AppliedVersion> {
  const document = withoutSecrets(input.document);
  return knex.transaction(async (trx) => {
    // One apply at a time, so versions are dense and each is based on the one before.
    await trx.raw('SELECT pg_advisory_xact_lock(7369658)');
    const stored = await loadCredentials(trx);
    const clientIds = new Set(document.clients.map((c) => c.client_id));
    const bootstrapped = new Set((await loadBootstrapAdmins(trx)).map((a) => a.client_id));
    for (const id of clientIds) {
      if (bootstrapped.has(id)) throw new PolicyApplyError(`client ${id} is a bootstrapped admin; choose another client_id`);
    }
    const previous = await trx<VersionRow>('policy_versions').orderBy('version', 'desc').first();
    if (input.baseVersion !== undefined && (previous?.version ?? 0) !== input.baseVersion) {
      throw new PolicyVersionMoved(`the policy is at version ${previous?.version ?? 0}, not ${input.baseVersion}`);
    }
    // Secrets given that differ from the stored ones (or have none stored): each is a change.
    const changed = new Set([...input.secrets].filter(([id, secret]) => !stored.has(id) || !verifyClientSecret(input.secretKey, id, secret, stored.get(id)!)).map(([id]) => id));
    if (input.callerScopes) {
      // A secret given again unchanged hands the client to nobody new.
      for (const [clientId, scopes] of adminScopesGranted(previous?.document.clients ?? [], document.clients, changed)) {
        const missing = scopes.filter((s) => !input.callerScopes!.has(s));
        if (missing.length > 0) throw new PolicyApplyError(`admin client ${clientId} would get ${missing.join(' ')}, which the caller does not hold`);
      }
    }
    const removedAll = everyClientRemoved(previous?.document, document);
    if (input.keepSomeClient && removedAll.length > 0) {
      throw new PolicyApplyError(`this policy defines no clients: it would remove all ${removedAll.length} of version ${previous!.version} (${removedAll.join(', ')}) and delete their stored secrets, which a rollback does not restore`);
    }
    const adminsBefore = (previous?.document.clients ?? []).filter((c) => c.kind === 'admin' && c.enabled).length + bootstrapped.size;
    const adminsAfter = document.clients.filter((c) => c.kind === 'admin' && c.enabled).length + bootstrapped.size;
    if (adminsBefore > 0 && adminsAfter === 0) {
      throw new PolicyApplyError('this policy would remove the last admin client; keep one, or bootstrap one with writ admin bootstrap');
    }
    for (const client of document.clients) {
      if (client.auth === 'private_key_jwt') continue;
      if (!input.secrets.has(client.client_id) && !stored.has(client.client_id)) {
        throw new PolicyApplyError(`client ${client.client_id} uses ${client.auth} but has no secret: set one in its file`);
      }
    }
    const removed = [...stored.keys()].filter((id) => !clientIds.has(id) && !bootstrapped.has(id));
    const digest = digestOf(document);
    const secretsChanged = [...changed].some((id) => clientIds.has(id));
    if (previous && !secretsChanged && removed.length === 0 && previous.digest === digest) {
      return { ...fromRow(previous), unchanged: true };
    }
    if (removed.length > 0) await trx('client_credentials').whereIn('client_id', removed).delete();
    for (const [clientId, secret] of input.secrets) {
      if (!clientIds.has(clientId)) continue;
      await trx('client_credentials')
        .insert({ client_id: clientId, secret_hash: hashClientSecret(input.secretKey, clientId, secret), updated_at: trx.fn.now() })
        .onConflict('client_id').merge();
    }
    const { max } = (await trx('policy_versions').max<{ max: number | null }>('version as max').first()) ?? { max: null };
    const version = (max ?? 0) + 1;
    const [row] = await trx<VersionRow>('policy_versions').insert({
      version,
      applied_by: input.appliedBy,
      message: input.message,
      document: JSON.stringify(document) as unknown as PolicyDocument,
      digest,
    }).returning('*');
    await trx('audit_events').insert(toRow(input.audit(version, (row as VersionRow).digest)));
    // Disabling or removing a client ends what it holds: tokens anywhere in a chain it took part in.
    const now = new Date();
    const enabledNow = new Map(document.clients.map((c) => [c.client_id, c.enabled]));
    for (const client of previous?.document.clients ?? []) {
      if (!client.enabled || enabledNow.get(client.client_id) === true) continue;
      await setRevokeBefore(trx, { kind: 'client', value: client.client_id, notBefore: now, revokedBy: input.appliedBy });
    }
    await trx.raw('SELECT pg_notify(?, ?)', [POLICY_CHANNEL, String(version)]);
    return { ...fromRow(row as VersionRow), unchanged: false };
  });
}

/**
 * The clients of the current policy that applying `next` would remove when it removes all of
 * them, else none. Their stored secrets are deleted with them and no rollback restores those, so
 * such an apply has to be asked for explicitly.
 */
export function everyClientRemoved(current: { clients: ReadonlyArray<{ client_id: string }> } | undefined, next: PolicyDocument): string[] {
  if (!current || next.clients.length > 0) return [];
  return current.clients.map((c) => c.client_id);
}
