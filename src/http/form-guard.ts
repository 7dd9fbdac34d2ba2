import type { Middleware } from 'koa';

/** oidc-provider's own cap on form bodies. */
const LIMIT = 56 * 1024;
/** Far above any real request; below node:querystring's silent cut-off of 1,000 keys. */
export const MAX_FORM_PARAMETERS = 200;

export class FormRejected extends Error {
  override name = 'FormRejected';
}

/**
 * oidc-provider parses form bodies with node:querystring, which silently drops every key after
 * the 1,000th: a duplicate `subject_token` or `scope` hidden behind 1,000 junk parameters would
 * go unseen, and a gateway reading the whole body would see another request than Writ. The body
 * is read here first, a request with too many parameters is refused, and the provider reads the
 * very same bytes, replayed.
 */
export function formGuard(paths: ReadonlySet<string>, onRejected: (ctx: Parameters<Middleware>[0], why: string) => void): Middleware {
  return async (ctx, next) => {
    if (ctx.method !== 'POST' || !paths.has(ctx.path) || !ctx.is('application/x-www-form-urlencoded')) return next();
    const declared = ctx.request.length;
    if (declared !== undefined && declared > LIMIT) {
      onRejected(ctx, 'the request body is too large');
      return;
    }
    const chunks: Buffer[] = [];
    let size = 0;
    try {
      // Leaving the loop early must not destroy the socket: the refusal still has to be sent.
      for await (const chunk of ctx.req.iterator({ destroyOnReturn: false })) {
        size += (chunk as Buffer).length;
        if (size > LIMIT) throw new FormRejected('the request body is too large');
        chunks.push(chunk as Buffer);
      }
    } catch (err) {
      onRejected(ctx, err instanceof FormRejected ? err.message : 'the request body could not be read');
      return;
    }
    const body = Buffer.concat(chunks, size);
    if (countParameters(body) > MAX_FORM_PARAMETERS) {
      onRejected(ctx, `more than ${MAX_FORM_PARAMETERS} parameters`);
      return;
    }
    // The provider reads the body with `req.iterator()` once it sees `req.readable`: these, and
    // `for await` over the request, are shadowed on this request only by own data properties
    // that replay the bytes read here. (Not a Proxy around the request: every later `ctx.req`
    // access then went through a trap and bound a function. Not accessors either: V8 keeps a
    // per-request accessor in the old generation, and the request alive with it.)
    const req = ctx.req as ReplayableRequest;
    const replay = (): AsyncGenerator<Buffer> => (async function* replayBody() {
      req.readable = false;
      if (body.length > 0) yield body;
    })();
    // defineProperty: assigning would reach the prototype's `readable` setter instead.
    Object.defineProperty(req, 'readable', { value: true, writable: true, configurable: true, enumerable: false });
    req.iterator = replay;
    req[Symbol.asyncIterator] = replay;
    try {
      await next();
    } finally {
      // Newest first, so that V8 can return the request to the shape it had.
      delete req[Symbol.asyncIterator];
      delete req.iterator;
      delete req.readable;
    }
  };
}

const AMPERSAND = 0x26;

/** Non-empty `&`-separated parts, as node:querystring counts keys, without splitting the body. */
export function countParameters(body: Buffer): number {
  let parameters = 0;
  let start = 0;
  while (start <= body.length) {
    let end = body.indexOf(AMPERSAND, start);
    if (end === -1) end = body.length;
    if (end > start) parameters += 1;
    start = end + 1;
  }
  return parameters;
}

/** The request while its body is replayed: `readable` and both iterators as own, writable members. */
interface ReplayableRequest {
  readable?: boolean;
  iterator?: () => AsyncGenerator<Buffer>;
  [Symbol.asyncIterator]?: () => AsyncGenerator<Buffer>;
}
