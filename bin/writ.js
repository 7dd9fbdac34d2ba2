#!/usr/bin/env node
// Node 24 runs Writ's TypeScript directly (type stripping); there is no build step.
import '../src/main.ts';
