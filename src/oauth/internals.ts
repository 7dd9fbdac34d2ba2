/**
 * The one module that reaches into oidc-provider's internals. oidc-provider refuses to
 * introspect or revoke JWT access tokens (`rejectStructuredTokens`), and those are the only
 * tokens Writ issues, so Writ keeps the provider's whole front half of both endpoints —
 * body parsing, parameter allow-list, client authentication, duplicate checks, error
 * rendering — and swaps in its own handler from the point where the provider would refuse.
 *
 * The action modules are not covered by semantic versioning: oidc-provider is pinned to an
 * exact version, `installStructuredTokenHandlers` checks the shape it expects and throws at
 * start if an upgrade changed it, and test/contract/oidc-provider-internals.test.ts covers it.
 */
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { Middleware, ParameterizedContext } from 'koa';
// @ts-expect-error deep imports of the pinned version; their shape is asserted below.
import introspectionAction from 'oidc-provider/lib/actions/introspection.js';
// @ts-expect-error see above.
import revocationAction from 'oidc-provider/lib/actions/revocation.js';
// @ts-expect-error see above.
import paramsMiddleware from 'oidc-provider/lib/shared/assemble_params.js';
// @ts-expect-error see above.
import { getClientAuthParams } from 'oidc-provider/lib/shared/client_auth.js';

type Action = Array<Middleware & { name: string }>;

const introspection = introspectionAction as Action;
const revocation = revocationAction as Action;
const assembleParams = paramsMiddleware as (allow: Set<string>, ctx: ParameterizedContext, next: () => Promise<unknown>) => Promise<unknown>;
const clientAuthParams = getClientAuthParams as (ctx: ParameterizedContext) => Set<string>;

/** The shapes of the pinned version, first element to last. */
export const EXPECTED_INTROSPECTION = [
  'noCache', 'urlencoded', 'assembleTokenParams', 'rejectClientAuthDupes', 'setWWWAuthenticateHeader',
  'authenticateClient', 'bound rejectDupes', 'validateTokenPresence', 'rejectStructuredTokens',
  'jwtIntrospectionResponse', 'renderTokenResponse',
] as const;
export const EXPECTED_REVOCATION = [
  'urlencoded', 'assembleTokenParams', 'rejectClientAuthDupes', 'setWWWAuthenticateHeader',
  'authenticateClient', 'bound rejectDupes', 'validateTokenPresence', 'rejectStructuredTokens',
  'renderTokenResponse', 'revokeToken',
] as const;

export function actionShapes(): { introspection: string[]; revocation: string[] } {
  return { introspection: introspection.map((f) => f.name), revocation: revocation.map((f) => f.name) };
}

interface StructuredTokenHandlers {
  introspect: Middleware;
  revoke: Middleware;
  extraRevocationParams: (ctx: ParameterizedContext) => string[];
}

const installed = { done: false };
/** Each provider's own handlers: the patched actions are shared by every Provider in the process. */
const byProvider = new WeakMap<object, StructuredTokenHandlers>();

function handlersFor(ctx: ParameterizedContext): StructuredTokenHandlers {
  const provider = (ctx as unknown as { oidc: { provider: object } }).oidc.provider;
  const handlers = byProvider.get(provider);
  if (!handlers) throw new Error('no Writ handlers registered for this provider');
  return handlers;
}

/**
 * Replaces, once per process and before any Provider is constructed (the provider copies the
 * action arrays into its router), the tail of the introspection and revocation actions with a
 * dispatch to the handlers registered for the provider serving the request.
 */
export function patchStructuredTokenActions(): void {
  if (installed.done) return;
  const shapes = actionShapes();
  if (JSON.stringify(shapes.introspection) !== JSON.stringify(EXPECTED_INTROSPECTION)
    || JSON.stringify(shapes.revocation) !== JSON.stringify(EXPECTED_REVOCATION)) {
    throw new Error('oidc-provider introspection/revocation actions changed shape; review src/oauth/internals.ts before upgrading');
  }
  const introspect: Middleware = (ctx, next) => handlersFor(ctx).introspect(ctx, next);
  const revoke: Middleware = (ctx, next) => handlersFor(ctx).revoke(ctx, next);
  const assembleRevocationParams: Middleware = (ctx, next) => {
    const allow = new Set(['token', 'token_type_hint', ...handlersFor(ctx).extraRevocationParams(ctx), ...clientAuthParams(ctx)]);
    return assembleParams(allow, ctx, next);
  };
  // Keep everything up to and including the duplicate-parameter check; the token-presence
  // check moves into Writ's handlers, which know which parameter each route requires.
  introspection.splice(EXPECTED_INTROSPECTION.indexOf('validateTokenPresence'), Infinity, introspect as Action[number]);
  revocation.splice(EXPECTED_REVOCATION.indexOf('assembleTokenParams'), 1, assembleRevocationParams as Action[number]);
  revocation.splice(EXPECTED_REVOCATION.indexOf('validateTokenPresence'), Infinity, revoke as Action[number]);
  installed.done = true;
}

/** Writ's introspection and revocation handlers for one provider. */
export function registerStructuredTokenHandlers(provider: object, handlers: StructuredTokenHandlers): void {
  byProvider.set(provider, handlers);
}

/**
 * Whether bin/patch-dependencies.js's change to oidc-provider's request context is installed.
 * An install with `--ignore-scripts` lacks it: Writ works, but keeps every finished request in
 * memory until the next full garbage collection, so the server says so at start.
 */
export function requestContextPatched(): boolean {
  const file = fileURLToPath(import.meta.resolve('oidc-provider/lib/helpers/initialize_app.js'));
  return readFileSync(file, 'utf8').includes('Patched by Writ (bin/patch-dependencies.js)');
}
