import type { AddressInfo } from 'node:net';
import type { Server } from 'node:http';
import { exportJWK, generateKeyPair } from 'jose';
import Koa from 'koa';
import mount from 'koa-mount';
import Provider from 'oidc-provider';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
// @ts-expect-error plain JavaScript run by npm at install.
import { PATCHES } from '../../bin/patch-dependencies.js';
import { requestContextPatched } from '../../src/oauth/internals.ts';

/**
 * bin/patch-dependencies.js gives oidc-provider's `ctx.oidc` one getter for every request (a
 * getter made per request kept each finished request reachable until a full GC: see the patch).
 * These tests hold the installed provider to that, and to the behaviour the original had.
 */
describe('oidc-provider request context (as patched)', () => {
  interface Seen { getter: unknown; first: unknown; again: unknown; route: unknown }
  const seen: Seen[] = [];
  let server: Server;
  let url: string;

  beforeAll(async () => {
    const { privateKey } = await generateKeyPair('ES256', { extractable: true });
    const provider = new Provider('http://127.0.0.1', {
      jwks: { keys: [{ ...(await exportJWK(privateKey)), kid: 'k1', alg: 'ES256', use: 'sig' }] } as never,
      cookies: { keys: ['a-test-cookie-key-of-enough-length'] },
      features: { devInteractions: { enabled: false } },
      responseTypes: [],
    });
    // Looks at the context the provider's route middleware set up, from inside that route.
    provider.use(async (ctx, next) => {
      await next();
      const oidc = (ctx as unknown as { oidc?: { route?: string } }).oidc;
      seen.push({ getter: Object.getOwnPropertyDescriptor(ctx, 'oidc')?.get, first: oidc, again: (ctx as unknown as { oidc?: unknown }).oidc, route: oidc?.route });
    });
    const app = new Koa();
    app.use(mount(provider));
    server = app.listen(0, '127.0.0.1');
    await new Promise((resolve) => server.once('listening', resolve));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });

  afterAll(async () => {
    await new Promise((resolve) => server.close(resolve));
  });

  it('gives every request the same getter, and each request its own OIDC context', async () => {
    for (let i = 0; i < 2; i += 1) {
      const res = await fetch(`${url}/.well-known/openid-configuration`);
      expect(res.status).toBe(200);
    }
    expect(seen).toHaveLength(2);
    const [a, b] = seen as [Seen, Seen];
    expect(typeof a.getter).toBe('function');
    expect(b.getter).toBe(a.getter);
    // Created once per request and kept for it, as before the patch.
    expect(a.first).toBeDefined();
    expect(a.again).toBe(a.first);
    expect(b.first).not.toBe(a.first);
    expect(a.route).toBe('discovery');
  });

  it('is what the server checks at start (it warns when the patch is missing)', () => {
    expect(requestContextPatched()).toBe(true);
    // The server looks for the patch's own marker line.
    expect((PATCHES as Array<{ to: string }>)[0]!.to).toContain('Patched by Writ (bin/patch-dependencies.js)');
  });
});
