import { decodeJwt } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AT, EXECUTOR_AUD, createTestDatabase, startTestWrit, type TestWrit } from '../support/harness.ts';
import { expectEveryTokenRecorded } from '../support/expect.ts';
import { startStallingProxy, type StallingProxy } from '../support/stalling-proxy.ts';

/**
 * PostgreSQL that stops answering without closing anything (hung, or the network gone dark):
 * nothing comes back to cancel a statement, so Writ itself must give up on it.
 */
describe('PostgreSQL stops answering', () => {
  let t: TestWrit;
  let proxy: StallingProxy;
  beforeAll(async () => {
    proxy = await startStallingProxy(await createTestDatabase('stall'));
    t = await startTestWrit({ name: 'stall', databaseUrl: proxy.url });
  });
  afterAll(async () => {
    proxy?.resume();
    await t?.close();
    await proxy?.close();
  });

  it('answers 503 within 3.5 s of a statement going unanswered and at once after that, issues nothing unrecorded, and recovers within 5 s without a restart', async () => {
    const exchange = () => t.idp.token(t.issuer).then((subject) =>
      t.exchange('planner-agent', { subject_token: subject, subject_token_type: AT, audience: EXECUTOR_AUD }));
    expect((await exchange()).status).toBe(200);

    const issued: string[] = [];
    const answers: Array<{ sentAt: number; doneAt: number; status: number; error: unknown; token: boolean; retryAfter: string | null }> = [];
    let running = true;
    const worker = async (): Promise<void> => {
      while (running) {
        const sentAt = Date.now();
        const res = await exchange();
        answers.push({ sentAt, doneAt: Date.now(), status: res.status, error: res.body.error, token: res.body.access_token !== undefined, retryAfter: res.headers.get('retry-after') });
        if (res.status === 200) issued.push(decodeJwt(res.body.access_token as string).jti as string);
      }
    };
    const workers = Array.from({ length: 3 }, worker);
    let stalledAt = 0;
    let resumedAt = 0;
    try {
      await new Promise((r) => setTimeout(r, 300));
      proxy.stall();
      stalledAt = Date.now();
      await new Promise((r) => setTimeout(r, 4000));
      proxy.resume();
      resumedAt = Date.now();
      const atResume = answers.length;
      await expect.poll(() => answers.slice(atResume).some((a) => a.status === 200), { timeout: 5000, interval: 50 }).toBe(true);
    } finally {
      running = false;
      await Promise.all(workers);
    }

    // Every answer other than a token is the 503 of an unavailable store, and carries no token.
    for (const a of answers.filter((x) => x.status !== 200)) {
      expect([a.status, a.error, a.token, a.retryAfter]).toEqual([503, 'temporarily_unavailable', false, '1']);
    }
    // Requests in flight when the stall began, and those sent into it, were all answered in time.
    const inFlight = answers.filter((a) => a.sentAt < stalledAt && a.doneAt > stalledAt);
    expect(inFlight.length).toBeGreaterThan(0);
    for (const a of inFlight) expect(a.doneAt - stalledAt).toBeLessThan(3500);
    const during = answers.filter((a) => a.sentAt >= stalledAt && a.sentAt < resumedAt - 200);
    expect(during.length).toBeGreaterThan(10);
    for (const a of during) expect([a.status, a.doneAt - a.sentAt < 3500]).toEqual([503, true]);
    // Once the stall was found, requests were refused without waiting on PostgreSQL: not after
    // the pool's 2 s wait for a connection (the bound leaves room for a busy machine).
    const late = during.filter((a) => a.sentAt >= stalledAt + 3000);
    expect(late.length).toBeGreaterThan(5);
    for (const a of late) expect(a.doneAt - a.sentAt).toBeLessThan(1000);

    // Every token that left has its lineage row and its audit event.
    expect(issued.length).toBeGreaterThan(5);
    await expectEveryTokenRecorded(t, issued);
  }, 30_000);
});
