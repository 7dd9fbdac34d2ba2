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
