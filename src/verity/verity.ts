/**
 * formatVerity and verifyVerity: the I/O procedures of README.md ("Format",
 * "Verify") over the pure layout, superblock and hash code.
 */
import { randomBytes, randomUUID } from "node:crypto";
import { availableParallelism } from "node:os";
import { VerityError } from "./errors.ts";
import { blockDigest } from "./hash.ts";
import { closeFile, type OpenFile, openFile, readAt, sameFile, syncFile, writeAt } from "./io.ts";
import {
  checkBlockSize,
  checkHashAlgorithm,
  checkSalt,
  type HashAlgorithm,
  type LevelLayout,
  SUPERBLOCK_SIZE,
  type TreeLayout,
  treeLayout,
} from "./layout.ts";
import { dataLevel, rangeError } from "./pool.ts";
import { type LevelTask, runLevel } from "./range.ts";
import { checkUuid, decodeSuperblock, encodeSuperblock, type Superblock } from "./superblock.ts";

export interface VerityParams {
  hashAlgorithm: HashAlgorithm;
  dataBlockSize: number;
  hashBlockSize: number;
  dataBlocks: number;
  /** hex */
  salt: string;
  uuid: string | null;
  superblock: boolean;
  /** Bytes into the hash file where the superblock (or tree) starts. */
  hashOffset: number;
  /** dm table hash_start, in hash blocks, counted from byte 0 of the hash device. */
  hashStartBlock: number;
  /** Bytes from hashOffset to the end of the tree. */
  hashAreaSize: number;
  /** hex */
  rootHash: string;
}

export interface VerityFormatOptions {
  dataPath: string;
  /** Data region in a file or device: start (default 0) and size in bytes. */
  dataOffset?: number;
  /**
   * Default: the rest of the data file; when the hash file is the data file and
   * the hash offset lies after dataOffset, up to the hash offset.
   */
  dataSize?: number;
  /** The data area in blocks instead of bytes (dataSize = dataBlocks * dataBlockSize). */
  dataBlocks?: number;
  hashPath: string;
  /** May point into the data file (hashPath === dataPath). Default 0. */
  hashOffset?: number;
  hashAlgorithm?: HashAlgorithm;
  dataBlockSize?: number;
  hashBlockSize?: number;
  /** Default: 32 random bytes. */
  salt?: Uint8Array;
  /** Default: a random UUID. */
  uuid?: string;
  /** Default: true. */
  superblock?: boolean;
  /** Threads for the data level (the caller + workers). Default: one per core, for data of 64 MiB or more. */
  threads?: number;
}

export interface VerityVerifyOptions extends VerityFormatOptions {
  rootHash: string;
}

const PARALLEL_MIN_BYTES = 64 * 1024 * 1024;

function badParams(message: string, details: Record<string, unknown> = {}): VerityError {
  return new VerityError("VERITY_BAD_PARAMS", message, { details });
}

function mismatch(
  message: string,
  details: { area: "data" | "hash" | "superblock"; block: number } & Record<string, unknown>,
): VerityError {
  return new VerityError("VERITY_MISMATCH", message, { details });
}

function checkOffset(field: string, n: number): number {
  if (!Number.isSafeInteger(n) || n < 0)
    throw badParams(`${field} ${n} must be a non-negative whole number`, { field });
  return n;
}

/** Format step 2 / verify step 3: the data region and its block count. */
function dataRegion(
  o: VerityFormatOptions,
  data: OpenFile,
  hash: OpenFile,
  dataBlockSize: number,
  hashOffset: number,
): { dataOffset: number; dataBlocks: number } {
  const dataOffset = checkOffset("data offset", o.dataOffset ?? 0);
  let size: number;
  if (o.dataBlocks !== undefined) size = checkOffset("data blocks", o.dataBlocks) * dataBlockSize;
  else if (o.dataSize !== undefined) size = checkOffset("data size", o.dataSize);
  else if (sameFile(data, hash) && hashOffset > dataOffset)
    size = Math.min(hashOffset, data.size) - dataOffset;
  else size = data.size - dataOffset;
  if (size < 0 || dataOffset + size > data.size) {
    throw badParams(
      `data file ${data.path}: data area of ${size} bytes at byte ${dataOffset} goes past its end (${data.size} bytes)`,
      { path: data.path, dataOffset, dataSize: size, fileSize: data.size },
    );
  }
  if (size % dataBlockSize !== 0) {
    throw new VerityError(
      "VERITY_UNALIGNED_DATA",
      `data file ${data.path}: size ${size} is not a multiple of the data block size ${dataBlockSize}`,
      { details: { path: data.path, dataSize: size, dataBlockSize } },
    );
  }
  if (size === 0)
    throw badParams(`data file ${data.path}: the data area is empty`, { path: data.path });
  return { dataOffset, dataBlocks: size / dataBlockSize };
}

