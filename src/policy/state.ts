import type { Logger } from 'pino';
import type { Database } from '../store/db.ts';
import { compilePolicy } from './compile.ts';
import type { CompiledPolicy } from './compiled.ts';
import type { ClientPolicy, PolicyDocument } from './model.ts';
import { currentVersion, loadBootstrapAdmins, loadCredentials, policyStamp, POLICY_CHANNEL } from './store.ts';

const EMPTY: PolicyDocument = { issuers: [], clients: [], audiences: [], rules: [], settings: { max_depth_cap: 5 } };

/**
 * The policy every decision on this instance reads: compiled once per version, swapped
 * atomically, reloaded on NOTIFY and by a periodic version check as backstop.
 */
export class PolicyState {
  policy: CompiledPolicy = compilePolicy(EMPTY, 0);
  credentials: ReadonlyMap<string, string> = new Map();
  private timer: NodeJS.Timeout | undefined;
  private unlisten: (() => Promise<void>) | undefined;
  private loading: Promise<void> | undefined;
  /** What was loaded: the version, bootstrap admins and credentials it reflects. */
  private stamp = '';
  private readonly listeners: Array<(policy: CompiledPolicy) => void> = [];
  private readonly db: Database;
  private readonly logger: Logger;
  private readonly pollMs: number;

  constructor(db: Database, logger: Logger, options: { pollMs?: number } = {}) {
    this.db = db;
    this.logger = logger;
    this.pollMs = options.pollMs ?? 500;
  }

  onChange(listener: (policy: CompiledPolicy) => void): void {
    this.listeners.push(listener);
  }

  async start(): Promise<void> {
    await this.reload();
    this.unlisten = await this.db.listen(POLICY_CHANNEL, () => void this.reload().catch(() => undefined));
    this.timer = setInterval(() => void this.check(), this.pollMs);
    this.timer.unref();
  }

  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    await this.unlisten?.();
  }

  /** Loads the newest policy if anything it depends on changed since the last load. */
  async reload(): Promise<void> {
    this.loading ??= (async () => {
      try {
        const stamp = await policyStamp(this.db.knex);
        if (stamp === this.stamp) return;
        const [stored, credentials, admins] = await Promise.all([
          currentVersion(this.db.knex), loadCredentials(this.db.knex), loadBootstrapAdmins(this.db.knex),
        ]);
        const document = stored?.document ?? EMPTY;
        const ids = new Set(document.clients.map((c) => c.client_id));
        // Bootstrapped admins live outside policy versions; a policy client of the same id wins.
        const clients: ClientPolicy[] = [...document.clients, ...admins.filter((a) => !ids.has(a.client_id))];
        this.policy = compilePolicy({ ...document, clients }, stored?.version ?? 0);
        this.credentials = credentials;
        this.stamp = stamp;
        this.logger.info({ policyVersion: this.policy.version }, 'policy loaded');
        for (const listener of this.listeners) listener(this.policy);
      } finally {
        this.loading = undefined;
      }
    })();
    return this.loading;
  }

  private async check(): Promise<void> {
    try {
      if (await policyStamp(this.db.knex) !== this.stamp) await this.reload();
    } catch (err) {
      this.logger.warn({ err: (err as Error).message }, 'policy version check failed');
    }
  }
}
