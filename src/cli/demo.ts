import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync, existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { exportJWK, generateKeyPair, importJWK, SignJWT, decodeJwt, type CryptoKey, type JWK } from 'jose';
import { inlineIssuerKeys } from '../policy/overlay.ts';
import type { CliContext } from './context.ts';
import { policyApply } from './policy.ts';
import { startServing } from './serve.ts';

const EXAMPLE = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../policy/example.yaml');
const DEMO_ISSUER = 'https://idp.example.com';
const TX = 'urn:ietf:params:oauth:grant-type:token-exchange';
const AT = 'urn:ietf:params:oauth:token-type:access_token';
const SECRET_NAMES = ['PLANNER_SECRET', 'EXECUTOR_SECRET', 'PAYMENTS_API_SECRET'] as const;

interface DemoState {
  issuerKey: JWK;
  secrets: Record<(typeof SECRET_NAMES)[number], string>;
}

/** The demo's own IdP key and client secrets, made once and kept (0600) in the data dir. */
async function demoState(dir: string): Promise<DemoState> {
  const file = path.join(dir, 'demo-state.json');
  if (existsSync(file)) return JSON.parse(readFileSync(file, 'utf8')) as DemoState;
  const { privateKey } = await generateKeyPair('ES256', { extractable: true });
  const issuerKey = { ...(await exportJWK(privateKey)), kid: `demo-idp-${randomBytes(4).toString('hex')}`, alg: 'ES256' };
  const secrets = Object.fromEntries(SECRET_NAMES.map((n) => [n, randomBytes(32).toString('base64url')])) as DemoState['secrets'];
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  writeFileSync(file, JSON.stringify({ issuerKey, secrets }), { mode: 0o600 });
  return { issuerKey, secrets };
}

/** alice's access token from the demo IdP, addressed to Writ, valid for 10 minutes. */
async function aliceToken(issuerKey: JWK, audience: string): Promise<string> {
  const key = await importJWK(issuerKey, 'ES256') as CryptoKey;
  const now = Math.floor(Date.now() / 1000);
  return new SignJWT({ groups: ['finance'], scope: 'openid' })
    .setProtectedHeader({ alg: 'ES256', typ: 'at+jwt', kid: issuerKey.kid! })
    .setIssuer(DEMO_ISSUER).setSubject('alice').setAudience(audience)
    .setIssuedAt(now).setExpirationTime(now + 600).setJti(randomBytes(8).toString('hex'))
    .sign(key);
}

/** policy/example.yaml with the demo IdP's public key inline in place of its jwks_uri. */
function overlayPolicy(dir: string, issuerKey: JWK): string {
  const { d: _d, ...publicKey } = issuerKey;
  const text = inlineIssuerKeys(readFileSync(EXAMPLE, 'utf8'), DEMO_ISSUER, { keys: [{ ...publicKey, use: 'sig' }] });
  const policyDir = path.join(dir, 'demo-policy');
  mkdirSync(policyDir, { recursive: true, mode: 0o700 });
  writeFileSync(path.join(policyDir, 'example.yaml'), `# policy/example.yaml with the demo IdP's key inline (written by writ demo)\n${text}`);
  return policyDir;
}

function basic(id: string, secret: string): string {
  return `Basic ${Buffer.from(`${encodeURIComponent(id)}:${encodeURIComponent(secret)}`).toString('base64')}`;
}

