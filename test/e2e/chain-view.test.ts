import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import type { Server } from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import { recordAudit } from '../../src/audit/event.ts';
import { createLoginToken } from '../../src/audit/view-login.ts';
import { auditOpen } from '../../src/cli/audit-open.ts';
import { migrate, openDatabase } from '../../src/store/db.ts';
import type { CliContext } from '../../src/cli/context.ts';
import type { Config } from '../../src/config.ts';
import { isStorageError } from '../../src/exchange/service.ts';
import { createApp } from '../../src/http/app.ts';
import { CHAIN_VIEW_HEADERS, chainViewRoutes, SESSION_COOKIE } from '../../src/http/chain-view.ts';
import { DEFAULT_AUTH_FAILURE_LIMIT, RateLimiter } from '../../src/http/rate-limit.ts';
import { createLogger } from '../../src/log.ts';
import { AT, basicAuth, EXECUTOR_AUD, freePort, IDP, PAYMENTS, startTestWrit, type TestWrit } from '../support/harness.ts';

/**
 * The chain view in a real browser: Debian's Chromium driven by playwright-core. CI installs
 * it (.ci/run); without it this test fails rather than skips.
 */
const CHROMIUM = '/usr/bin/chromium';
const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];
const OUTPUT = path.resolve(import.meta.dirname, '../../test-output');
const LOCAL_TOKEN = 'local-token-0123456789abcdefghijklmnopqrstuv';
const XSS_SUB = '<img src=x onerror="window.__xss=1">bob';

/** The little of the DOM that page-side callbacks use (the tests' TypeScript has no DOM lib). */
interface PageDocument {
  cookie: string;
  getElementById(id: string): { textContent: string | null } | null;
  body: { classList: { contains(name: string): boolean } };
}

interface GraphNode {
  kind: string;
  x: number;
  y: number;
  text: string;
  classes: string[];
  jti: string | undefined;
}

const NO_CHROMIUM = `the chain view test needs Debian's Chromium at ${CHROMIUM} (apt-get install chromium); .ci/run installs it`;

// Counted as a failed test (not only a failed hook with the rest skipped) when Chromium is missing.
it('has Debian\'s Chromium to test with', () => {
  expect(existsSync(CHROMIUM), NO_CHROMIUM).toBe(true);
});

