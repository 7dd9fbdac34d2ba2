/**
 * openapi.yaml is the contract of Writ's HTTP surface (docs/DESIGN.md §4): this file holds the
 * document and a running Writ to each other. Every documented path and method is routed, and
 * nothing else is (nor any other spelling of it); every response seen here is one the document
 * lists for its operation, with the documented headers (X-Request-Id on every response of the
 * main listener) and a body that validates against the documented schema; real token,
 * introspection, discovery and admin answers carry exactly the members the schemas require.
 * `/metrics` lives on its own listener (WRIT_METRICS_ADDR) and is checked there.
 */
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer, request, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { Ajv2020, type ValidateFunction } from 'ajv/dist/2020.js';
import { decodeJwt, decodeProtectedHeader, exportJWK, generateKeyPair, SignJWT, type CryptoKey } from 'jose';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { parse, stringify } from 'yaml';
import { ADMIN_SCOPES, bootstrapAdmin } from '../../src/admin/bootstrap.ts';
import { createLoginToken } from '../../src/audit/view-login.ts';
import { loadConfig } from '../../src/config.ts';
import { REASONS } from '../../src/exchange/reasons.ts';
import { CHAIN_VIEW_HEADERS, SESSION_COOKIE } from '../../src/http/chain-view.ts';
import { createLogger } from '../../src/log.ts';
import { serveMetrics } from '../../src/metrics.ts';
import { ROUTES } from '../../src/oauth/provider.ts';
import type { AdminScope } from '../../src/policy/model.ts';
import { createWrit, type Writ } from '../../src/server.ts';
import {
  AT, CLIENT_SECRETS, EXECUTOR_AUD, IDP, PAYMENTS, SECRETS, TX, basicAuth, examplePolicyFor, startTestWrit, type TestWrit,
} from '../support/harness.ts';

type Json = Record<string, unknown>;

interface Spec {
  openapi: string;
  info: { title: string; description: string; license?: { name?: string; identifier?: string } };
  servers: Array<{ url: string }>;
  paths: Record<string, Json>;
  components: {
    schemas: Record<string, Json>;
    responses: Record<string, Json>;
    headers: Record<string, Json>;
    parameters: Record<string, Json>;
    securitySchemes: Record<string, Json>;
  };
}

const SPEC_FILE = path.resolve(import.meta.dirname, '../../openapi.yaml');
const spec = parse(readFileSync(SPEC_FILE, 'utf8')) as Spec;

const HTTP_METHODS = ['get', 'put', 'post', 'delete', 'options', 'head', 'patch', 'trace'] as const;
const PROBED_METHODS = ['GET', 'POST', 'PUT', 'PATCH', 'DELETE'] as const;

/** What Writ serves today, path → methods (the brief of this contract). */
const EXPECTED_OPERATIONS: Record<string, string[]> = {
  '/token': ['post'],
  '/token/introspection': ['post'],
  '/token/revocation': ['post'],
  '/task/revocation': ['post'],
  '/jwks': ['get'],
  '/.well-known/oauth-authorization-server': ['get'],
  '/healthz': ['get'],
  '/readyz': ['get'],
  '/metrics': ['get'],
  '/admin/v1/policy': ['get', 'put'],
  '/admin/v1/policy/versions': ['get'],
  '/admin/v1/policy/versions/{version}': ['get'],
  '/admin/v1/policy/{collection}': ['get'],
  '/admin/v1/policy/{collection}/{id}': ['get', 'put', 'delete'],
  '/admin/v1/clients/{id}/disable': ['post'],
  '/admin/v1/clients/{id}/enable': ['post'],
  '/admin/v1/explain': ['post'],
  '/admin/v1/revocations': ['get', 'post'],
  '/admin/v1/policy/validate': ['post'],
  '/admin/v1/policy/diff': ['post'],
  '/admin/v1/policy/export': ['get'],
  '/admin/v1/policy/rollback': ['post'],
  '/admin/v1/keys': ['get'],
  '/admin/v1/keys/rotation': ['post'],
  '/admin/v1/keys/{kid}/removal': ['post'],
  '/admin/v1/audit/trace/{jti}': ['get'],
  '/admin/v1/audit/events': ['get'],
  '/admin/v1/local/policy/apply': ['post'],
  '/admin/v1/local/admin/bootstrap': ['post'],
  '/audit/view': ['get'],
  '/audit/view/login': ['get'],
  '/audit/view/app.js': ['get'],
  '/audit/view/style.css': ['get'],
  '/audit/view/api/trace': ['get'],
  '/audit/view/api/trace/{jti}': ['get'],
  '/audit/view/api/events': ['get'],
  '/audit/view/local/login': ['post'],
};

/** The scope each admin operation needs (src/admin/routes.ts, src/http/admin-audit.ts). */
const ADMIN_SCOPE_OF: Record<string, AdminScope> = {
  'get /admin/v1/policy': 'writ:policy.read',
  'put /admin/v1/policy': 'writ:policy.write',
  'get /admin/v1/policy/versions': 'writ:policy.read',
  'get /admin/v1/policy/versions/{version}': 'writ:policy.read',
  'get /admin/v1/policy/{collection}': 'writ:policy.read',
  'get /admin/v1/policy/{collection}/{id}': 'writ:policy.read',
  'put /admin/v1/policy/{collection}/{id}': 'writ:policy.write',
  'delete /admin/v1/policy/{collection}/{id}': 'writ:policy.write',
  'post /admin/v1/clients/{id}/disable': 'writ:policy.write',
  'post /admin/v1/clients/{id}/enable': 'writ:policy.write',
  'post /admin/v1/explain': 'writ:policy.read',
  'get /admin/v1/revocations': 'writ:revoke',
  'post /admin/v1/revocations': 'writ:revoke',
  'get /admin/v1/audit/trace/{jti}': 'writ:audit.read',
  'get /admin/v1/audit/events': 'writ:audit.read',
  'post /admin/v1/policy/validate': 'writ:policy.read',
  'post /admin/v1/policy/diff': 'writ:policy.write',
  'get /admin/v1/policy/export': 'writ:policy.read',
  'post /admin/v1/policy/rollback': 'writ:policy.write',
  'get /admin/v1/keys': 'writ:keys',
  'post /admin/v1/keys/rotation': 'writ:keys',
  'post /admin/v1/keys/{kid}/removal': 'writ:keys',
};

/** Operations that authenticate with the local credential only, and those behind the chain view session. */
const LOCAL_OPERATIONS = ['post /admin/v1/local/policy/apply', 'post /admin/v1/local/admin/bootstrap', 'post /audit/view/local/login'];
const SESSION_OPERATIONS = ['get /audit/view', 'get /audit/view/api/trace', 'get /audit/view/api/trace/{jti}', 'get /audit/view/api/events'];
const CLIENT_OPERATIONS = ['post /token', 'post /token/introspection', 'post /token/revocation', 'post /task/revocation'];

/**
 * Values for path templates that change nothing whoever sends them: no such object, client or
 * token exists, so a write answers 400 or 404 and a read 404 (version 1 always exists).
 */
const PATH_VALUES: Record<string, string> = { version: '1', collection: 'rules', id: 'openapi-no-such-object', jti: 'no-such-jti', kid: 'openapi-no-such-kid' };

/** Paths a stock oidc-provider (or a careless router) would serve, and Writ must not. */
const UNDOCUMENTED_PROBES = [
  '/', '/auth', '/auth/abc', '/me', '/userinfo', '/session/end', '/session/end/confirm', '/reg', '/reg/abc',
  '/.well-known/openid-configuration', '/.well-known/jwks.json', '/request', '/par', '/device/auth', '/device',
  '/backchannel', '/token/x', '/token/introspection/x', '/jwks/x', '/healthz/x',
  '/admin', '/admin/v1', '/admin/v1/', '/admin/v2/policy', '/admin/v1/clients', '/admin/v1/clients/planner-agent',
  '/admin/v1/local', '/admin/v1/local/policy', '/admin/v1/local/admin', '/admin/v1/audit', '/admin/v1/audit/trace',
  '/admin/v1/audit/export', '/audit', '/audit/view/api', '/audit/view/api/trace/a/b', '/audit/view/index.html',
  '/audit/view/local', '/audit/view/logout',
];

/** Other spellings of documented paths: one spelling per endpoint (outside /admin/ and /audit/view/api/). */
const NON_CANONICAL_PROBES = [
  '/TOKEN', '/Token', '/token/', '/token/Introspection', '/token/introspection/', '/token/revocation/', '/Task/revocation',
  '/task/revocation/', '/JWKS', '/jwks/', '/.well-known/OAuth-Authorization-Server', '/.well-known/oauth-authorization-server/',
  '/HEALTHZ', '/healthz/', '/readyz/', '/Audit/view', '/audit/View', '/audit/view/', '/audit/view/App.js', '/audit/view/style.css/',
  '/audit/view/Login', '/audit/view/login/', '/audit/view/API/events', '/audit/view/api/Events', '/audit/view/api/events/',
  '/audit/view/api/trace/', '/audit/view/local/login/', '/admin/v1/audit/Events', '/admin/v1/audit/events/',
  '/admin/v1/audit/trace/x/', '/admin/v1/local/policy/apply/', '/admin/v1/local/Policy/apply', '/admin/v1/local/admin/bootstrap/',
];

const METHOD_OF_METADATA: Record<string, string> = {
  token_endpoint: 'post',
  introspection_endpoint: 'post',
  revocation_endpoint: 'post',
  task_revocation_endpoint: 'post',
  jwks_uri: 'get',
};

/** Security scheme → the RFC 8414 / OIDC client authentication method it stands for. */
const AUTH_METHOD_OF_SCHEME: Record<string, string> = {
  basic: 'client_secret_basic',
  clientSecretPost: 'client_secret_post',
  privateKeyJwt: 'private_key_jwt',
};

const REQUEST_ID = /^[A-Za-z0-9._:-]{1,64}$/;
const DRAINING_BODY = { error: 'temporarily_unavailable', error_description: 'shutting down' };
/** The endpoints whose every answer is no-store with Pragma: no-cache (RFC 6749 §5.1). */
const OAUTH_ENDPOINTS = new Set(['/token', '/token/introspection', '/token/revocation', '/task/revocation']);

// ---------------------------------------------------------------------------------------------
// The document: references, schemas

function pointer(ref: string): unknown {
  expect(ref.startsWith('#/'), `only local references are used: ${ref}`).toBe(true);
  let node: unknown = spec;
  for (const raw of ref.slice(2).split('/')) {
    const part = raw.replace(/~1/g, '/').replace(/~0/g, '~');
    node = (node as Json | undefined)?.[part];
  }
  return node;
}

/** Follows `$ref` chains of non-schema objects (responses, headers, parameters). */
function resolve(node: unknown): Json {
  let current = node as Json;
  for (let i = 0; i < 10 && typeof current?.$ref === 'string'; i += 1) current = pointer(current.$ref) as Json;
  return current;
}

function walk(node: unknown, visit: (value: Json, at: string) => void, at = '#'): void {
  if (Array.isArray(node)) {
    node.forEach((item, i) => walk(item, visit, `${at}/${i}`));
  } else if (node && typeof node === 'object') {
    visit(node as Json, at);
    for (const [key, value] of Object.entries(node)) walk(value, visit, `${at}/${key}`);
  }
}

const SCHEMA_BASE = 'urn:writ:openapi';

/** The document's schema references, pointed into one JSON Schema 2020-12 resource. */
function forAjv(node: unknown): unknown {
  if (Array.isArray(node)) return node.map(forAjv);
  if (!node || typeof node !== 'object') return node;
  const out: Json = {};
  for (const [key, value] of Object.entries(node)) {
    out[key] = key === '$ref' && typeof value === 'string' && value.startsWith('#/components/schemas/')
      ? `${SCHEMA_BASE}#/$defs/${value.slice('#/components/schemas/'.length)}`
      : forAjv(value);
  }
  return out;
}

const ajv = new Ajv2020({ strict: true, strictRequired: false, allErrors: true, validateFormats: false });
ajv.addSchema({ $id: SCHEMA_BASE, $defs: forAjv(spec.components.schemas) as Json });
const compiled = new WeakMap<object, ValidateFunction>();

function validatorFor(schema: Json): ValidateFunction {
  let validate = compiled.get(schema);
  if (!validate) {
    validate = ajv.compile(forAjv(schema) as Json);
    compiled.set(schema, validate);
  }
  return validate;
}

function schema(name: string): Json {
  const found = spec.components.schemas[name];
  expect(found, `components.schemas.${name}`).toBeDefined();
  return found!;
}

function expectValid(schemaObject: Json, value: unknown, label: string): void {
  const validate = validatorFor(schemaObject);
  const ok = validate(value);
  expect(ok, `${label}: ${ajv.errorsText(validate.errors)}\n${JSON.stringify(value)}`).toBe(true);
}

function required(name: string): string[] {
  return [...(schema(name).required as string[])].sort();
}

function operation(pathKey: string, method: string): Json {
  const op = spec.paths[pathKey]?.[method.toLowerCase()] as Json | undefined;
  expect(op, `${method.toUpperCase()} ${pathKey} is documented`).toBeDefined();
  return op!;
}

