import type { Knex } from 'knex';
import type { Adapter, AdapterPayload } from 'oidc-provider';
import { isPlainText } from '../store/text.ts';

/**
 * oidc-provider's storage for the few records it keeps itself (client-assertion `jti` replay
 * detection). Expired rows never match, since replay detection relies on misses.
 */
export class KnexAdapter implements Adapter {
  protected readonly model: string;
  protected readonly knex: () => Knex;

  constructor(model: string, knex: () => Knex) {
    this.model = model;
    this.knex = knex;
  }

  async upsert(id: string, payload: AdapterPayload, expiresIn: number): Promise<void> {
    await this.store(this.knex(), id, payload, expiresIn);
  }

  protected async store(knex: Knex | Knex.Transaction, id: string, payload: AdapterPayload, expiresIn: number): Promise<void> {
    await knex('oidc_payloads')
      .insert({
        model: this.model,
        id,
        payload: JSON.stringify(payload),
        grant_id: payload.grantId ?? null,
        uid: payload.uid ?? null,
        user_code: payload.userCode ?? null,
        expires_at: expiresIn ? new Date(Date.now() + expiresIn * 1000) : null,
      })
      .onConflict(['model', 'id'])
      .merge();
  }

  private async findBy(column: string, value: string): Promise<AdapterPayload | undefined> {
    // What the provider stores is named by plain text; anything else (a NUL a client sent as a
    // token, say) names nothing, and PostgreSQL would refuse the comparison outright.
    if (!isPlainText(value)) return undefined;
    const row = await this.knex()('oidc_payloads')
      .where({ model: this.model, [column]: value })
      .andWhere((q) => q.whereNull('expires_at').orWhere('expires_at', '>', new Date()))
      .first<{ payload: AdapterPayload; consumed_at: Date | null } | undefined>();
    if (!row) return undefined;
    return row.consumed_at ? { ...row.payload, consumed: true } : row.payload;
  }

  find(id: string): Promise<AdapterPayload | undefined> {
    return this.findBy('id', id);
  }

  findByUid(uid: string): Promise<AdapterPayload | undefined> {
    return this.findBy('uid', uid);
  }

  findByUserCode(userCode: string): Promise<AdapterPayload | undefined> {
    return this.findBy('user_code', userCode);
  }

  async consume(id: string): Promise<void> {
    await this.knex()('oidc_payloads').where({ model: this.model, id }).update({ consumed_at: new Date() });
  }

  async destroy(id: string): Promise<void> {
    await this.knex()('oidc_payloads').where({ model: this.model, id }).delete();
  }

  async revokeByGrantId(grantId: string): Promise<void> {
    await this.knex()('oidc_payloads').where({ model: this.model, grant_id: grantId }).delete();
  }
}

/** Clients live in Writ's policy; the provider reads them through this, from memory. */
export class PolicyClientAdapter implements Adapter {
  private readonly lookup: (id: string) => Record<string, unknown> | undefined;

  constructor(lookup: (id: string) => Record<string, unknown> | undefined) {
    this.lookup = lookup;
  }

  async find(id: string): Promise<AdapterPayload | undefined> {
    return this.lookup(id) as AdapterPayload | undefined;
  }

  async upsert(): Promise<void> {
    throw new Error('clients are managed through policy');
  }

  async findByUid(): Promise<undefined> {
    return undefined;
  }

  async findByUserCode(): Promise<undefined> {
    return undefined;
  }

  async consume(): Promise<void> {}

  async destroy(): Promise<void> {
    throw new Error('clients are managed through policy');
  }

  async revokeByGrantId(): Promise<void> {}
}
