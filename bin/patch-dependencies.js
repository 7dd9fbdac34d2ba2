#!/usr/bin/env node
// Applies Writ's patches to installed dependencies; `npm install` and `npm ci` run it
// (postinstall). Plain JavaScript so that any Node can run it, with no dependencies of its own.
//
// A patch names the exact version it was written for and the exact text it replaces. If the
// installed version or text is anything else the install fails, so an upgrade is reviewed
// rather than silently left unpatched. Running it again on patched files changes nothing.
import { readFileSync, realpathSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * @typedef {object} Patch
 * @property {string} pkg     the package's name in node_modules
 * @property {string} version the exact version the patch was written for
 * @property {string} file    the file inside the package
 * @property {string} from    the exact text replaced, which must occur once
 * @property {string} to      what replaces it
 * @property {string} why     one line for the install log
 */

/** @type {Patch[]} */
export const PATCHES = [
  {
    pkg: 'oidc-provider',
    version: '9.13.3',
    file: 'lib/helpers/initialize_app.js',
    why: 'ctx.oidc: one getter for all requests, so a finished request is not kept until a full GC',
    // V8 allocates the accessor pair of every `Object.defineProperty(obj, key, { get })` in the
    // old generation. A new getter closure per request therefore made an old object point at the
    // closure, and through it at the request's whole context (request, response, parsed body,
    // database rows), so every young-generation collection copied them all and promoted them
    // until the next full collection. With one shared getter the accessor pair points at old
    // data only. Measured in bench/README.md ("What the open loop found").
    from: `  const ensureOIDC = async (ctx, next) => {
    let oidcCtx;
    Object.defineProperty(ctx, 'oidc', {
      get: () => {
        oidcCtx ||= new this.OIDCContext(ctx);
        return oidcCtx;
      },
    });
    return als.run(ctx, () => next());
  };`,
    to: `  // Patched by Writ (bin/patch-dependencies.js): one getter for all requests.
  const provider = this;
  const OIDC_CONTEXT = Symbol('oidc context');
  function oidcContext() {
    if (!Object.hasOwn(this, OIDC_CONTEXT)) {
      Object.defineProperty(this, OIDC_CONTEXT, { value: new provider.OIDCContext(this) });
    }
    return this[OIDC_CONTEXT];
  }
  const ensureOIDC = async (ctx, next) => {
    Object.defineProperty(ctx, 'oidc', { get: oidcContext });
    return als.run(ctx, () => next());
  };`,
  },
  {
    pkg: 'oidc-provider',
    version: '9.13.3',
    file: 'lib/shared/selective_body.js',
    why: 'no warning when Writ\'s form guard hands over the body it read',
    // Writ's form guard reads every form body first, to refuse one with more parameters than
    // node:querystring keeps, and hands the bytes to the provider through `ctx.request.body`,
    // which the provider parses as it parses what it reads itself. Its one-time warning about an
    // "upstream middleware parser" would only mislead whoever reads Writ's log.
    from: `        if (!warned) {
          warned = true;
          attention.warn('already parsed request body detected, having upstream middleware parser \\
is not recommended, resolving to use req.body or request.body instead');
        }
`,
    to: `        // Patched by Writ (bin/patch-dependencies.js): its form guard read the body on purpose.
`,
  },
];

export class PatchError extends Error {}

/**
 * The patched text of a file: `text` itself when the patch is already in, the replacement when
 * the original occurs exactly once. Anything else throws.
 * @param {string} text
 * @param {Patch} patch
 * @returns {{ text: string, changed: boolean }}
 */
export function patchText(text, patch) {
  if (text.includes(patch.to)) return { text, changed: false };
  const at = text.indexOf(patch.from);
  if (at === -1 || text.indexOf(patch.from, at + 1) !== -1) {
    throw new PatchError(`${patch.pkg}/${patch.file}: the text to patch is not there exactly once; review bin/patch-dependencies.js`);
  }
  return { text: text.slice(0, at) + patch.to + text.slice(at + patch.from.length), changed: true };
}

/**
 * Applies every patch under `nodeModules`; returns one line per patch.
 * @param {string} nodeModules
 * @returns {string[]}
 */
export function applyPatches(nodeModules) {
  return PATCHES.map((patch) => {
    const dir = path.join(nodeModules, patch.pkg);
    const { version } = JSON.parse(readFileSync(path.join(dir, 'package.json'), 'utf8'));
    if (version !== patch.version) {
      throw new PatchError(`${patch.pkg} is ${version}, the patch is for ${patch.version}; review bin/patch-dependencies.js`);
    }
    const file = path.join(dir, patch.file);
    const result = patchText(readFileSync(file, 'utf8'), patch);
    if (result.changed) writeFileSync(file, result.text);
    return `${patch.pkg}@${patch.version} ${patch.file}: ${result.changed ? 'patched' : 'already patched'} (${patch.why})`;
  });
}

// Run as a command (npm's postinstall), not when a test imports it. Both sides are resolved
// through symlinks: a linked checkout must not skip the patch silently.
const self = realpathSync(fileURLToPath(import.meta.url));
if (process.argv[1] && realpathSync(path.resolve(process.argv[1])) === self) {
  const root = path.resolve(path.dirname(self), '..');
  try {
    for (const line of applyPatches(path.join(root, 'node_modules'))) process.stdout.write(`${line}\n`);
  } catch (err) {
    process.stderr.write(`${err instanceof PatchError ? err.message : String(err)}\n`);
    process.exit(1);
  }
}
