import { decodeJwt } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AT, EXECUTOR_AUD, createTestDatabase, startTestWrit, type TestWrit } from '../support/harness.ts';
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

  it('answers 503 within 3.5 s of a statement going unanswered, issues nothing unrecorded, and recovers within 5 s without a restart', async () => {
    const exchange = () => t.idp.token(t.issuer).then((subject) =>
      t.exchange('planner-agent', { subject_token: subject, subject_token_type: AT, audience: EXECUTOR_AUD }));
    expect((await exchange()).status).toBe(200);

    const issued: string[] = [];
    const answers: Array<{ sentAt: number; ms: number; status: number }> = [];
    let running = true;
    const worker = async (): Promise<void> => {
      while (running) {
        const sentAt = Date.now();
        const res = await exchange();
        answers.push({ sentAt, ms: Date.now() - sentAt, status: res.status });
        if (res.status === 200) issued.push(decodeJwt(res.body.access_token as string).jti as string);
        else {
          expect(res.status).toBe(503);
          expect(res.body.error).toBe('temporarily_unavailable');
          expect(res.body.access_token).toBeUndefined();
          expect(res.headers.get('retry-after')).toBe('1');
        }
      }
    };
    const workers = Array.from({ length: 3 }, worker);
    try {
    await new Promise((r) => setTimeout(r, 300));

    proxy.stall();
    const stalledAt = Date.now();
    await new Promise((r) => setTimeout(r, 4000));
    const during = answers.filter((a) => a.sentAt >= stalledAt);
    // Every request sent into the stall was answered, 503, and none waited past the limit.
    expect(during.length).toBeGreaterThan(0);
    expect(during.every((a) => a.status === 503)).toBe(true);
    expect(Math.max(...during.map((a) => a.ms))).toBeLessThan(3500);
    // Requests in flight when it began were answered too.
    const inFlight = answers.filter((a) => a.sentAt < stalledAt && a.sentAt + a.ms > stalledAt);
    expect(Math.max(...inFlight.map((a) => a.sentAt + a.ms - stalledAt))).toBeLessThan(3500);

    proxy.resume();
    const resumedAt = Date.now();
    const atResume = answers.length;
    await expect.poll(() => answers.slice(atResume).some((a) => a.status === 200), { timeout: 5000, interval: 50 }).toBe(true);
    expect(Date.now() - resumedAt).toBeLessThan(5000);
    } finally {
      running = false;
      await Promise.all(workers);
    }

    // Every token that left has its lineage row and its audit event.
    expect(issued.length).toBeGreaterThan(5);
    const recorded = await t.writ.db.knex('audit_events').where({ type: 'exchange.granted' }).whereIn('jti', issued).count<Array<{ count: number }>>('* as count');
    expect(Number(recorded[0]!.count)).toBe(issued.length);
    const lineage = await t.writ.db.knex('token_lineage').whereIn('jti', issued).count<Array<{ count: number }>>('* as count');
    expect(Number(lineage[0]!.count)).toBe(issued.length);
  }, 30_000);
});
