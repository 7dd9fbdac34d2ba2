import type { ParameterizedContext } from 'koa';

export class BodyError extends Error {
  override name = 'BodyError';
}

/** Reads a JSON body of at most `limit` bytes; an empty body is `undefined`. */
export async function readJsonStream(req: NodeJS.ReadableStream, limit: number): Promise<unknown> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    const buf = Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk as string);
    size += buf.length;
    if (size > limit) throw new BodyError('body too large');
    chunks.push(buf);
  }
  const text = Buffer.concat(chunks).toString('utf8').trim();
  if (text === '') return undefined;
  try {
    return JSON.parse(text);
  } catch {
    throw new BodyError('body is not valid JSON');
  }
}

/** Reads a JSON request body sent as application/json, at most `limit` bytes. */
export async function readJsonBody(ctx: ParameterizedContext, limit = 1024 * 1024): Promise<unknown> {
  if (!ctx.is('application/json')) throw new BodyError('expected Content-Type: application/json');
  return readJsonStream(ctx.req, limit);
}
