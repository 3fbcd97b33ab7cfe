/**
 * The compare-and-swap decisions, pure (README.md, "Acquire" and "Release"):
 * from one snapshot of the semaphore and its holder records to the value to
 * write and the transaction that writes it only if nothing changed since.
 */
import type { Compare, KeyValue, Op } from "./etcd.ts";
import {
  compareHolders,
  decodeSemaphore,
  initialSemaphore,
  recordKey,
  type SemaphoreValue,
} from "./semaphore.ts";

/** The semaphore and the records of its holders, read in one transaction (one revision). */
export interface Snapshot {
  key: string;
  /** False: the key is missing, and `value` is what locksmith would create. */
  exists: boolean;
  /** The key's mod_revision, "0" when missing. */
  modRevision: string;
  value: SemaphoreValue;
  /** Holders that have a record, with the record's lease. */
  records: Map<string, { lease: string }>;
}

/** Decode what the snapshot transaction read; a bad value is REBOOT_LOCK_BAD_VALUE. */
export function toSnapshot(key: string, sem: KeyValue | undefined, records: KeyValue[]): Snapshot {
  const value = sem ? decodeSemaphore(sem.value, { key }) : initialSemaphore(1);
  const byKey = new Map(records.map((r) => [r.key, r.lease]));
  const present = new Map<string, { lease: string }>();
  for (const h of value.holders) {
    const lease = byKey.get(recordKey(key, h));
    if (lease !== undefined) present.set(h, { lease });
  }
  return {
    key,
    exists: sem !== undefined,
    modRevision: sem?.modRevision ?? "0",
    value,
    records: present,
  };
}

/** Holders that took their place with a record whose lease has expired (README.md, "Staleness"). */
export function staleHolders(s: Snapshot): string[] {
  return s.value.leased.filter((h) => !s.records.has(h));
}

/** etcd allows 128 operations in a transaction; each stale holder is one compare. Any more go at the next acquire. */
export const MAX_STALE_PER_WRITE = 64;

export interface AcquirePlan {
  acquired: boolean;
  /** The value to write; null: nothing to write (full, nothing stale). */
  next: SemaphoreValue | null;
  /** Write this host's record (with a fresh lease): it took or keeps a place. */
  putRecord: boolean;
  removedStale: string[];
}

/**
 * 1. already a holder: keep the place, renew the record (a retry after a crash);
 * 2. a free place: take it;
 * 3. full: drop stale holders, then take a place if that freed one;
 * 4. still full: write only the removal, if any.
 */
export function planAcquire(s: Snapshot, id: string): AcquirePlan {
  const v = s.value;
  if (v.holders.includes(id)) {
    return { acquired: true, next: withLeased(v, id), putRecord: true, removedStale: [] };
  }
  let base = v;
  let removedStale: string[] = [];
  if (v.semaphore <= 0) {
    removedStale = staleHolders(s).slice(0, MAX_STALE_PER_WRITE);
    base = without(v, removedStale);
  }
  if (base.semaphore > 0) {
    const holders = [...base.holders, id].sort(compareHolders);
    const next = { ...base, semaphore: base.semaphore - 1, holders };
    return { acquired: true, next: withLeased(next, id), putRecord: true, removedStale };
  }
  return {
    acquired: false,
    next: removedStale.length > 0 ? base : null,
    putRecord: false,
    removedStale,
  };
}

export interface ReleasePlan {
  released: boolean;
  next: SemaphoreValue | null;
  /** The lease of the holder's record, to revoke after the write; null: no record. */
  lease: string | null;
}

/** Remove `id` from the holders (one more free place); not a holder: nothing to do. */
export function planRelease(s: Snapshot, id: string): ReleasePlan {
  if (!s.exists || !s.value.holders.includes(id))
    return { released: false, next: null, lease: null };
  return { released: true, next: without(s.value, [id]), lease: s.records.get(id)?.lease ?? null };
}

/**
 * A new max: the holders stay (they are rebooting now), so the free places
 * are max - holders and may be negative, as with locksmith: no host takes a
 * place until enough have released.
 */
export function planSetMax(holders: string[], leased: string[], max: number): SemaphoreValue {
  return { semaphore: max - holders.length, max, holders: [...holders], leased: [...leased] };
}

function without(v: SemaphoreValue, ids: string[]): SemaphoreValue {
  if (ids.length === 0) return v;
  const drop = new Set(ids);
  const holders = v.holders.filter((h) => !drop.has(h));
  return {
    semaphore: v.semaphore + (v.holders.length - holders.length),
    max: v.max,
    holders,
    leased: v.leased.filter((h) => !drop.has(h)),
  };
}

function withLeased(v: SemaphoreValue, id: string): SemaphoreValue {
  return v.leased.includes(id) ? v : { ...v, leased: [...v.leased, id].sort(compareHolders) };
}

/**
 * The compare of every write: the semaphore is as read (same mod_revision,
 * or still missing), and each stale holder's record is still missing (a
 * record that came back means a holder that renewed).
 */
export function compares(s: Snapshot, staleStillMissing: string[] = []): Compare[] {
  return [
    s.exists
      ? { key: s.key, target: "MOD", revision: s.modRevision }
      : { key: s.key, target: "CREATE", revision: "0" },
    ...staleStillMissing.map(
      (h): Compare => ({ key: recordKey(s.key, h), target: "CREATE", revision: "0" }),
    ),
  ];
}

/** The record a holder writes with its place: who, attached to its lease. */
export function recordPut(key: string, id: string, lease: string): Op {
  return {
    put: {
      key: recordKey(key, id),
      value: new TextEncoder().encode(JSON.stringify({ machineID: id })),
      lease,
    },
  };
}
