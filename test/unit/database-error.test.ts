import { describe, expect, it } from 'vitest';
import { databaseFailure, databaseLocation } from '../../src/cli/database-error.ts';

describe('a database failure as the CLI says it', () => {
  it('names where DATABASE_URL points, never its credentials', () => {
    expect(databaseLocation('postgres://writ:s3cret@db.internal:5433/writ')).toBe('db.internal:5433/writ');
    expect(databaseLocation('postgres://writ:s3cret@db.internal/writ')).toBe('db.internal/writ');
    // A raw '/' in the password makes the parser end the host inside the password: its tail
    // lands in the path (and its first digits in the port). Nothing of such a URL is said.
    expect(databaseLocation('postgres://writ:9876/xyz@db/writ')).toBe('DATABASE_URL');
    expect(databaseLocation('not a url')).toBe('DATABASE_URL');
  });

  it.each([
    ['ECONNREFUSED', 69], ['ENOTFOUND', 69], ['08006', 69], ['57P03', 69], ['53300', 69],
    ['3D000', 78], ['28P01', 78], ['28000', 78],
  ])('%s exits %i', (code, exitCode) => {
    const err = Object.assign(new Error('boom'), { code });
    expect(databaseFailure(err, 'postgres://u:pw@h:5432/d')).toEqual({ message: expect.stringContaining('(h:5432/d): boom'), exitCode });
  });

  it('leaves any other error, and a command without DATABASE_URL, to the generic path', () => {
    expect(databaseFailure(Object.assign(new Error('x'), { code: '42P01' }), 'postgres://h/d')).toBeUndefined();
    expect(databaseFailure(new Error('x'), 'postgres://h/d')).toBeUndefined();
    expect(databaseFailure(Object.assign(new Error('x'), { code: 'ECONNREFUSED' }), undefined)).toBeUndefined();
  });
});
