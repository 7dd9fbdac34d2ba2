import { compilePolicy } from '../../src/policy/compile.ts';
import type { CompiledPolicy } from '../../src/policy/compiled.ts';
import type { PolicyDocument } from '../../src/policy/model.ts';

export const IDP = 'https://idp.example.com';
export const PAYMENTS = 'https://payments.example.com';
export const EXECUTOR_AUD = 'https://agents.example.com/executor';
export const PLANNER = 'planner-agent';
export const EXECUTOR = 'executor-agent';
export const PAYMENTS_API = 'payments-api';

/**
 * The docs/DESIGN.md §6 example policy (`policy/example.yaml`) as the loader yields it: parsed, with
 * every default applied, secrets absent (they never reach a policy version). A fresh copy on
 * every call, so tests may mutate it.
 */
export function examplePolicyDocument(): PolicyDocument {
  return {
    issuers: [
      {
        issuer: IDP,
        jwks_uri: 'https://idp.example.com/.well-known/jwks.json',
        algorithms: ['RS256', 'ES256'],
        audience: 'self',
        token_types: ['access_token', 'jwt'],
        typ: ['at+jwt', 'application/at+jwt'],
        act: 'reject',
        max_token_age: 86400,
      },
    ],
    clients: [
      {
        client_id: PLANNER,
        kind: 'agent',
        auth: 'client_secret_basic',
        audiences: [],
        actor_identities: [],
        scopes: [],
        enabled: true,
      },
      {
        client_id: EXECUTOR,
        kind: 'agent',
        auth: 'client_secret_basic',
        audiences: [EXECUTOR_AUD],
        actor_identities: [],
        scopes: [],
        enabled: true,
      },
      {
        client_id: PAYMENTS_API,
        kind: 'resource_server',
        auth: 'client_secret_basic',
        audiences: [PAYMENTS],
        actor_identities: [],
        scopes: [],
        enabled: true,
      },
    ],
    audiences: [
      { audience: PAYMENTS, scopes: ['payment.read', 'payment.transfer'], max_ttl: 300, signing_alg: 'ES256' },
      { audience: EXECUTOR_AUD, scopes: ['payment.read'], max_ttl: 600, signing_alg: 'ES256' },
    ],
    rules: [
      {
        id: 'planner-reads-payments',
        actor: PLANNER,
        subject: { issuer: IDP, claims: { groups: 'finance' } },
        audience: PAYMENTS,
        scopes: ['payment.read'],
        ttl: 120,
        max_depth: 2,
        require_task: false,
      },
      {
        id: 'planner-delegates-to-executor',
        actor: PLANNER,
        subject: { issuer: IDP, claims: { groups: 'finance' } },
        audience: EXECUTOR_AUD,
        scopes: ['payment.read'],
        ttl: 300,
        max_depth: 2,
        require_task: false,
      },
      {
        id: 'executor-reads-payments',
        actor: EXECUTOR,
        subject: { issuer: 'self', after: [PLANNER] },
        audience: PAYMENTS,
        scopes: ['payment.read'],
        ttl: 60,
        max_depth: 2,
        require_task: false,
      },
    ],
    settings: { max_depth_cap: 5 },
  };
}

/** Compiles the example policy, optionally after editing a fresh copy of it. */
export function examplePolicy(edit?: (doc: PolicyDocument) => void, version = 1): CompiledPolicy {
  const doc = examplePolicyDocument();
  edit?.(doc);
  return compilePolicy(doc, version);
}
