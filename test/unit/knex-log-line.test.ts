import { describe, expect, it } from 'vitest';
import { knexLogLine } from '../../src/store/db.ts';

const URL = 'postgres://writ:s3cret%2Fpw@db.internal:5432/writ';

describe('knexLogLine', () => {
  it('keeps the message and drops the stack knex appends', () => {
    const err = new Error('connect ECONNREFUSED 127.0.0.1:5999');
    expect(knexLogLine(`Acquire connection error: ${err.stack}`, URL)).toBe('Acquire connection error: Error: connect ECONNREFUSED 127.0.0.1:5999');
  });

  it('never passes on the password of DATABASE_URL, written or decoded, or of any URL it quotes', () => {
    const line = knexLogLine(`could not use ${URL}: password s3cret/pw (s3cret%2Fpw) refused; also postgres://other:hunter22@x/y`, URL);
    expect(line).not.toContain('s3cret');
    expect(line).not.toContain('hunter22');
    expect(line).toBe('could not use postgres://writ:***@db.internal:5432/writ: password *** (***) refused; also postgres://other:***@x/y');
  });

  it('masks a quoted password with a raw "@" in it whole, and keeps a line that merely starts with "at"', () => {
    expect(knexLogLine('tried postgres://u:p@ss@w0rd@host:5432/db', URL)).toBe('tried postgres://u:***@host:5432/db');
    expect(knexLogLine('tried postgres://u:pa/ss@host/db and more', URL)).toBe('tried postgres://u:***@host/db and more');
    expect(knexLogLine('pool is full\n  at least one connection is stuck', URL)).toBe('pool is full at least one connection is stuck');
  });

  it('takes an Error as its message', () => {
    expect(knexLogLine(new Error('Timeout acquiring a connection'), URL)).toBe('Timeout acquiring a connection');
  });
});
