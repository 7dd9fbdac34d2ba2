import { describe, expect, it } from 'vitest';
import type { Logger } from 'pino';
import { throttledWarning } from '../../src/log.ts';

describe('throttledWarning', () => {
  const capture = () => {
    const lines: Array<{ fields: Record<string, unknown>; msg: string }> = [];
    const logger = { warn: (fields: Record<string, unknown>, msg: string) => lines.push({ fields, msg }) } as unknown as Logger;
    return { logger, lines };
  };

  it('logs a message repeated many times a second once per window, then with how many were left out', () => {
    const { logger, lines } = capture();
    let t = 1_000;
    const warn = throttledWarning(logger, 'database', 5000, () => t);
    for (let i = 0; i < 50; i++) warn('Acquire connection error: connect ECONNREFUSED');
    expect(lines).toEqual([{ fields: { message: 'Acquire connection error: connect ECONNREFUSED' }, msg: 'database' }]);
    t += 4_999;
    warn('Acquire connection error: connect ECONNREFUSED');
    expect(lines).toHaveLength(1);
    t += 1;
    warn('Acquire connection error: connect ECONNREFUSED');
    expect(lines).toHaveLength(2);
    expect(lines[1]).toEqual({ fields: { message: 'Acquire connection error: connect ECONNREFUSED', repeated: 50 }, msg: 'database' });
  });

  it('does not hold back a different message', () => {
    const { logger, lines } = capture();
    const warn = throttledWarning(logger, 'database', 5000, () => 0);
    warn('a');
    warn('b');
    warn('a');
    expect(lines.map((l) => l.fields.message)).toEqual(['a', 'b']);
  });
});
