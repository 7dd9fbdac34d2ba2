import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    globalSetup: ['test/global-setup.ts'],
    testTimeout: 30_000,
    hookTimeout: 60_000,
    pool: 'forks',
    // CI also writes a machine-readable report, from which .ci/run prints its closing line.
    reporters: process.env.CI ? ['default', ['json', { outputFile: 'test-output/vitest.json' }]] : ['default'],
  },
});
