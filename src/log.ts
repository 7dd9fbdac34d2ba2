import pino, { type Logger } from 'pino';

/**
 * JSON logs. Writ never logs request bodies or headers that can carry credentials; the redact
 * list is a second line of defence should one slip into a log object.
 */
export function createLogger(level: string, destination?: pino.DestinationStream): Logger {
  return pino({
    level,
    base: { service: 'writ' },
    redact: {
      paths: [
        'authorization', '*.authorization', 'headers.authorization', '*.headers.authorization',
        'subject_token', 'actor_token', 'client_secret', 'client_assertion', 'token', 'access_token',
        '*.subject_token', '*.actor_token', '*.client_secret', '*.client_assertion', '*.token', '*.access_token',
        'secret', '*.secret',
      ],
      censor: '[redacted]',
    },
  }, destination);
}

/**
 * A warning that may repeat many times a second (every pooled connection PostgreSQL refuses
 * during an outage): logged once per window, the next one carrying how many were left out.
 */
export function throttledWarning(logger: Logger, msg: string, windowMs = 5000, now: () => number = Date.now): (message: string) => void {
  const last = new Map<string, { at: number; suppressed: number }>();
  return (message) => {
    const t = now();
    const seen = last.get(message);
    if (seen && t - seen.at < windowMs) {
      seen.suppressed++;
      return;
    }
    if (last.size > 100) last.clear();
    last.set(message, { at: t, suppressed: 0 });
    logger.warn({ message, ...(seen?.suppressed ? { repeated: seen.suppressed } : {}) }, msg);
  };
}
