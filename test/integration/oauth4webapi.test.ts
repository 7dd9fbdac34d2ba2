import * as oauth from 'oauth4webapi';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AT, EXECUTOR_AUD, PAYMENTS, SECRETS, TX, startTestWrit, type TestWrit } from '../support/harness.ts';

/**
 * What Writ issues, checked by an independent client library (oauth4webapi) rather than by
 * Writ's own code: discovery (RFC 8414), the token request, RFC 9068 validation as a resource
 * server does it, introspection (RFC 7662) and revocation (RFC 7009).
 */
describe('independent client: oauth4webapi', () => {
  let t: TestWrit;
  let as: oauth.AuthorizationServer;
  // Writ listens on loopback over plain HTTP in tests; oauth4webapi insists on HTTPS otherwise.
  const insecure = { [oauth.allowInsecureRequests]: true } as const;
  beforeAll(async () => {
    t = await startTestWrit({ name: 'oauth4webapi' });
    const issuer = new URL(t.issuer);
    // The issuer is http://localhost:<port>; Writ listens on 127.0.0.1 at that port.
    as = await oauth.processDiscoveryResponse(issuer, await oauth.discoveryRequest(issuer, { algorithm: 'oauth2', ...insecure }));
  });
  afterAll(async () => t?.close());

  it('discovers the token-exchange grant and every endpoint', () => {
    expect(as.issuer).toBe(t.issuer);
    expect(as.grant_types_supported).toContain(TX);
    expect(as.token_endpoint).toBe(`${t.issuer}/token`);
    expect(as.introspection_endpoint).toBe(`${t.issuer}/token/introspection`);
    expect(as.revocation_endpoint).toBe(`${t.issuer}/token/revocation`);
    expect(as.jwks_uri).toBe(`${t.issuer}/jwks`);
    expect(as.token_endpoint_auth_methods_supported).toEqual(expect.arrayContaining(['client_secret_basic', 'client_secret_post', 'private_key_jwt']));
    expect(as.token_endpoint_auth_methods_supported).not.toContain('none');
    expect(as.authorization_endpoint).toBeUndefined();
  });

  it('exchanges, validates as a resource server, introspects and revokes', async () => {
    const planner: oauth.Client = { client_id: 'planner-agent' };
    const executor: oauth.Client = { client_id: 'executor-agent' };
    const payments: oauth.Client = { client_id: 'payments-api' };

    const hop1 = await oauth.processGenericTokenEndpointResponse(as, planner, await oauth.genericTokenEndpointRequest(
      as, planner, oauth.ClientSecretBasic(SECRETS.PLANNER_SECRET), TX,
      { subject_token: await t.idp.token(t.issuer), subject_token_type: AT, audience: EXECUTOR_AUD, scope: 'payment.read' },
      insecure,
    ));
    expect(hop1.token_type).toBe('bearer');
    expect(hop1.issued_token_type).toBe('urn:ietf:params:oauth:token-type:access_token');

    const hop2 = await oauth.processGenericTokenEndpointResponse(as, executor, await oauth.genericTokenEndpointRequest(
      as, executor, oauth.ClientSecretPost(SECRETS.EXECUTOR_SECRET), TX,
      { subject_token: hop1.access_token, subject_token_type: AT, resource: PAYMENTS },
      insecure,
    ));
    expect(hop2.expires_in).toBe(60);

    // The payments API validates the RFC 9068 token offline, with Writ's JWKS.
    const request = new Request(PAYMENTS, { headers: { authorization: `Bearer ${hop2.access_token}` } });
    const claims = await oauth.validateJwtAccessToken(as, request, PAYMENTS, insecure);
    expect(claims).toMatchObject({
      iss: t.issuer, aud: PAYMENTS, sub: 'alice', client_id: 'executor-agent', scope: 'payment.read',
      act: { sub: 'executor-agent', act: { sub: 'planner-agent' } },
    });
    // A token for another audience is refused by the same validation.
    const wrongAudience = new Request(PAYMENTS, { headers: { authorization: `Bearer ${hop1.access_token}` } });
    await expect(oauth.validateJwtAccessToken(as, wrongAudience, PAYMENTS, insecure)).rejects.toThrow();

    const introspected = await oauth.processIntrospectionResponse(as, payments, await oauth.introspectionRequest(
      as, payments, oauth.ClientSecretBasic(SECRETS.PAYMENTS_API_SECRET), hop2.access_token, insecure,
    ));
    expect(introspected).toMatchObject({ active: true, client_id: 'executor-agent', aud: PAYMENTS, token_type: 'Bearer' });

    await oauth.processRevocationResponse(await oauth.revocationRequest(
      as, planner, oauth.ClientSecretBasic(SECRETS.PLANNER_SECRET), hop1.access_token, insecure,
    ));
    await expect.poll(async () => (await oauth.processIntrospectionResponse(as, payments, await oauth.introspectionRequest(
      as, payments, oauth.ClientSecretBasic(SECRETS.PAYMENTS_API_SECRET), hop2.access_token, insecure,
    ))).active, { timeout: 1000, interval: 20 }).toBe(false);
  });

  it('surfaces Writ’s refusals as RFC 6749 errors', async () => {
    const executor: oauth.Client = { client_id: 'executor-agent' };
    const response = await oauth.genericTokenEndpointRequest(as, executor, oauth.ClientSecretBasic(SECRETS.EXECUTOR_SECRET), TX,
      { subject_token: await t.idp.token(t.issuer), subject_token_type: AT, audience: EXECUTOR_AUD }, insecure);
    const error = await oauth.processGenericTokenEndpointResponse(as, executor, response).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(oauth.ResponseBodyError);
    expect((error as oauth.ResponseBodyError).error).toBe('invalid_target');
  });
});
