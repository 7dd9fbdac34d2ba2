import { userInfo } from 'node:os';
import { loadConfig, type Config } from '../config.ts';
import { createLogger } from '../log.ts';
import type { Logger } from 'pino';

export interface CliContext {
  config: Config;
  logger: Logger;
  out: (line: string) => void;
  err: (line: string) => void;
}

export function cliContext(): CliContext {
  const config = loadConfig();
  // Server logs go to stdout as JSON; CLI commands only log warnings and worse to stderr.
  const logger = createLogger(process.env.LOG_LEVEL ?? 'warn', process.stderr as unknown as import('pino').DestinationStream);
  return {
    config,
    logger,
    out: (line) => process.stdout.write(`${line}\n`),
    err: (line) => process.stderr.write(`${line}\n`),
  };
}

export class UsageError extends Error {
  override name = 'UsageError';
}

/**
 * Who ran a command, as the audit record names it: `cli:<login>`. $USER first; a container or
 * cron job without it still has a user id.
 */
export function cliActor(): string {
  let name = process.env.USER;
  if (!name) {
    try {
      name = userInfo().username;
    } catch {
      // No passwd entry for this uid.
    }
  }
  return `cli:${name || 'unknown'}`;
}
