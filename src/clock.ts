/**
 * Time, as one seam (STYLE.md point 12): the wall clock, a monotonic clock
 * for durations, sleeping and timers. Whatever waits or measures (the agent's
 * daemon loop, the repo client's stall timer and backoff, the installer's
 * progress recorder, health-check timeouts) takes a Clock; tests that assert
 * a duration pass the fake one (test/helpers/clock.ts), which advances
 * virtual time, and never sleep.
 */
import { setTimeout as sleep } from "node:timers/promises";

/** A pending callback: `refresh()` restarts its full delay (also after it fired), `cancel()` stops it. */
export interface Timer {
  refresh(): void;
  cancel(): void;
}

export interface Clock {
  /** Wall-clock time: for records (state file, logs) and expiry checks. */
  now(): Date;
  /** Milliseconds on a clock that never jumps: for measuring durations. */
  monotonicMs(): number;
  /** Resolves after `ms`, or rejects with the signal's reason when it aborts. */
  sleep(ms: number, signal?: AbortSignal): Promise<void>;
  /** Calls `fire` once after `ms`. */
  timer(ms: number, fire: () => void): Timer;
}

export const systemClock: Clock = {
  now: () => new Date(),
  monotonicMs: () => performance.now(),
  sleep: (ms, signal) => sleep(ms, undefined, signal ? { signal } : {}),
  timer(ms, fire) {
    const t = setTimeout(fire, ms);
    return {
      refresh: () => void t.refresh(),
      cancel: () => clearTimeout(t),
    };
  },
};

/**
 * The system clock with its wall time moved by `offsetMs()` (read at every
 * `now()`): sleeps and timers stay real. For tests that run agent processes
 * and move their idea of the date forward (src/updater README.md, "A clock
 * for tests"); never on a host.
 */
export function offsetClock(offsetMs: () => number): Clock {
  return { ...systemClock, now: () => new Date(Date.now() + offsetMs()) };
}
