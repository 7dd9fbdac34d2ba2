import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import * as querystring from 'node:querystring';
import fc from 'fast-check';
import Koa from 'koa';
// @ts-expect-error oidc-provider ships no types for its internals.
import { urlencoded } from 'oidc-provider/lib/shared/selective_body.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { countParameters, formGuard, MAX_FORM_PARAMETERS } from '../../src/http/form-guard.ts';

describe('countParameters', () => {
  it('counts every &-separated part of any body, empty ones included, as splitting it would', () => {
    const body = fc.array(fc.oneof(fc.constant('&'), fc.constant('='), fc.string({ maxLength: 6 }), fc.string({ unit: 'binary', maxLength: 3 })), { maxLength: 30 }).map((parts) => parts.join(''));
    fc.assert(fc.property(body, (text) => {
      const bytes = Buffer.from(text, 'utf8');
      expect(countParameters(bytes)).toBe(bytes.length === 0 ? 0 : bytes.toString('latin1').split('&').length);
    }), { numRuns: 5_000 });
  });

  it('counts as node:querystring spends its key budget: empty parts too', () => {
    expect(countParameters(Buffer.from(''))).toBe(0);
    expect(countParameters(Buffer.from('&&&'))).toBe(4);
    expect(countParameters(Buffer.from('a=1'))).toBe(1);
    expect(countParameters(Buffer.from('&a=1&&b&'))).toBe(5);
    expect(countParameters(Buffer.from(Array.from({ length: 201 }, (_, i) => `x${i}=1`).join('&')))).toBe(201);
  });
});

describe('countParameters keeps node:querystring from cutting a body short', () => {
  it('empty parts spend its budget: a key after 1,000 of them is dropped', () => {
    expect(querystring.parse(`${'&'.repeat(1000)}a=1`).a).toBeUndefined();
    expect(countParameters(Buffer.from(`${'&'.repeat(1000)}a=1`))).toBe(1001);
  });

  it('whatever the body, up to 1,000 counted parts parse as with no cut-off at all', () => {
    const part = fc.oneof(fc.constant(''), fc.constant('a=1'), fc.constant('b'), fc.constant('='), fc.constant('scope=x'));
    const body = fc.array(part, { minLength: 990, maxLength: 1010 }).map((parts) => parts.join('&'));
    fc.assert(fc.property(body, (text) => {
      fc.pre(countParameters(Buffer.from(text)) <= 1000);
      expect(querystring.parse(text)).toEqual(querystring.parse(text, undefined, undefined, { maxKeys: 0 }));
    }), { numRuns: 300 });
  });
});

describe('formGuard hands the body it read to the provider', () => {
  type Ctx = Koa.ParameterizedContext;
  let server: Server;
  let url: string;
  /** Own members the request gained by the time the provider read its body, by request path. */
  const ownMembers = new Map<string, Array<string | symbol>>();
  const warnings: unknown[][] = [];
  const warn = console.warn;

  beforeAll(async () => {
    console.warn = (...args: unknown[]) => { warnings.push(args); };
    const app = new Koa();
    app.silent = true;
    app.use(async (ctx, next) => {
      (ctx.state as { before?: Set<string | symbol> }).before = new Set(Reflect.ownKeys(ctx.req));
      await next();
    });
    app.use(formGuard(new Set(['/provider']), (ctx, why) => {
      ctx.status = 400;
      ctx.body = { refused: why };
    }));
    app.use(async (ctx: Ctx & { oidc?: { body?: unknown } }, next) => {
      if (ctx.path === '/provider' || ctx.path === '/unguarded') {
        // The provider's own body reader, as its token, introspection and revocation routes run it.
        ctx.oidc = {};
        await urlencoded(ctx, async () => {});
        const before = (ctx.state as { before: Set<string | symbol> }).before;
        ownMembers.set(ctx.path, Reflect.ownKeys(ctx.req).filter((k) => !before.has(k)));
        ctx.body = { body: ctx.oidc.body };
      }
      await next();
    });
    server = app.listen(0, '127.0.0.1');
    await new Promise((resolve) => server.once('listening', resolve));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(() => {
    console.warn = warn;
    return new Promise((resolve) => server.close(resolve));
  });

  const post = (path: string, body: string | Uint8Array, type = 'application/x-www-form-urlencoded') =>
    fetch(`${url}${path}`, { method: 'POST', headers: { 'content-type': type }, body });

  it("gives oidc-provider's body reader what it reads itself, and puts nothing on the request", async () => {
    const text = 'grant_type=x&scope=a%20b&audience=1&audience=2&e=%C3%A9&&raw=\u00e9';
    const guarded = await (await post('/provider', text)).json();
    const unguarded = await (await post('/unguarded', text)).json();
    expect(guarded).toEqual(unguarded);
    expect(guarded).toEqual({ body: { grant_type: 'x', scope: 'a b', audience: ['1', '2'], e: 'é', raw: '\u00e9' } });
    expect(ownMembers.get('/provider')).toEqual(ownMembers.get('/unguarded'));
    // The provider's warning about a body read before it is patched out (bin/patch-dependencies.js).
    expect(warnings).toEqual([]);
  });

  it('gives the provider the same for an empty and for a chunked body', async () => {
    for (const body of ['', 'a=1&a=2']) {
      expect(await (await post('/provider', body)).json()).toEqual(await (await post('/unguarded', body)).json());
    }
    const chunked = (path: string) => fetch(`${url}${path}`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: new ReadableStream({ start(c) { c.enqueue(new TextEncoder().encode('a=1&')); c.enqueue(new TextEncoder().encode('b=2')); c.close(); } }),
      duplex: 'half',
    } as RequestInit);
    const guarded = await (await chunked('/provider')).json();
    expect(guarded).toEqual(await (await chunked('/unguarded')).json());
    expect(guarded).toEqual({ body: { a: '1', b: '2' } });
  });

  it('reads raw bytes and a declared charset exactly as the provider would', async () => {
    const latin1 = Buffer.from('name=caf\u00e9', 'latin1');
    const type = 'application/x-www-form-urlencoded; charset=iso-8859-1';
    const guarded = await (await post('/provider', latin1, type)).json();
    expect(guarded).toEqual(await (await post('/unguarded', latin1, type)).json());
    // Both parse the bytes as UTF-8 (koa 3 defines no `ctx.charset`), and 0xE9 alone is not UTF-8.
    expect(guarded).toEqual({ body: { name: 'caf\ufffd' } });
  });

  it('refuses more than MAX_FORM_PARAMETERS parameters before anything reads the body', async () => {
    const res = await post('/provider', Array.from({ length: MAX_FORM_PARAMETERS + 1 }, (_, i) => `p${i}=1`).join('&'));
    expect(res.status).toBe(400);
    expect(await res.json()).toEqual({ refused: `more than ${MAX_FORM_PARAMETERS} parameters` });
  });
});
