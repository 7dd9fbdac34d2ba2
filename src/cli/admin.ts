import { parseArgs } from 'node:util';
import { ADMIN_SCOPES, bootstrapAdmin } from '../admin/bootstrap.ts';
import type { AdminScope } from '../policy/model.ts';
import { PolicyApplyError, currentVersion, loadBootstrapAdmins } from '../policy/store.ts';
import { KILL_SWITCH_KINDS, killSwitch, killSwitchTime, killSwitchWarnings } from '../revocation/kill-switch.ts';
import type { KillSwitchKind } from '../revocation/revoke.ts';
import { deriveKeys } from '../tokens/kek.ts';
import { ensureSigningKeys } from '../tokens/signing-keys.ts';
import { UsageError, type CliContext, cliActor } from './context.ts';
import { callServer, onDatabaseOrServer } from './local-server.ts';

/** `writ admin bootstrap [--client-id ID] [--scope S …]`: the first admin, outside policy versions. */
export async function adminCommand(ctx: CliContext, argv: string[]): Promise<number> {
  const [sub, ...args] = argv;
  if (sub !== 'bootstrap') throw new UsageError(`unknown admin command "${sub ?? ''}"`);
  const { values } = parseArgs({ args, options: { 'client-id': { type: 'string' }, scope: { type: 'string', multiple: true } } });
  const clientId = values['client-id'] ?? 'writ-admin';
  const scopes = (values.scope ?? [...ADMIN_SCOPES]) as AdminScope[];
  const unknown = scopes.filter((s) => !ADMIN_SCOPES.includes(s));
  if (unknown.length) throw new UsageError(`unknown scope(s): ${unknown.join(', ')}`);
  const by = cliActor();
  try {
    const { secret, replaced } = await onDatabaseOrServer<{ secret: string; replaced: boolean }>(ctx,
      async (knex) => {
        // The secret is hashed under a key derived from WRIT_KEK: only under the database's own.
        await ensureSigningKeys(knex, deriveKeys(ctx.config.kek).keyEncryption);
        return bootstrapAdmin(knex, { clientId, scopes, secretKey: deriveKeys(ctx.config.kek).clientSecret, by });
      },
      async (server) => {
        const res = await callServer(server, 'POST', '/admin/v1/local/admin/bootstrap', { client_id: clientId, scopes, by });
        if (res.status !== 200) throw new PolicyApplyError(String(res.body.error_description ?? `HTTP ${res.status}`));
        return { secret: String(res.body.client_secret), replaced: res.body.replaced === true };
      },
      { creates: 'development' });
    // Re-running for an existing id rotates its secret: whoever holds the old one is locked out.
    ctx.out(replaced
      ? `admin client ${clientId} (${scopes.join(' ')}) already existed: its secret was replaced (rotated), and the old secret no longer works`
      : `admin client ${clientId} (${scopes.join(' ')})`);
    ctx.out(`client_secret: ${secret}`);
    ctx.err('The secret is shown once and stored only as a keyed hash. Obtain admin tokens with client_credentials at the token endpoint.');
    return 0;
  } catch (err) {
    if (err instanceof PolicyApplyError) {
      ctx.err(`writ: ${err.message}`);
      return 1;
    }
    throw err;
  }
}

/** `writ revoke --client ID | --subject ISS|SUB | --issuer ISS | --rule ID [--before TIME]` */
export async function revokeCommand(ctx: CliContext, argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: { client: { type: 'string' }, subject: { type: 'string' }, issuer: { type: 'string' }, rule: { type: 'string' }, before: { type: 'string' } },
  });
  const chosen = KILL_SWITCH_KINDS.filter((k) => values[k] !== undefined);
  if (chosen.length !== 1) throw new UsageError('revoke takes exactly one of --client, --subject, --issuer, --rule');
  const kind = chosen[0] as KillSwitchKind;
  const value = values[kind]!;
  if (kind === 'subject' && !value.includes('|')) throw new UsageError('--subject takes ISSUER|SUB, e.g. "https://idp.example.com|alice"');
  const notBefore = killSwitchTime(values.before);
  if (!(notBefore instanceof Date)) throw new UsageError(`--before: ${notBefore.error}`);
  const by = cliActor();
  const { tokens, warnings, markedBefore } = await onDatabaseOrServer(ctx,
    async (knex) => {
      const { tokens: revoked, notBefore: effective } = await killSwitch(knex, { kind, value, notBefore, revokedBy: by });
      const document = (await currentVersion(knex))?.document;
      const admins = await loadBootstrapAdmins(knex);
      const known = {
        clients: [...(document?.clients ?? []), ...admins].map((c) => c.client_id),
        rules: (document?.rules ?? []).map((r) => r.id),
        issuers: (document?.issuers ?? []).map((i) => i.issuer),
      };
      return { tokens: revoked, warnings: killSwitchWarnings(known, kind, value), markedBefore: effective.toISOString() };
    },
    async (server) => {
      const res = await callServer(server, 'POST', '/admin/v1/revocations', { kind, value, before: notBefore.toISOString() });
      if (res.status !== 201) throw new UsageError(String(res.body.error_description ?? `HTTP ${res.status}`));
      return {
        tokens: Number(res.body.tokens_revoked_by_jti ?? 0),
        warnings: Array.isArray(res.body.warnings) ? res.body.warnings.map(String) : [],
        markedBefore: String(res.body.not_before ?? notBefore.toISOString()),
      };
    });
  for (const warning of warnings) ctx.err(`warning: ${warning}`);
  ctx.out(`revoked every token of ${kind} ${value} issued before ${markedBefore}${kind === 'rule' ? ` (${tokens} live token(s) and their descendants)` : ''}`);
  return 0;
}