function checkNoOverlap(
  data: OpenFile,
  hash: OpenFile,
  dataOffset: number,
  dataBytes: number,
  hashOffset: number,
  treeEnd: number,
): void {
  if (!sameFile(data, hash)) return;
  if (dataOffset < treeEnd && hashOffset < dataOffset + dataBytes) {
    throw badParams(
      `${data.path}: data area [${dataOffset}, ${dataOffset + dataBytes}) overlaps the hash area [${hashOffset}, ${treeEnd})`,
      { path: data.path, dataOffset, dataBytes, hashOffset, treeEnd },
    );
  }
}

/** The tree parameters once resolved, before they become the public VerityParams. */
interface TreeParams {
  hashAlgorithm: HashAlgorithm;
  dataBlockSize: number;
  hashBlockSize: number;
  dataBlocks: number;
  salt: Uint8Array;
  uuid: string | null;
  superblock: boolean;
  hashOffset: number;
}

function toParams(p: TreeParams, layout: TreeLayout, rootHash: Uint8Array): VerityParams {
  return {
    hashAlgorithm: p.hashAlgorithm,
    dataBlockSize: p.dataBlockSize,
    hashBlockSize: p.hashBlockSize,
    dataBlocks: p.dataBlocks,
    salt: Buffer.from(p.salt).toString("hex"),
    uuid: p.uuid,
    superblock: p.superblock,
    hashOffset: p.hashOffset,
    hashStartBlock: layout.hashStartBlock,
    hashAreaSize: layout.treeEnd - p.hashOffset,
    rootHash: Buffer.from(rootHash).toString("hex"),
  };
}

function threadsFor(o: VerityFormatOptions, dataBytes: number): number {
  if (o.threads !== undefined) {
    if (!Number.isInteger(o.threads) || o.threads < 1)
      throw badParams(`threads ${o.threads} must be at least 1`);
    return o.threads;
  }
  return dataBytes >= PARALLEL_MIN_BYTES ? availableParallelism() : 1;
}

