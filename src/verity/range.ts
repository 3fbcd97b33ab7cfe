/**
 * Hash ranges of a level's children with positioned reads and writes
 * (README.md, "Format" step 4 and "Verify" step 7). Synchronous on purpose: it
 * runs in the calling thread and in worker threads, which share the level
 * through a queue of ranges in a SharedArrayBuffer (`shareLevel`). Memory per
 * thread: one batch of children (about 128 KiB) and the parent blocks of one
 * chunk (about 1 MiB of children; a verify holds them twice).
 */
import { readvSync } from "node:fs";
import { readAtSync, writeAtSync } from "../fileio.ts";
import { hashRecords } from "./hash.ts";
import type { HashAlgorithm } from "./layout.ts";

export interface LevelTask {
  mode: "format" | "verify";
  hashAlgorithm: HashAlgorithm;
  salt: Uint8Array;
  /** Where the children are: data file (level 0) or hash file (upper levels). */
  childFd: number;
  /** Byte offset of child 0 in childFd. */
  childOffset: number;
  childSize: number;
  /** Children of this level. */
  children: number;
  hashFd: number;
  /** Byte offset of this level's first hash block in hashFd. */
  levelOffset: number;
  hashBlockSize: number;
  hashesPerBlock: number;
  digestStride: number;
  digestSize: number;
}

/**
 * Children per chunk: whole parent blocks, about 1 MiB of children (so each
 * write of parent blocks is large), at least one parent block.
 */
export function chunkChildren(childSize: number, hashesPerBlock: number): number {
  const max = Math.floor((1024 * 1024) / childSize);
  return Math.max(hashesPerBlock, Math.floor(max / hashesPerBlock) * hashesPerBlock);
}

/**
 * Children per read: about 128 KiB, so a batch is hashed while it is still in
 * the core's cache (measured: larger reads hash slower).
 */
export function batchChildren(childSize: number): number {
  return Math.max(1, Math.floor((128 * 1024) / childSize));
}

/** Which file of a range failed: its children's or the hash file. */
export type RangeFile = "child" | "hash";

/** A read or write of a range that failed, with the file and whether it hit the end. */
export class RangeIoError extends Error {
  readonly file: RangeFile;
  readonly endOfFile: boolean;
  readonly errno: string | undefined;
  constructor(file: RangeFile, message: string, endOfFile: boolean, errno?: string) {
    super(message);
    this.file = file;
    this.endOfFile = endOfFile;
    this.errno = errno;
  }

  /** The errno as a system error carries it, so src/fileio.ts maps it (ENOSPC → DISK_FULL). */
  get code(): string | undefined {
    return this.errno;
  }
}

function io<T>(file: RangeFile, what: string, fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    if (err instanceof RangeIoError) throw err;
    const e = err as NodeJS.ErrnoException;
    throw new RangeIoError(file, `${what}: ${e.message}`, false, e.code);
  }
}

function readFully(file: RangeFile, fd: number, buf: Uint8Array, position: number): void {
  const n = io(file, `read at byte ${position}`, () => readAtSync(fd, buf, position));
  if (n < buf.length)
    throw new RangeIoError(file, `unexpected end of file at byte ${position + n}`, true);
}

/** readv into `views`, resuming after short reads (readv may stop at IOV_MAX or EOF). */
function readvFully(file: RangeFile, fd: number, views: Uint8Array[], position: number): void {
  let pending = views;
  let pos = position;
  while (pending.length > 0) {
    const at = pos;
    const list = pending;
    let n = io(file, `read at byte ${at}`, () => readvSync(fd, list, at));
    if (n === 0) throw new RangeIoError(file, `unexpected end of file at byte ${pos}`, true);
    pos += n;
    let i = 0;
    while (i < pending.length && n >= (pending[i] as Uint8Array).length) {
      n -= (pending[i] as Uint8Array).length;
      i++;
    }
    pending = pending.slice(i);
    if (n > 0 && pending.length > 0) {
      pending[0] = (pending[0] as Uint8Array).subarray(n);
    }
  }
}

function writeFully(fd: number, buf: Uint8Array, position: number): void {
  io("hash", `write at byte ${position}`, () => writeAtSync(fd, buf, position));
}

/**
 * A hasher for ranges [first, end) of one level (`first` a multiple of
 * hashesPerBlock). Format: writes the parent blocks and returns -1. Verify:
 * returns the first digest slot whose bytes in the (already authenticated)
 * parent block differ from what format would write — the child's digest, or
 * the zero padding after it, or an unused slot past the last child — or -1.
 * The caller tells these apart (verity.ts, `classify`). Buffers are allocated once.
 */
