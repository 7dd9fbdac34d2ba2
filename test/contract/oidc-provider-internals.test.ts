import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { EXPECTED_INTROSPECTION, EXPECTED_REVOCATION, actionShapes, patchStructuredTokenActions } from '../../src/oauth/internals.ts';

const ROOT = path.resolve(import.meta.dirname, '../..');

/**
 * Writ reaches into oidc-provider in one module only. These tests pin what that module relies
 * on, so an upgrade that changes it fails here rather than in production.
 */
describe('oidc-provider internals Writ depends on', () => {
  it('is pinned to an exact version', () => {
    const pkg = JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { dependencies: Record<string, string> };
    expect(pkg.dependencies['oidc-provider']).toMatch(/^\d+\.\d+\.\d+$/);
    const installed = JSON.parse(readFileSync(path.join(ROOT, 'node_modules/oidc-provider/package.json'), 'utf8')) as { version: string };
    expect(installed.version).toBe(pkg.dependencies['oidc-provider']);
  });

  it('the introspection and revocation actions have the shape the patch expects', async () => {
    // Fresh module state is not available once a Provider was built in this worker, so check
    // either the pristine shape or the patched one.
    const shapes = actionShapes();
    const pristine = JSON.stringify(shapes.introspection) === JSON.stringify(EXPECTED_INTROSPECTION);
    if (pristine) {
      expect(shapes.revocation).toEqual([...EXPECTED_REVOCATION]);
      patchStructuredTokenActions();
    }
    const patched = actionShapes();
    const cut = EXPECTED_INTROSPECTION.indexOf('validateTokenPresence');
    expect(patched.introspection.slice(0, cut)).toEqual(EXPECTED_INTROSPECTION.slice(0, cut));
    expect(patched.introspection.slice(cut)).toEqual(['introspect']);
    expect(patched.revocation).toEqual([
      'urlencoded', 'assembleRevocationParams', 'rejectClientAuthDupes', 'setWWWAuthenticateHeader',
      'authenticateClient', 'bound rejectDupes', 'revoke',
    ]);
  });

  it('the deep imports resolve to functions', async () => {
    const clientAuth = await import('oidc-provider/lib/shared/client_auth.js' as string) as { getClientAuthParams: unknown; default: unknown[] };
    expect(typeof clientAuth.getClientAuthParams).toBe('function');
    const assemble = await import('oidc-provider/lib/shared/assemble_params.js' as string) as { default: unknown };
    expect(typeof assemble.default).toBe('function');
  });

  it('no other module imports oidc-provider internals', () => {
    const offenders: string[] = [];
    const walk = (dir: string): void => {
      for (const entry of readdirSync(dir, { withFileTypes: true })) {
        const full = path.join(dir, entry.name);
        if (entry.isDirectory()) walk(full);
        else if (full.endsWith('.ts') && !full.endsWith(path.join('oauth', 'internals.ts')) && /oidc-provider\/lib\//.test(readFileSync(full, 'utf8'))) offenders.push(full);
      }
    };
    walk(path.join(ROOT, 'src'));
    expect(offenders).toEqual([]);
  });
});
