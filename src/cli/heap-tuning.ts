import v8 from 'node:v8';

/**
 * Node options that only node's command line takes: the npm scripts, the Dockerfile and the
 * bench pass them, and worker processes inherit them. `NODE_OPTIONS` refuses them, and
 * `v8.setFlagsFromString` is too late: V8 creates its memory reducer once, as it sets up the
 * heap, and only if the flag is on then.
 *
 * `--no-memory-reducer`: when the allocation rate falls after a busy spell, V8's memory reducer
 * runs a full collection that compacts the whole heap to hand memory back. In the bench, as the
 * load stepped down to 100 exchanges/s, that collection held Writ's event loop for 94 and
 * 101.5 ms (`reduce_memory=1` in `--trace-gc-nvp`; every other full collection took 3–16 ms),
 * and every request in flight waited with it; the 101.5 ms one came with the flag set at run
 * time. Without the reducer the heap stays at the size its busiest spell needed, which the
 * caches bound; a server is better off predictable than small.
 */
export const SERVING_NODE_FLAGS = ['--no-memory-reducer'] as const;

/** Which of SERVING_NODE_FLAGS this process was started without. */
export function missingServingFlags(execArgv: readonly string[] = process.execArgv): string[] {
  return SERVING_NODE_FLAGS.filter((flag) => !execArgv.includes(flag));
}

/**
 * V8 settings for a process that serves requests, applied before it starts serving.
 *
 * Allocation-site pretenuring: once most objects from one allocation site have survived young
 * collections, V8 allocates that site's objects straight into the old generation. In a request
 * server a burst of in-flight requests is enough to trip it for request objects, and each
 * pretenured request object then keeps whatever young objects it points to — the rest of its
 * request — alive through every young collection until the next full one. Measured in the open
 * loop at 1,000 exchanges/s (bench/README.md): 5.2–5.5 MB promoted per young collection with it
 * against 2.9 without, and pauses of 9.4–9.5 ms against 6.1.
 */
export function tuneHeapForServing(): void {
  v8.setFlagsFromString('--no-allocation-site-pretenuring');
}
