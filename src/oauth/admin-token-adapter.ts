import type { Knex } from 'knex';
import type { AdapterPayload } from 'oidc-provider';
import Provider, { errors } from 'oidc-provider';
import { ADMIN_SCOPES } from '../admin/bootstrap.ts';
import { toRow } from '../audit/event.ts';
import { isStorageError } from '../exchange/service.ts';
import { KnexAdapter } from './adapter.ts';
import { unavailable } from './errors.ts';

const KNOWN_SCOPES: ReadonlySet<string> = new Set(ADMIN_SCOPES);

/**
 * Admin API tokens, which admin clients obtain through client_credentials.
 *
 * The provider refuses a known scope the client does not hold, but grants past one it does not
 * know: an admin tool with a misspelt scope would get a token that fails later with 403. RFC 6749
 * §5.2: `invalid_scope`, "the requested scope is invalid, unknown, malformed".
 *
 * Each token is stored only together with its audit record, in one transaction: none is issued
 * unrecorded, and a database that cannot take the record answers 503, not a token.
 */
export class AdminTokenAdapter extends KnexAdapter {
  private readonly onStorageError: (message: string, requestId: string | null) => void;

  constructor(model: string, knex: () => Knex, onStorageError: (message: string, requestId: string | null) => void) {
    super(model, knex);
    this.onStorageError = onStorageError;
  }

  override async upsert(id: string, payload: AdapterPayload, expiresIn: number): Promise<void> {
    const ctx = Provider.ctx;
    // The body as sent: the provider's own parameters have the scopes it does not know removed.
    const sent = (ctx?.oidc?.body as Record<string, unknown> | undefined)?.scope;
    const requested = (typeof sent === 'string' ? sent : '').split(' ').filter((s) => s !== '');
    const unknown = requested.find((s) => !KNOWN_SCOPES.has(s));
    if (unknown !== undefined) throw new errors.InvalidScope('requested scope is unknown', unknown);
    const scopes = String(payload.scope ?? '').split(' ').filter((s) => s !== '');
    try {
      await this.record(id, payload, expiresIn, scopes, requestIdOf(ctx));
    } catch (err) {
      if (!isStorageError(err)) throw err;
      // The provider answers an error of its own kind as it is, and any other with a 500. Nothing
      // else will log this one.
      this.onStorageError((err as Error).message, requestIdOf(ctx));
      throw unavailable(ctx);
    }
  }

  private async record(id: string, payload: AdapterPayload, expiresIn: number, scopes: string[], requestId: string | null): Promise<void> {
    await this.knex().transaction(async (trx) => {
      await this.store(trx, id, payload, expiresIn);
      // Named by its client, scopes and expiry; the opaque token itself is a credential.
      await trx('audit_events').insert(toRow({
        type: 'admin.token_issued',
        outcome: 'granted',
        clientId: typeof payload.clientId === 'string' ? payload.clientId : null,
        requestId,
        details: { scopes, expires_at: new Date(Date.now() + expiresIn * 1000).toISOString() },
      }));
    });
  }
}

function requestIdOf(ctx: { state?: unknown } | undefined): string | null {
  const id = (ctx?.state as Record<string, unknown> | undefined)?.requestId;
  return typeof id === 'string' ? id : null;
}
