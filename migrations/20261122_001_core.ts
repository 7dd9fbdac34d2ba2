import type { Knex } from 'knex';

/** Core schema: policy versions, credentials, signing keys, lineage, revocations, audit. */
export async function up(knex: Knex): Promise<void> {
  await knex.schema.createTable('policy_versions', (t) => {
    t.integer('version').primary();
    t.timestamp('created_at', { useTz: true }).notNullable().defaultTo(knex.fn.now());
    t.text('applied_by').notNullable();
    t.text('message').notNullable().defaultTo('');
    // The whole declarative state of this version, secrets excluded.
    t.jsonb('document').notNullable();
    t.text('digest').notNullable();
  });

  // Credentials live outside policy versions: a rollback never restores an old secret.
  await knex.schema.createTable('client_credentials', (t) => {
    t.text('client_id').primary();
    t.text('secret_hash').notNullable();
    t.timestamp('updated_at', { useTz: true }).notNullable().defaultTo(knex.fn.now());
  });

  await knex.schema.createTable('signing_keys', (t) => {
    t.text('kid').primary();
    t.text('alg').notNullable();
    t.jsonb('public_jwk').notNullable();
    // AES-256-GCM under WRIT_KEK; never stored in clear.
    t.text('private_jwk_enc').notNullable();
    t.text('status').notNullable().defaultTo('active');
    t.timestamp('created_at', { useTz: true }).notNullable().defaultTo(knex.fn.now());
    t.timestamp('retired_at', { useTz: true });
  });

  await knex.schema.createTable('token_lineage', (t) => {
    t.text('jti').primary();
    t.text('parent_jti');
    t.text('client_id').notNullable();
    t.text('audience').notNullable();
    t.jsonb('scopes').notNullable();
    t.text('root_issuer').notNullable();
    t.text('root_sub').notNullable();
    t.jsonb('root_claims').notNullable();
    t.text('task_id');
    t.integer('depth').notNullable();
    t.integer('depth_bound').notNullable();
    t.jsonb('actors').notNullable();
    t.text('rule_id').notNullable();
    t.integer('policy_version').notNullable();
    t.timestamp('iat', { useTz: true }).notNullable();
    t.timestamp('exp', { useTz: true }).notNullable();
    t.timestamp('revoked_at', { useTz: true });
    t.index(['parent_jti']);
    t.index(['task_id']);
    t.index(['root_issuer', 'root_sub']);
    t.index(['exp']);
  });

  // Every revocation and kill switch. kind: jti | task | client | subject | issuer | rule.
  // For jti and task the mark is absolute; the others revoke whatever was issued before not_before.
  await knex.schema.createTable('revocations', (t) => {
    t.bigIncrements('id').primary();
    t.text('kind').notNullable();
    t.text('value').notNullable();
    t.timestamp('not_before', { useTz: true });
    t.timestamp('created_at', { useTz: true }).notNullable().defaultTo(knex.raw('clock_timestamp()'));
    // After this the mark can no longer affect any live token and may be purged.
    t.timestamp('expires_at', { useTz: true });
    t.text('revoked_by').notNullable();
    t.unique(['kind', 'value']);
    t.index(['created_at']);
  });
  await knex.raw(`ALTER TABLE revocations ADD CONSTRAINT revocations_kind_check
    CHECK (kind IN ('jti', 'task', 'client', 'subject', 'issuer', 'rule'))`);

  await knex.schema.createTable('audit_events', (t) => {
    t.bigIncrements('id').primary();
    t.timestamp('occurred_at', { useTz: true }).notNullable().defaultTo(knex.raw('clock_timestamp()'));
    t.text('type').notNullable();
    t.text('outcome').notNullable();
    t.text('reason');
    t.text('request_id');
    t.text('client_id');
    t.text('jti');
    t.text('parent_jti');
    t.text('task_id');
    t.text('subject');
    t.text('audience');
    t.integer('policy_version');
    t.jsonb('details').notNullable().defaultTo('{}');
    t.index(['occurred_at']);
    t.index(['jti']);
    t.index(['client_id', 'occurred_at']);
  });

  // oidc-provider's own short-lived records (client-assertion jti replay detection).
  await knex.schema.createTable('oidc_payloads', (t) => {
    t.text('model').notNullable();
    t.text('id').notNullable();
    t.jsonb('payload').notNullable();
    t.text('grant_id');
    t.text('uid');
    t.text('user_code');
    t.timestamp('expires_at', { useTz: true });
    t.timestamp('consumed_at', { useTz: true });
    t.primary(['model', 'id']);
    t.index(['expires_at']);
  });
}

export async function down(knex: Knex): Promise<void> {
  for (const table of ['oidc_payloads', 'audit_events', 'revocations', 'token_lineage', 'signing_keys', 'client_credentials', 'policy_versions']) {
    await knex.schema.dropTableIfExists(table);
  }
}