async function post(url: string, auth: string, form: Record<string, string>): Promise<{ status: number; body: Record<string, unknown> }> {
  const response = await fetch(url, {
    method: 'POST',
    headers: { authorization: auth, 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams(form),
  });
  const text = await response.text();
  return { status: response.status, body: text ? JSON.parse(text) as Record<string, unknown> : {} };
}

function describeAct(act: unknown): string {
  const names: string[] = [];
  let level = act as { sub?: string; act?: unknown } | undefined;
  while (level?.sub) {
    names.push(level.sub);
    level = level.act as typeof level;
  }
  return names.reverse().join(' → ');
}

export async function demo(ctx: CliContext, options: { exit: boolean }): Promise<number> {
  const { config } = ctx;
  const state = await demoState(config.dataDir);
  const policyDir = overlayPolicy(config.dataDir, state.issuerKey);
  Object.assign(process.env, state.secrets);
  // The walkthrough is the point here; `writ policy diff` shows what a policy changes.
  const applied = await policyApply(ctx, policyDir, 'writ demo: policy/example.yaml with the demo IdP key', { showDiff: false, database: { creates: 'development', announce: false } });
  if (applied !== 0) return applied;
  // The walkthrough speaks for itself; request logs would drown it unless asked for.
  const serving = await startServing(ctx, { logLevel: process.env.LOG_LEVEL ?? 'warn', metrics: false });
  const { url } = serving;
  const print = ctx.out;
  try {
    const metadata = await (await fetch(`${url}/.well-known/oauth-authorization-server`)).json() as Record<string, string>;
    const token = metadata.token_endpoint!.replace(config.issuer, url);
    const introspection = metadata.introspection_endpoint!.replace(config.issuer, url);
    const revocation = metadata.revocation_endpoint!.replace(config.issuer, url);
    print(`\nWrit is serving at ${url} (issuer ${config.issuer}), embedded database in ${config.dataDir}`);
    print(`Policy: policy/example.yaml, with a built-in demo IdP standing in for ${DEMO_ISSUER}\n`);

    const userToken = await aliceToken(state.issuerKey, config.issuer);
    print(`1. alice signs in at ${DEMO_ISSUER} (groups: finance) and hands her token to planner-agent.`);

    const planner = basic('planner-agent', state.secrets.PLANNER_SECRET);
    const executor = basic('executor-agent', state.secrets.EXECUTOR_SECRET);
    const paymentsApi = basic('payments-api', state.secrets.PAYMENTS_API_SECRET);

    const hop1 = await post(token, planner, {
      grant_type: TX, subject_token: userToken, subject_token_type: AT,
      audience: 'https://agents.example.com/executor', scope: 'payment.read', task_id: 'invoice-run-42',
    });
    if (hop1.status !== 200) throw new Error(`hop 1 failed: ${JSON.stringify(hop1.body)}`);
    print(`2. planner-agent exchanges it for the executor agent → ${hop1.status}: scope "${hop1.body.scope}", expires_in ${hop1.body.expires_in}s`);
    print(`   act: ${describeAct(decodeJwt(hop1.body.access_token as string).act)}`);

    const hop2 = await post(token, executor, {
      grant_type: TX, subject_token: hop1.body.access_token as string, subject_token_type: AT,
      resource: 'https://payments.example.com', scope: 'payment.read',
    });
    if (hop2.status !== 200) throw new Error(`hop 2 failed: ${JSON.stringify(hop2.body)}`);
    const claims = decodeJwt(hop2.body.access_token as string);
    print(`3. executor-agent exchanges that for the payments API → ${hop2.status}: scope "${hop2.body.scope}", expires_in ${hop2.body.expires_in}s`);
    print(`   chain: alice → ${describeAct(claims.act)} → ${claims.aud as string}`);
    print(`   decoded claims: ${JSON.stringify({ sub: claims.sub, aud: claims.aud, client_id: claims.client_id, scope: claims.scope, task_id: claims.task_id, act: claims.act })}`);

    const denied = await post(token, executor, {
      grant_type: TX, subject_token: hop1.body.access_token as string, subject_token_type: AT,
      resource: 'https://payments.example.com', scope: 'payment.transfer',
    });
    print(`4. executor-agent asks for payment.transfer instead → ${denied.status} ${denied.body.error as string} (denied and recorded with its reason)`);

    const active = await post(introspection, paymentsApi, { token: hop2.body.access_token as string });
    print(`5. payments-api introspects the executor's token → ${JSON.stringify(active.body)}`);

    const revoked = await post(revocation, planner, { token: hop1.body.access_token as string });
    const after = await post(introspection, paymentsApi, { token: hop2.body.access_token as string });
    print(`6. planner-agent revokes its own token (${revoked.status}); payments-api introspects the executor's again → ${JSON.stringify(after.body)}`);
    print('   Revoking a token revokes everything derived from it.\n');
    if (options.exit) return 0;
    // RFC 8414 §3.3: "The "issuer" value returned MUST be identical to the authorization
    // server's issuer identifier value into which the well-known URI string was inserted": the
    // discovery URL a reader is given is the issuer's, not the address the demo listens on.
    print(`Writ keeps serving at ${url}. Discovery: ${config.issuer}/.well-known/oauth-authorization-server — Ctrl-C to stop.`);
    // A token of alice's for the reader to exchange by hand; the secrets stay in their file.
    const aliceFile = path.join(config.dataDir, 'demo-alice.jwt');
    writeFileSync(aliceFile, `${await aliceToken(state.issuerKey, config.issuer)}\n`, { mode: 0o600 });
    const stateFile = path.join(config.dataDir, 'demo-state.json');
    print(`\nTry an exchange yourself (${aliceFile} holds a token of alice's, valid for 10 minutes):`);
    print(`  SECRET=$(node -p "require('${stateFile}').secrets.PLANNER_SECRET")`);
    print(`  curl -s -u "planner-agent:$SECRET" ${token} \\`);
    print(`    -d grant_type=${TX} \\`);
    print(`    -d subject_token_type=${AT} -d subject_token=$(cat ${aliceFile}) \\`);
    print('    -d audience=https://agents.example.com/executor -d scope=payment.read');
    print(`After Ctrl-C, \`npx writ audit trace ${claims.jti as string}\` follows the payments token back to alice.`);
    await new Promise<void>((resolve) => {
      process.once('SIGINT', () => resolve());
      process.once('SIGTERM', () => resolve());
    });
    return 0;
  } finally {
    await serving.stop();
  }
}