export function rangeHasher(t: LevelTask): (first: number, end: number) => number {
  const per = chunkChildren(t.childSize, t.hashesPerBlock);
  const batch = Math.min(per, batchChildren(t.childSize));
  const saltLen = t.salt.length;
  const recordSize = saltLen + t.childSize;
  const records = new Uint8Array(batch * recordSize);
  const views: Uint8Array[] = [];
  for (let j = 0; j < batch; j++) {
    records.set(t.salt, j * recordSize);
    views.push(records.subarray(j * recordSize + saltLen, (j + 1) * recordSize));
  }
  // Digest j of a chunk lands at j * digestStride: hashesPerBlock * digestStride
  // is exactly the hash block size (README.md, "Tree layout").
  const computed = Buffer.alloc((per / t.hashesPerBlock) * t.hashBlockSize);
  const stored = t.mode === "verify" ? Buffer.alloc(computed.length) : computed;

  return (first, end) => {
    for (let c = first; c < end; c += per) {
      const count = Math.min(per, end - c);
      const parentBytes = Math.ceil(count / t.hashesPerBlock) * t.hashBlockSize;
      const parentPos = t.levelOffset + (c / t.hashesPerBlock) * t.hashBlockSize;
      computed.fill(0, 0, parentBytes);
      for (let b = 0; b < count; b += batch) {
        const n = Math.min(batch, count - b);
        const position = t.childOffset + (c + b) * t.childSize;
        if (saltLen === 0)
          readFully("child", t.childFd, records.subarray(0, n * recordSize), position);
        else readvFully("child", t.childFd, views.slice(0, n), position);
        hashRecords(
          t.hashAlgorithm,
          records,
          recordSize,
          n,
          computed,
          b * t.digestStride,
          t.digestStride,
        );
      }
      if (t.mode === "format") {
        writeFully(t.hashFd, computed.subarray(0, parentBytes), parentPos);
        continue;
      }
      // The parent blocks must equal what format writes: the digests AND the
      // zeros after each digest and after the last one (cryptsetup checks the
      // same), else a smaller data block count would pass with the same tree.
      readFully("hash", t.hashFd, stored.subarray(0, parentBytes), parentPos);
      if (computed.compare(stored, 0, parentBytes, 0, parentBytes) !== 0) {
        let i = 0;
        while (computed[i] === stored[i]) i++;
        return c + Math.floor(i / t.digestStride);
      }
    }
    return -1;
  };
}

/** The whole level in the calling thread. */
export function runLevel(t: LevelTask): number {
  return rangeHasher(t)(0, t.children);
}

/*
 * The shared queue: a BigInt64Array over a SharedArrayBuffer.
 *   [0] next range to claim   [1] lowest bad child found (NONE: none)
 *   [2 + w] state of worker w: 0 not started, 1 started, 2 cancelled
 */
const NEXT = 0;
const FIRST_BAD = 1;
const NONE = 2n ** 62n;
export const WORKER_STARTED = 1n;
export const WORKER_CANCELLED = 2n;

export function newQueue(workers: number): SharedArrayBuffer {
  const sab = new SharedArrayBuffer(8 * (2 + workers));
  new BigInt64Array(sab)[FIRST_BAD] = NONE;
  return sab;
}

/** Children per queued range: whole chunks, about 4 MiB. */
export function rangeChildren(t: LevelTask): number {
  const per = chunkChildren(t.childSize, t.hashesPerBlock);
  return per * Math.max(1, Math.floor((4 * 1024 * 1024) / (per * t.childSize)));
}

/**
 * Claim ranges from the queue until none is left (or, in verify, until the
 * next range starts after a bad child already found) and hash them. For
 * worker threads; the calling thread uses shareLevelYielding.
 */
export function shareLevel(t: LevelTask, queue: SharedArrayBuffer): void {
  const claim = claimer(t, queue);
  for (let done = false; !done; ) done = claim();
}

/**
 * shareLevel in the calling thread, giving the event loop a turn after each
 * range (~4 MiB, a few ms): a long level, e.g. the agent's read-back of a
 * whole slot on one thread, does not hold up timers, signals and I/O.
 */
export async function shareLevelYielding(t: LevelTask, queue: SharedArrayBuffer): Promise<void> {
  const claim = claimer(t, queue);
  for (let done = false; !done; ) {
    done = claim();
    if (!done) await new Promise((resolve) => setImmediate(resolve));
  }
}

/** Claims and hashes one range; true when nothing is left to do. */
function claimer(t: LevelTask, queue: SharedArrayBuffer): () => boolean {
  const q = new BigInt64Array(queue);
  const size = rangeChildren(t);
  const run = rangeHasher(t);
  return () => {
    const first = Number(Atomics.add(q, NEXT, 1n)) * size;
    if (first >= t.children || BigInt(first) > Atomics.load(q, FIRST_BAD)) return true;
    const bad = run(first, Math.min(t.children, first + size));
    if (bad < 0) return false;
    // lower the shared minimum
    for (let seen = Atomics.load(q, FIRST_BAD); BigInt(bad) < seen; ) {
      const was = Atomics.compareExchange(q, FIRST_BAD, seen, BigInt(bad));
      if (was === seen) break;
      seen = was;
    }
    return true;
  };
}

/** Stop handing out ranges (after an error in one thread). */
export function closeQueue(queue: SharedArrayBuffer): void {
  Atomics.store(new BigInt64Array(queue), NEXT, 2n ** 53n);
}

export function firstBad(queue: SharedArrayBuffer): number {
  const v = Atomics.load(new BigInt64Array(queue), FIRST_BAD);
  return v === NONE ? -1 : Number(v);
}

/** A worker marks itself started, or learns it was cancelled (false). */
export function startWorker(queue: SharedArrayBuffer, w: number): boolean {
  return Atomics.compareExchange(new BigInt64Array(queue), 2 + w, 0n, WORKER_STARTED) === 0n;
}

/** The caller cancels a worker that has not started yet (true), else it must wait for it. */
export function cancelWorker(queue: SharedArrayBuffer, w: number): boolean {
  return Atomics.compareExchange(new BigInt64Array(queue), 2 + w, 0n, WORKER_CANCELLED) === 0n;
}
