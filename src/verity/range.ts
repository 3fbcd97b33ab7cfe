/**
 * Hash one range of a level's children with positioned reads and writes
 * (README.md, "Format" step 5 and "Verify" step 5). Synchronous on purpose: it
 * runs either in a worker thread (one range per core) or, for small inputs and
 * the upper levels, in the calling thread. Memory: one chunk of children
 * (≤ 2 MiB) and its parent blocks.
 */
import { readSync, readvSync, writeSync } from "node:fs";
import { hashRecords } from "./hash.ts";
import type { HashAlgorithm } from "./layout.ts";

export interface RangeTask {
  mode: "format" | "verify";
  hashAlgorithm: HashAlgorithm;
  salt: Uint8Array;
  /** Where the children are: data file (level 0) or hash file (upper levels). */
  childFd: number;
  /** Byte offset of child 0 in childFd. */
  childOffset: number;
  childSize: number;
  /** Children [first, end) of this level; `first` is a multiple of hashesPerBlock. */
  first: number;
  end: number;
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

class ShortFileError extends Error {}

function readFully(fd: number, buf: Uint8Array, position: number): void {
  let done = 0;
  while (done < buf.length) {
    const n = readSync(fd, buf, done, buf.length - done, position + done);
    if (n === 0) throw new ShortFileError(`unexpected end of file at byte ${position + done}`);
    done += n;
  }
}

/** readv into `views`, resuming after short reads (readv may stop at IOV_MAX or EOF). */
function readvFully(fd: number, views: Uint8Array[], position: number): void {
  let pending = views;
  let pos = position;
  while (pending.length > 0) {
    let n = readvSync(fd, pending, pos);
    if (n === 0) throw new ShortFileError(`unexpected end of file at byte ${pos}`);
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
  let done = 0;
  while (done < buf.length) {
    done += writeSync(fd, buf, done, buf.length - done, position + done);
  }
}

/**
 * Format: write the parent blocks of children [first, end) and return -1.
 * Verify: return the index of the first child whose digest differs from the
 * one stored in its (already authenticated) parent block, or -1.
 */
export function runRange(t: RangeTask): number {
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

  for (let c = t.first; c < t.end; c += per) {
    const count = Math.min(per, t.end - c);
    const parentBytes = Math.ceil(count / t.hashesPerBlock) * t.hashBlockSize;
    const parentPos = t.levelOffset + (c / t.hashesPerBlock) * t.hashBlockSize;
    computed.fill(0, 0, parentBytes);
    for (let b = 0; b < count; b += batch) {
      const n = Math.min(batch, count - b);
      const position = t.childOffset + (c + b) * t.childSize;
      if (saltLen === 0) readFully(t.childFd, records.subarray(0, n * recordSize), position);
      else readvFully(t.childFd, views.slice(0, n), position);
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
    readFully(t.hashFd, stored.subarray(0, parentBytes), parentPos);
    for (let j = 0; j < count; j++) {
      const at = j * t.digestStride;
      if (computed.compare(stored, at, at + t.digestSize, at, at + t.digestSize) !== 0)
        return c + j;
    }
  }
  return -1;
}

export function isShortFile(err: unknown): boolean {
  return err instanceof ShortFileError;
}
