/**
 * The slot image: the squashfs padded to 4096 bytes, then the dm-verity
 * superblock and hash tree in the same file (README.md, "Slot image"). The
 * same file is written to a slot partition and carried in the bundle.
 */
import { createHash } from "node:crypto";
import { copyFile, mkdir, rename, rm, truncate } from "node:fs/promises";
import { dirname } from "node:path";
import { logger } from "../log.ts";
import { formatVerity, type VerityParams } from "../verity/index.ts";
import { BuildError } from "./errors.ts";
import { fileDigest, fileSize } from "./squashfs.ts";

export const SLOT_BLOCK_SIZE = 4096;

export interface SlotImageOptions {
  squashfsPath: string;
  outPath: string;
  /** Refuse an image larger than this (the slot partition's size). */
  maxBytes?: number;
}

export interface SlotImage {
  path: string;
  bytes: number;
  sha256: string;
  verity: VerityParams;
}

/**
 * Salt and UUID of the verity superblock, derived from the squashfs content
 * so that the same root filesystem always gives the same slot image.
 */
export function veritySeed(squashfsSha256: string): { salt: Uint8Array; uuid: string } {
  const salt = createHash("sha256").update(`abforge-verity-salt:${squashfsSha256}`).digest();
  const u = createHash("sha256").update(`abforge-verity-uuid:${squashfsSha256}`).digest();
  u[6] = (u[6]! & 0x0f) | 0x40; // version 4 layout (the bits say "random"; ours is derived)
  u[8] = (u[8]! & 0x3f) | 0x80; // RFC 4122 variant
  const hex = u.subarray(0, 16).toString("hex");
  const uuid = `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
  return { salt: new Uint8Array(salt), uuid };
}

/** Round up to a multiple of the 4096-byte block. */
export function padToBlock(n: number): number {
  return Math.ceil(n / SLOT_BLOCK_SIZE) * SLOT_BLOCK_SIZE;
}

export async function buildSlotImage(o: SlotImageOptions): Promise<SlotImage> {
  const started = Date.now();
  const sq = await fileDigest(o.squashfsPath);
  const padded = padToBlock(sq.bytes);
  await mkdir(dirname(o.outPath), { recursive: true });
  const tmp = `${o.outPath}.tmp-${process.pid}`;
  try {
    await copyFile(o.squashfsPath, tmp);
    await truncate(tmp, padded);
    const { salt, uuid } = veritySeed(sq.sha256);
    const verity = await formatVerity({
      dataPath: tmp,
      dataOffset: 0,
      dataSize: padded,
      hashPath: tmp,
      hashOffset: padded,
      hashAlgorithm: "sha256",
      dataBlockSize: SLOT_BLOCK_SIZE,
      hashBlockSize: SLOT_BLOCK_SIZE,
      salt,
      uuid,
      superblock: true,
    });
    const bytes = await fileSize(tmp);
    if (o.maxBytes !== undefined && bytes > o.maxBytes) {
      throw new BuildError(
        "PARTITION_TOO_SMALL",
        `slot image of ${bytes} bytes (squashfs ${sq.bytes} + verity ${bytes - padded}) does not fit the slot of ${o.maxBytes} bytes; raise disk.slotSize`,
        { details: { bytes, maxBytes: o.maxBytes, squashfsBytes: sq.bytes } },
      );
    }
    await rename(tmp, o.outPath);
    const digest = await fileDigest(o.outPath);
    const result = { path: o.outPath, bytes, sha256: digest.sha256, verity };
    logger()
      .child({ module: "build", step: "slot" })
      .info(
        {
          path: o.outPath,
          bytes,
          squashfsBytes: sq.bytes,
          rootHash: verity.rootHash,
          dataBlocks: verity.dataBlocks,
          hashStartBlock: verity.hashStartBlock,
          ms: Date.now() - started,
        },
        "slot image built",
      );
    return result;
  } catch (cause) {
    await rm(tmp, { force: true });
    throw cause;
  }
}
