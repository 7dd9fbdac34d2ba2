import { userInfo } from 'node:os';
import { afterEach, describe, expect, it } from 'vitest';
import { cliActor } from '../../src/cli/context.ts';

describe('the actor a CLI command is recorded as', () => {
  const saved = process.env.USER;
  afterEach(() => {
    if (saved === undefined) delete process.env.USER;
    else process.env.USER = saved;
  });

  it('is $USER when set', () => {
    process.env.USER = 'ops-alice';
    expect(cliActor()).toBe('cli:ops-alice');
  });

  it('is the login of the process’s user without $USER (cron, containers), not "unknown"', () => {
    delete process.env.USER;
    expect(cliActor()).toBe(`cli:${userInfo().username}`);
    expect(cliActor()).not.toBe('cli:unknown');
  });
});
