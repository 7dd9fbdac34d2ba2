import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '../../src/log.ts';
import { createWrit, type Writ } from '../../src/server.ts';
import { loadConfig } from '../../src/config.ts';
import { applyPolicyFiles } from '../../src/policy/apply.ts';
import { SECRETS, TestIdp, basicAuth, createTestDatabase, examplePolicyFor, freePort } from '../support/harness.ts';

/**
 * The request log line names the path the client called. Task revocation is run through the
 * revocation route (src/http/app.ts rewrites the path), and its log line and audit events must
 * still say `/task/revocation`: an operator reading either looks for the endpoint that was used.
 */
describe('the request log', () => {
  const lines: Array<Record<string, unknown>> = [];
  let writ: Writ;
  let url: string;
  beforeAll(async () => {
    const port = await freePort();
    const issuer = `http://localhost:${port}`;
    const config = loadConfig({
      WRIT_ISSUER: issuer, PORT: String(port), WRIT_DATA_DIR: '/tmp/writ-request-log-test', WRIT_KEK: Buffer.alloc(32, 5).toString('base64'),
      DATABASE_URL: await createTestDatabase('request_log'), LOG_LEVEL: 'info',
    });
    writ = await createWrit(config, createLogger('info', { write: (line: string) => { lines.push(JSON.parse(line) as Record<string, unknown>); } }), { pollMs: 100 });
    url = await writ.listen();
    const idp = await TestIdp.create();
    const applied = await applyPolicyFiles(writ.db.knex, [{ name: 'example.yaml', text: examplePolicyFor(idp) }], {
      env: SECRETS, selfIssuer: issuer, maxTtl: 900, appliedBy: 'test', message: '', secretKey: writ.derived.clientSecret,
    });
    expect(applied.ok).toBe(true);
    await writ.policy.reload();
  });
  afterAll(async () => writ?.close());

  const post = async (path: string, body: string, auth?: string): Promise<{ status: number; requestId: string }> => {
    const response = await fetch(`${url}${path}`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded', ...(auth ? { authorization: auth } : {}) },
      body,
    });
    await response.arrayBuffer();
    return { status: response.status, requestId: response.headers.get('x-request-id')! };
  };
  const logged = (requestId: string): Record<string, unknown> | undefined => lines.find((l) => l.msg === 'request' && l.requestId === requestId);

  it('a task revocation is logged at /task/revocation, an RFC 7009 revocation at /token/revocation', async () => {
    // A task the client never took part in: refused after authentication, by the task handler.
    const task = await post('/task/revocation', new URLSearchParams({ task_id: 'task-logged' }).toString(), basicAuth('planner-agent'));
    expect(task.status).toBe(400);
    expect(logged(task.requestId)).toMatchObject({ method: 'POST', path: '/task/revocation', status: 400, client: 'planner-agent' });
    const token = await post('/token/revocation', new URLSearchParams({ token: 'whatever' }).toString(), basicAuth('planner-agent'));
    expect(logged(token.requestId)).toMatchObject({ method: 'POST', path: '/token/revocation', status: 200 });
  });

  it('refusals at /task/revocation are logged and audited at /task/revocation', async () => {
    // Refused by client authentication (the provider, then Writ's remap and audit).
    const unauthenticated = await post('/task/revocation', new URLSearchParams({ task_id: 'task-logged' }).toString(), basicAuth('planner-agent', 'w'.repeat(40)));
    expect(unauthenticated.status).toBe(401);
    expect(logged(unauthenticated.requestId)).toMatchObject({ path: '/task/revocation', status: 401, reason: 'client_auth_failed' });
    // Refused before the provider runs (src/http/form-guard.ts: too many parameters).
    const crowded = await post('/task/revocation', [...Array.from({ length: 201 }, (_, i) => `x${i}=y`), 'task_id=t'].join('&'), basicAuth('planner-agent'));
    expect(crowded.status).toBe(400);
    expect(logged(crowded.requestId)).toMatchObject({ path: '/task/revocation', status: 400, reason: 'invalid_parameter' });
    await writ.auditQueue.flush();
    for (const requestId of [unauthenticated.requestId, crowded.requestId]) {
      const rows = await writ.db.knex('audit_events').where({ request_id: requestId }) as Array<{ details: Record<string, unknown> }>;
      expect(rows.map((r) => r.details.endpoint), requestId).toEqual(['/task/revocation']);
    }
  });
});