/** Format (README.md, "Format"): write the hash tree and superblock, return every parameter. */
export async function formatVerity(o: VerityFormatOptions): Promise<VerityParams> {
  // Step 1: parameters.
  const hashAlgorithm = checkHashAlgorithm(o.hashAlgorithm ?? "sha256");
  const dataBlockSize = checkBlockSize("dataBlockSize", o.dataBlockSize ?? 4096);
  const hashBlockSize = checkBlockSize("hashBlockSize", o.hashBlockSize ?? 4096);
  const salt = checkSalt(o.salt ?? randomBytes(32));
  const superblock = o.superblock ?? true;
  const uuid = superblock ? checkUuid(o.uuid ?? randomUUID()) : null;
  const hashOffset = checkOffset("hash offset", o.hashOffset ?? 0);
  if (!superblock && hashOffset % hashBlockSize !== 0) {
    throw badParams(
      `hash offset ${hashOffset} is not a multiple of the hash block size ${hashBlockSize}: without a superblock the tree starts at hash block ${Math.floor(hashOffset / hashBlockSize)} (byte ${Math.floor(hashOffset / hashBlockSize) * hashBlockSize}), before the offset`,
      { field: "hashOffset", value: hashOffset },
    );
  }
  let data: OpenFile | undefined;
  let hash: OpenFile | undefined;
  try {
    data = openFile(o.dataPath, "data file", "read");
    hash = openFile(o.hashPath, "hash file", "write");
    // Step 2: the data region.
    const { dataOffset, dataBlocks } = dataRegion(o, data, hash, dataBlockSize, hashOffset);
    // Step 3: the layout.
    const p = {
      hashAlgorithm,
      dataBlockSize,
      hashBlockSize,
      dataBlocks,
      salt,
      uuid,
      superblock,
      hashOffset,
    };
    const layout = treeLayout(p);
    checkNoOverlap(data, hash, dataOffset, dataBlocks * dataBlockSize, hashOffset, layout.treeEnd);
    if (hash.isBlockDevice && hash.size < layout.treeEnd) {
      throw badParams(
        `hash file ${hash.path}: ${hash.size} bytes, the hash area needs ${layout.treeEnd}`,
      );
    }
    const common = {
      mode: "format" as const,
      hashAlgorithm,
      salt,
      hashFd: hash.fd,
      hashBlockSize,
      hashesPerBlock: layout.hashesPerBlock,
      digestStride: layout.digestStride,
      digestSize: layout.digestSize,
    };
    // Steps 4-5: level 0 from the data (in parallel), then each level from the one below.
    let rootInput: Uint8Array;
    const [level0, ...upper] = layout.levels;
    if (level0) {
      await dataLevel(
        {
          ...common,
          childFd: data.fd,
          childOffset: dataOffset,
          childSize: dataBlockSize,
          levelOffset: level0.startBlock * hashBlockSize,
          children: dataBlocks,
        },
        threadsFor(o, dataBlocks * dataBlockSize),
        data,
        hash,
      );
      let below = level0;
      for (const level of upper) {
        try {
          runLevel({
            ...common,
            childFd: hash.fd,
            childOffset: below.startBlock * hashBlockSize,
            childSize: hashBlockSize,
            levelOffset: level.startBlock * hashBlockSize,
            children: level.children,
          });
        } catch (err) {
          throw rangeError(err, hash, hash);
        }
        below = level;
      }
      rootInput = readAt(hash, hashBlockSize, below.startBlock * hashBlockSize);
    } else {
      rootInput = readAt(data, dataBlockSize, dataOffset);
    }
    // Step 6: the root hash.
    const rootHash = blockDigest(hashAlgorithm, salt, rootInput);
    // Step 7: superblock, zero-filled up to the first tree block.
    if (superblock && uuid) {
      const area = new Uint8Array(layout.hashStartBlock * hashBlockSize - hashOffset);
      area.set(
        encodeSuperblock({ uuid, hashAlgorithm, dataBlockSize, hashBlockSize, dataBlocks, salt }),
      );
      writeAt(hash, area, hashOffset);
    }
    // Step 8: durability. The file now ends at treeEnd at least: the tree's
    // last block (or the superblock's zero fill) was written last.
    syncFile(hash);
    return toParams(p, layout, rootHash);
  } finally {
    closeFile(data);
    closeFile(hash);
  }
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return Buffer.from(a.buffer, a.byteOffset, a.length).equals(
    Buffer.from(b.buffer, b.byteOffset, b.length),
  );
}

/** Verify step 2: parameters from the superblock; options may only agree with it. */
function fromSuperblock(o: VerityVerifyOptions, hash: OpenFile, hashOffset: number): Superblock {
  const where = `hash file ${hash.path} at byte ${hashOffset}`;
  if (hashOffset % 512 !== 0)
    throw badParams(`hash offset ${hashOffset} is not a multiple of 512`, { field: "hashOffset" });
  if (hash.size < hashOffset + SUPERBLOCK_SIZE) {
    throw new VerityError(
      "VERITY_BAD_SUPERBLOCK",
      `${where}: no superblock (the file is ${hash.size} bytes)`,
      {
        details: { area: "superblock", path: hash.path, offset: hashOffset },
      },
    );
  }
  const sb = decodeSuperblock(readAt(hash, SUPERBLOCK_SIZE, hashOffset), where);
  const clash = (field: string, given: unknown, stored: unknown) =>
    badParams(`${field} ${given} contradicts the superblock in ${where}, which says ${stored}`, {
      field,
      given,
      stored,
    });
  if (o.hashAlgorithm !== undefined && o.hashAlgorithm !== sb.hashAlgorithm)
    throw clash("hash algorithm", o.hashAlgorithm, sb.hashAlgorithm);
  if (o.dataBlockSize !== undefined && o.dataBlockSize !== sb.dataBlockSize)
    throw clash("data block size", o.dataBlockSize, sb.dataBlockSize);
  if (o.hashBlockSize !== undefined && o.hashBlockSize !== sb.hashBlockSize)
    throw clash("hash block size", o.hashBlockSize, sb.hashBlockSize);
  if (o.salt !== undefined && !sameBytes(o.salt, sb.salt)) {
    throw clash(
      "salt",
      Buffer.from(o.salt).toString("hex") || "-",
      Buffer.from(sb.salt).toString("hex") || "-",
    );
  }
  if (o.uuid !== undefined && checkUuid(o.uuid) !== sb.uuid) throw clash("UUID", o.uuid, sb.uuid);
  if (o.dataBlocks !== undefined && o.dataBlocks !== sb.dataBlocks)
    throw clash("data blocks", o.dataBlocks, sb.dataBlocks);
  if (o.dataSize !== undefined && o.dataSize !== sb.dataBlocks * sb.dataBlockSize) {
    throw clash("data size", o.dataSize, `${sb.dataBlocks * sb.dataBlockSize} bytes`);
  }
  return sb;
}

