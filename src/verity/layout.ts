/**
 * Pure geometry of a dm-verity format-1 hash area (README.md, "Tree layout"):
 * parameter checks, how many levels, where each level lies on the hash device,
 * and where the tree starts with and without a superblock.
 */
import { VerityError } from "./errors.ts";

export type HashAlgorithm = "sha256" | "sha1" | "sha512";

/** Digest size in bytes of each supported algorithm. */
export const DIGEST_SIZES: Readonly<Record<HashAlgorithm, number>> = {
  sha1: 20,
  sha256: 32,
  sha512: 64,
};

export const MIN_BLOCK_SIZE = 512;
export const MAX_BLOCK_SIZE = 4096;
export const MAX_SALT_SIZE = 256;
/** The superblock is 512 bytes (README.md, "Superblock"). */
export const SUPERBLOCK_SIZE = 512;

export function isHashAlgorithm(name: string): name is HashAlgorithm {
  return Object.hasOwn(DIGEST_SIZES, name);
}

export function checkHashAlgorithm(name: string): HashAlgorithm {
  if (isHashAlgorithm(name)) return name;
  throw new VerityError(
    "VERITY_BAD_PARAMS",
    `hash algorithm "${name}" is not supported (use sha256, sha1 or sha512)`,
    { details: { field: "hashAlgorithm", value: name } },
  );
}

/** A block size is a power of two from 512 to 4096 bytes. */
export function checkBlockSize(field: "dataBlockSize" | "hashBlockSize", n: number): number {
  if (!Number.isInteger(n) || n < MIN_BLOCK_SIZE || n > MAX_BLOCK_SIZE || (n & (n - 1)) !== 0) {
    const what = field === "dataBlockSize" ? "data block size" : "hash block size";
    throw new VerityError(
      "VERITY_BAD_PARAMS",
      `${what} ${n} is not a power of two from ${MIN_BLOCK_SIZE} to ${MAX_BLOCK_SIZE}`,
      { details: { field, value: n } },
    );
  }
  return n;
}

export function checkSalt(salt: Uint8Array): Uint8Array {
  if (salt.length > MAX_SALT_SIZE) {
    throw new VerityError(
      "VERITY_BAD_PARAMS",
      `salt is ${salt.length} bytes, more than the ${MAX_SALT_SIZE} the superblock holds`,
      { details: { field: "salt", length: salt.length } },
    );
  }
  return salt;
}

/** Parse a salt given in hex; "-" and "" mean no salt (veritysetup's convention). */
export function parseSaltHex(hex: string): Uint8Array {
  if (hex === "-" || hex === "") return new Uint8Array(0);
  if (!/^([0-9a-fA-F]{2})+$/.test(hex)) {
    throw new VerityError(
      "VERITY_BAD_PARAMS",
      `salt "${hex}" is not an even number of hex digits`,
      {
        details: { field: "salt", value: hex },
      },
    );
  }
  return checkSalt(Uint8Array.from(Buffer.from(hex, "hex")));
}

export interface LevelLayout {
  /** 0 hashes the data blocks; the last level is the single block under the root. */
  level: number;
  /** First block of this level, in hash blocks from byte 0 of the hash device. */
  startBlock: number;
  /** Hash blocks in this level. */
  blocks: number;
  /** Blocks this level hashes (data blocks for level 0, else blocks of the level below). */
  children: number;
}

export interface TreeLayoutInput {
  hashAlgorithm: HashAlgorithm;
  dataBlockSize: number;
  hashBlockSize: number;
  dataBlocks: number;
  /** Byte offset of the superblock (or, without one, of the tree) in the hash device. */
  hashOffset: number;
  superblock: boolean;
}

