import { isMap, isScalar, isSeq, LineCounter, parseDocument } from 'yaml';
import { checkJwksUri } from '../tokens/jwks-cache.ts';
import type { PolicyFile } from './load.ts';
import type { PolicyDocument } from './model.ts';
import { formatPath, type PathSegment, type PolicyIssue } from './validate.ts';

/**
 * Before an apply: does each `jwks_uri` answer with keys? An issuer whose keys cannot be fetched
 * makes every exchange from it fail with `jwks_unavailable`, but it may be down only for now or
 * reachable only from where Writ runs, so this warns and never blocks (ISSUE item 2).
 */

export interface ReachabilityOptions {
  /** Whole-request timeout per URI, body included. */
  timeoutMs: number;
  /** The files the document came from, to name file and line in warnings. */
  files?: readonly PolicyFile[];
  /** Response body cap. Default 64 KiB, as the JWKS cache. */
  maxBodyBytes?: number;
}

/** Why a URI does not serve usable keys, or undefined when it does. */
async function probe(uri: string, timeoutMs: number, maxBodyBytes: number): Promise<string | undefined> {
  let url: URL;
  try {
    url = checkJwksUri(uri);
  } catch {
    // validatePolicy already refuses such a URI; nothing is fetched from it.
    return undefined;
  }
  const signal = AbortSignal.timeout(timeoutMs);
  try {
    const response = await fetch(url, {
      method: 'GET',
      redirect: 'error',
      signal,
      headers: { accept: 'application/jwk-set+json, application/json' },
    });
    if (response.status !== 200) {
      response.body?.cancel().catch(() => undefined);
      return `it answered HTTP ${response.status}`;
    }
    const reader = response.body?.getReader();
    const chunks: Uint8Array[] = [];
    let total = 0;
    for (;;) {
      const chunk = reader ? await reader.read() : { done: true as const, value: undefined };
      if (chunk.done) break;
      total += chunk.value.byteLength;
      if (total > maxBodyBytes) {
        reader?.cancel().catch(() => undefined);
        return `its answer is larger than ${maxBodyBytes} bytes`;
      }
      chunks.push(chunk.value);
    }
    let json: unknown;
    try {
      json = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(Buffer.concat(chunks)));
    } catch {
      return 'its answer is not JSON';
    }
    const keys = typeof json === 'object' && json !== null && !Array.isArray(json) ? (json as { keys?: unknown }).keys : undefined;
    if (!Array.isArray(keys)) return 'its answer is not a JWK Set (no "keys" array)';
    if (keys.length === 0) return 'its JWK Set has no keys';
    return undefined;
  } catch (err) {
    if (signal.aborted || (err as Error).name === 'TimeoutError' || (err as Error).name === 'AbortError') {
      return `it did not answer within ${timeoutMs} ms`;
    }
    const cause = (err as { cause?: unknown }).cause;
    const detail = cause instanceof Error ? ((cause as NodeJS.ErrnoException).code ?? cause.message) : (err as Error).message;
    return `it could not be fetched (${String(detail).slice(0, 120)})`;
  }
}

/** Where `section[i].jwks_uri` of the object with this id was written, if the files are known. */
function locate(files: readonly PolicyFile[] | undefined, section: 'issuers' | 'clients', idField: string, id: string):
  Pick<PolicyIssue, 'file' | 'line' | 'column' | 'path'> | undefined {
  for (const file of files ?? []) {
    const lines = new LineCounter();
    const doc = parseDocument(file.text, { version: '1.2', lineCounter: lines });
    const list = isMap(doc.contents) ? doc.contents.get(section, true) : undefined;
    if (!isSeq(list)) continue;
    for (let index = 0; index < list.items.length; index++) {
      const item = list.items[index];
      if (!isMap(item) || item.get(idField) !== id) continue;
      const pair = item.items.find((p) => isScalar(p.key) && p.key.value === 'jwks_uri');
      const node = pair?.value;
      const offset = (isScalar(node) ? node.range?.[0] : undefined) ?? item.range?.[0] ?? 0;
      const pos = lines.linePos(offset);
      return { file: file.name, line: pos.line, column: pos.col, path: formatPath([section, index, 'jwks_uri']) };
    }
  }
  return undefined;
}

/**
 * Warnings (code `jwks_unreachable`) for every issuer and client `jwks_uri` that does not answer
 * 200 with a JSON object holding a non-empty `keys` array within the timeout. Redirects are not
 * followed, and only URIs Writ itself would fetch (https, or http to loopback) are tried. Each
 * distinct URI is fetched once, all of them concurrently.
 */
export async function checkJwksUris(document: PolicyDocument, options: ReachabilityOptions): Promise<PolicyIssue[]> {
  const targets: Array<{ section: 'issuers' | 'clients'; index: number; id: string; uri: string }> = [];
  document.issuers.forEach((issuer, index) => {
    if (issuer.jwks_uri !== undefined) targets.push({ section: 'issuers', index, id: issuer.issuer, uri: issuer.jwks_uri });
  });
  document.clients.forEach((client, index) => {
    if (client.jwks_uri !== undefined) targets.push({ section: 'clients', index, id: client.client_id, uri: client.jwks_uri });
  });
  const probes = new Map<string, Promise<string | undefined>>();
  for (const { uri } of targets) {
    if (!probes.has(uri)) probes.set(uri, probe(uri, options.timeoutMs, options.maxBodyBytes ?? 64 * 1024));
  }
  const issues: PolicyIssue[] = [];
  for (const target of targets) {
    const problem = await probes.get(target.uri);
    if (problem === undefined) continue;
    const consequence = target.section === 'issuers'
      ? `tokens from issuer ${target.id} will be refused (jwks_unavailable) until it serves keys`
      : `client ${target.id} cannot authenticate with private_key_jwt until it serves keys`;
    const at: PathSegment[] = [target.section, target.index, 'jwks_uri'];
    const where = locate(options.files, target.section, target.section === 'issuers' ? 'issuer' : 'client_id', target.id);
    issues.push({
      severity: 'warning',
      path: formatPath(at),
      ...where,
      code: 'jwks_unreachable',
      message: `jwks_uri ${target.uri} is unreachable: ${problem}; ${consequence}`,
    });
  }
  return issues;
}
