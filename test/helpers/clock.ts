/**
 * The fake Clock (src/clock.ts) for tests that assert durations: virtual
 * time that moves only when the test (or a sleep, with `autoAdvance`) moves
 * it, so a test proves "after 1 s" or "within 30 s" without waiting for it.
 *
 * - `advance(ms)` moves time forward, firing every timer and waking every
 *   sleep that falls due on the way, in time order.
 * - `autoAdvance: true`: a sleep moves time to its own end at once (a
 *   backoff or poll delay passes instantly, timers due before it fire).
 * - `sleeps` records every delay asked of `sleep`; `onSleep` sees each one
 *   (a test stops a loop after its n-th sleep).
 */
import type { Clock, Timer } from "../../src/clock.ts";

interface Entry {
  at: number;
  seq: number;
  fire: () => void;
}

export class FakeClock implements Clock {
  readonly sleeps: number[] = [];
  autoAdvance: boolean;
  onSleep: ((ms: number) => void) | undefined;
  readonly #epochMs: number;
  #nowMs = 0;
  #seq = 0;
  #entries: Entry[] = [];

  constructor(o: { start?: Date; autoAdvance?: boolean; onSleep?: (ms: number) => void } = {}) {
    this.#epochMs = (o.start ?? new Date("2026-01-01T00:00:00Z")).getTime();
    this.autoAdvance = o.autoAdvance ?? false;
    this.onSleep = o.onSleep;
  }

  now(): Date {
    return new Date(this.#epochMs + this.#nowMs);
  }

  monotonicMs(): number {
    return this.#nowMs;
  }

  /** Virtual milliseconds since the start. */
  get elapsedMs(): number {
    return this.#nowMs;
  }

  /** Timers and sleeps still waiting. */
  get pending(): number {
    return this.#entries.length;
  }

  /** When each waiting timer or sleep falls due, in virtual ms since the start. */
  get dueAt(): number[] {
    return this.#entries.map((e) => e.at);
  }

  sleep(ms: number, signal?: AbortSignal): Promise<void> {
    this.sleeps.push(ms);
    return new Promise<void>((resolve, reject) => {
      if (signal?.aborted) return reject(signal.reason);
      const onAbort = () => {
        this.#remove(entry);
        reject(signal?.reason);
      };
      const entry = this.#add(ms, () => {
        signal?.removeEventListener("abort", onAbort);
        resolve();
      });
      signal?.addEventListener("abort", onAbort, { once: true });
      this.onSleep?.(ms);
      if (this.autoAdvance && this.#entries.includes(entry)) this.advance(entry.at - this.#nowMs);
    });
  }

  timer(ms: number, fire: () => void): Timer {
    const wrapped = () => {
      entry = undefined;
      fire();
    };
    let entry: Entry | undefined = this.#add(ms, wrapped);
    return {
      refresh: () => {
        if (entry) this.#remove(entry);
        entry = this.#add(ms, wrapped);
      },
      cancel: () => {
        if (entry) this.#remove(entry);
        entry = undefined;
      },
    };
  }

  /** Move time forward by `ms`, firing what falls due in order (also what firing schedules). */
  advance(ms: number): void {
    const end = this.#nowMs + ms;
    for (;;) {
      const next = this.#entries[0];
      if (!next || next.at > end) break;
      this.#entries.shift();
      this.#nowMs = Math.max(this.#nowMs, next.at);
      next.fire();
    }
    this.#nowMs = Math.max(this.#nowMs, end);
  }

  #add(ms: number, fire: () => void): Entry {
    const entry = { at: this.#nowMs + Math.max(0, ms), seq: this.#seq++, fire };
    this.#entries.push(entry);
    this.#entries.sort((a, b) => a.at - b.at || a.seq - b.seq);
    return entry;
  }

  #remove(entry: Entry): void {
    this.#entries = this.#entries.filter((e) => e !== entry);
  }
}