interface BadPadding {
  block: number;
  byte: number;
}

/**
 * What a bad digest slot found by a range means (range.ts, rangeHasher): the
 * child's digest differs (the child is bad), or the parent block has non-zero
 * bytes where format writes zeros (the parent is bad, or the data block count
 * is not the one the tree was made for).
 */
function classify(
  t: LevelTask,
  level: LevelLayout,
  slot: number,
  children: OpenFile,
  hash: OpenFile,
): "child" | BadPadding {
  const parentIndex = Math.floor(slot / t.hashesPerBlock);
  const block = readAt(hash, t.hashBlockSize, t.levelOffset + parentIndex * t.hashBlockSize);
  if (slot < t.children) {
    const child = readAt(children, t.childSize, t.childOffset + slot * t.childSize);
    const at = (slot % t.hashesPerBlock) * t.digestStride;
    if (!blockDigest(t.hashAlgorithm, t.salt, child).equals(block.subarray(at, at + t.digestSize)))
      return "child";
  }
  const used = Math.min(t.hashesPerBlock, t.children - parentIndex * t.hashesPerBlock);
  let byte = 0;
  while (byte < block.length) {
    const isDigest =
      Math.floor(byte / t.digestStride) < used && byte % t.digestStride < t.digestSize;
    if (!isDigest && block[byte] !== 0) break;
    byte++;
  }
  return { block: level.startBlock + parentIndex, byte };
}

function paddingMismatch(
  hash: OpenFile,
  level: LevelLayout,
  bad: BadPadding,
  hashBlockSize: number,
): VerityError {
  const offset = bad.block * hashBlockSize;
  return mismatch(
    `hash file ${hash.path}: hash block ${bad.block} (level ${level.level}, byte ${offset}) has a non-zero byte at ${bad.byte} where it must be zero (a corrupt block, or not the data block count it was made for)`,
    { area: "hash", block: bad.block, level: level.level, byteInBlock: bad.byte, offset },
  );
}

/**
 * Verify (README.md, "Verify"): check the tree top-down against the root hash,
 * then every data block. Throws VERITY_MISMATCH naming the first bad block
 * (details: area "data" | "hash", block, level, offset).
 */
