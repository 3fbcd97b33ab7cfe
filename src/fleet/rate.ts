/**
 * Token buckets per key (a machine id): `burst` reports at once, refilled at
 * `perSecond`. A full bucket is the same as no bucket, so when the map grows
 * past `maxKeys` the full ones are dropped: memory stays bounded by the hosts
 * that reported recently.
 */
export interface RateOptions {
  burst: number;
  perSecond: number;
  maxKeys?: number;
}

export const DEFAULT_RATE: RateOptions = { burst: 30, perSecond: 0.5 };

export class RateLimiter {
  private readonly buckets = new Map<string, { tokens: number; at: number }>();
  private readonly o: Required<RateOptions>;
  private readonly monotonicMs: () => number;

  constructor(o: RateOptions, monotonicMs: () => number) {
    this.o = { maxKeys: 200_000, ...o };
    this.monotonicMs = monotonicMs;
  }

  /** 0 when `key` may go now (a token taken), else the milliseconds until it may. */
  take(key: string): number {
    const now = this.monotonicMs();
    const b = this.buckets.get(key) ?? { tokens: this.o.burst, at: now };
    b.tokens = Math.min(this.o.burst, b.tokens + ((now - b.at) / 1000) * this.o.perSecond);
    b.at = now;
    if (b.tokens < 1) {
      this.buckets.set(key, b);
      return Math.ceil(((1 - b.tokens) / this.o.perSecond) * 1000);
    }
    b.tokens -= 1;
    this.buckets.set(key, b);
    if (this.buckets.size > this.o.maxKeys) this.sweep(now);
    return 0;
  }

  private sweep(now: number): void {
    for (const [k, b] of this.buckets)
      if (b.tokens + ((now - b.at) / 1000) * this.o.perSecond >= this.o.burst)
        this.buckets.delete(k);
  }
}