function documentedOperations(): Array<[string, string]> {
  return Object.entries(spec.paths).flatMap(([p, item]) => HTTP_METHODS.filter((m) => m in item).map((m) => [p, m] as [string, string]));
}

/** Paths with a `servers` of their own are served on another listener (only /metrics). */
function onMainListener(pathKey: string): boolean {
  return spec.paths[pathKey]?.servers === undefined;
}

function concrete(pathKey: string, values: Record<string, string> = PATH_VALUES): string {
  return pathKey.replace(/\{([a-z_]+)\}/g, (_, name: string) => {
    expect(values[name], `a value for {${name}}`).toBeDefined();
    return encodeURIComponent(values[name]!);
  });
}

// ---------------------------------------------------------------------------------------------
// Responses against the document

interface Answer {
  status: number;
  headers: Headers;
  text: string;
  body: unknown;
}

async function read(res: Response): Promise<Answer> {
  const text = await res.text();
  let body: unknown = text;
  if ((res.headers.get('content-type') ?? '').includes('json') && text !== '') body = JSON.parse(text);
  return { status: res.status, headers: res.headers, text, body };
}

/**
 * The answer is exactly one the Response Object describes: headers, media type, body schema.
 * On the main listener X-Request-Id is documented and present on every response.
 */
function conformsTo(responseObject: Json, answer: Answer, label: string, options: { mainListener?: boolean } = {}): void {
  const response = resolve(responseObject);
  if (options.mainListener !== false) {
    // docs/DESIGN.md §4: every response carries X-Request-Id, and the document says so everywhere.
    expect(resolve((response.headers as Json | undefined)?.['X-Request-Id']), `${label} documents X-Request-Id`)
      .toBe(spec.components.headers['X-Request-Id']);
    expect(answer.headers.get('x-request-id'), `${label} carries X-Request-Id`).toMatch(REQUEST_ID);
  }
  for (const [name, ref] of Object.entries((response.headers as Json | undefined) ?? {})) {
    const header = resolve(ref);
    const value = answer.headers.get(name);
    if (header.required === true) expect(value, `${label}: header ${name}`).not.toBeNull();
    if (value !== null) expectValid(header.schema as Json, value, `${label}: header ${name}`);
  }
  const content = response.content as Record<string, Json> | undefined;
  if (!content) {
    expect(answer.text, `${label}: documented with an empty body`).toBe('');
    return;
  }
  const mediaType = (answer.headers.get('content-type') ?? '').split(';')[0]!.trim();
  const media = content[mediaType];
  expect(media, `${label}: content type ${mediaType} is documented (${Object.keys(content).join(', ')})`).toBeDefined();
  expectValid(media!.schema as Json, answer.body, `${label}: body`);
}

/** A response of a documented operation: its status must be one the operation lists. */
function expectDocumented(pathKey: string, method: string, answer: Answer): Answer {
  const label = `${method.toUpperCase()} ${pathKey} → ${answer.status}`;
  const responses = operation(pathKey, method).responses as Record<string, Json>;
  expect(responses[String(answer.status)], `${label} is a documented response (${Object.keys(responses).join(', ')}); body ${answer.text}`).toBeDefined();
  conformsTo(responses[String(answer.status)]!, answer, label, { mainListener: onMainListener(pathKey) });
  return answer;
}

/** An answer with a `RateLimit-*` field set and a 429 with all of them. */
function expectRateLimited(answer: Answer, label: string): void {
  expect(answer.status, label).toBe(429);
  expect((answer.body as Json).error, label).toBe('temporarily_unavailable');
  expect(Number(answer.headers.get('retry-after')), label).toBeGreaterThanOrEqual(1);
  expect(answer.headers.get('ratelimit-remaining'), label).toBe('0');
}

// ---------------------------------------------------------------------------------------------

describe('openapi.yaml (the document)', () => {
  it('is OpenAPI 3.1 describing Writ, under Apache-2.0, served at the development defaults', () => {
    expect(spec.openapi).toMatch(/^3\.1\.\d+$/);
    expect(spec.info.title).toBe('Writ');
    expect(spec.info.license).toMatchObject({ name: 'Apache-2.0', identifier: 'Apache-2.0' });
    expect(spec.info.description).toMatch(/RFC 8693/);
    // The defaults of docs/DESIGN.md §3: WRIT_ISSUER for the main listener, WRIT_METRICS_ADDR for /metrics.
    const defaults = loadConfig({ WRIT_KEK: Buffer.alloc(32, 1).toString('base64') });
    expect(spec.servers.map((s) => s.url)).toEqual([defaults.issuer]);
    expect(spec.servers.map((s) => s.url)).toContain('http://localhost:4000');
    const metricsServers = spec.paths['/metrics']?.servers as Array<{ url: string }>;
    expect(metricsServers.map((s) => s.url)).toEqual([`http://${defaults.metricsAddr.host}:${defaults.metricsAddr.port}`]);
    expect(metricsServers.map((s) => s.url)).toEqual(['http://127.0.0.1:9464']);
    expect(Object.keys(spec.paths).filter((p) => !onMainListener(p))).toEqual(['/metrics']);
  });

  it('documents exactly the paths and methods Writ serves', () => {
    const documented: Record<string, string[]> = {};
    for (const [p, m] of documentedOperations()) (documented[p] ??= []).push(m);
    expect(documented).toEqual(EXPECTED_OPERATIONS);
    for (const route of Object.values(ROUTES)) expect(Object.keys(spec.paths)).toContain(route);
    // Every path template names its parameters, each declared once, in the path.
    for (const [p, m] of documentedOperations()) {
      const names = [...p.matchAll(/\{([a-z_]+)\}/g)].map((x) => x[1]).sort();
      const declared = ((operation(p, m).parameters as Json[] | undefined) ?? []).map(resolve).filter((x) => x.in === 'path');
      expect(declared.map((x) => x.name).sort(), `${m} ${p}`).toEqual(names);
      for (const parameter of declared) expect(parameter.required, `${m} ${p} {${String(parameter.name)}}`).toBe(true);
    }
  });

  it('resolves every $ref, and names each operation once', () => {
    const refs: string[] = [];
    walk(spec, (node, at) => {
      if (typeof node.$ref === 'string') {
        refs.push(node.$ref);
        expect(pointer(node.$ref), `${at}: ${node.$ref}`).toBeDefined();
      }
    });
    expect(refs.length).toBeGreaterThan(300);
    const ids = documentedOperations().map(([p, m]) => operation(p, m).operationId);
    expect(new Set(ids).size).toBe(ids.length);
    for (const id of ids) expect(id).toMatch(/^[a-z][A-Za-z]+$/);
  });

  it('documents X-Request-Id on every response of the main listener, and on the shared responses', () => {
    const header = spec.components.headers['X-Request-Id'];
    expect(header).toMatchObject({ required: true });
    const all: Array<[string, Json]> = [];
    for (const [p, m] of documentedOperations()) {
      if (!onMainListener(p)) continue;
      for (const [status, response] of Object.entries(operation(p, m).responses as Record<string, Json>)) all.push([`${m} ${p} ${status}`, response]);
    }
    for (const [name, response] of Object.entries(spec.components.responses)) all.push([`components.responses.${name}`, response]);
    for (const [label, response] of all) {
      const headers = resolve(response).headers as Json | undefined;
      expect(headers?.['X-Request-Id'], label).toEqual({ $ref: '#/components/headers/X-Request-Id' });
    }
    // The metrics listener sets no X-Request-Id, and the document does not pretend it does.
    for (const response of Object.values(operation('/metrics', 'get').responses as Record<string, Json>)) {
      expect(resolve(response).headers).toBeUndefined();
    }
  });

  it('documents the other methods of every path: 404, or 405 with the Allow the path names', () => {
    const allowed = (spec.components.headers.Allow!.schema as Json).enum as string[];
    for (const [p, item] of Object.entries(spec.paths)) {
      expect([404, 405], `${p}: x-writ-other-methods`).toContain(item['x-writ-other-methods']);
      for (const extension of ['x-writ-options', 'x-writ-head']) {
        if (item[extension] !== undefined) expect([404, 405], `${p}: ${extension}`).toContain(item[extension]);
      }
      if (item['x-writ-head'] === 405) expect(item['x-writ-allow'], p).toBeDefined();
      if (item['x-writ-other-methods'] === 404) {
        expect(item['x-writ-allow'], p).toBeUndefined();
        continue;
      }
      const allow = item['x-writ-allow'] as string;
      expect(allowed, `${p}: x-writ-allow`).toContain(allow);
      // The methods Allow names are the documented ones, with HEAD beside GET where it is served.
      const methods = HTTP_METHODS.filter((m) => m in item).map((m) => m.toUpperCase());
      expect(allow.split(', ').filter((m) => m !== 'HEAD'), p).toEqual(methods);
    }
  });

  it('has the six security schemes, and every operation names its own', () => {
    expect(Object.keys(spec.components.securitySchemes).sort())
      .toEqual(['adminOAuth', 'auditSession', 'basic', 'clientSecretPost', 'localBearer', 'privateKeyJwt']);
    expect(spec.components.securitySchemes.basic).toMatchObject({ type: 'http', scheme: 'basic' });
    expect(spec.components.securitySchemes.localBearer).toMatchObject({ type: 'http', scheme: 'bearer' });
    for (const name of ['clientSecretPost', 'privateKeyJwt']) {
      expect(spec.components.securitySchemes[name]).toMatchObject({ 'x-writ-credential-location': 'form-body' });
    }
    // Admin tokens come from the token endpoint's client credentials grant, for the writ:* scopes.
    const admin = spec.components.securitySchemes.adminOAuth as { type: string; flows: { clientCredentials: { tokenUrl: string; scopes: Json } } };
    expect(admin.type).toBe('oauth2');
    expect(Object.keys(admin.flows)).toEqual(['clientCredentials']);
    expect(admin.flows.clientCredentials.tokenUrl).toBe(ROUTES.token);
    expect(Object.keys(admin.flows.clientCredentials.scopes).sort()).toEqual([...ADMIN_SCOPES].sort());
    expect((schema('AdminScope').enum as string[]).sort()).toEqual([...ADMIN_SCOPES].sort());
    expect(spec.components.securitySchemes.auditSession).toMatchObject({ type: 'apiKey', in: 'cookie', name: SESSION_COOKIE });

    const clientMethods = [{ basic: [] }, { clientSecretPost: [] }, { privateKeyJwt: [] }];
    const seen = new Set<string>();
    for (const [p, m] of documentedOperations()) {
      const key = `${m} ${p}`;
      const security = operation(p, m).security;
      expect(security, `${key} declares its security`).toBeDefined();
      if (CLIENT_OPERATIONS.includes(key)) expect(security, key).toEqual(clientMethods);
      else if (LOCAL_OPERATIONS.includes(key)) expect(security, key).toEqual([{ localBearer: [] }]);
      else if (SESSION_OPERATIONS.includes(key)) expect(security, key).toEqual([{ auditSession: [] }]);
      else if (ADMIN_SCOPE_OF[key]) expect(security, key).toEqual([{ adminOAuth: [ADMIN_SCOPE_OF[key]] }, { localBearer: [] }]);
      else expect(security, `${key} is public`).toEqual([]);
      if (p.startsWith('/admin/v1/') && !p.startsWith('/admin/v1/local/')) {
        expect(ADMIN_SCOPE_OF[key], `${key} has a scope in this test`).toBeDefined();
        seen.add(key);
      }
    }
    expect([...seen].sort()).toEqual(Object.keys(ADMIN_SCOPE_OF).sort());
  });

  it('documents the token exchange parameters of RFC 8693 §2.1, client credentials, and the form fields of client authentication', () => {
    const request = schema('TokenExchangeRequest');
    const props = Object.keys(request.properties as Json).sort();
    expect(props).toEqual([
      'actor_token', 'actor_token_type', 'audience', 'grant_type', 'requested_token_type', 'resource', 'scope',
      'subject_token', 'subject_token_type', 'task_id',
    ]);
    expect((request.properties as Record<string, Json>).grant_type).toMatchObject({ const: TX });
    expect(Object.keys(schema('ClientAuthentication').properties as Json).sort())
      .toEqual(['client_assertion', 'client_assertion_type', 'client_id', 'client_secret']);
    expect(validatorFor(request)({ grant_type: TX, subject_token: 'x', subject_token_type: AT, audience: [PAYMENTS], task_id: 'a-b' })).toBe(true);
    expect(validatorFor(request)({ grant_type: TX, subject_token: 'x', subject_token_type: AT })).toBe(false);
    expect(validatorFor(request)({ grant_type: TX, subject_token: 'x', subject_token_type: AT, audience: [PAYMENTS], actor_token: 'y' })).toBe(false);
    expect(validatorFor(request)({ grant_type: TX, subject_token: 'x', subject_token_type: AT, audience: [PAYMENTS], task_id: 'no spaces' })).toBe(false);
    const body = validatorFor(schema('TokenRequest'));
    expect(body({ grant_type: 'client_credentials', scope: 'writ:policy.read writ:revoke' })).toBe(true);
    expect(body({ grant_type: 'client_credentials', scope: 'payment.read' })).toBe(false);
    expect(body({ grant_type: 'password' })).toBe(false);
    expect(body({ grant_type: TX, subject_token: 'x', subject_token_type: AT, resource: [PAYMENTS] })).toBe(true);
  });

  it('lists the reason codes of src/exchange/reasons.ts, each with the error the client sees', () => {
    expect(schema('ReasonCode').enum).toEqual(Object.keys(REASONS));
    const table = new Map<string, string>();
    for (const match of spec.info.description.matchAll(/^\| `([a-z_]+)` \| `([a-z_]+)` \|$/gm)) table.set(match[1]!, match[2]!);
    expect(Object.fromEntries(table)).toEqual(REASONS);
    // explain's refusals carry the same errors.
    const denied = (schema('ExplainResult').oneOf as Json[])[1]!;
    expect([...((denied.properties as Record<string, Json>).error!.enum as string[])].sort()).toEqual([...new Set(Object.values(REASONS))].sort());
  });

  it('documents the chain view security headers Writ sets', () => {
    for (const [name, value] of Object.entries(CHAIN_VIEW_HEADERS)) {
      if (name === 'Cache-Control') continue;
      expect((spec.components.headers[name]?.schema as Json | undefined)?.const, name).toBe(value);
    }
    expect(CHAIN_VIEW_HEADERS['Cache-Control']).toBe((spec.components.headers['Cache-Control-No-Store']!.schema as Json).const);
  });

  it('compiles every schema as JSON Schema 2020-12 (strict)', () => {
    for (const name of Object.keys(spec.components.schemas)) {
      expect(() => validatorFor(schema(name)), name).not.toThrow();
    }
  });
});

