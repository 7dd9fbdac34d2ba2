import { describe, expect, it } from 'vitest';
import { LineageCache } from '../../src/exchange/lineage-store.ts';
import type { Lineage } from '../../src/exchange/types.ts';

const claims = Object.freeze({ iss: 'https://idp.example.com', sub: 'alice', groups: ['finance'] });

function lineage(jti: string, over: Partial<Lineage> = {}): Lineage {
  return {
    jti,
    parentJti: null,
    clientId: 'planner-agent',
    audience: 'https://payments.example.com',
    scopes: ['payments:read', 'payments:write'],
    root: { issuer: 'https://idp.example.com', sub: 'alice', claims },
    taskId: null,
    depth: 1,
    depthBound: 3,
    actors: ['planner-agent'],
    ruleId: 'planner-payments',
    policyVersion: 4,
    iat: 1_796_400_000,
    exp: 1_796_400_300,
    ...over,
  };
}

describe('lineage cache', () => {
  it('gives back what was remembered, field for field', () => {
    const cache = new LineageCache();
    const l = lineage('a', { parentJti: 'p', taskId: 't1', actors: ['planner-agent', 'executor-agent'] });
    cache.remember(l);
    expect(cache.peek('a')).toEqual(l);
    expect(cache.peek('b')).toBeUndefined();
  });

  it('keeps equal scope lists, actor chains and roots once, frozen, without freezing the caller\'s', () => {
    const cache = new LineageCache();
    const first = lineage('a');
    cache.remember(first);
    cache.remember(lineage('b'));
    const a = cache.peek('a')!;
    const b = cache.peek('b')!;
    expect(b.scopes).toBe(a.scopes);
    expect(b.actors).toBe(a.actors);
    expect(b.root).toBe(a.root);
    expect(Object.isFrozen(a.scopes) && Object.isFrozen(a.actors) && Object.isFrozen(a.root)).toBe(true);
    expect(() => (a.scopes as string[]).push('payments:admin')).toThrow(TypeError);
    expect(Object.isFrozen(first.scopes) || Object.isFrozen(first.actors) || Object.isFrozen(first.root)).toBe(false);
  });

  it('keeps a chained token\'s root, its parent\'s, even after the subject\'s newer root took the table', () => {
    const cache = new LineageCache();
    cache.remember(lineage('parent'));
    const parentRoot = cache.peek('parent')!.root;
    // The same subject presents a token with other claims: its root is now the one kept.
    cache.remember(lineage('sibling', { root: { issuer: 'https://idp.example.com', sub: 'alice', claims: { ...claims } } }));
    cache.remember(lineage('child', { parentJti: 'parent', root: parentRoot }));
    expect(cache.peek('child')!.root).toBe(parentRoot);
    expect(cache.peek('sibling')!.root).not.toBe(parentRoot);
  });

  it('does not share what differs: other lists, the same subject with other claims, [] and [""]', () => {
    const cache = new LineageCache();
    cache.remember(lineage('a'));
    cache.remember(lineage('b', { scopes: ['payments:read'], actors: ['planner-agent', 'executor-agent'] }));
    cache.remember(lineage('c', { root: { issuer: 'https://idp.example.com', sub: 'alice', claims: { ...claims, groups: [] } } }));
    cache.remember(lineage('d', { scopes: [] }));
    cache.remember(lineage('e', { scopes: [''] }));
    expect(cache.peek('b')!.scopes).toEqual(['payments:read']);
    expect(cache.peek('b')!.actors).toEqual(['planner-agent', 'executor-agent']);
    expect(cache.peek('c')!.root.claims).toEqual({ ...claims, groups: [] });
    expect(cache.peek('c')!.root).not.toBe(cache.peek('a')!.root);
    expect(cache.peek('a')!.root.claims).toBe(claims);
    expect(cache.peek('d')!.scopes).toEqual([]);
    expect(cache.peek('e')!.scopes).toEqual(['']);
  });
});
