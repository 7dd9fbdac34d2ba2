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
