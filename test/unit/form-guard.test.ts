import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import fc from 'fast-check';
import Koa from 'koa';
// @ts-expect-error oidc-provider ships no types for its internals.
import { urlencoded } from 'oidc-provider/lib/shared/selective_body.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { countParameters, formGuard, MAX_FORM_PARAMETERS } from '../../src/http/form-guard.ts';

describe('countParameters', () => {
  it('counts the non-empty &-separated parts of any body, as splitting it would', () => {
    const body = fc.array(fc.oneof(fc.constant('&'), fc.constant('='), fc.string({ maxLength: 6 }), fc.string({ unit: 'binary', maxLength: 3 })), { maxLength: 30 }).map((parts) => parts.join(''));
    fc.assert(fc.property(body, (text) => {
      const bytes = Buffer.from(text, 'utf8');
      expect(countParameters(bytes)).toBe(bytes.toString('latin1').split('&').filter((p) => p !== '').length);
    }), { numRuns: 5_000 });
  });

  it('counts as the form guard must: empty parts are not parameters', () => {
    expect(countParameters(Buffer.from(''))).toBe(0);
    expect(countParameters(Buffer.from('&&&'))).toBe(0);
    expect(countParameters(Buffer.from('a=1'))).toBe(1);
    expect(countParameters(Buffer.from('&a=1&&b&'))).toBe(2);
    expect(countParameters(Buffer.from(Array.from({ length: 201 }, (_, i) => `x${i}=1`).join('&')))).toBe(201);
  });
});

describe('formGuard replays the body it read', () => {
  type Ctx = Koa.ParameterizedContext;
  const REPLAY_MEMBERS = ['readable', 'iterator', Symbol.asyncIterator] as const;
  let server: Server;
  let url: string;
  /** Own members left on each request once the guard has returned, by request path. */
  const leftOver = new Map<string, string[]>();

  beforeAll(async () => {
    const app = new Koa();
    app.silent = true;
    app.use(async (ctx, next) => {
      try {
        await next();
      } finally {
        leftOver.set(ctx.path, REPLAY_MEMBERS.filter((m) => Object.hasOwn(ctx.req, m)).map(String));
      }
    });
    app.use(async (ctx, next) => {
      try {
        await next();
      } catch {
        ctx.status = 500;
      }
    });
    app.use(formGuard(new Set(['/provider', '/for-await', '/throws']), (ctx, why) => {
      ctx.status = 400;
      ctx.body = { refused: why };
    }));
    app.use(async (ctx: Ctx & { oidc?: { body?: unknown } }, next) => {
      if (ctx.path === '/provider') {
        // The provider's own body reader, as its token, introspection and revocation routes run it.
        ctx.oidc = {};
        await urlencoded(ctx, async () => {});
        ctx.body = { body: ctx.oidc.body };
      } else if (ctx.path === '/for-await') {
        const chunks: Buffer[] = [];
        for await (const chunk of ctx.req) chunks.push(chunk as Buffer);
        ctx.body = { text: Buffer.concat(chunks).toString() };
      } else if (ctx.path === '/throws') {
        throw new Error('downstream failed');
      }
      await next();
    });
    server = app.listen(0, '127.0.0.1');
    await new Promise((resolve) => server.once('listening', resolve));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(() => new Promise((resolve) => server.close(resolve)));

  const post = (path: string, body: string) =>
    fetch(`${url}${path}`, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body });

  it("reaches oidc-provider's body reader with the very bytes, and leaves nothing on the request", async () => {
    const res = await post('/provider', 'grant_type=x&scope=a%20b&audience=1&audience=2');
    expect(await res.json()).toEqual({ body: { grant_type: 'x', scope: 'a b', audience: ['1', '2'] } });
    expect(leftOver.get('/provider')).toEqual([]);
  });

  it('replays the body to `for await` over the request too', async () => {
    const res = await post('/for-await', 'a=1&b=%C3%A9');
    expect(await res.json()).toEqual({ text: 'a=1&b=%C3%A9' });
    expect(leftOver.get('/for-await')).toEqual([]);
  });

  it('removes what it added when the handler behind it throws', async () => {
    expect((await post('/throws', 'a=1')).status).toBe(500);
    expect(leftOver.get('/throws')).toEqual([]);
  });

  it('refuses more than MAX_FORM_PARAMETERS parameters before anything reads the body', async () => {
    const res = await post('/provider', Array.from({ length: MAX_FORM_PARAMETERS + 1 }, (_, i) => `p${i}=1`).join('&'));
    expect(res.status).toBe(400);
    expect(await res.json()).toEqual({ refused: `more than ${MAX_FORM_PARAMETERS} parameters` });
  });
});