describe('openapi.yaml against a running Writ', () => {
  let t: TestWrit;
  const pkjwt = { clientId: 'openapi-pkjwt-agent', key: undefined as unknown as CryptoKey, kid: `pkjwt-${randomBytes(4).toString('hex')}` };
  const admin = { clientId: 'openapi-admin', secret: '' };
  let policyFiles: Array<{ name: string; text: string }>;

  interface SendOptions {
    form?: Record<string, string | string[]>;
    auth?: string;
    headers?: Record<string, string>;
    json?: unknown;
    raw?: string;
    base?: string;
  }

  async function send(method: string, p: string, options: SendOptions = {}): Promise<Answer> {
    const headers: Record<string, string> = { ...(options.auth ? { authorization: options.auth } : {}), ...options.headers };
    let body: string | undefined;
    if (options.form) {
      const form = new URLSearchParams();
      for (const [k, v] of Object.entries(options.form)) for (const item of Array.isArray(v) ? v : [v]) form.append(k, item);
      body = form.toString();
      headers['content-type'] = 'application/x-www-form-urlencoded';
    } else if (options.json !== undefined) {
      body = JSON.stringify(options.json);
      headers['content-type'] = 'application/json';
    } else if (options.raw !== undefined) {
      body = options.raw;
    }
    return read(await fetch(`${options.base ?? t.url}${p}`, { method, headers, redirect: 'manual', ...(body !== undefined ? { body } : {}) }));
  }

  /** A body a documented operation accepts in form, changing nothing (see PATH_VALUES). */
  function probeBody(p: string, method: string): SendOptions {
    if (method === 'get' || method === 'delete') return {};
    return p.startsWith('/admin/') || p.startsWith('/audit/') ? { json: [] } : { form: {} };
  }

  async function clientAssertion(aud: string): Promise<string> {
    return new SignJWT({})
      .setProtectedHeader({ alg: 'ES256', kid: pkjwt.kid })
      .setIssuer(pkjwt.clientId)
      .setSubject(pkjwt.clientId)
      .setAudience(aud)
      .setIssuedAt()
      .setExpirationTime('60s')
      .setJti(randomBytes(12).toString('base64url'))
      .sign(pkjwt.key);
  }

  async function userToken(claims: Record<string, unknown> = {}): Promise<string> {
    return t.idp.token(t.issuer, claims);
  }

  const adminTokens = new Map<string, string>();
  /** An admin API token with exactly these scopes, from the client credentials grant. */
  async function adminToken(scopes: readonly AdminScope[] = ADMIN_SCOPES): Promise<string> {
    const key = [...scopes].sort().join(' ');
    const cached = adminTokens.get(key);
    if (cached) return cached;
    const answer = expectDocumented('/token', 'post', await send('POST', '/token', {
      form: { grant_type: 'client_credentials', ...(scopes.length > 0 ? { scope: scopes.join(' ') } : {}) },
      auth: basicAuth(admin.clientId, admin.secret),
    }));
    expect(answer.status, answer.text).toBe(200);
    const token = (answer.body as Json).access_token as string;
    adminTokens.set(key, token);
    return token;
  }

  beforeAll(async () => {
    t = await startTestWrit({ name: 'openapi' });
    // One more agent, authenticating with private_key_jwt, so every documented method is exercised.
    const { privateKey, publicKey } = await generateKeyPair('ES256');
    pkjwt.key = privateKey;
    const jwk = { ...(await exportJWK(publicKey)), kid: pkjwt.kid, alg: 'ES256', use: 'sig' };
    policyFiles = [
      { name: 'example.yaml', text: examplePolicyFor(t.idp) },
      { name: 'openapi-client.yaml', text: stringify({ clients: [{ client_id: pkjwt.clientId, kind: 'agent', auth: 'private_key_jwt', jwks: { keys: [jwk] } }] }) },
    ];
    await t.apply(policyFiles);
    // An admin client with every scope, bootstrapped outside policy as `writ admin bootstrap` does.
    admin.secret = (await bootstrapAdmin(t.writ.db.knex, { clientId: admin.clientId, scopes: ADMIN_SCOPES, secretKey: t.writ.derived.clientSecret, by: 'test' })).secret;
    await t.writ.policy.reload();
  });
  afterAll(async () => t?.close());

  it('routes every documented path and method of the main listener, answering a documented response', async () => {
    for (const [p, m] of documentedOperations()) {
      if (!onMainListener(p)) continue;
      const answer = await send(m.toUpperCase(), concrete(p), probeBody(p, m));
      expect(answer.status, `${m.toUpperCase()} ${p}`).not.toBe(404);
      expectDocumented(p, m, answer);
    }
  });

  it('answers every other method on a documented path as the path says (405 with its Allow, or 404)', async () => {
    // Admin routes authenticate before they route: probe them with a token that may do anything.
    const bearer = `Bearer ${await adminToken()}`;
    // Writ answers every such 404 as JSON, OPTIONS at the provider's paths included (it used to
    // be the provider's plain text): the document offers no other body for one.
    expect(Object.keys(spec.components.responses.NotFound!.content as Json)).toEqual(['application/json']);
    for (const [p, item] of Object.entries(spec.paths)) {
      if (!onMainListener(p)) continue;
      const auth = p.startsWith('/admin/v1/') ? { auth: bearer } : {};
      // OPTIONS is another method too, except where the path says otherwise (no CORS preflight).
      for (const method of [...PROBED_METHODS, 'OPTIONS'] as const) {
        if (method.toLowerCase() in item) continue;
        const expected = method === 'OPTIONS' ? item['x-writ-options'] ?? item['x-writ-other-methods'] : item['x-writ-other-methods'];
        // OPTIONS is sent as a browser's CORS preflight would send it.
        const preflight = method === 'OPTIONS'
          ? { headers: { origin: 'https://elsewhere.example', 'access-control-request-method': 'POST', 'access-control-request-headers': 'authorization' } }
          : {};
        const answer = await send(method, concrete(p), { ...auth, ...preflight });
        const label = `${method} ${p} → ${answer.status}`;
        expect(answer.status, `${label} ${answer.text}`).toBe(expected);
        if (method === 'OPTIONS') expect(answer.headers.get('access-control-allow-methods'), label).toBeNull();
        if (expected === 405) {
          expect(answer.headers.get('allow'), label).toBe(item['x-writ-allow']);
          conformsTo(spec.components.responses.MethodNotAllowed!, answer, label);
        } else {
          conformsTo(spec.components.responses.NotFound!, answer, label);
        }
      }
      // HEAD is answered as GET where GET is documented (unless the path says otherwise), else as another method.
      const head = await send('HEAD', concrete(p), auth);
      const expected = 'get' in item ? item['x-writ-head'] ?? (await send('GET', concrete(p), auth)).status : item['x-writ-other-methods'];
      expect([head.status, head.text], `HEAD ${p}`).toEqual([expected, '']);
      expect(head.headers.get('x-request-id'), `HEAD ${p}`).toMatch(REQUEST_ID);
      if (expected === 405) expect(head.headers.get('allow'), `HEAD ${p}`).toBe(item['x-writ-allow']);
    }
  });

  it('answers 404 for every undocumented path, whatever the method', async () => {
    for (const p of UNDOCUMENTED_PROBES) {
      expect(Object.keys(spec.paths), p).not.toContain(p);
      for (const method of ['GET', 'POST'] as const) {
        const answer = await send(method, p, method === 'POST' ? { form: {} } : {});
        const label = `${method} ${p} → ${answer.status}`;
        expect(answer.status, label).toBe(404);
        conformsTo(spec.components.responses.NotFound!, answer, label);
      }
    }
  });

  it('answers 404 for any other spelling of a documented path (capitals, trailing slash)', async () => {
    for (const p of NON_CANONICAL_PROBES) {
      expect(Object.keys(spec.paths), p).not.toContain(p);
      for (const method of ['GET', 'POST'] as const) {
        const answer = await send(method, p, method === 'POST' ? { form: {} } : {});
        const label = `${method} ${p} → ${answer.status}`;
        expect(answer.status, label).toBe(404);
        conformsTo(spec.components.responses.NotFound!, answer, label);
      }
    }
  });

  it('discovery names documented paths only, built from the issuer, with the documented grant types and auth methods', async () => {
    const answer = expectDocumented('/.well-known/oauth-authorization-server', 'get', await send('GET', '/.well-known/oauth-authorization-server'));
    const metadata = answer.body as Record<string, unknown>;
    expect(Object.keys(metadata).sort()).toEqual(required('AuthorizationServerMetadata'));
    expect(metadata.issuer).toBe(t.issuer);
    expect(metadata).not.toHaveProperty('scopes_supported');
    expect(metadata.response_types_supported).toEqual([]);
    const grantTypes = ((schema('AuthorizationServerMetadata').properties as Record<string, Json>).grant_types_supported!.items as Json).enum as string[];
    expect([...(metadata.grant_types_supported as string[])].sort()).toEqual([...grantTypes].sort());
    expect(metadata.grant_types_supported).toContain(TX);
    const named = new Set<string>();
    for (const [member, value] of Object.entries(metadata)) {
      if (!member.endsWith('_endpoint') && member !== 'jwks_uri') continue;
      const url = new URL(String(value));
      // docs/DESIGN.md §3: WRIT_ISSUER is the public base URL; endpoints are built from it.
      expect(`${url.origin}`, member).toBe(t.issuer);
      expect(METHOD_OF_METADATA[member], `${member} is an endpoint this test knows`).toBeDefined();
      expect(spec.paths[url.pathname], `${member} → ${url.pathname} is documented`).toBeDefined();
      operation(url.pathname, METHOD_OF_METADATA[member]!);
      named.add(url.pathname);
    }
    // docs/DESIGN.md §4: the metadata names every standard endpoint, and task revocation.
    expect([...named].sort()).toEqual(['/jwks', '/task/revocation', '/token', '/token/introspection', '/token/revocation']);
    // Each endpoint's auth methods are exactly the security schemes its operation documents.
    for (const [prefix, p] of [['token', '/token'], ['introspection', '/token/introspection'], ['revocation', '/token/revocation']] as const) {
      const schemes = (operation(p, 'post').security as Array<Record<string, unknown>>).map((r) => AUTH_METHOD_OF_SCHEME[Object.keys(r)[0]!]);
      expect([...(metadata[`${prefix}_endpoint_auth_methods_supported`] as string[])].sort(), prefix).toEqual([...schemes].sort());
      expect(metadata[`${prefix}_endpoint_auth_signing_alg_values_supported`], prefix).toEqual(metadata.token_endpoint_auth_signing_alg_values_supported);
    }

    // Whatever Host the request names, the URLs are the issuer's.
    const { port } = new URL(t.url);
    const elsewhere = await new Promise<Json>((resolvePromise, reject) => {
      request({ host: '127.0.0.1', port, path: '/.well-known/oauth-authorization-server', headers: { host: 'attacker.example:8443', 'x-forwarded-host': 'attacker.example' } }, (res) => {
        let text = '';
        res.on('data', (chunk: Buffer) => { text += chunk.toString('utf8'); });
        res.on('end', () => resolvePromise(JSON.parse(text) as Json));
      }).on('error', reject).end();
    });
    expect(elsewhere).toEqual(metadata);
  });

  it('a real exchange answers exactly the members TokenResponse requires, and the token is the documented JWT', async () => {
    const subject_token = await userToken();
    const res = await t.exchange('planner-agent', { subject_token, subject_token_type: AT, audience: PAYMENTS });
    expect(res.status).toBe(200);
    expectDocumented('/token', 'post', { status: res.status, headers: res.headers, text: JSON.stringify(res.body), body: res.body });
    expect(Object.keys(res.body).sort()).toEqual(required('TokenResponse'));
    expect(res.headers.get('cache-control')).toBe('no-store');

    const token = res.body.access_token as string;
    const header = decodeProtectedHeader(token);
    expectValid(schema('AccessTokenHeader'), header, 'JWT header');
    expect(Object.keys(header).sort()).toEqual(required('AccessTokenHeader'));
    const claims = decodeJwt(token);
    expectValid(schema('AccessTokenClaims'), claims, 'JWT claims');
    expect(Object.keys(claims).sort()).toEqual(required('AccessTokenClaims'));
    expect(claims).toMatchObject({ iss: t.issuer, aud: PAYMENTS, client_id: 'planner-agent', scope: res.body.scope });

    const jwks = expectDocumented('/jwks', 'get', await send('GET', '/jwks')).body as { keys: Array<{ kid: string }> };
    expect(jwks.keys.map((k) => k.kid)).toContain(header.kid);
  });

  it('a real introspection answers exactly the members IntrospectionActive requires; anything else is exactly {active:false}', async () => {
    const subject_token = await userToken();
    const res = await t.exchange('planner-agent', { subject_token, subject_token_type: AT, audience: PAYMENTS });
    const token = res.body.access_token as string;

    const active = await t.introspect('payments-api', token);
    expectValid(schema('IntrospectionActive'), active, 'introspection');
    expect(Object.keys(active).sort()).toEqual(required('IntrospectionActive'));
    expect(active).toMatchObject({ active: true, jti: decodeJwt(token).jti, token_type: 'Bearer' });

    const answer = expectDocumented('/token/introspection', 'post', await send('POST', '/token/introspection', { form: { token, token_type_hint: 'access_token' }, auth: basicAuth('payments-api') }));
    expect(answer.body).toEqual(active);

    // Not the audience's owner, not a token at all, an admin API token: exactly {"active": false}.
    for (const [client, presented] of [['executor-agent', token], ['payments-api', 'not-a-token'], ['payments-api', await adminToken()]] as const) {
      const inactive = expectDocumented('/token/introspection', 'post', await send('POST', '/token/introspection', { form: { token: presented }, auth: basicAuth(client) }));
      expect(inactive.body).toEqual({ active: false });
      expect(Object.keys(inactive.body as Json)).toEqual(required('IntrospectionInactive'));
      expect(validatorFor(schema('IntrospectionActive'))(inactive.body)).toBe(false);
    }
  });

  it('task_id is the one optional member, in the token and in introspection', async () => {
    const subject_token = await userToken();
    const res = await t.exchange('planner-agent', { subject_token, subject_token_type: AT, audience: PAYMENTS, task_id: 'openapi-task-claims' });
    expect(res.status).toBe(200);
    const token = res.body.access_token as string;
    const claims = decodeJwt(token);
    expectValid(schema('AccessTokenClaims'), claims, 'JWT claims');
    expect(Object.keys(claims).sort()).toEqual([...required('AccessTokenClaims'), 'task_id'].sort());
    const active = await t.introspect('payments-api', token);
    expectValid(schema('IntrospectionActive'), active, 'introspection');
    expect(Object.keys(active).sort()).toEqual([...required('IntrospectionActive'), 'task_id'].sort());
    expect(active.task_id).toBe('openapi-task-claims');
  });

  it('the token endpoint’s refusals are the documented errors', async () => {
    const subject_token = await userToken();
    const base = { grant_type: TX, subject_token, subject_token_type: AT };
    const adminAuth = basicAuth(admin.clientId, admin.secret);
    const tooMany: Record<string, string> = { ...base, audience: PAYMENTS };
    for (let i = 0; i < 201; i += 1) tooMany[`x${i}`] = 'y';
    const cases: Array<[string, Record<string, string | string[]>, string | undefined, number, string]> = [
      ['unknown audience', { ...base, audience: 'https://unknown.example.com' }, basicAuth('planner-agent'), 400, 'invalid_target'],
      ['two targets', { ...base, audience: [PAYMENTS, EXECUTOR_AUD] }, basicAuth('planner-agent'), 400, 'invalid_target'],
      ['undefined scope', { ...base, audience: PAYMENTS, scope: 'payment.nothing' }, basicAuth('planner-agent'), 400, 'invalid_scope'],
      ['a resource server', { ...base, audience: PAYMENTS }, basicAuth('payments-api'), 400, 'unauthorized_client'],
      ['an admin exchanging', { ...base, audience: PAYMENTS }, adminAuth, 400, 'unauthorized_client'],
      ['no subject_token_type', { grant_type: TX, subject_token, audience: PAYMENTS }, basicAuth('planner-agent'), 400, 'invalid_request'],
      ['a repeated parameter', { ...base, audience: PAYMENTS, scope: ['payment.read', 'payment.read'] }, basicAuth('planner-agent'), 400, 'invalid_request'],
      ['too many parameters', tooMany, basicAuth('planner-agent'), 400, 'invalid_request'],
      ['another grant type', { grant_type: 'password' }, basicAuth('planner-agent'), 400, 'unsupported_grant_type'],
      ['client credentials for an agent', { grant_type: 'client_credentials' }, basicAuth('planner-agent'), 400, 'unauthorized_client'],
      ['client credentials with a resource', { grant_type: 'client_credentials', scope: 'writ:policy.read', resource: PAYMENTS }, adminAuth, 400, 'invalid_target'],
      ['no client authentication', { ...base, audience: PAYMENTS }, undefined, 401, 'invalid_client'],
      ['a bare client_id', { ...base, audience: PAYMENTS, client_id: 'planner-agent' }, undefined, 401, 'invalid_client'],
      ['a wrong secret', { ...base, audience: PAYMENTS }, basicAuth('planner-agent', 'x'.repeat(40)), 401, 'invalid_client'],
      ['a non-Basic Authorization scheme', { ...base, audience: PAYMENTS }, 'Bearer abc', 401, 'invalid_client'],
      ['a Basic header that is not base64', { ...base, audience: PAYMENTS }, 'Basic !!!', 401, 'invalid_client'],
      ['a Basic header with an empty secret', { ...base, audience: PAYMENTS }, basicAuth('planner-agent', ''), 401, 'invalid_client'],
      ['a Basic header with a secret not form-encoded', { ...base, audience: PAYMENTS }, `Basic ${Buffer.from('planner-agent:%zz').toString('base64')}`, 401, 'invalid_client'],
      ['two client authentication mechanisms', { ...base, audience: PAYMENTS, client_id: 'planner-agent', client_secret: 'x' }, basicAuth('planner-agent'), 400, 'invalid_request'],
    ];
    for (const [label, form, auth, status, error] of cases) {
      const answer = expectDocumented('/token', 'post', await send('POST', '/token', { form, ...(auth ? { auth } : {}) }));
      expect([answer.status, (answer.body as Json).error], label).toEqual([status, error]);
      // One challenge for every Basic refusal: the provider's, realm the issuer.
      const description = label === 'no client authentication' ? 'client authentication is required' : 'client authentication failed';
      expect(answer.headers.get('www-authenticate'), label)
        .toBe(status === 401 ? `Basic realm="${t.issuer}", error="invalid_client", error_description="${description}"` : null);
    }
    // A failed client_secret_post is answered without a challenge (RFC 6749 §5.2).
    const post = expectDocumented('/token', 'post', await send('POST', '/token', { form: { ...base, audience: PAYMENTS, client_id: 'planner-agent', client_secret: 'x'.repeat(40) } }));
    expect([post.status, (post.body as Json).error, post.headers.get('www-authenticate')]).toEqual([401, 'invalid_client', null]);
    // The scopes the admin does not hold are named back (RFC 6749 §5.2 allows more members).
    const reader = await bootstrapAdmin(t.writ.db.knex, { clientId: 'openapi-reader', scopes: ['writ:policy.read'], secretKey: t.writ.derived.clientSecret, by: 'test' });
    await t.writ.policy.reload();
    const beyond = expectDocumented('/token', 'post', await send('POST', '/token', { form: { grant_type: 'client_credentials', scope: 'writ:policy.read writ:revoke' }, auth: basicAuth('openapi-reader', reader.secret) }));
    expect(beyond.status).toBe(400);
    expect(beyond.body).toMatchObject({ error: 'invalid_scope', scope: 'writ:revoke' });
  });

  it('client credentials: an admin obtains an opaque admin API token for scopes it holds', async () => {
    const all = expectDocumented('/token', 'post', await send('POST', '/token', {
      form: { grant_type: 'client_credentials', scope: ADMIN_SCOPES.join(' ') }, auth: basicAuth(admin.clientId, admin.secret),
    }));
    expect(all.status).toBe(200);
    expect(Object.keys(all.body as Json).sort()).toEqual(['access_token', 'expires_in', 'scope', 'token_type']);
    expectValid(schema('ClientCredentialsTokenResponse'), all.body, 'client credentials');
    expect(validatorFor(schema('TokenResponse'))(all.body)).toBe(false);
    expect((all.body as Json).scope).toBe(ADMIN_SCOPES.join(' '));
    expect(all.headers.get('cache-control')).toBe('no-store');
    expect(expectDocumented('/admin/v1/policy', 'get', await send('GET', '/admin/v1/policy', { auth: `Bearer ${(all.body as Json).access_token as string}` })).status).toBe(200);

    // Client secret in the body works as well; without `scope` the token carries none.
    const none = expectDocumented('/token', 'post', await send('POST', '/token', {
      form: { grant_type: 'client_credentials', client_id: admin.clientId, client_secret: admin.secret },
    }));
    expect(none.status).toBe(200);
    expect(Object.keys(none.body as Json).sort()).toEqual(required('ClientCredentialsTokenResponse'));
    const useless = expectDocumented('/admin/v1/policy', 'get', await send('GET', '/admin/v1/policy', { auth: `Bearer ${(none.body as Json).access_token as string}` }));
    expect([useless.status, (useless.body as Json).error]).toEqual([403, 'insufficient_scope']);

    // RFC 7009 revocation by its own client ends it.
    const revoked = expectDocumented('/token/revocation', 'post', await send('POST', '/token/revocation', { form: { token: (all.body as Json).access_token as string }, auth: basicAuth(admin.clientId, admin.secret) }));
    expect(revoked.status).toBe(200);
    expect((await send('GET', '/admin/v1/policy', { auth: `Bearer ${(all.body as Json).access_token as string}` })).status).toBe(401);
  });

  it('each documented client authentication method is accepted at the token and introspection endpoints', async () => {
    const subject_token = await userToken();
    const exchangeForm = { grant_type: TX, subject_token, subject_token_type: AT, audience: PAYMENTS };
    const basic = expectDocumented('/token', 'post', await send('POST', '/token', { form: exchangeForm, auth: basicAuth('planner-agent') }));
    expect(basic.status).toBe(200);
    const post = expectDocumented('/token', 'post', await send('POST', '/token', {
      form: { ...exchangeForm, subject_token: await userToken(), client_id: 'planner-agent', client_secret: CLIENT_SECRETS['planner-agent']! },
    }));
    expect(post.status).toBe(200);
    // The private_key_jwt agent has no rule: authenticated, then refused by policy, not by authentication.
    const signed = expectDocumented('/token', 'post', await send('POST', '/token', {
      form: { ...exchangeForm, client_assertion_type: 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer', client_assertion: await clientAssertion(t.issuer) },
    }));
    expect([signed.status, (signed.body as Json).error]).toEqual([400, 'invalid_target']);

    const token = (basic.body as Json).access_token as string;
    for (const [label, options] of [
      ['client_secret_basic', { form: { token }, auth: basicAuth('payments-api') }],
      ['client_secret_post', { form: { token, client_id: 'payments-api', client_secret: SECRETS.PAYMENTS_API_SECRET } }],
      ['private_key_jwt', { form: { token, client_assertion_type: 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer', client_assertion: await clientAssertion(t.issuer) } }],
    ] as const) {
      const answer = expectDocumented('/token/introspection', 'post', await send('POST', '/token/introspection', options));
      expect(answer.status, label).toBe(200);
    }
    // Not the query string: OpenAPI's `in: query` for the form-body schemes is not to be followed.
    const inQuery = expectDocumented('/token/introspection', 'post', await send('POST', `/token/introspection?client_id=payments-api&client_secret=${SECRETS.PAYMENTS_API_SECRET}`, { form: { token } }));
    expect(inQuery.status).toBe(401);
    const both = expectDocumented('/token/introspection', 'post', await send('POST', '/token/introspection', {
      form: { token, client_id: 'payments-api', client_secret: SECRETS.PAYMENTS_API_SECRET }, auth: basicAuth('payments-api'),
    }));
    expect([both.status, (both.body as Json).error]).toEqual([400, 'invalid_request']);
  });

  it('revocation: 200 with an empty body, also for unknown tokens; unauthorized_client when the caller may not', async () => {
    const subject_token = await userToken();
    const res = await t.exchange('planner-agent', { subject_token, subject_token_type: AT, audience: PAYMENTS });
    const token = res.body.access_token as string;

    const unknown = expectDocumented('/token/revocation', 'post', await send('POST', '/token/revocation', { form: { token: 'not-a-token' }, auth: basicAuth('planner-agent') }));
    expect(unknown.status).toBe(200);
    const refused = expectDocumented('/token/revocation', 'post', await send('POST', '/token/revocation', { form: { token }, auth: basicAuth('payments-api') }));
    expect([refused.status, (refused.body as Json).error]).toEqual([400, 'unauthorized_client']);
    const missing = expectDocumented('/token/revocation', 'post', await send('POST', '/token/revocation', { form: {}, auth: basicAuth('planner-agent') }));
    expect([missing.status, (missing.body as Json).error]).toEqual([400, 'invalid_request']);
    const revoked = expectDocumented('/token/revocation', 'post', await send('POST', '/token/revocation', { form: { token }, auth: basicAuth('planner-agent') }));
    expect(revoked.status).toBe(200);
    await expect.poll(() => t.introspect('payments-api', token), { timeout: 1000, interval: 20 }).toEqual({ active: false });
  });

  it('task revocation: the documented task_id pattern, 200 with an empty body, unauthorized_client for others’ tasks', async () => {
    const taskPattern = new RegExp((schema('TaskId').pattern as string));
    for (const [value, ok] of [['task-1', true], ['a.b:c_d-e', true], ['x'.repeat(128), true], ['x'.repeat(129), false], ['a b', false], ['a/b', false]] as const) {
      expect(taskPattern.test(value), value).toBe(ok);
      if (!ok) {
        const answer = expectDocumented('/task/revocation', 'post', await send('POST', '/task/revocation', { form: { task_id: value }, auth: basicAuth('planner-agent') }));
        expect([answer.status, (answer.body as Json).error], value).toEqual([400, 'invalid_request']);
      }
    }
    const taskId = `openapi-task-${randomBytes(4).toString('hex')}`;
    const res = await t.exchange('planner-agent', { subject_token: await userToken(), subject_token_type: AT, audience: PAYMENTS, task_id: taskId });
    expect(res.status).toBe(200);
    const other = expectDocumented('/task/revocation', 'post', await send('POST', '/task/revocation', { form: { task_id: taskId }, auth: basicAuth('executor-agent') }));
    expect([other.status, (other.body as Json).error]).toEqual([400, 'unauthorized_client']);
    const tool = expectDocumented('/task/revocation', 'post', await send('POST', '/task/revocation', { form: { task_id: taskId }, auth: basicAuth('payments-api') }));
    expect([tool.status, (tool.body as Json).error]).toEqual([400, 'unauthorized_client']);
    const ended = expectDocumented('/task/revocation', 'post', await send('POST', '/task/revocation', { form: { task_id: taskId }, auth: basicAuth('planner-agent') }));
    expect(ended.status).toBe(200);
    await expect.poll(() => t.introspect('payments-api', res.body.access_token as string), { timeout: 1000, interval: 20 }).toEqual({ active: false });
    // Ended for this subject's chains: a later exchange naming the task is refused for her, not for others.
    const again = await t.exchange('planner-agent', { subject_token: await userToken(), subject_token_type: AT, audience: PAYMENTS, task_id: taskId });
    expect([again.status, again.body.error]).toEqual([400, 'invalid_request']);
    expect((await t.auditRows({ request_id: again.headers.get('x-request-id') })).map((r) => r.reason)).toEqual(['task_revoked']);
    const someoneElse = await t.exchange('planner-agent', { subject_token: await userToken({ sub: 'bob' }), subject_token_type: AT, audience: PAYMENTS, task_id: taskId });
    expect(someoneElse.status).toBe(200);
    // An admin with writ:revoke ends any task, even one it never saw, everywhere.
    const anyTask = expectDocumented('/task/revocation', 'post', await send('POST', '/task/revocation', { form: { task_id: `${taskId}-other` }, auth: basicAuth(admin.clientId, admin.secret) }));
    expect(anyTask.status).toBe(200);
    const listed = expectDocumented('/admin/v1/revocations', 'get', await send('GET', '/admin/v1/revocations', { auth: `Bearer ${await adminToken(['writ:revoke'])}` }));
    const tasks = (listed.body as { revocations: Json[] }).revocations.filter((m) => m.kind === 'task').map((m) => m.value);
    expect(tasks).toContain(`${taskId}-other`);
    expect(tasks).not.toContain(taskId);
  });

  it('validates, diffs, exports and rolls back policy as the policy operations document', async () => {
    const read = `Bearer ${await adminToken(['writ:policy.read'])}`;
    const write = `Bearer ${await adminToken(['writ:policy.write'])}`;
    const valid = expectDocumented('/admin/v1/policy/validate', 'post', await send('POST', '/admin/v1/policy/validate', { auth: read, json: { files: policyFiles, env: SECRETS } }));
    expect(valid.body).toMatchObject({ valid: true, errors: [] });
    const broken = [{ name: 'broken.yaml', text: 'rules:\n  - id: r\n    actor: nobody\n' }];
    const invalid = expectDocumented('/admin/v1/policy/validate', 'post', await send('POST', '/admin/v1/policy/validate', { auth: read, json: { files: broken } }));
    expect((invalid.body as { valid: boolean; errors: Json[] }).valid).toBe(false);
    expect((invalid.body as { errors: Json[] }).errors[0]).toMatchObject({ severity: 'error', file: 'broken.yaml' });

    const current = expectDocumented('/admin/v1/policy', 'get', await send('GET', '/admin/v1/policy', { auth: read })).body as { version: number; digest: string };
    const same = expectDocumented('/admin/v1/policy/diff', 'post', await send('POST', '/admin/v1/policy/diff', { auth: write, json: { files: policyFiles, env: SECRETS } }));
    expect(same.body).toMatchObject({ base_version: current.version, base_digest: current.digest, changes: [], clients_without_secret: [] });
    const fewer = policyFiles.map((f) => (f.name === 'openapi-client.yaml' ? { ...f, text: 'clients: []\n' } : f));
    const removal = expectDocumented('/admin/v1/policy/diff', 'post', await send('POST', '/admin/v1/policy/diff', { auth: write, json: { files: fewer, env: SECRETS } }));
    expect((removal.body as { changes: Json[] }).changes).toEqual([expect.objectContaining({ kind: 'removed', section: 'client', id: pkjwt.clientId })]);
    expect(expectDocumented('/admin/v1/policy/diff', 'post', await send('POST', '/admin/v1/policy/diff', { auth: write, json: { files: broken } })).status).toBe(422);
    // Nothing was applied by any of it.
    expect((await send('GET', '/admin/v1/policy', { auth: read })).body).toMatchObject({ version: current.version });

    const exported = expectDocumented('/admin/v1/policy/export', 'get', await send('GET', '/admin/v1/policy/export', { auth: read }));
    expect(exported.headers.get('x-writ-policy-version')).toBe(String(current.version));
    expect(exported.text).toContain(`Writ policy version ${current.version} (sha256 ${current.digest})`);
    expect(exported.text).not.toMatch(/secret:/);
    expect(parse(exported.text)).toMatchObject({ clients: expect.arrayContaining([expect.objectContaining({ client_id: pkjwt.clientId })]) });
    expect(expectDocumented('/admin/v1/policy/export', 'get', await send('GET', '/admin/v1/policy/export?version=1', { auth: read })).headers.get('x-writ-policy-version')).toBe('1');
    expect(expectDocumented('/admin/v1/policy/export', 'get', await send('GET', '/admin/v1/policy/export?version=99999', { auth: read })).status).toBe(404);
    for (const bad of ['x', '0', '2147483648', '9999999999']) {
      expect(expectDocumented('/admin/v1/policy/export', 'get', await send('GET', `/admin/v1/policy/export?version=${bad}`, { auth: read })).status, bad).toBe(400);
    }
    for (const secret of Object.values(SECRETS)) expect(exported.text).not.toContain(secret);

    // A rollback to the version in force changes nothing: no version, no policy.applied event, and the answer says so.
    const appliedBefore = (await t.auditRows({ type: 'policy.applied' })).length;
    const inForce = expectDocumented('/admin/v1/policy/rollback', 'post', await send('POST', '/admin/v1/policy/rollback', { auth: write, json: { version: current.version, message: 'openapi' } }));
    expect(inForce.body).toMatchObject({ version: current.version, digest: current.digest, previous_version: current.version, changes: [], unchanged: true });
    expect(await t.auditRows({ type: 'policy.applied' })).toHaveLength(appliedBefore);
    expect(t.writ.policy.policy.version).toBe(current.version);
    // To version 1 (the example without this suite's private_key_jwt client), then back to the
    // version in force: two new versions, leaving the rest of this suite's policy as it is.
    const rolled = expectDocumented('/admin/v1/policy/rollback', 'post', await send('POST', '/admin/v1/policy/rollback', { auth: write, json: { version: 1, message: 'openapi', applied_by: 'cli:mallory' } }));
    expect(rolled.body).toMatchObject({ version: current.version + 1, previous_version: current.version, changes: [expect.objectContaining({ kind: 'removed', section: 'client', id: pkjwt.clientId })], unchanged: false });
    const applied = (await t.auditRows({ type: 'policy.applied' })).at(-1)!;
    expect(applied).toMatchObject({ policy_version: current.version + 1, details: expect.objectContaining({ rollback_of: 1 }) });
    expect(t.writ.policy.policy.version).toBe(current.version + 1);
    // Only the CLI's local credential may name who applied it; an admin client is itself.
    expect((await t.writ.db.knex('policy_versions').where({ version: current.version + 1 }).first()).applied_by).toBe(admin.clientId);
    const restored = expectDocumented('/admin/v1/policy/rollback', 'post', await send('POST', '/admin/v1/policy/rollback', { auth: write, json: { version: current.version, message: 'openapi' } }));
    expect(restored.body).toMatchObject({ version: current.version + 2, digest: current.digest, previous_version: current.version + 1, unchanged: false });
    expect(t.writ.policy.policy.version).toBe(current.version + 2);
    expect(expectDocumented('/admin/v1/policy/rollback', 'post', await send('POST', '/admin/v1/policy/rollback', { auth: write, json: { version: 99999 } })).status).toBe(404);
    // Both attempts are recorded, the refused one too.
    expect((await t.auditRows({ type: 'admin.action' })).slice(-2).map((r) => (r.details as Json))).toEqual([
      expect.objectContaining({ method: 'POST', path: '/admin/v1/policy/rollback', status: 200 }),
      expect.objectContaining({ method: 'POST', path: '/admin/v1/policy/rollback', status: 404 }),
    ]);
    for (const json of [{}, { version: 0 }, { version: '1' }, { version: 1e12 }, { version: 1, message: 7 }, []]) {
      const bad = expectDocumented('/admin/v1/policy/rollback', 'post', await send('POST', '/admin/v1/policy/rollback', { auth: write, json }));
      expect([bad.status, (bad.body as Json).error], JSON.stringify(json)).toEqual([400, 'invalid_request']);
    }
  });

  it('lists, schedules and withdraws signing keys as the key operations document, and /jwks follows', async () => {
    const auth = `Bearer ${await adminToken(['writ:keys'])}`;
    const listed = expectDocumented('/admin/v1/keys', 'get', await send('GET', '/admin/v1/keys', { auth }));
    const active = (listed.body as { keys: Json[] }).keys.filter((k) => k.state === 'active');
    expect(active.map((k) => k.alg).sort()).toEqual(['ES256', 'PS256', 'RS256']);

    const scheduled = expectDocumented('/admin/v1/keys/rotation', 'post', await send('POST', '/admin/v1/keys/rotation', { auth, json: { algs: ['PS256'], activate_in: 3600 } }));
    expect(scheduled.status).toBe(201);
    const [pending] = (scheduled.body as { keys: Json[] }).keys;
    expect(pending).toMatchObject({ alg: 'PS256' });
    const jwks = expectDocumented('/jwks', 'get', await send('GET', '/jwks'));
    expect((jwks.body as { keys: Json[] }).keys.map((k) => k.kid)).toContain(pending!.kid);
    expect(jwks.headers.get('cache-control')).toBe('public, max-age=300');

    const twice = expectDocumented('/admin/v1/keys/rotation', 'post', await send('POST', '/admin/v1/keys/rotation', { auth, json: { algs: ['PS256'] } }));
    expect([twice.status, (twice.body as Json).error]).toEqual([409, 'already_pending']);
    for (const json of [{ algs: ['HS256'] }, { algs: [] }, { activate_in: -1 }, { activate_in: 1.5 }, { activate_in: '60' }, [], { alg: 'ES256' }]) {
      const bad = expectDocumented('/admin/v1/keys/rotation', 'post', await send('POST', '/admin/v1/keys/rotation', { auth, json }));
      expect([bad.status, (bad.body as Json).error], JSON.stringify(json)).toEqual([400, 'invalid_request']);
    }

    const removal = `/admin/v1/keys/${String(pending!.kid)}/removal`;
    const removed = expectDocumented('/admin/v1/keys/{kid}/removal', 'post', await send('POST', removal, { auth }));
    expect(removed.body).toEqual({ removed: pending!.kid, replacement: null });
    expect(expectDocumented('/admin/v1/keys/{kid}/removal', 'post', await send('POST', removal, { auth })).status).toBe(409);
    expect(expectDocumented('/admin/v1/keys/{kid}/removal', 'post', await send('POST', '/admin/v1/keys/nope/removal', { auth })).status).toBe(404);
    const after = expectDocumented('/jwks', 'get', await send('GET', '/jwks'));
    expect((after.body as { keys: Json[] }).keys.map((k) => k.kid)).not.toContain(pending!.kid);
  });

  it('fails closed as documented: 503 with Retry-After at introspection, and /readyz 503, while revocations may be stale', async () => {
    const res = await t.exchange('planner-agent', { subject_token: await userToken(), subject_token_type: AT, audience: PAYMENTS });
    const token = res.body.access_token as string;
    const stale = vi.spyOn(t.writ.revocations, 'isFresh').mockReturnValue(false);
    try {
      const answer = expectDocumented('/token/introspection', 'post', await send('POST', '/token/introspection', { form: { token }, auth: basicAuth('payments-api') }));
      expect([answer.status, (answer.body as Json).error]).toEqual([503, 'temporarily_unavailable']);
      expect(answer.headers.get('retry-after')).toBe('1');
      const ready = expectDocumented('/readyz', 'get', await send('GET', '/readyz'));
      expect(ready.body).toEqual({ status: 'unavailable' });
      expect(ready.status).toBe(503);
    } finally {
      stale.mockRestore();
    }
    expect(expectDocumented('/readyz', 'get', await send('GET', '/readyz')).body).toEqual({ status: 'ready' });
    expect(expectDocumented('/healthz', 'get', await send('GET', '/healthz')).body).toEqual({ status: 'ok' });
  });

  it('the JWK Set holds public keys only', async () => {
    const jwks = expectDocumented('/jwks', 'get', await send('GET', '/jwks')).body as { keys: Json[] };
    expect(jwks.keys.length).toBeGreaterThan(0);
    for (const key of jwks.keys) for (const member of ['d', 'p', 'q', 'dp', 'dq', 'qi', 'k']) expect(key, member).not.toHaveProperty(member);
  });

  it('X-Request-Id: a well-formed one is echoed, anything else replaced, on every kind of response', async () => {
    const probes: Array<[string, string, SendOptions]> = [
      ['GET', '/healthz', {}], ['GET', '/jwks', {}], ['POST', '/token', { form: {} }], ['GET', '/token', {}], ['GET', '/nothing-here', {}],
      ['GET', '/admin/v1/policy', {}], ['GET', '/admin/v1/audit/events', {}], ['POST', '/admin/v1/local/policy/apply', { json: {} }],
      ['GET', '/audit/view', {}], ['GET', '/audit/view/app.js', {}], ['GET', '/audit/view/api/events', {}], ['POST', '/audit/view/local/login', { json: {} }],
    ];
    for (const [method, p, options] of probes) {
      const echoed = await send(method, p, { ...options, headers: { 'x-request-id': 'trace-123:abc.def_ghi' } });
      expect(echoed.headers.get('x-request-id'), `${method} ${p}`).toBe('trace-123:abc.def_ghi');
      const replaced = await send(method, p, { ...options, headers: { 'x-request-id': 'not valid!' } });
      expect(replaced.headers.get('x-request-id'), `${method} ${p}`).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
    }
  });

  describe('the admin API', () => {
    const adminOperations = () => documentedOperations().filter(([p, m]) => ADMIN_SCOPE_OF[`${m} ${p}`] !== undefined);

    it('refuses no, unknown and non-admin credentials with 401 invalid_token', async () => {
      const exchanged = await t.exchange('planner-agent', { subject_token: await userToken(), subject_token_type: AT, audience: PAYMENTS });
      for (const auth of [undefined, 'Bearer not-a-token', `Bearer ${exchanged.body.access_token as string}`, basicAuth(admin.clientId, admin.secret)]) {
        for (const [p, m] of adminOperations()) {
          const answer = expectDocumented(p, m, await send(m.toUpperCase(), concrete(p), { ...probeBody(p, m), ...(auth ? { auth } : {}) }));
          expect([answer.status, answer.body], `${m} ${p} with ${String(auth).slice(0, 12)}`).toEqual([401, { error: 'invalid_token' }]);
          expect(answer.headers.get('www-authenticate')).toBe('Bearer realm="writ", error="invalid_token"');
        }
      }
    });

    it('each operation needs exactly the scope the document names', async () => {
      for (const [p, m] of adminOperations()) {
        const needed = ADMIN_SCOPE_OF[`${m} ${p}`]!;
        const label = `${m.toUpperCase()} ${p} (${needed})`;
        const without = await adminToken(ADMIN_SCOPES.filter((s) => s !== needed));
        const refused = expectDocumented(p, m, await send(m.toUpperCase(), concrete(p), { ...probeBody(p, m), auth: `Bearer ${without}` }));
        expect([refused.status, refused.body], label).toEqual([403, { error: 'insufficient_scope' }]);
        // The audit routes name no scope in their challenge; the others name the one needed.
        expect(refused.headers.get('www-authenticate'), label).toBe(p.startsWith('/admin/v1/audit/')
          ? 'Bearer realm="writ", error="insufficient_scope"'
          : `Bearer realm="writ", error="insufficient_scope", scope="${needed}"`);
        const only = await adminToken([needed]);
        const allowed = expectDocumented(p, m, await send(m.toUpperCase(), concrete(p), { ...probeBody(p, m), auth: `Bearer ${only}` }));
        expect([401, 403], `${label}: ${allowed.text}`).not.toContain(allowed.status);
      }
    });

    it('reads the policy in force, its versions and its objects', async () => {
      const auth = `Bearer ${await adminToken(['writ:policy.read'])}`;
      const current = expectDocumented('/admin/v1/policy', 'get', await send('GET', '/admin/v1/policy', { auth }));
      expect(current.status).toBe(200);
      const body = current.body as { version: number; document: { clients: Array<{ client_id: string }> } };
      expect(Object.keys(body).sort()).toEqual(required('PolicyVersion'));
      expect(body.version).toBe(t.writ.policy.policy.version);
      expect(body.document.clients.map((c) => c.client_id)).toContain('planner-agent');
      for (const secret of Object.values(SECRETS)) expect(current.text).not.toContain(secret);

      const list = expectDocumented('/admin/v1/policy/versions', 'get', await send('GET', '/admin/v1/policy/versions?limit=1', { auth }));
      const versions = (list.body as { versions: Json[] }).versions;
      expect(versions).toHaveLength(1);
      expect(versions[0]).toEqual(Object.fromEntries(Object.entries(body).filter(([k]) => k !== 'document')));
      expect(((expectDocumented('/admin/v1/policy/versions', 'get', await send('GET', '/admin/v1/policy/versions', { auth }))).body as { versions: Json[] }).versions.length).toBeGreaterThanOrEqual(1);

      const one = expectDocumented('/admin/v1/policy/versions/{version}', 'get', await send('GET', `/admin/v1/policy/versions/${body.version}`, { auth }));
      expect(one.body).toEqual(body);
      for (const missing of ['999999', 'abc']) {
        const answer = expectDocumented('/admin/v1/policy/versions/{version}', 'get', await send('GET', `/admin/v1/policy/versions/${missing}`, { auth }));
        expect([answer.status, (answer.body as Json).error], missing).toEqual([404, 'not_found']);
      }

      const objects: Record<string, [string, string]> = {
        issuers: ['issuer', IDP], clients: ['client_id', 'planner-agent'], audiences: ['audience', PAYMENTS], rules: ['id', 'planner-reads-payments'],
      };
      for (const [collection, [key, id]] of Object.entries(objects)) {
        const all = expectDocumented('/admin/v1/policy/{collection}', 'get', await send('GET', `/admin/v1/policy/${collection}`, { auth }));
        expect(Object.keys(all.body as Json).sort(), collection).toEqual([collection, 'version'].sort());
        expect(((all.body as Json)[collection] as Json[]).map((o) => o[key]), collection).toContain(id);
        const item = expectDocumented('/admin/v1/policy/{collection}/{id}', 'get', await send('GET', concrete('/admin/v1/policy/{collection}/{id}', { collection, id }), { auth }));
        expect(item.status, collection).toBe(200);
        expect((item.body as { item: Json }).item[key], collection).toBe(id);
        expect((item.body as Json).version).toBe(body.version);
      }
      const unknownCollection = expectDocumented('/admin/v1/policy/{collection}', 'get', await send('GET', '/admin/v1/policy/nonsense', { auth }));
      expect([unknownCollection.status, unknownCollection.body]).toEqual([404, { error: 'not_found' }]);
    });

    it('changes policy objects and applies policy files as new versions, refusing invalid ones', async () => {
      const auth = `Bearer ${await adminToken(['writ:policy.read', 'writ:policy.write'])}`;
      const before = t.writ.policy.policy.version;
      const item = '/admin/v1/policy/{collection}/{id}';
      const extra = concrete(item, { collection: 'rules', id: 'openapi-extra-rule' });
      const rule = { actor: 'planner-agent', subject: { issuer: IDP, claims: { groups: 'treasury' } }, audience: PAYMENTS, scopes: ['payment.transfer'], ttl: 60 };
      expectValid(schema('PolicyObjectInput'), rule, 'a rule as PUT takes it');

      const added = expectDocumented(item, 'put', await send('PUT', extra, { auth, json: rule }));
      expect(added.status, added.text).toBe(200);
      expect((added.body as Json).version).toBe(before + 1);
      expect(t.writ.policy.policy.version).toBe(before + 1);
      const stored = expectDocumented(item, 'get', await send('GET', extra, { auth }));
      expect((stored.body as { item: Json }).item).toEqual({ id: 'openapi-extra-rule', ...rule, max_depth: 1, require_task: false });

      const invalid = expectDocumented(item, 'put', await send('PUT', extra, { auth, json: { ...rule, scopes: ['payment.*'] } }));
      expect([invalid.status, (invalid.body as Json).error]).toEqual([422, 'invalid_policy']);
      const notObject = expectDocumented(item, 'put', await send('PUT', extra, { auth, json: ['x'] }));
      expect([notObject.status, (notObject.body as Json).error]).toEqual([400, 'invalid_request']);
      const notJson = expectDocumented(item, 'put', await send('PUT', extra, { auth, raw: JSON.stringify(rule), headers: { 'content-type': 'text/plain' } }));
      expect(notJson.status).toBe(400);
      const unknownCollection = expectDocumented(item, 'put', await send('PUT', '/admin/v1/policy/nonsense/x', { auth, json: rule }));
      expect(unknownCollection.status).toBe(404);
      expect(t.writ.policy.policy.version).toBe(before + 1);

      const removed = expectDocumented(item, 'delete', await send('DELETE', extra, { auth }));
      expect([removed.status, (removed.body as Json).version]).toEqual([200, before + 2]);
      const gone = expectDocumented(item, 'delete', await send('DELETE', extra, { auth }));
      expect(gone.status).toBe(404);
      // Removing a client that rules still name does not validate.
      const inUse = expectDocumented(item, 'delete', await send('DELETE', concrete(item, { collection: 'clients', id: 'planner-agent' }), { auth }));
      expect([inUse.status, (inUse.body as Json).error]).toEqual([422, 'invalid_policy']);

      const applied = expectDocumented('/admin/v1/policy', 'put', await send('PUT', '/admin/v1/policy', { auth, json: { files: policyFiles, env: { ...SECRETS }, message: 'openapi contract' } }));
      expect(applied.status, applied.text).toBe(200);
      expect(Object.keys(applied.body as Json).sort()).toEqual(required('PolicyApplied'));
      const broken = expectDocumented('/admin/v1/policy', 'put', await send('PUT', '/admin/v1/policy', { auth, json: { files: [{ name: 'broken.yaml', text: 'rules:\n  - id: x\n    nonsense: true\n' }] } }));
      expect([broken.status, (broken.body as Json).error]).toEqual([422, 'invalid_policy']);
      expect(Object.keys(broken.body as Json).sort()).toEqual(required('PolicyInvalidError'));
      const shapeless = expectDocumented('/admin/v1/policy', 'put', await send('PUT', '/admin/v1/policy', { auth, json: { files: 'nope' } }));
      expect(shapeless.status).toBe(400);
      for (const json of [null, [], { files: policyFiles, env: { X: 1 } }]) {
        const bad = expectDocumented('/admin/v1/policy', 'put', await send('PUT', '/admin/v1/policy', { auth, json }));
        expect([bad.status, (bad.body as Json).error], JSON.stringify(json)).toEqual([400, 'invalid_request']);
      }
      expect(t.writ.policy.policy.version).toBe((applied.body as Json).version);
    });

    it('disables and enables a client', async () => {
      const auth = `Bearer ${await adminToken(['writ:policy.read', 'writ:policy.write'])}`;
      const client = concrete('/admin/v1/policy/{collection}/{id}', { collection: 'clients', id: pkjwt.clientId });
      for (const [action, enabled] of [['disable', false], ['enable', true]] as const) {
        const p = `/admin/v1/clients/{id}/${action}`;
        const answer = expectDocumented(p, 'post', await send('POST', concrete(p, { id: pkjwt.clientId }), { auth }));
        expect(answer.status, action).toBe(200);
        expect(((expectDocumented('/admin/v1/policy/{collection}/{id}', 'get', await send('GET', client, { auth }))).body as { item: Json }).item.enabled).toBe(enabled);
        const unknown = expectDocumented(p, 'post', await send('POST', concrete(p, { id: 'openapi-nobody' }), { auth }));
        expect(unknown.status, action).toBe(404);
        // Bootstrapped admins live outside policy.
        expect((await send('POST', concrete(p, { id: admin.clientId }), { auth })).status, action).toBe(404);
      }
    });

    it('explains a hypothetical exchange, granted or denied, step by step', async () => {
      const auth = `Bearer ${await adminToken(['writ:policy.read'])}`;
      const explain = async (json: unknown) => expectDocumented('/admin/v1/explain', 'post', await send('POST', '/admin/v1/explain', { auth, json }));
      const granted = await explain({ client_id: 'planner-agent', audience: PAYMENTS, subject: { issuer: IDP, claims: { sub: 'alice', groups: ['finance'] } } });
      expect(granted.status).toBe(200);
      expect(granted.body).toMatchObject({ decision: 'grant', rule: 'planner-reads-payments', grant: { audience: PAYMENTS, scope: 'payment.read', task_id: null } });
      const denied = await explain({ client_id: 'planner-agent', audience: PAYMENTS, subject: { issuer: IDP, claims: { sub: 'alice', groups: ['hr'] } } });
      expect(denied.body).toMatchObject({ decision: 'deny', error: 'invalid_request', reason: 'subject_mismatch' });
      const unknownClient = await explain({ client_id: 'nobody', audience: PAYMENTS, subject: { issuer: IDP, claims: { sub: 'alice' } } });
      expect(unknownClient.body).toMatchObject({ decision: 'deny', error: 'unauthorized_client', rule: null });
      const hop = await t.exchange('planner-agent', { subject_token: await userToken(), subject_token_type: AT, audience: EXECUTOR_AUD, task_id: 'openapi-explain' });
      const next = await explain({ client_id: 'executor-agent', audience: PAYMENTS, subject: { parent_jti: decodeJwt(hop.body.access_token as string).jti } });
      expect(next.body).toMatchObject({ decision: 'grant', grant: { task_id: 'openapi-explain', act: { sub: 'executor-agent', act: { sub: 'planner-agent' } } } });
      for (const bad of [{ client_id: 'x' }, [], { client_id: 'planner-agent', audience: PAYMENTS, subject: { parent_jti: 'no-such-jti' } }]) {
        expect((await explain(bad)).status, JSON.stringify(bad)).toBe(400);
      }
    });

    it('sets and lists kill switches', async () => {
      const auth = `Bearer ${await adminToken(['writ:revoke'])}`;
      const value = `${IDP}|openapi-nobody-${randomBytes(3).toString('hex')}`;
      const set = expectDocumented('/admin/v1/revocations', 'post', await send('POST', '/admin/v1/revocations', { auth, json: { kind: 'subject', value, before: '2026-01-01T00:00:00Z' } }));
      expect(set.status).toBe(201);
      expect(set.body).toEqual({ kind: 'subject', value, not_before: '2026-01-01T00:00:00.000Z', tokens_revoked_by_jti: 0 });
      const rule = expectDocumented('/admin/v1/revocations', 'post', await send('POST', '/admin/v1/revocations', { auth, json: { kind: 'rule', value: 'openapi-no-such-rule' } }));
      expect([rule.status, (rule.body as Json).tokens_revoked_by_jti]).toEqual([201, 0]);
      const listed = expectDocumented('/admin/v1/revocations', 'get', await send('GET', '/admin/v1/revocations', { auth }));
      const marks = (listed.body as { revocations: Json[] }).revocations;
      expect(marks.find((m) => m.value === value)).toMatchObject({ kind: 'subject', not_before: '2026-01-01T00:00:00.000Z', revoked_by: admin.clientId });
      expect(marks.some((m) => m.kind === 'task' && m.not_before === null)).toBe(true);
      // A mark only moves forward, so a future one (or a number read as a year) would be for good.
      const future = new Date(Date.now() + 3_600_000).toISOString();
      for (const json of [{ kind: 'jti', value: 'x' }, { kind: 'client' }, { kind: 'client', value: 'x', before: 'yesterday' },
        { kind: 'client', value: 'x', before: '1' }, { kind: 'client', value: 'x', before: 0 }, { kind: 'client', value: 'x', before: future }]) {
        const bad = expectDocumented('/admin/v1/revocations', 'post', await send('POST', '/admin/v1/revocations', { auth, json }));
        expect([bad.status, (bad.body as Json).error], JSON.stringify(json)).toEqual([400, 'invalid_request']);
      }
    });

    it('traces a token and searches audit events', async () => {
      const auth = `Bearer ${await adminToken(['writ:audit.read'])}`;
      const hop1 = await t.exchange('planner-agent', { subject_token: await userToken(), subject_token_type: AT, audience: EXECUTOR_AUD, task_id: 'openapi-trace' });
      const hop2 = await t.exchange('executor-agent', { subject_token: hop1.body.access_token as string, subject_token_type: AT, audience: PAYMENTS });
      expect(hop2.status).toBe(200);
      const [jti1, jti2] = [decodeJwt(hop1.body.access_token as string).jti!, decodeJwt(hop2.body.access_token as string).jti!];
      const trace = expectDocumented('/admin/v1/audit/trace/{jti}', 'get', await send('GET', concrete('/admin/v1/audit/trace/{jti}', { jti: jti1 }), { auth }));
      expect(trace.status).toBe(200);
      expect(trace.body).toMatchObject({ jti: jti1, root: { issuer: IDP, sub: 'alice' }, ancestry_incomplete: false, descendants_truncated: false });
      const descendants = (trace.body as { descendants: Json[] }).descendants;
      expect(descendants.map((d) => d.jti)).toEqual([jti2]);
      expect(descendants[0]).toMatchObject({ parent_jti: jti1, client_id: 'executor-agent', actors: ['planner-agent', 'executor-agent'], task_id: 'openapi-trace', children: [] });
      for (const [jti, status] of [['no-such-jti', 404], ['a b', 400]] as const) {
        const answer = expectDocumented('/admin/v1/audit/trace/{jti}', 'get', await send('GET', concrete('/admin/v1/audit/trace/{jti}', { jti }), { auth }));
        expect(answer.status, jti).toBe(status);
      }

      await t.writ.auditQueue.flush();
      const page = expectDocumented('/admin/v1/audit/events', 'get', await send('GET', '/admin/v1/audit/events?task_id=openapi-trace&limit=1', { auth }));
      const { events, next_cursor: cursor } = page.body as { events: Json[]; next_cursor: string | null };
      expect(events).toHaveLength(1);
      expect(events[0]).toMatchObject({ type: 'exchange.granted', jti: jti2, task_id: 'openapi-trace' });
      expect(Object.keys(events[0]!).sort()).toEqual(required('AuditEvent'));
      expect(cursor).not.toBeNull();
      const older = expectDocumented('/admin/v1/audit/events', 'get', await send('GET', `/admin/v1/audit/events?task_id=openapi-trace&cursor=${cursor}`, { auth }));
      expect((older.body as { events: Json[] }).events.map((e) => e.jti)).toEqual([jti1]);
      const wide = expectDocumented('/admin/v1/audit/events', 'get', await send('GET', `/admin/v1/audit/events?actor=planner-agent&since=2020-01-01&until=2100-01-01&limit=500`, { auth }));
      expect((wide.body as { events: Json[] }).events.length).toBeGreaterThan(1);
      for (const query of ['bogus=1', 'limit=0', 'limit=501', 'since=yesterday', 'cursor=abc', 'actor=a&actor=b', 'type=']) {
        const bad = expectDocumented('/admin/v1/audit/events', 'get', await send('GET', `/admin/v1/audit/events?${query}`, { auth }));
        expect([bad.status, (bad.body as Json).error], query).toEqual([400, 'invalid_request']);
      }
    });
  });

  describe('the chain view', () => {
    const JSON_TRACE = '/audit/view/api/trace/{jti}';

    async function session(): Promise<string> {
      const { token } = await createLoginToken(t.writ.db.knex, { createdBy: 'openapi-test' });
      const login = expectDocumented('/audit/view/login', 'get', await send('GET', `/audit/view/login?token=${token}`));
      expect(login.status).toBe(303);
      // Once only.
      expect(expectDocumented('/audit/view/login', 'get', await send('GET', `/audit/view/login?token=${token}`)).status).toBe(401);
      return login.headers.get('set-cookie')!.split(';')[0]!;
    }

    it('trades a login token for a session, and serves the page, its assets and its API with it', async () => {
      const cookie = await session();
      expect(cookie.startsWith(`${SESSION_COOKIE}=`)).toBe(true);
      const page = expectDocumented('/audit/view', 'get', await send('GET', '/audit/view', { headers: { cookie } }));
      expect(page.status).toBe(200);
      for (const asset of ['/audit/view/app.js', '/audit/view/style.css']) {
        expect(expectDocumented(asset, 'get', await send('GET', asset)).status, asset).toBe(200);
      }

      const hop = await t.exchange('planner-agent', { subject_token: await userToken(), subject_token_type: AT, audience: PAYMENTS });
      const jti = decodeJwt(hop.body.access_token as string).jti!;
      const byPath = expectDocumented(JSON_TRACE, 'get', await send('GET', concrete(JSON_TRACE, { jti }), { headers: { cookie } }));
      expect(byPath.status).toBe(200);
      expect((byPath.body as Json).jti).toBe(jti);
      const byQuery = expectDocumented('/audit/view/api/trace', 'get', await send('GET', `/audit/view/api/trace?jti=${encodeURIComponent(jti)}`, { headers: { cookie } }));
      expect(byQuery.body).toEqual(byPath.body);
      for (const [p, status] of [['/audit/view/api/trace?jti=no-such-jti', 404], ['/audit/view/api/trace?jti=a%20b', 400], ['/audit/view/api/trace', 400]] as const) {
        expect(expectDocumented('/audit/view/api/trace', 'get', await send('GET', p, { headers: { cookie } })).status, p).toBe(status);
      }
      expect(expectDocumented(JSON_TRACE, 'get', await send('GET', concrete(JSON_TRACE, { jti: 'no-such-jti' }), { headers: { cookie } })).status).toBe(404);

      const events = expectDocumented('/audit/view/api/events', 'get', await send('GET', '/audit/view/api/events?limit=5', { headers: { cookie } }));
      expect((events.body as { events: Json[] }).events.length).toBeGreaterThan(0);
      expect(expectDocumented('/audit/view/api/events', 'get', await send('GET', '/audit/view/api/events?nope=1', { headers: { cookie } })).status).toBe(400);
    });

    it('refuses the API and the page without a valid session', async () => {
      for (const cookie of [undefined, `${SESSION_COOKIE}=v1.9999999999.${'A'.repeat(43)}`, `${SESSION_COOKIE}=garbage`]) {
        const headers = cookie ? { cookie } : undefined;
        expect(expectDocumented('/audit/view', 'get', await send('GET', '/audit/view', { ...(headers ? { headers } : {}) })).status).toBe(401);
        for (const [p, url] of [['/audit/view/api/events', '/audit/view/api/events'], ['/audit/view/api/trace', '/audit/view/api/trace?jti=x'], [JSON_TRACE, '/audit/view/api/trace/x']] as const) {
          const answer = expectDocumented(p, 'get', await send('GET', url, { ...(headers ? { headers } : {}) }));
          expect([answer.status, (answer.body as Json).error], `${url} ${String(cookie)}`).toEqual([401, 'unauthorized']);
        }
      }
      expect(expectDocumented('/audit/view/login', 'get', await send('GET', `/audit/view/login?token=${'A'.repeat(43)}`)).status).toBe(401);
    });
  });

  it('a shutting-down instance answers every path 503 temporarily_unavailable with Retry-After', async () => {
    const draining = await createWrit({ ...t.config, port: 0 }, createLogger('silent'), { db: t.writ.db, pollMs: 100 });
    await draining.listen();
    await draining.close();
    // Its app, still handed requests (as on a kept-alive connection after SIGTERM).
    const server = createServer(draining.app.callback());
    await new Promise<void>((done) => server.listen(0, '127.0.0.1', done));
    const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    try {
      for (const [p, m] of documentedOperations()) {
        if (!onMainListener(p)) continue;
        const answer = expectDocumented(p, m, await send(m.toUpperCase(), concrete(p), { ...probeBody(p, m), base }));
        expect([answer.status, answer.body], `${m} ${p}`).toEqual([503, DRAINING_BODY]);
        expect(answer.headers.get('retry-after'), `${m} ${p}`).toBe('1');
        expect(answer.headers.get('connection'), `${m} ${p}`).toBe('close');
        if (OAUTH_ENDPOINTS.has(p)) {
          expect(answer.headers.get('cache-control'), `${m} ${p}`).toBe('no-store');
          expect(answer.headers.get('pragma'), `${m} ${p}`).toBe('no-cache');
        }
      }
      const unknown = await send('GET', '/nothing-here', { base });
      expect([unknown.status, unknown.body]).toEqual([503, DRAINING_BODY]);
    } finally {
      await new Promise<void>((done) => server.close(() => done()));
    }
  });

  it('/metrics is served on the metrics listener only, as documented', async () => {
    // Not on the main listener.
    const main = await send('GET', '/metrics');
    expect(main.status).toBe(404);
    conformsTo(spec.components.responses.NotFound!, main, 'GET /metrics on the main listener');

    // The listener `writ serve` starts on WRIT_METRICS_ADDR, here on a free port.
    const metricsServer: Server = await serveMetrics(t.writ.metrics, { host: '127.0.0.1', port: 0 });
    const base = `http://127.0.0.1:${(metricsServer.address() as AddressInfo).port}`;
    try {
      const scrape = expectDocumented('/metrics', 'get', await send('GET', '/metrics', { base }));
      expect(scrape.status).toBe(200);
      expect(scrape.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
      expect(scrape.text).toContain('writ_exchanges_total');
      for (const method of PROBED_METHODS.filter((x) => x !== 'GET')) {
        const other = await send(method, '/metrics', { base });
        expect([other.status, other.text], method).toEqual([404, '']);
      }
      for (const p of ['/metrics?x=1', '/metrics/', '/token', '/healthz', '/']) {
        const other = await send('GET', p, { base });
        expect([other.status, other.text], p).toEqual([404, '']);
      }
    } finally {
      await new Promise<void>((done) => metricsServer.close(() => done()));
    }
  });

  describe('the local admin channel', () => {
    const credential = randomBytes(32).toString('base64url');
    let local: Writ;
    let base: string;
    const apply = '/admin/v1/local/policy/apply';
    const bootstrap = '/admin/v1/local/admin/bootstrap';
    const loginPath = '/audit/view/local/login';

    beforeAll(async () => {
      // A second instance on the same database, as `writ serve` runs it with a local credential.
      local = await createWrit({ ...t.config, port: 0 }, createLogger('silent'), { db: t.writ.db, localToken: () => credential, pollMs: 100 });
      base = await local.listen();
    });
    afterAll(async () => local?.close());

    it('policy apply answers 200 with the changes, 422, 400, 401 and 405 as documented', async () => {
      const bearer = `Bearer ${credential}`;
      const extraAudience = 'https://openapi-extra.example.com';
      const extra = { name: 'zz-extra.yaml', text: stringify({ audiences: [{ audience: extraAudience, scopes: ['x.read'], max_ttl: 60 }] }) };
      const grown = expectDocumented(apply, 'post', await send('POST', apply, { base, auth: bearer, json: { files: [...policyFiles, extra], env: { ...SECRETS }, message: 'openapi contract', appliedBy: 'openapi-test' } }));
      expect(grown.status).toBe(200);
      const body = grown.body as { version: number; previousVersion: number; changes: Json[] };
      expect(Object.keys(body).sort()).toEqual([...required('PolicyApplySuccess'), 'previousVersion'].sort());
      expect(body.previousVersion).toBe(body.version - 1);
      expect(body.changes).toEqual([expect.objectContaining({ kind: 'added', section: 'audience', id: extraAudience })]);
      const back = expectDocumented(apply, 'post', await send('POST', apply, { base, auth: bearer, json: { files: policyFiles, env: { ...SECRETS } } }));
      expect((back.body as { changes: Json[] }).changes).toEqual([expect.objectContaining({ kind: 'removed', section: 'audience', id: extraAudience })]);
      const same = expectDocumented(apply, 'post', await send('POST', apply, { base, auth: bearer, json: { files: policyFiles, env: { ...SECRETS } } }));
      expect((same.body as { changes: Json[] }).changes).toEqual([]);

      const invalid = expectDocumented(apply, 'post', await send('POST', apply, { base, auth: bearer, json: { files: [{ name: 'broken.yaml', text: 'rules:\n  - id: x\n    nonsense: true\n' }], env: {} } }));
      expect(invalid.status).toBe(422);
      expect(Object.keys(invalid.body as Json).sort()).toEqual(required('PolicyApplyFailure'));

      const notJson = expectDocumented(apply, 'post', await send('POST', apply, { base, auth: bearer, raw: '{', headers: { 'content-type': 'application/json' } }));
      expect(notJson.status).toBe(400);
      const wrongShape = expectDocumented(apply, 'post', await send('POST', apply, { base, auth: bearer, json: { files: 'nope' } }));
      expect(wrongShape.status).toBe(400);

      for (const auth of [undefined, 'Bearer wrong', `Basic ${Buffer.from(`x:${credential}`).toString('base64')}`]) {
        const denied = expectDocumented(apply, 'post', await send('POST', apply, { base, json: { files: [], env: {} }, ...(auth ? { auth } : {}) }));
        expect(denied.status, String(auth)).toBe(401);
        expect(denied.headers.get('www-authenticate')).toBe('Bearer');
      }

      const get = await send('GET', apply, { base, auth: bearer });
      expect(get.status).toBe(405);
      conformsTo(spec.components.responses.MethodNotAllowed!, get, `GET ${apply}`);
    });

    it('bootstraps an admin client whose client credentials then work at the admin API', async () => {
      const bearer = `Bearer ${credential}`;
      const created = expectDocumented(bootstrap, 'post', await send('POST', bootstrap, { base, auth: bearer, json: { client_id: 'openapi-boot-admin', scopes: ['writ:audit.read'], by: 'openapi-test' } }));
      expect(created.status).toBe(200);
      const { client_id: clientId, client_secret: secret } = created.body as { client_id: string; client_secret: string };
      expect(clientId).toBe('openapi-boot-admin');
      const token = expectDocumented('/token', 'post', await send('POST', '/token', { base, form: { grant_type: 'client_credentials', scope: 'writ:audit.read' }, auth: basicAuth(clientId, secret) }));
      expect(token.status).toBe(200);
      const events = expectDocumented('/admin/v1/audit/events', 'get', await send('GET', '/admin/v1/audit/events?limit=1', { base, auth: `Bearer ${(token.body as Json).access_token as string}` }));
      expect(events.status).toBe(200);

      for (const [json, status] of [
        [{ client_id: 'planner-agent' }, 422], [{ client_id: 'bad id' }, 422], [{ client_id: 'x', scopes: ['writ:everything'] }, 400], [{ scopes: [] }, 400],
      ] as const) {
        const refused = expectDocumented(bootstrap, 'post', await send('POST', bootstrap, { base, auth: bearer, json }));
        expect([refused.status, (refused.body as Json).error], JSON.stringify(json)).toEqual([status, 'invalid_request']);
      }
      expect(expectDocumented(bootstrap, 'post', await send('POST', bootstrap, { base, auth: bearer, raw: '{', headers: { 'content-type': 'application/json' } })).status).toBe(400);
      const denied = expectDocumented(bootstrap, 'post', await send('POST', bootstrap, { base, json: { client_id: 'x' } }));
      expect([denied.status, denied.headers.get('www-authenticate')]).toEqual([401, 'Bearer']);
      const get = await send('GET', bootstrap, { base, auth: bearer });
      expect([get.status, get.text]).toEqual([405, 'Method Not Allowed']);
      conformsTo(spec.components.responses.MethodNotAllowed!, get, `GET ${bootstrap}`);
    });

    it('the local credential counts as every admin scope, on this instance only', async () => {
      for (const [p, url] of [['/admin/v1/policy', '/admin/v1/policy'], ['/admin/v1/revocations', '/admin/v1/revocations'], ['/admin/v1/audit/events', '/admin/v1/audit/events?limit=1']] as const) {
        const answer = expectDocumented(p, 'get', await send('GET', url, { base, auth: `Bearer ${credential}` }));
        expect(answer.status, p).toBe(200);
        expect(expectDocumented(p, 'get', await send('GET', url, { auth: `Bearer ${credential}` })).status, `${p} elsewhere`).toBe(401);
      }
    });

    it('creates chain view login tokens for writ audit open', async () => {
      const bearer = `Bearer ${credential}`;
      const created = expectDocumented(loginPath, 'post', await send('POST', loginPath, { base, auth: bearer, json: { created_by: 'openapi test' } }));
      expect(created.status).toBe(201);
      const login = expectDocumented('/audit/view/login', 'get', await send('GET', `/audit/view/login?token=${(created.body as Json).token as string}`, { base }));
      expect(login.status).toBe(303);
      expect(expectDocumented(loginPath, 'post', await send('POST', loginPath, { base, auth: bearer, raw: '' })).status).toBe(201);
      for (const json of [{ created_by: 5 }, { created_by: '' }, { created_by: 'x'.repeat(101) }]) {
        const bad = expectDocumented(loginPath, 'post', await send('POST', loginPath, { base, auth: bearer, json }));
        expect([bad.status, (bad.body as Json).error], JSON.stringify(json)).toEqual([400, 'invalid_request']);
      }
      const denied = expectDocumented(loginPath, 'post', await send('POST', loginPath, { base, json: {} }));
      expect([denied.status, denied.headers.get('www-authenticate')]).toEqual([401, 'Bearer']);
    });
  });
});

describe('openapi.yaml: rate limits against a running Writ', () => {
  let t: TestWrit;

  async function post(p: string, form: Record<string, string>, auth: string): Promise<Answer> {
    return read(await fetch(`${t.url}${p}`, {
      method: 'POST',
      headers: { authorization: auth, 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams(form).toString(),
    }));
  }

  beforeAll(async () => {
    // A database of its own: these limits would trip every other test.
    t = await startTestWrit({ name: 'openapi-limits', applyExample: false });
    const text = examplePolicyFor(t.idp)
      .replace('  - client_id: planner-agent\n', '  - client_id: planner-agent\n    rate_limit: { per_second: 0.001, burst: 2 }\n')
      .replace('  - client_id: payments-api\n', '  - client_id: payments-api\n    rate_limit: { per_second: 0.001, burst: 2 }\n')
      .concat('\nsettings:\n  auth_failure_limit: { per_second: 0.001, burst: 2 }\n');
    await t.apply([{ name: 'example.yaml', text }]);
  });
  afterAll(async () => t?.close());

  it('a client over its own limit gets 429 at each endpoint; its answers until then carry the RateLimit fields', async () => {
    const exchange = async (audience: string) => post('/token', { grant_type: TX, subject_token: await t.idp.token(t.issuer), subject_token_type: AT, audience }, basicAuth('planner-agent'));
    const granted = expectDocumented('/token', 'post', await exchange(PAYMENTS));
    expect([granted.status, granted.headers.get('ratelimit-limit'), granted.headers.get('ratelimit-remaining')]).toEqual([200, '2', '1']);
    const refused = expectDocumented('/token', 'post', await exchange('https://unknown.example.com'));
    expect([refused.status, refused.headers.get('ratelimit-remaining')]).toEqual([400, '0']);
    expectRateLimited(expectDocumented('/token', 'post', await exchange(PAYMENTS)), '/token');

    const token = (granted.body as Json).access_token as string;
    for (let i = 0; i < 2; i += 1) {
      const active = expectDocumented('/token/introspection', 'post', await post('/token/introspection', { token }, basicAuth('payments-api')));
      expect([active.status, active.headers.get('ratelimit-remaining')]).toEqual([200, String(1 - i)]);
    }
    expectRateLimited(expectDocumented('/token/introspection', 'post', await post('/token/introspection', { token }, basicAuth('payments-api'))), '/token/introspection');

    // Token and task revocation share the client's revocation bucket.
    const revoked = expectDocumented('/token/revocation', 'post', await post('/token/revocation', { token: 'not-a-token' }, basicAuth('planner-agent')));
    expect([revoked.status, revoked.headers.get('ratelimit-remaining')]).toEqual([200, '1']);
    const notMine = expectDocumented('/task/revocation', 'post', await post('/task/revocation', { task_id: 'openapi-nobody' }, basicAuth('planner-agent')));
    expect([notMine.status, notMine.headers.get('ratelimit-remaining')]).toEqual([400, '0']);
    expectRateLimited(expectDocumented('/token/revocation', 'post', await post('/token/revocation', { token: 'not-a-token' }, basicAuth('planner-agent'))), '/token/revocation');
    expectRateLimited(expectDocumented('/task/revocation', 'post', await post('/task/revocation', { task_id: 'openapi-nobody' }, basicAuth('planner-agent'))), '/task/revocation');

    // A client with no limit of its own gets no RateLimit fields.
    const unlimited = expectDocumented('/token/revocation', 'post', await post('/token/revocation', { token: 'not-a-token' }, basicAuth('executor-agent')));
    expect([unlimited.status, unlimited.headers.get('ratelimit-limit')]).toEqual([200, null]);
    // Refusals before authentication are recorded in aggregate: the first of each window at once.
    const reasons = (await t.auditRows({ reason: 'rate_limited' })).length;
    expect(reasons).toBeGreaterThanOrEqual(3);
  });

  it('failed client authentications are limited: then 429 at every client endpoint, before any secret is checked', async () => {
    for (let i = 0; i < 2; i += 1) {
      const failed = expectDocumented('/token/introspection', 'post', await post('/token/introspection', { token: 'x' }, basicAuth('executor-agent', 'w'.repeat(40))));
      expect(failed.status).toBe(401);
    }
    const forms: Record<string, Record<string, string>> = {
      '/token': { grant_type: TX }, '/token/introspection': { token: 'x' }, '/token/revocation': { token: 'x' }, '/task/revocation': { task_id: 'x' },
    };
    for (const [p, form] of Object.entries(forms)) {
      // The right secret of another client, from the same address: refused all the same.
      const answer = expectDocumented(p, 'post', await post(p, form, basicAuth('executor-agent')));
      expectRateLimited(answer, p);
      expect(answer.headers.get('ratelimit-limit'), p).toBe('2');
      expect(answer.headers.get('cache-control'), p).toBe('no-store');
      expect(answer.headers.get('pragma'), p).toBe('no-cache');
    }
    expect((await t.auditRows({ reason: 'auth_rate_limited' })).length).toBeGreaterThanOrEqual(1);
  });
});
