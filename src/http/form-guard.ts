import type { Middleware } from 'koa';

/** oidc-provider's own cap on form bodies. */
const LIMIT = 56 * 1024;
/** Far above any real request; below node:querystring's silent cut-off of 1,000 parts. */
export const MAX_FORM_PARAMETERS = 200;

export class FormRejected extends Error {
  override name = 'FormRejected';
}

/**
 * oidc-provider parses form bodies with node:querystring, which silently drops every key after
 * the 1,000th: a duplicate `subject_token` or `scope` hidden behind 1,000 junk parameters would
 * go unseen, and a gateway reading the whole body would see another request than Writ. The body
 * is read here first, a request with too many parameters is refused, and the provider parses the
 * very same bytes.
 *
 * They reach it through `ctx.request.body`, which the provider reads when the request stream has
 * already ended (oidc-provider's selective_body; bin/patch-dependencies.js removes the warning it
 * prints then), and parses as it parses what it reads itself: node:querystring over the bytes as
 * UTF-8 (it would decode a `ctx.charset` first, which koa 3 does not define). The request itself
 * is left as it is: members put on it for the provider to replay the body from (`readable`,
 * `iterator`) kept finished requests alive through young-generation collections (bench/README.md).
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
    // node:http already holds a body to its Content-Length; the provider checked it again itself.
    if (declared !== undefined && size !== declared) {
      onRejected(ctx, 'the request body could not be read');
      return;
    }
    const body = Buffer.concat(chunks, size);
    if (countParameters(body) > MAX_FORM_PARAMETERS) {
      onRejected(ctx, `more than ${MAX_FORM_PARAMETERS} parameters`);
      return;
    }
    (ctx.request as ReadRequest).body = body;
    return next();
  };
}

const AMPERSAND = 0x26;

/**
 * The `&`-separated parts of a body, empty ones included, without splitting it. node:querystring
 * spends its key budget on every separator, an empty part too, so `&&&…` hides what follows as
 * well as junk keys do: only a count of every part keeps the cut-off out of reach.
 */
export function countParameters(body: Buffer): number {
  if (body.length === 0) return 0;
  let parts = 1;
  for (let at = body.indexOf(AMPERSAND); at !== -1; at = body.indexOf(AMPERSAND, at + 1)) parts += 1;
  return parts;
}

/** Where the provider finds a body read before it (oidc-provider's selective_body). */
interface ReadRequest {
  body?: Buffer;
}