export interface TreeLayout {
  digestSize: number;
  /** Bytes each digest occupies in a hash block: the digest size rounded up to a power of two. */
  digestStride: number;
  /** Digests per hash block: the largest power of two ≤ hashBlockSize / digestSize. */
  hashesPerBlock: number;
  /** Levels from 0 (over the data) up; on disk the highest level comes first. */
  levels: LevelLayout[];
  /** The dm table's hash_start: first tree block, in hash blocks from byte 0. */
  hashStartBlock: number;
  /** Hash blocks in the tree (all levels). */
  treeBlocks: number;
  /** Byte offset just past the tree: the hash device is at least this large. */
  treeEnd: number;
}

function largestPowerOfTwoAtMost(n: number): number {
  let p = 1;
  while (p * 2 <= n) p *= 2;
  return p;
}

function smallestPowerOfTwoAtLeast(n: number): number {
  let p = 1;
  while (p < n) p *= 2;
  return p;
}

/**
 * First tree block (README.md, "Where the tree starts"): with a superblock, the
 * first hash block wholly after the 512-byte superblock; without one,
 * hashOffset rounded DOWN to a hash block (what veritysetup and the kernel do).
 */
export function hashStartBlock(
  hashOffset: number,
  hashBlockSize: number,
  superblock: boolean,
): number {
  if (!superblock) return Math.floor(hashOffset / hashBlockSize);
  return Math.ceil((hashOffset + SUPERBLOCK_SIZE) / hashBlockSize);
}

/** Check every input and compute the tree's levels and their places on disk. */
export function treeLayout(p: TreeLayoutInput): TreeLayout {
  checkHashAlgorithm(p.hashAlgorithm);
  checkBlockSize("dataBlockSize", p.dataBlockSize);
  checkBlockSize("hashBlockSize", p.hashBlockSize);
  if (!Number.isSafeInteger(p.dataBlocks) || p.dataBlocks < 1) {
    throw new VerityError(
      "VERITY_BAD_PARAMS",
      `data blocks ${p.dataBlocks} must be a whole number of at least 1 (the data area is empty)`,
      { details: { field: "dataBlocks", value: p.dataBlocks } },
    );
  }
  if (!Number.isSafeInteger(p.hashOffset) || p.hashOffset < 0 || p.hashOffset % 512 !== 0) {
    throw new VerityError(
      "VERITY_BAD_PARAMS",
      `hash offset ${p.hashOffset} must be a non-negative multiple of 512 bytes`,
      { details: { field: "hashOffset", value: p.hashOffset } },
    );
  }
  const digestSize = DIGEST_SIZES[p.hashAlgorithm];
  const hashesPerBlock = largestPowerOfTwoAtMost(Math.floor(p.hashBlockSize / digestSize));
  const digestStride = smallestPowerOfTwoAtLeast(digestSize);
  // Level i has ceil(dataBlocks / hashesPerBlock^(i+1)) blocks; levels are
  // added until one block remains. One data block needs no level at all.
  const sizes: number[] = [];
  for (let n = p.dataBlocks; n > 1; ) {
    n = Math.ceil(n / hashesPerBlock);
    sizes.push(n);
  }
  const start = hashStartBlock(p.hashOffset, p.hashBlockSize, p.superblock);
  const levels: LevelLayout[] = [];
  let position = start;
  for (let i = sizes.length - 1; i >= 0; i--) {
    const blocks = sizes[i] as number;
    const children = i === 0 ? p.dataBlocks : (sizes[i - 1] as number);
    levels[i] = { level: i, startBlock: position, blocks, children };
    position += blocks;
  }
  const treeBlocks = position - start;
  const treeEnd = position * p.hashBlockSize;
  if (!Number.isSafeInteger(treeEnd)) {
    throw new VerityError("VERITY_BAD_PARAMS", "hash area does not fit in 2^53 bytes", {
      details: { field: "dataBlocks", value: p.dataBlocks },
    });
  }
  return {
    digestSize,
    digestStride,
    hashesPerBlock,
    levels,
    hashStartBlock: start,
    treeBlocks,
    treeEnd,
  };
}