describe('chain view (headless Chromium)', () => {
  let t: TestWrit;
  let server: Server;
  let base: string;
  let context: BrowserContext;
  let page: Page;
  let userDir: string;
  const pageErrors: string[] = [];
  const cspViolations: string[] = [];
  let plannerJti: string;
  let leafJti: string;
  let revokedJti: string;
  const TASK = 'task-chain-view-42';

  const knex = () => t.writ.db.knex;

  async function loginUrl(): Promise<string> {
    const { token } = await createLoginToken(knex(), { createdBy: 'chain-view test' });
    return `${base}/audit/view/login?token=${token}`;
  }

  async function graphNodes(): Promise<GraphNode[]> {
    return page.$$eval('#graph svg g.node', (nodes) => nodes.map((n) => ({
      kind: ['human', 'hop', 'tool', 'purged'].find((k) => n.classList.contains(k)) ?? '?',
      x: n.getBoundingClientRect().x,
      y: n.getBoundingClientRect().y,
      text: n.textContent ?? '',
      classes: [...n.classList],
      jti: n.getAttribute('data-jti') ?? undefined,
    })));
  }

  async function search(q: string, expectStatus: RegExp): Promise<void> {
    await page.fill('#q', q);
    await page.click('#search button[type=submit]');
    await page.waitForFunction((re) => {
      const doc = (globalThis as unknown as { document: PageDocument }).document;
      return new RegExp(re).test(doc.getElementById('status')?.textContent ?? '') && !doc.body.classList.contains('loading');
    }, expectStatus.source, { timeout: 10_000 });
  }

  async function eventRows(): Promise<string[][]> {
    return page.$$eval('#events tbody tr', (rows) => rows.map((r) => [...r.querySelectorAll('td')].map((td) => td.textContent ?? '')));
  }

  beforeAll(async () => {
    if (!existsSync(CHROMIUM)) throw new Error(NO_CHROMIUM);
    t = await startTestWrit({ name: 'chain_view' });

    // The chain view mounted in Writ's own app stack (createApp), on the test Writ's database.
    const port = await freePort();
    base = `http://localhost:${port}`;
    const app = createApp({
      provider: t.writ.provider,
      logger: createLogger('silent'),
      trustProxy: false,
      ready: async () => true,
      auditNow: (event) => recordAudit(knex(), event),
      auditQueue: t.writ.auditQueue,
      isStorageError,
      limiter: new RateLimiter(),
      authFailureLimit: () => DEFAULT_AUTH_FAILURE_LIMIT,
      clientRateLimit: () => undefined,
      draining: () => false,
      routes: [chainViewRoutes({
        knex: knex(),
        sessionKey: t.writ.derived.localAdmin,
        issuer: base,
        audit: (event) => recordAudit(knex(), event),
        localToken: () => LOCAL_TOKEN,
      })],
    });
    server = await new Promise<Server>((resolve, reject) => {
      const s = app.listen(port, '127.0.0.1', () => resolve(s));
      s.once('error', reject);
    });

    // alice → planner-agent → executor-agent → payments, within a task; a second executor
    // token from the same planner token (a branch), revoked; a denied request (too much scope);
    // and the planner reading payments itself.
    const user = await t.idp.token(t.issuer);
    const planner = await t.exchange('planner-agent', { subject_token: user, subject_token_type: AT, audience: EXECUTOR_AUD, task_id: TASK });
    expect(planner.status, JSON.stringify(planner.body)).toBe(200);
    const plannerToken = planner.body.access_token as string;
    const leaf = await t.exchange('executor-agent', { subject_token: plannerToken, subject_token_type: AT, audience: PAYMENTS, task_id: TASK });
    expect(leaf.status, JSON.stringify(leaf.body)).toBe(200);
    const sibling = await t.exchange('executor-agent', { subject_token: plannerToken, subject_token_type: AT, audience: PAYMENTS, task_id: TASK });
    expect(sibling.status).toBe(200);
    const denied = await t.exchange('executor-agent', { subject_token: plannerToken, subject_token_type: AT, audience: PAYMENTS, scope: 'payment.transfer', task_id: TASK });
    expect(denied.status).toBe(400);
    const direct = await t.exchange('planner-agent', { subject_token: await t.idp.token(t.issuer), subject_token_type: AT, audience: PAYMENTS });
    expect(direct.status).toBe(200);
    await t.introspect('payments-api', leaf.body.access_token as string);
    const revoked = await t.post('/token/revocation', { token: sibling.body.access_token as string }, basicAuth('executor-agent'));
    expect(revoked.status).toBe(200);

    const granted = await t.auditRows({ type: 'exchange.granted' });
    plannerJti = granted.find((r) => r.client_id === 'planner-agent' && r.audience === EXECUTOR_AUD)!.jti as string;
    leafJti = granted.find((r) => r.client_id === 'executor-agent')!.jti as string;
    revokedJti = granted.filter((r) => r.client_id === 'executor-agent')[1]!.jti as string;

    // A subject whose sub is markup: it must show as text, never run.
    const xss = await t.exchange('planner-agent', { subject_token: await t.idp.token(t.issuer, { sub: XSS_SUB }), subject_token_type: AT, audience: PAYMENTS });
    expect(xss.status, JSON.stringify(xss.body)).toBe(200);

    userDir = mkdtempSync(path.join(tmpdir(), 'writ-chromium-'));
    context = await chromium.launchPersistentContext(userDir, {
      executablePath: CHROMIUM,
      headless: true,
      args: CHROMIUM_ARGS,
      viewport: { width: 1680, height: 900 },
      deviceScaleFactor: 1,
    });
    page = context.pages()[0] ?? await context.newPage();
    page.on('pageerror', (err) => pageErrors.push(err.message));
    page.on('console', (msg) => {
      if (/Content Security Policy|Refused to/i.test(msg.text())) cspViolations.push(msg.text());
    });
  }, 90_000);

  afterAll(async () => {
    await context?.close();
    if (userDir) rmSync(userDir, { recursive: true, force: true });
    await new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve()));
    await t?.close();
  });

  it('signs in with a one-time URL: an HttpOnly, SameSite=Strict cookie, and the page', async () => {
    const url = await loginUrl();
    const response = await page.goto(url);
    expect(response?.status()).toBe(200);
    expect(page.url()).toBe(`${base}/audit/view`);
    expect(response?.headers()['content-security-policy']).toBe(CHAIN_VIEW_HEADERS['Content-Security-Policy']);

    const cookies = await context.cookies(`${base}/audit/view`);
    const session = cookies.find((c) => c.name === SESSION_COOKIE);
    expect(session).toBeDefined();
    expect(session!.httpOnly).toBe(true);
    expect(session!.sameSite).toBe('Strict');
    expect(session!.path).toBe('/audit/view');
    expect(session!.secure).toBe(false);
    expect(session!.expires - Date.now() / 1000).toBeGreaterThan(8 * 3600 - 120);
    // Not readable from script.
    expect(await page.evaluate(() => (globalThis as unknown as { document: PageDocument }).document.cookie)).toBe('');

    const logins = (await t.auditRows({ type: 'admin.action' })).filter((r) => (r.details as { action?: string }).action === 'audit_view_login');
    expect(logins).toHaveLength(1);
    expect(logins[0]!.details).toMatchObject({ created_by: 'chain-view test' });

    // The same URL does not work a second time, in the browser or anywhere else.
    const again = await context.newPage();
    const second = await again.goto(url);
    expect(second?.status()).toBe(401);
    expect(await again.textContent('body')).toContain('writ audit open');
    await again.close();
    expect((await fetch(url, { redirect: 'manual' })).status).toBe(401);
  });

  it('draws the chain of a jti: alice → planner-agent → executor-agent → payments, with the events', async () => {
    await search(leafJti, /^Token /);
    const nodes = await graphNodes();
    const kinds = nodes.map((n) => n.kind);
    expect(kinds).toEqual(['human', 'hop', 'hop', 'tool']);
    const [human, planner, executor, tool] = nodes as [GraphNode, GraphNode, GraphNode, GraphNode];
    // Drawn top-down: human, then each hop below its parent, then the tool.
    expect(human.y).toBeLessThan(planner.y);
    expect(planner.y).toBeLessThan(executor.y);
    expect(executor.y).toBeLessThan(tool.y);
    const edges = await page.$$eval('#graph svg path.edge', (paths) => paths.map((p) => p.getAttribute('class')));
    expect(edges.sort()).toEqual(['edge call', 'edge delegate', 'edge delegate']);
    expect(human.text).toContain('alice');
    expect(human.text).toContain(IDP);
    expect(planner.text).toContain('planner-agent');
    expect(planner.text).toContain(`aud ${EXECUTOR_AUD}`);
    expect(planner.text).toContain('scope payment.read');
    expect(planner.text).toContain('planner-delegates-to-executor');
    expect(planner.text).toContain(TASK);
    // The end's date is shown only when it is not the start's (a token that lives past midnight).
    const lifetime = /(\d{4}-\d{2}-\d{2}) \d{2}:\d{2}:\d{2} → (?:(\d{4}-\d{2}-\d{2}) )?\d{2}:\d{2}:\d{2} UTC/.exec(planner.text);
    expect(lifetime).not.toBeNull();
    if (lifetime![2] !== undefined) expect(lifetime![2]).not.toBe(lifetime![1]);
    expect(planner.jti).toBe(plannerJti);
    expect(executor.text).toContain('executor-agent');
    expect(executor.text).toContain('scope payment.read');
    expect(executor.text).toContain('executor-reads-payments');
    expect(executor.jti).toBe(leafJti);
    expect(executor.classes).toContain('selected');
    expect(executor.classes).not.toContain('revoked');
    expect(tool.text).toContain(PAYMENTS);

    const rows = await eventRows();
    const grantedRows = rows.filter((r) => r[1] === 'exchange.granted');
    expect(grantedRows.map((r) => r[5]).sort()).toEqual([leafJti, plannerJti].sort());
    expect(grantedRows.every((r) => r[2] === 'granted')).toBe(true);
    expect(grantedRows.map((r) => r[4]).sort()).toEqual(['executor-agent', 'planner-agent']);
    expect(rows.some((r) => r[1] === 'introspection' && r[5] === leafJti && r[4] === 'payments-api')).toBe(true);
    // A denied exchange that presented the planner's token is part of the chain's record.
    expect(rows.some((r) => r[1] === 'exchange.denied' && r[2] === 'denied' && r[3] !== '' && r[4] === 'executor-agent')).toBe(true);

    // Clicking a hop narrows the list to its token.
    await page.click(`#graph g.node.hop[data-jti="${plannerJti}"]`);
    const narrowed = await eventRows();
    expect(narrowed.length).toBeGreaterThan(0);
    expect(narrowed.length).toBeLessThan(rows.length);
    expect(narrowed.every((r) => r[5] === plannerJti || r[5] === '')).toBe(true);
    await page.click('#show-all');
    expect(await eventRows()).toHaveLength(rows.length);

    mkdirSync(OUTPUT, { recursive: true });
    await page.screenshot({ path: path.join(OUTPUT, 'chain-view.png'), fullPage: true });
  });

  it('finds the task: the whole tree with its branch, the revoked token marked', async () => {
    await search(TASK, /^Task /);
    const nodes = await graphNodes();
    expect(nodes.filter((n) => n.kind === 'human')).toHaveLength(1);
    const hops = nodes.filter((n) => n.kind === 'hop');
    expect(hops.map((n) => n.jti).sort()).toEqual([plannerJti, leafJti, revokedJti].sort());
    expect(nodes.filter((n) => n.kind === 'tool')).toHaveLength(2);
    const revoked = hops.find((n) => n.jti === revokedJti)!;
    expect(revoked.classes).toContain('revoked');
    expect(revoked.text).toContain('REVOKED');
    expect(hops.find((n) => n.jti === leafJti)!.classes).not.toContain('revoked');
    const rows = await eventRows();
    expect(rows.filter((r) => r[1] === 'exchange.granted').map((r) => r[5]).sort()).toEqual([plannerJti, leafJti, revokedJti].sort());
    expect(rows.some((r) => r[1] === 'revocation' && r[2] === 'revoked')).toBe(true);
  });

  it('finds the subject: every chain of alice', async () => {
    await search(`${IDP}|alice`, /^Subject /);
    const nodes = await graphNodes();
    expect(nodes.filter((n) => n.kind === 'human')).toHaveLength(1);
    const hops = nodes.filter((n) => n.kind === 'hop');
    expect(hops).toHaveLength(4);
    expect(hops.filter((n) => n.text.includes('planner-agent'))).toHaveLength(2);
    expect(hops.every((n) => !n.text.includes(XSS_SUB))).toBe(true);
    const rows = await eventRows();
    expect(rows.filter((r) => r[1] === 'exchange.granted')).toHaveLength(4);
    mkdirSync(OUTPUT, { recursive: true });
    await page.screenshot({ path: path.join(OUTPUT, 'chain-view-subject.png'), fullPage: true });
  });

  it('shows markup from the audit log as text, never runs it', async () => {
    await search(`${IDP}|${XSS_SUB}`, /^Subject /);
    const human = (await graphNodes()).find((n) => n.kind === 'human')!;
    expect(human.text).toContain(XSS_SUB);
    expect(await page.$$('#graph img, #events img')).toHaveLength(0);
    expect(await page.evaluate(() => (globalThis as unknown as { __xss?: number }).__xss)).toBeUndefined();
  });

  it('says so when nothing matches', async () => {
    await search('no-such-thing', /^Nothing found/);
    expect(await graphNodes()).toHaveLength(0);
  });

  it('ran without script errors or CSP violations', () => {
    expect(pageErrors).toEqual([]);
    expect(cspViolations).toEqual([]);
  });

  it('refuses the page and the API without a valid session', async () => {
    const jtiQuery = `/audit/view/api/trace?jti=${encodeURIComponent(leafJti)}`;
    for (const p of [jtiQuery, '/audit/view/api/events?task_id=x']) {
      const bare = await fetch(`${base}${p}`);
      expect(bare.status).toBe(401);
      expect(await bare.json()).toMatchObject({ error: 'unauthorized' });
      for (const [name, value] of Object.entries(CHAIN_VIEW_HEADERS)) expect(bare.headers.get(name)).toBe(value);
      const forged = await fetch(`${base}${p}`, { headers: { cookie: `${SESSION_COOKIE}=v1.${Math.floor(Date.now() / 1000) + 600}.${'A'.repeat(43)}` } });
      expect(forged.status).toBe(401);
    }
    const pageResponse = await fetch(`${base}/audit/view`);
    expect(pageResponse.status).toBe(401);
    expect(pageResponse.headers.get('content-type')).toMatch(/^text\/html/);
    expect(await pageResponse.text()).toContain('writ audit open');

    // With the browser's cookie the API answers, and only with GET.
    const cookie = (await context.cookies(`${base}/audit/view`)).find((c) => c.name === SESSION_COOKIE)!;
    const withCookie = { cookie: `${SESSION_COOKIE}=${cookie.value}` };
    const ok = await fetch(`${base}${jtiQuery}`, { headers: withCookie });
    expect(ok.status).toBe(200);
    expect((await ok.json() as { ancestry: unknown[] }).ancestry).toHaveLength(2);
    expect((await fetch(`${base}/audit/view/api/trace?jti=nope`, { headers: withCookie })).status).toBe(404);
    expect((await fetch(`${base}/audit/view/api/events?limit=0`, { headers: withCookie })).status).toBe(400);
    expect((await fetch(`${base}${jtiQuery}`, { method: 'POST', headers: withCookie })).status).toBe(405);
    expect((await fetch(`${base}/audit/view/login?token=x`, { method: 'HEAD' })).status).toBe(405);
    // Static assets: no session needed, never inline.
    const js = await fetch(`${base}/audit/view/app.js`);
    expect(js.headers.get('content-type')).toMatch(/^text\/javascript/);
    expect(js.headers.get('x-content-type-options')).toBe('nosniff');
  });

  it('lets writ audit open get a token from the running server with the local credential only', async () => {
    const post = (auth: string | undefined) => fetch(`${base}/audit/view/local/login`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...(auth ? { authorization: auth } : {}) },
      body: JSON.stringify({ created_by: 'writ audit open (tester)' }),
    });
    expect((await post(undefined)).status).toBe(401);
    expect((await post(`Bearer ${LOCAL_TOKEN.slice(0, -1)}x`)).status).toBe(401);
    const created = await post(`Bearer ${LOCAL_TOKEN}`);
    expect(created.status).toBe(201);
    const { token, expires_at } = await created.json() as { token: string; expires_at: string };
    expect(new Date(expires_at).getTime() - Date.now()).toBeGreaterThan(290_000);
    const login = await fetch(`${base}/audit/view/login?token=${token}`, { redirect: 'manual' });
    expect(login.status).toBe(303);
    expect(login.headers.get('location')).toBe('/audit/view');
    expect(login.headers.get('set-cookie')).toMatch(new RegExp(`^${SESSION_COOKIE}=v1\\.\\d+\\.[A-Za-z0-9_-]{43}; HttpOnly; SameSite=Strict; Path=/audit/view; Max-Age=28800$`));
    const actions = (await t.auditRows({ type: 'admin.action' })).map((r) => r.details as { action: string; created_by: string });
    expect(actions).toContainEqual(expect.objectContaining({ action: 'audit_view_login_created', created_by: 'local:writ audit open (tester)' }));
    expect(actions).toContainEqual(expect.objectContaining({ action: 'audit_view_login', created_by: 'local:writ audit open (tester)' }));
  });

  describe('writ audit open', () => {
    function cli(config: Config): { ctx: CliContext; out: string[]; err: string[] } {
      const out: string[] = [];
      const err: string[] = [];
      return { ctx: { config, logger: createLogger('silent'), out: (l) => out.push(l), err: (l) => err.push(l) }, out, err };
    }

    async function followPrintedUrl(out: string[]): Promise<Response> {
      const text = out.join('\n');
      expect(text).toContain('expires in 5 minutes');
      expect(text).toContain('works once');
      const match = new RegExp(`^  (${base.replace(/[.]/g, '\\.')}/audit/view/login\\?token=[A-Za-z0-9_-]{43})$`, 'm').exec(text);
      expect(match, text).not.toBeNull();
      return fetch(match![1]!, { redirect: 'manual' });
    }

    it('creates the login on the database (PostgreSQL) and prints a URL that signs in once', async () => {
      const { ctx, out } = cli({ ...t.config, issuer: base });
      expect(await auditOpen(ctx)).toBe(0);
      const login = await followPrintedUrl(out);
      expect(login.status).toBe(303);
      expect(login.headers.get('set-cookie')).toContain(`${SESSION_COOKIE}=`);
      await expect(auditOpen(ctx, ['extra'])).rejects.toThrow(/no arguments/);
    });

    it('asks the writ serve that holds the embedded data dir, with its local credential', async () => {
      const dataDir = mkdtempSync(path.join(tmpdir(), 'writ-audit-open-'));
      // A live process other than this one stands for the server's pid.
      const stand = spawn('sleep', ['60'], { stdio: 'ignore' });
      try {
        writeFileSync(path.join(dataDir, 'serve.json'), JSON.stringify({ pid: stand.pid, url: base, token: LOCAL_TOKEN }), { mode: 0o600 });
        const { ctx, out } = cli({ ...t.config, databaseUrl: undefined, dataDir, issuer: base });
        expect(await auditOpen(ctx)).toBe(0);
        expect((await followPrintedUrl(out)).status).toBe(303);

        writeFileSync(path.join(dataDir, 'serve.json'), JSON.stringify({ pid: stand.pid, url: base, token: 'wrong-token' }), { mode: 0o600 });
        const refused = cli({ ...t.config, databaseUrl: undefined, dataDir, issuer: base });
        expect(await auditOpen(refused.ctx)).toBe(1);
        expect(refused.err.join('\n')).toMatch(/refused to create a login: HTTP 401/);
      } finally {
        stand.kill();
        rmSync(dataDir, { recursive: true, force: true });
      }
    });

    it('opens the embedded database itself when no server holds it, and says a server is needed', async () => {
      const dataDir = mkdtempSync(path.join(tmpdir(), 'writ-audit-open-'));
      try {
        // An embedded database that a Writ has set up and stopped serving.
        const db = await openDatabase({ databaseUrl: undefined, dataDir });
        await migrate(db);
        await db.close();
        const { ctx, out, err } = cli({ ...t.config, databaseUrl: undefined, dataDir, issuer: base });
        expect(await auditOpen(ctx)).toBe(0);
        expect(out.join('\n')).toMatch(/\/audit\/view\/login\?token=/);
        expect(err.join('\n')).toContain('No writ serve is running');
      } finally {
        rmSync(dataDir, { recursive: true, force: true });
      }
    }, 60_000);
  });
});
