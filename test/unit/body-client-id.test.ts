import { describe, expect, it } from 'vitest';
import { bodyClientId } from '../../src/http/app.ts';

const form = (params: Record<string, string>): Buffer => Buffer.from(new URLSearchParams(params).toString());
const assertion = (payload: unknown): string =>
  `eyJhbGciOiJFUzI1NiJ9.${Buffer.from(JSON.stringify(payload)).toString('base64url')}.c2ln`;

describe('bodyClientId: the client a form body names, for its failure bucket', () => {
  it('is client_id when given, else the sub of the client assertion', () => {
    expect(bodyClientId(form({ client_id: 'agent-c', client_secret: 'x' }))).toBe('agent-c');
    expect(bodyClientId(form({ client_assertion: assertion({ sub: 'agent-c', iss: 'agent-c' }) }))).toBe('agent-c');
    expect(bodyClientId(form({ client_id: 'agent-c', client_assertion: assertion({ sub: 'other' }) }))).toBe('agent-c');
  });

  it('is nothing for a body that names no client, or an assertion that is not a JWT', () => {
    expect(bodyClientId(form({ token: 'x' }))).toBeUndefined();
    expect(bodyClientId(form({ client_id: '' }))).toBeUndefined();
    for (const bad of ['', 'a.b.c', 'a..c', `x.${Buffer.from('[1]').toString('base64url')}.y`, `x.${Buffer.from('{"sub":7}').toString('base64url')}.y`]) {
      expect(bodyClientId(form({ client_assertion: bad }))).toBeUndefined();
    }
  });

  it('keeps at most 256 characters of it, as the Basic header path does', () => {
    expect(bodyClientId(form({ client_id: 'a'.repeat(1000) }))).toHaveLength(256);
  });
});
