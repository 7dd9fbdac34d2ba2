import type { Logger } from 'pino';
import type { Database } from '../store/db.ts';
import { compilePolicy } from './compile.ts';
import type { CompiledPolicy } from './compiled.ts';
import type { PolicyDocument } from './model.ts';
import { currentVersion, currentVersionNumber, loadCredentials, POLICY_CHANNEL } from './store.ts';

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

  /** Loads the newest version if it differs from the one in force. */
  async reload(): Promise<void> {
    this.loading ??= (async () => {
      try {
        const stored = await currentVersion(this.db.knex);
        if ((stored?.version ?? 0) === this.policy.version && this.policy.version !== 0) return;
        const credentials = await loadCredentials(this.db.knex);
        this.policy = compilePolicy(stored?.document ?? EMPTY, stored?.version ?? 0);
        this.credentials = credentials;
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
      const version = await currentVersionNumber(this.db.knex);
      if (version !== this.policy.version) await this.reload();
    } catch (err) {
      this.logger.warn({ err: (err as Error).message }, 'policy version check failed');
    }
  }
}