export async function verifyVerity(o: VerityVerifyOptions): Promise<VerityParams> {
  const superblock = o.superblock ?? true;
  const hashOffset = checkOffset("hash offset", o.hashOffset ?? 0);
  let data: OpenFile | undefined;
  let hash: OpenFile | undefined;
  try {
    data = openFile(o.dataPath, "data file", "read");
    hash = openFile(o.hashPath, "hash file", "read");
    // Steps 1-3: parameters, data region, layout.
    let p: TreeParams;
    let dataOffset: number;
    if (superblock) {
      const sb = fromSuperblock(o, hash, hashOffset);
      dataOffset = checkOffset("data offset", o.dataOffset ?? 0);
      p = { ...sb, superblock, hashOffset };
    } else {
      const hashAlgorithm = checkHashAlgorithm(o.hashAlgorithm ?? "sha256");
      const dataBlockSize = checkBlockSize("dataBlockSize", o.dataBlockSize ?? 4096);
      const hashBlockSize = checkBlockSize("hashBlockSize", o.hashBlockSize ?? 4096);
      const salt = checkSalt(o.salt ?? new Uint8Array(0));
      const region = dataRegion(o, data, hash, dataBlockSize, hashOffset);
      dataOffset = region.dataOffset;
      p = {
        hashAlgorithm,
        dataBlockSize,
        hashBlockSize,
        dataBlocks: region.dataBlocks,
        salt,
        uuid: null,
        superblock,
        hashOffset,
      };
    }
    const layout = treeLayout(p);
    const { hashAlgorithm, dataBlockSize, hashBlockSize, dataBlocks, salt } = p;
    if (!new RegExp(`^[0-9a-fA-F]{${layout.digestSize * 2}}$`).test(o.rootHash)) {
      throw badParams(
        `root hash "${o.rootHash}" is not ${layout.digestSize * 2} hex digits (${hashAlgorithm})`,
        { field: "rootHash" },
      );
    }
    const root = Buffer.from(o.rootHash, "hex");
    checkNoOverlap(data, hash, dataOffset, dataBlocks * dataBlockSize, hashOffset, layout.treeEnd);
    // Step 4: both files hold what the parameters say.
    const dataEnd = dataOffset + dataBlocks * dataBlockSize;
    if (data.size < dataEnd) {
      const block = Math.max(0, Math.floor((data.size - dataOffset) / dataBlockSize));
      throw mismatch(
        `data file ${data.path}: ${data.size} bytes, too short for ${dataBlocks} data blocks; data block ${block} is missing`,
        { area: "data", block, offset: dataOffset + block * dataBlockSize },
      );
    }
    if (layout.treeBlocks > 0 && hash.size < layout.treeEnd) {
      const block = Math.floor(hash.size / hashBlockSize);
      throw mismatch(
        `hash file ${hash.path}: ${hash.size} bytes, too short for the tree (${layout.treeEnd}); hash block ${block} is missing`,
        { area: "hash", block, offset: block * hashBlockSize },
      );
    }
    const top = layout.levels.at(-1);
    // Step 5: the root hash over the top block (or the only data block).
    if (!top) {
      const only = blockDigest(hashAlgorithm, salt, readAt(data, dataBlockSize, dataOffset));
      if (!only.equals(root)) {
        throw mismatch(
          `data file ${data.path}: data block 0 (byte ${dataOffset}) does not match the root hash`,
          { area: "data", block: 0, offset: dataOffset },
        );
      }
      return toParams(p, layout, root);
    }
    const topBlock = readAt(hash, hashBlockSize, top.startBlock * hashBlockSize);
    if (!blockDigest(hashAlgorithm, salt, topBlock).equals(root)) {
      throw mismatch(
        `hash file ${hash.path}: hash block ${top.startBlock} (top level ${top.level}, byte ${top.startBlock * hashBlockSize}) does not match the root hash (wrong root hash, or the salt or parameters differ from format)`,
        {
          area: "hash",
          block: top.startBlock,
          level: top.level,
          offset: top.startBlock * hashBlockSize,
        },
      );
    }
    const common = {
      mode: "verify" as const,
      hashAlgorithm,
      salt,
      hashFd: hash.fd,
      hashBlockSize,
      hashesPerBlock: layout.hashesPerBlock,
      digestStride: layout.digestStride,
      digestSize: layout.digestSize,
    };
    // Step 6: each level's blocks against the authenticated level above.
    for (let i = layout.levels.length - 1; i >= 1; i--) {
      const parent = layout.levels[i];
      const child = layout.levels[i - 1];
      if (!parent || !child) continue;
      const task: LevelTask = {
        ...common,
        childFd: hash.fd,
        childOffset: child.startBlock * hashBlockSize,
        childSize: hashBlockSize,
        levelOffset: parent.startBlock * hashBlockSize,
        children: parent.children,
      };
      let bad: number;
      try {
        bad = runLevel(task);
      } catch (err) {
        throw rangeError(err, hash, hash);
      }
      if (bad >= 0) {
        const what = classify(task, parent, bad, hash, hash);
        if (what !== "child") throw paddingMismatch(hash, parent, what, hashBlockSize);
        const block = child.startBlock + bad;
        throw mismatch(
          `hash file ${hash.path}: hash block ${block} (level ${child.level}, byte ${block * hashBlockSize}) does not match its digest in level ${parent.level}`,
          { area: "hash", block, level: child.level, offset: block * hashBlockSize },
        );
      }
    }
    // Step 7: every data block against level 0, in parallel.
    const level0 = layout.levels[0];
    if (level0) {
      const task: LevelTask = {
        ...common,
        childFd: data.fd,
        childOffset: dataOffset,
        childSize: dataBlockSize,
        levelOffset: level0.startBlock * hashBlockSize,
        children: dataBlocks,
      };
      const bad = await dataLevel(task, threadsFor(o, dataBlocks * dataBlockSize), data, hash);
      if (bad >= 0) {
        const what = classify(task, level0, bad, data, hash);
        if (what !== "child") throw paddingMismatch(hash, level0, what, hashBlockSize);
        const offset = dataOffset + bad * dataBlockSize;
        throw mismatch(
          `data file ${data.path}: data block ${bad} (byte ${offset}) does not match its hash`,
          { area: "data", block: bad, offset },
        );
      }
    }
    return toParams(p, layout, root);
  } finally {
    closeFile(data);
    closeFile(hash);
  }
}
