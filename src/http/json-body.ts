import type { ParameterizedContext } from 'koa';

export class BodyError extends Error {
  override name = 'BodyError';
}

/** Reads a JSON request body, at most `limit` bytes. */
export async function readJsonBody(ctx: ParameterizedContext, limit = 1024 * 1024): Promise<unknown> {
  if (!ctx.is('application/json')) throw new BodyError('expected Content-Type: application/json');
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of ctx.req) {
    const buf = Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk as string);
    size += buf.length;
    if (size > limit) throw new BodyError('body too large');
    chunks.push(buf);
  }
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8'));
  } catch {
    throw new BodyError('body is not valid JSON');
  }
}
