import { parseArgs } from 'node:util';
import { describeKey, describeNew } from '../admin/key-routes.ts';
import type { SigningAlg } from '../policy/model.ts';
import { deriveKeys } from '../tokens/kek.ts';
import { DEFAULT_PREPUBLISH_SECONDS, KeyOperationError, MAX_PREPUBLISH_SECONDS, removeKey, rotateKeys } from '../tokens/key-rotation.ts';
import { JWKS_MAX_AGE_SECONDS, loadKeySchedule, SIGNING_ALGS } from '../tokens/signing-keys.ts';
import { UsageError, type CliContext, cliActor } from './context.ts';
import { callServer, onDatabaseOrServer, type LocalServer } from './local-server.ts';

const UNITS: Record<string, number> = { s: 1, m: 60, h: 3600, d: 86400 };

/** `90s`, `30m`, `24h`, `7d`, or a bare number of seconds. */
export function parseDelay(value: string): number {
  const match = /^(\d+)([smhd]?)$/.exec(value);
  if (!match) throw new UsageError(`--activate-in takes a delay such as 24h, 30m or 0 (got "${value}")`);
  const seconds = Number(match[1]) * UNITS[match[2] || 's']!;
  // The same bounds rotateKeys enforces, refused here as the usage error they are (exit 2).
  if ((seconds !== 0 && seconds < JWKS_MAX_AGE_SECONDS) || seconds > MAX_PREPUBLISH_SECONDS) {
    throw new UsageError(`--activate-in must be 0 (or --now) or from ${JWKS_MAX_AGE_SECONDS / 60}m (the JWKS cache age) to ${MAX_PREPUBLISH_SECONDS / 86400}d (got "${value}")`);
  }
  return seconds;
}

type Listed = Record<string, unknown>;

function fromServer(res: { status: number; body: Record<string, unknown> }, ok: number): Record<string, unknown> {
  if (res.status !== ok) throw new KeyOperationError('invalid_request', String(res.body.error_description ?? `HTTP ${res.status}`));
  return res.body;
}

function printKeys(ctx: CliContext, keys: Listed[]): void {
  const order = (k: Listed): number => SIGNING_ALGS.indexOf(k.alg as SigningAlg);
  for (const k of [...keys].sort((a, b) => order(a) - order(b) || String(a.activates_at).localeCompare(String(b.activates_at)))) {
    const when = k.state === 'pending' ? `signs from ${k.activates_at}`
      : k.state === 'active' ? `signing since ${k.activates_at}`
        : k.state === 'retired' ? `superseded ${k.superseded_at}, published until ${k.published_until}`
          : k.state === 'expired' ? `superseded ${k.superseded_at}, unpublished since ${k.published_until}`
            : `removed ${k.removed_at}`;
    ctx.out(`${String(k.alg).padEnd(6)} ${String(k.state).padEnd(8)} ${k.kid}  ${when}`);
  }
}

/** `writ keys list|rotate|remove`: Writ's own signing keys (docs/standards.md O4). */
export async function keysCommand(ctx: CliContext, argv: string[]): Promise<number> {
  const [sub, ...args] = argv;
  const by = cliActor();
  const encryptionKey = (): Buffer => deriveKeys(ctx.config.kek).keyEncryption;
  try {
    switch (sub) {
      case 'list': {
        const { values } = parseArgs({ args, options: { json: { type: 'boolean' } } });
        const keys = await onDatabaseOrServer(ctx,
          async (knex) => (await loadKeySchedule(knex, new Date())).keys.map(describeKey),
          async (server) => fromServer(await callServer(server, 'GET', '/admin/v1/keys'), 200).keys as Listed[]);
        if (values.json) ctx.out(JSON.stringify({ keys }, null, 2));
        else printKeys(ctx, keys);
        return 0;
      }
      case 'rotate': {
        const { values } = parseArgs({ args, options: { alg: { type: 'string', multiple: true }, 'activate-in': { type: 'string' }, now: { type: 'boolean' } } });
        const algs = (values.alg ?? []) as SigningAlg[];
        const unknown = algs.filter((a) => !SIGNING_ALGS.includes(a));
        if (unknown.length) throw new UsageError(`--alg takes ${SIGNING_ALGS.join(', ')} (got ${unknown.join(', ')})`);
        if (values.now && values['activate-in'] !== undefined) throw new UsageError('--now and --activate-in exclude each other');
        const delay = values.now ? 0 : values['activate-in'] !== undefined ? parseDelay(values['activate-in']) : DEFAULT_PREPUBLISH_SECONDS;
        const created = await onDatabaseOrServer(ctx,
          async (knex) => (await rotateKeys(knex, encryptionKey(), { ...(algs.length ? { algs } : {}), activateInSeconds: delay, by }))
            .map(describeNew),
          async (server) => fromServer(await callServer(server, 'POST', '/admin/v1/keys/rotation', { ...(algs.length ? { algs } : {}), activate_in: delay }), 201).keys as Listed[],
          { creates: 'development' });
        for (const k of created) ctx.out(`${k.alg} ${k.kid} is published now and signs from ${k.activates_at}`);
        if (delay === 0) ctx.err('The new keys sign at once: a resource server that cached the JWKS learns them only when it refetches on an unknown kid.');
        return 0;
      }
      case 'remove': {
        const { positionals } = parseArgs({ args, allowPositionals: true, options: {} });
        if (positionals.length !== 1) throw new UsageError('keys remove needs exactly one kid');
        const kid = positionals[0]!;
        const result = await onDatabaseOrServer(ctx,
          async (knex) => {
            const r = await removeKey(knex, encryptionKey(), { kid, by });
            return { removed: r.removed, replacement: r.replacement ? describeNew(r.replacement) : null };
          },
          async (server) => fromServer(await callServer(server, 'POST', `/admin/v1/keys/${encodeURIComponent(kid)}/removal`), 200) as { removed: string; replacement: Listed | null });
        ctx.out(`removed ${result.removed}: no longer published, and Writ refuses the tokens it signed`);
        if (result.replacement) ctx.out(`${String(result.replacement.alg)} now signs with ${String(result.replacement.kid)}`);
        ctx.err('Resource servers that verify offline accept its tokens until they refetch the JWKS (at most 5 min) or the tokens expire.');
        return 0;
      }
      default:
        throw new UsageError(`unknown keys command "${sub ?? ''}"; expected list, rotate or remove`);
    }
  } catch (err) {
    if (err instanceof KeyOperationError) {
      ctx.err(`writ: ${err.message}`);
      return 1;
    }
    throw err;
  }
}
