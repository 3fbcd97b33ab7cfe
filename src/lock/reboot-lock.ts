/**
 * The reboot lock: the procedures of README.md ("Acquire", "Release",
 * "Operator") as loops of read snapshot → pure plan → one compare-and-swap
 * transaction, retried a bounded number of times when another host wrote
 * in between.
 */
import { type Clock, systemClock } from "../clock.ts";
import { isBaseError } from "../errors.ts";
import type { Logger } from "../log.ts";
import { LockError } from "./errors.ts";
import { type EtcdEndpointOptions, EtcdGateway, type KeyValue, type Op } from "./etcd.ts";
import {
  compares,
  planAcquire,
  planRelease,
  planSetMax,
  recordPut,
  type Snapshot,
  toSnapshot,
} from "./plan.ts";
import {
  encodeSemaphore,
  holderIdProblem,
  publicSemaphore,
  recordKey,
  recordPrefix,
  type Semaphore,
  salvageHolders,
  semaphoreKey,
} from "./semaphore.ts";

export const DEFAULT_LOCK_TTL_MS = 30 * 60_000;
/** Compare-and-swap attempts lost in a row before REBOOT_LOCK_CONFLICT. */
export const DEFAULT_MAX_ATTEMPTS = 20;

export interface RebootLockOptions extends EtcdEndpointOptions {
  /** Locksmith's group; null: the default semaphore. */
  group: string | null;
  /** How long a holder may take to confirm (release) before another host may remove it. */
  lockTTLMs: number;
  log: Logger;
  /** Sleeps between lost compare-and-swaps (default: the system clock). */
  clock?: Clock;
  /** [0, 1) for the backoff's jitter (default Math.random). */
  random?: () => number;
  maxAttempts?: number;
}

export interface HolderStatus {
  id: string;
  /** true: its record's lease expired; false: it has a live record; null: no record was ever written (locksmith). */
  stale: boolean | null;
  /** What its record's lease has left, null without a record. */
  ttlRemainingMs: number | null;
}

const RETRY = Symbol("retry");

export class RebootLock {
  readonly key: string;
  readonly #etcd: EtcdGateway;
  readonly #o: RebootLockOptions;
  readonly #clock: Clock;
  readonly #random: () => number;
  readonly #maxAttempts: number;

  constructor(o: RebootLockOptions) {
    if (!(o.lockTTLMs > 0)) throw new RangeError(`lockTTLMs must be positive, got ${o.lockTTLMs}`);
    this.key = semaphoreKey(o.group);
    this.#o = o;
    this.#etcd = new EtcdGateway(o, o.log);
    this.#clock = o.clock ?? systemClock;
    this.#random = o.random ?? Math.random;
    this.#maxAttempts = o.maxAttempts ?? DEFAULT_MAX_ATTEMPTS;
  }

  get endpoints(): readonly string[] {
    return this.#etcd.endpoints;
  }

