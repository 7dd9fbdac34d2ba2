import { describe, expect, it } from 'vitest';
import { revocationOf, taskEnded, type RevokedSet, type RevocationSubject } from '../../src/revocation/state.ts';

const NB = 1_800_000_000;
const token = (over: Partial<RevocationSubject> = {}): RevocationSubject => ({
  jti: 'j1', iat: NB - 1, taskId: null, clients: ['planner-agent', 'executor-agent'],
  rootIssuer: 'https://idp.example.com', rootSubject: 'alice', ruleId: 'executor-reads-payments', ...over,
});
const set = (over: Partial<RevokedSet> = {}): RevokedSet => ({ jtis: new Map(), tasks: new Set(), marks: new Map(), ...over });
const mark = (key: string): RevokedSet => set({ marks: new Map([[key, NB]]) });

describe('revocationOf: what the revoked set makes inactive', () => {
  it.each<[string, string]>([
    ['a client anywhere in the chain', 'client\nplanner-agent'],
    ['the current client', 'client\nexecutor-agent'],
    ['the root subject', 'subject\nhttps://idp.example.com|alice'],
    ['the root subject’s issuer', 'issuer\nhttps://idp.example.com'],
    ['the rule that granted it', 'rule\nexecutor-reads-payments'],
  ])('a kill switch by %s covers tokens issued before its time, and only those', (_name, key) => {
    expect(revocationOf(mark(key), token({ iat: NB - 1 }))).toBe('token_revoked');
    expect(revocationOf(mark(key), token({ iat: NB }))).toBeNull();
    expect(revocationOf(mark(key), token({ iat: NB + 60 }))).toBeNull();
  });

  it.each<[string, string]>([
    ['another client', 'client\nintruder-agent'],
    ['another subject of the same issuer', 'subject\nhttps://idp.example.com|bob'],
    ['the same sub at another issuer', 'subject\nhttps://other.example.com|alice'],
    ['another issuer', 'issuer\nhttps://other.example.com'],
    ['another rule', 'rule\nplanner-reads-payments'],
  ])('a kill switch by %s leaves the token alone', (_name, key) => {
    expect(revocationOf(mark(key), token())).toBeNull();
  });

  it('a rule mark needs the token’s rule: a token without one is not covered by it', () => {
    expect(revocationOf(mark('rule\nexecutor-reads-payments'), token({ ruleId: undefined }))).toBeNull();
  });

  it('a revoked jti, whatever its time', () => {
    expect(revocationOf(set({ jtis: new Map([['j1', null]]) }), token({ iat: NB + 1000 }))).toBe('token_revoked');
    expect(revocationOf(set({ jtis: new Map([['j2', null]]) }), token())).toBeNull();
  });

  it('an ended task, everywhere or for this root subject only, before any mark', () => {
    const everywhere = set({ tasks: new Set(['task\ninvoice-42']), marks: new Map([['client\nplanner-agent', NB]]) });
    expect(revocationOf(everywhere, token({ taskId: 'invoice-42' }))).toBe('task_revoked');
    expect(revocationOf(everywhere, token({ taskId: 'invoice-43', iat: NB }))).toBeNull();
    const forAlice = set({ tasks: new Set(['subject_task\nhttps://idp.example.com|alice|invoice-42']) });
    expect(revocationOf(forAlice, token({ taskId: 'invoice-42' }))).toBe('task_revoked');
    expect(revocationOf(forAlice, token({ taskId: 'invoice-42', rootSubject: 'bob' }))).toBeNull();
    expect(taskEnded(forAlice, 'invoice-42')).toBe(false);
    expect(taskEnded(forAlice, 'invoice-42', { issuer: 'https://idp.example.com', sub: 'alice' })).toBe(true);
  });
});
