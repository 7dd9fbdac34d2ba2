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
 * very same bytes from a replay of the stream.
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
    let parameters = 0;
    for (const part of body.toString('latin1').split('&')) if (part !== '') parameters += 1;
    if (parameters > MAX_FORM_PARAMETERS) {
      onRejected(ctx, `more than ${MAX_FORM_PARAMETERS} parameters`);
      return;
    }
    const original = ctx.req;
    let replayed = false;
    // Everything but the body stream is the original request's.
    const replay = new Proxy(original, {
      get(target, prop) {
        if (prop === 'readable') return !replayed;
        if (prop === 'readableEncoding') return null;
        if (prop === 'iterator' || prop === Symbol.asyncIterator) {
          return () => (async function* replayBody() {
            replayed = true;
            if (body.length > 0) yield body;
          })();
        }
        const value = Reflect.get(target, prop, target) as unknown;
        return typeof value === 'function' ? (value as (...args: unknown[]) => unknown).bind(target) : value;
      },
    });
    ctx.req = replay;
    ctx.request.req = replay;
    try {
      await next();
    } finally {
      ctx.req = original;
      ctx.request.req = original;
    }
  };
}