  /**
   * Take a place (README.md, "Acquire"). Not acquired when the semaphore is
   * full after stale holders were removed; the caller asks again later.
   */
  async acquire(
    id: string,
  ): Promise<{ acquired: boolean; semaphore: Semaphore; removedStale: string[] }> {
    checkId(id);
    let lease: string | null = null;
    let leaseUsed = false;
    const r = await this.#retry(async () => {
      const s = await this.#snapshot();
      const p = planAcquire(s, id);
      if (p.next === null) return { acquired: false, s, next: s.value, removedStale: [] };
      const ops: Op[] = [{ put: { key: this.key, value: encodeSemaphore(p.next) } }];
      if (p.putRecord) {
        lease ??= await this.#etcd.leaseGrant(this.#leaseTtlS(), this.key);
        ops.push(recordPut(this.key, id, lease));
      }
      const t = await this.#etcd.txn(compares(s, p.removedStale), ops, this.key);
      if (!t.succeeded) return RETRY;
      leaseUsed = p.putRecord;
      return { acquired: p.acquired, s, next: p.next, removedStale: p.removedStale };
    }).catch(async (err: unknown) => {
      // Every compare lost: the lease is certainly unused. (After any other
      // error a write may have been applied; its lease then expires by itself.)
      if (err instanceof LockError && err.code === "REBOOT_LOCK_CONFLICT" && lease !== null) {
        await this.#revokeQuietly(lease);
      }
      throw err;
    });
    for (const h of r.removedStale) {
      this.#o.log.warn(
        { key: this.key, holder: h },
        `removed stale holder ${h} (no confirmation within TTL)`,
      );
    }
    const old = r.s.records.get(id)?.lease;
    if (leaseUsed && old !== undefined && old !== "0" && old !== lease) {
      await this.#revokeQuietly(old); // the renewed record moved to the new lease
    }
    if (lease !== null && !leaseUsed) await this.#revokeQuietly(lease);
    if (r.acquired) {
      this.#o.log.info(
        { key: this.key, holder: id, free: r.next.semaphore, max: r.next.max },
        "holding a reboot lock place",
      );
    }
    return {
      acquired: r.acquired,
      semaphore: publicSemaphore(r.next),
      removedStale: r.removedStale,
    };
  }

  /** Give this host's place back (README.md, "Release"); not a holder: false, nothing written. */
  release(id: string): Promise<{ released: boolean; semaphore: Semaphore }> {
    return this.#remove(id, "released its reboot lock place");
  }

  /** The operator removes any holder (locksmithctl unlock); same procedure as release. */
  unlock(id: string): Promise<{ released: boolean; semaphore: Semaphore }> {
    return this.#remove(id, "removed a reboot lock holder (operator)");
  }

  /** The semaphore, its holders and their records; a missing key is shown as locksmith would create it, and not created. */
  async status(): Promise<{
    key: string;
    /** False: the key is missing (the first acquire creates it with max 1). */
    exists: boolean;
    semaphore: Semaphore;
    holders: HolderStatus[];
  }> {
    const s = await this.#snapshot();
    const leased = new Set(s.value.leased);
    const holders: HolderStatus[] = [];
    for (const id of s.value.holders) {
      const rec = s.records.get(id);
      let ttlRemainingMs: number | null = null;
      if (rec && rec.lease !== "0") {
        const ttlS = await this.#etcd.leaseTimeToLive(rec.lease, this.key);
        ttlRemainingMs = Math.max(0, ttlS) * 1000;
      }
      const stale = leased.has(id) ? rec === undefined : null;
      holders.push({ id, stale, ttlRemainingMs: stale === true ? 0 : ttlRemainingMs });
    }
    return { key: this.key, exists: s.exists, semaphore: publicSemaphore(s.value), holders };
  }

  /**
   * Set the number of places (README.md, "Operator"); creates a missing key.
   * A bad value is repaired: the holders that can be read stay, and a
   * warning shows what was there.
   */
  async setMax(max: number): Promise<Semaphore> {
    if (!Number.isSafeInteger(max) || max < 0)
      throw new RangeError(`max must be an integer of 0 or more, got ${max}`);
    return this.#retry(async () => {
      const raw = await this.#read();
      let s: Snapshot;
      try {
        s = toSnapshot(this.key, raw.sem, raw.records);
      } catch (err) {
        if (!(err instanceof LockError && err.code === "REBOOT_LOCK_BAD_VALUE")) throw err;
        const holders = salvageHolders(raw.sem?.value ?? new Uint8Array());
        this.#o.log.warn(
          { key: this.key, err, keptHolders: holders },
          "repairing a bad reboot semaphore value",
        );
        s = {
          key: this.key,
          exists: true,
          modRevision: raw.sem?.modRevision ?? "0",
          value: { semaphore: 0, max: 0, holders, leased: [] },
          records: new Map(),
        };
      }
      const next = planSetMax(s.value.holders, s.value.leased, max);
      const t = await this.#etcd.txn(
        compares(s),
        [{ put: { key: this.key, value: encodeSemaphore(next) } }],
        this.key,
      );
      if (!t.succeeded) return RETRY;
      this.#o.log.info(
        { key: this.key, max, was: s.exists ? s.value.max : null, free: next.semaphore },
        "set the reboot semaphore's max",
      );
      return publicSemaphore(next);
    });
  }

  async #remove(id: string, what: string): Promise<{ released: boolean; semaphore: Semaphore }> {
    checkId(id);
    const r = await this.#retry(async () => {
      const s = await this.#snapshot();
      const p = planRelease(s, id);
      if (p.next === null) return { released: false, next: s.value, lease: null };
      const t = await this.#etcd.txn(
        compares(s),
        [
          { put: { key: this.key, value: encodeSemaphore(p.next) } },
          { delete: { key: recordKey(this.key, id) } },
        ],
        this.key,
      );
      if (!t.succeeded) return RETRY;
      return { released: true, next: p.next, lease: p.lease };
    });
    if (r.lease !== null && r.lease !== "0") await this.#revokeQuietly(r.lease);
    if (r.released) {
      this.#o.log.info(
        { key: this.key, holder: id, free: r.next.semaphore, max: r.next.max },
        what,
      );
    }
    return { released: r.released, semaphore: publicSemaphore(r.next) };
  }

  /** The semaphore key and the record keys, read in one transaction: one revision. */
  async #read(): Promise<{ sem: KeyValue | undefined; records: KeyValue[] }> {
    const t = await this.#etcd.txn(
      [],
      [
        { range: { key: this.key } },
        { range: { key: recordPrefix(this.key), prefix: true, keysOnly: true } },
      ],
      this.key,
    );
    return {
      sem: (t.ranges[0] ?? []).find((kv) => kv.key === this.key),
      records: t.ranges[1] ?? [],
    };
  }

  async #snapshot(): Promise<Snapshot> {
    const raw = await this.#read();
    return toSnapshot(this.key, raw.sem, raw.records);
  }

  async #retry<T>(attempt: () => Promise<T | typeof RETRY>): Promise<T> {
    for (let n = 1; ; n++) {
      const r = await attempt();
      if (r !== RETRY) return r;
      if (n >= this.#maxAttempts) {
        throw new LockError(
          "REBOOT_LOCK_CONFLICT",
          `the reboot semaphore ${this.key} changed under ${n} compare-and-swaps in a row (at ${this.#etcd.currentEndpoint}); other hosts keep writing it`,
          { details: { key: this.key, attempts: n, endpoint: this.#etcd.currentEndpoint } },
        );
      }
      // Jittered exponential backoff, so racing hosts spread out.
      await this.#clock.sleep(Math.floor(this.#random() * Math.min(1000, 10 * 2 ** n)));
    }
  }

  /** Revoking is tidying: a lease that is not revoked expires by itself within its TTL. */
  async #revokeQuietly(lease: string): Promise<void> {
    try {
      await this.#etcd.leaseRevoke(lease, this.key);
    } catch (err) {
      if (!isBaseError(err)) throw err;
      this.#o.log.debug({ key: this.key, lease, err }, "lease not revoked; it expires by itself");
    }
  }

  #leaseTtlS(): number {
    return Math.max(1, Math.ceil(this.#o.lockTTLMs / 1000));
  }
}

function checkId(id: string): void {
  const problem = holderIdProblem(id);
  if (problem) throw new TypeError(problem);
}
