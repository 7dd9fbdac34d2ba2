import type { ParameterizedContext } from 'koa';
import type { RateLimit } from '../policy/model.ts';

export interface RateDecision {
  ok: boolean;
  /** Whole requests left in the bucket after this one. */
  remaining: number;
  /** Bucket size. */
  limit: number;
  /** Seconds until a request would be allowed (0 when ok). */
  retryAfter: number;
  /** Seconds until the bucket is full again. */
  reset: number;
  /** Seconds the bucket takes to refill from empty: the window its `limit` is a quota for. */
  window: number;
}

interface Bucket {
  tokens: number;
  at: number;
}

function burstOf(limit: RateLimit): number {
  return limit.burst ?? Math.max(1, Math.ceil(limit.per_second));
}

/**
 * Token buckets kept in this process: limits are per instance (documented as such), so N
 * instances behind a balancer allow up to N times a limit. Memory is bounded: full buckets are
 * dropped first when there are too many keys.
 */
export class RateLimiter {
  private readonly buckets = new Map<string, Bucket>();
  private readonly maxKeys: number;
  private readonly clock: () => number;

  constructor(options: { maxKeys?: number; now?: () => number } = {}) {
    this.maxKeys = options.maxKeys ?? 100_000;
    this.clock = options.now ?? (() => performance.now() / 1000);
  }

  private refill(key: string, limit: RateLimit, now: number): Bucket {
    const burst = burstOf(limit);
    const bucket = this.buckets.get(key);
    if (!bucket) {
      if (this.buckets.size >= this.maxKeys) this.evict(now);
      const fresh = { tokens: burst, at: now };
      this.buckets.set(key, fresh);
      return fresh;
    }
    bucket.tokens = Math.min(burst, bucket.tokens + (now - bucket.at) * limit.per_second);
    bucket.at = now;
    return bucket;
  }

  private decision(bucket: Bucket, limit: RateLimit, ok: boolean): RateDecision {
    const burst = burstOf(limit);
    return {
      ok,
      remaining: Math.max(0, Math.floor(bucket.tokens)),
      limit: burst,
      retryAfter: ok ? 0 : Math.ceil((1 - bucket.tokens) / limit.per_second),
      reset: Math.ceil((burst - bucket.tokens) / limit.per_second),
      window: Math.max(1, Math.ceil(burst / limit.per_second)),
    };
  }

  /** Spends one request if there is one. */
  take(key: string, limit: RateLimit): RateDecision {
    const bucket = this.refill(key, limit, this.clock());
    const ok = bucket.tokens >= 1;
    if (ok) bucket.tokens -= 1;
    return this.decision(bucket, limit, ok);
  }

  /** Whether a request would be allowed, spending nothing (failed attempts are spent afterwards). */
  peek(key: string, limit: RateLimit): RateDecision {
    const bucket = this.refill(key, limit, this.clock());
    return this.decision(bucket, limit, bucket.tokens >= 1);
  }

  /** Spends one request whether or not there is one (a failure that already happened). */
  spend(key: string, limit: RateLimit): void {
    const bucket = this.refill(key, limit, this.clock());
    bucket.tokens = Math.max(-burstOf(limit), bucket.tokens - 1);
  }

  private evict(now: number): void {
    for (const [key, b] of this.buckets) {
      if (now - b.at > 60) this.buckets.delete(key);
    }
    if (this.buckets.size >= this.maxKeys) this.buckets.clear();
  }
}

/**
 * RFC 6585 429 with Retry-After, and the RateLimit header fields clients read: both the
 * `RateLimit-Limit`/`-Remaining`/`-Reset` trio most clients know and the structured `RateLimit`
 * and `RateLimit-Policy` fields of the IETF draft that replaces it (draft-ietf-httpapi-ratelimit-
 * headers: a quota `q` per window `w` seconds; `r` left, reset in `t` seconds).
 */
export function setRateLimitHeaders(ctx: ParameterizedContext, d: RateDecision): void {
  ctx.set('RateLimit-Limit', String(d.limit));
  ctx.set('RateLimit-Remaining', String(d.remaining));
  ctx.set('RateLimit-Reset', String(d.reset));
  ctx.set('RateLimit-Policy', `"writ";q=${d.limit};w=${d.window}`);
  ctx.set('RateLimit', `"writ";r=${d.remaining};t=${d.reset}`);
  if (!d.ok) ctx.set('Retry-After', String(Math.max(1, d.retryAfter)));
}

export const DEFAULT_AUTH_FAILURE_LIMIT: RateLimit = { per_second: 1, burst: 10 };

/**
 * Failed client authentications are counted per client id from one address, at the policy's
 * limit, and per address for any client id, at this many times it. Failures for a client id
 * from other addresses never lock it out: nobody can deny a client its endpoints by sending
 * wrong secrets in its name. One address still cannot try client ids without bound, and the
 * clients behind one shared address (a NAT) do not lock one another out until that address as
 * a whole has failed ten times as often.
 */
export const ADDRESS_FAILURE_FACTOR = 10;

export function addressFailureLimit(limit: RateLimit): RateLimit {
  return { per_second: limit.per_second * ADDRESS_FAILURE_FACTOR, burst: burstOf(limit) * ADDRESS_FAILURE_FACTOR };
}
