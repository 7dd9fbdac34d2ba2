import v8 from 'node:v8';

/**
 * Node options every shipped way of starting Writ puts on the command line (the package's
 * scripts, `bin/writ.js`, `src/main.ts`'s shebang, the Dockerfile, the bench); worker processes
 * inherit them. They cannot be set from inside: NODE_OPTIONS refuses them, and set at run time
 * the first did not take (below).
 *
 * `--no-memory-reducer`: when the allocation rate falls after a busy spell, V8's memory reducer
 * runs a full collection that compacts the whole heap to hand memory back. In the bench, as the
 * load stepped down to 100 exchanges/s, that collection held Writ's event loop for 94 and 101 ms
 * (`reduce_memory=1` in `--trace-gc-nvp`; every other full collection took 3–16 ms), and every
 * request in flight waited with it. Without the reducer the heap stays at the size its busiest
 * spell needed, which the caches bound; a server is better off predictable than small.
 * `v8.setFlagsFromString` at start left the reducer running: a 101.5 ms `reduce_memory=1`
 * pause in the next full bench.
 */
export const SERVING_NODE_FLAGS = ['--no-memory-reducer'] as const;

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
