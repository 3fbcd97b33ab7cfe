/**
 * The disk image: a sparse file with the GPT (src/disk) and each partition's
 * image at its offset (README.md, "Disk assembly"). Only non-zero 4 KiB
 * blocks of the images are written, so the file stays sparse.
 */
import { mkdir, open, rename, rm, stat } from "node:fs/promises";
import { dirname } from "node:path";
import {
  type GptAttributes,
  type GptTable,
  PARTITION_TYPES,
  partitionRange,
  planDisk,
  writeGpt,
} from "../disk/index.ts";
import { ESP_PARTITION_NAME, STATE_PARTITION_NAME, slotPartitionName } from "../image/index.ts";
import { logger } from "../log.ts";
import { BuildError } from "./errors.ts";

export interface AssemblePartition {
  name: string;
  typeGuid: string;
  sizeBytes: number;
  /** The partition's content; the rest of the partition reads as zeros. */
  imagePath?: string;
  attributes?: GptAttributes;
}

export interface AssembleOptions {
  outPath: string;
  partitions: AssemblePartition[];
  /** Seed of the disk and partition GUIDs (e.g. `<name>-<version>`): same seed, same table. */
  diskGuidSeed: string;
}

const BLOCK = 4096;
const CHUNK = 1024 * 1024;

const ZERO_BLOCK = Buffer.alloc(BLOCK);

/** True when the (at most 4 KiB) block is all zero; a native compare, not a JS loop. */
function isZero(b: Uint8Array): boolean {
  return Buffer.compare(b, ZERO_BLOCK.subarray(0, b.length)) === 0;
}

/**
 * Copy `src` into `dst` at `offset`, skipping 4 KiB blocks that are all zero
 * (the destination is a fresh sparse file, so they read as zero already).
 * Returns the number of bytes actually written.
 */
export async function copySparse(src: string, dst: string, offset: number): Promise<number> {
  const inp = await open(src, "r");
  const out = await open(dst, "r+");
  let written = 0;
  try {
    const buf = new Uint8Array(CHUNK);
    let pos = 0;
    for (;;) {
      const { bytesRead } = await inp.read(buf, 0, CHUNK, pos);
      if (bytesRead === 0) break;
      // Runs of non-zero 4 KiB blocks (the last one may be short) are written as one.
      let runStart = -1;
      for (let b = 0; b < bytesRead; b += BLOCK) {
        const zero = isZero(buf.subarray(b, Math.min(b + BLOCK, bytesRead)));
        if (!zero && runStart < 0) runStart = b;
        if (zero && runStart >= 0) {
          await out.write(buf, runStart, b - runStart, offset + pos + runStart);
          written += b - runStart;
          runStart = -1;
        }
      }
      if (runStart >= 0) {
        await out.write(buf, runStart, bytesRead - runStart, offset + pos + runStart);
        written += bytesRead - runStart;
      }
      pos += bytesRead;
    }
    await out.sync();
  } finally {
    await inp.close();
    await out.close();
  }
  return written;
}

export async function assembleDisk(o: AssembleOptions): Promise<GptTable> {
  const started = Date.now();
  const table = planDisk({
    partitions: o.partitions.map((p) => ({
      name: p.name,
      typeGuid: p.typeGuid,
      sizeBytes: p.sizeBytes,
      attributes: p.attributes,
    })),
    guidSeed: o.diskGuidSeed,
  });
  await mkdir(dirname(o.outPath), { recursive: true });
  const tmp = `${o.outPath}.tmp-${process.pid}`;
  try {
    await rm(tmp, { force: true });
    // writeGpt creates the file at the table's disk size (sparse), both tables written.
    await writeGpt(tmp, table);
    for (const [i, p] of o.partitions.entries()) {
      if (!p.imagePath) continue;
      const part = table.partitions[i]!;
      const range = partitionRange(part);
      const bytes = (await stat(p.imagePath)).size;
      if (bytes > range.size) {
        throw new BuildError(
          "PARTITION_TOO_SMALL",
          `partition ${part.index} (${p.name}): its image ${p.imagePath} has ${bytes} bytes, the partition ${range.size}`,
          {
            details: {
              partition: part.index,
              name: p.name,
              imageBytes: bytes,
              partitionBytes: range.size,
            },
          },
        );
      }
      const t = Date.now();
      const written = await copySparse(p.imagePath, tmp, range.offset);
      logger()
        .child({ module: "build", step: "disk" })
        .debug(
          { partition: part.index, name: p.name, bytes, written, ms: Date.now() - t },
          "partition image placed",
        );
    }
    await rename(tmp, o.outPath);
  } finally {
    await rm(tmp, { force: true });
  }
  logger()
    .child({ module: "build", step: "disk" })
    .info(
      {
        path: o.outPath,
        bytes: Number(table.diskSectors) * table.sectorSize,
        partitions: table.partitions.map((p) => ({
          index: p.index,
          name: p.name,
          ...partitionRange(p),
        })),
        ms: Date.now() - started,
      },
      "disk assembled",
    );
  return table;
}

export interface AbforgeDiskImages {
  espBytes: number;
  slotBytes: number;
  stateBytes: number;
  espImage: string;
  slotAImage?: string;
  slotBImage?: string;
  stateImage: string;
}

/**
 * The four partitions of the disk layout contract, in order: 1 ESP (`esp`),
 * 2 slot A (`abforge-A`), 3 slot B (`abforge-B`), both root-x86-64 from the
 * Discoverable Partitions Spec, 4 state (`state`, Linux generic data).
 */
export function abforgePartitions(o: AbforgeDiskImages): AssemblePartition[] {
  return [
    {
      name: ESP_PARTITION_NAME,
      typeGuid: PARTITION_TYPES.ESP,
      sizeBytes: o.espBytes,
      imagePath: o.espImage,
    },
    {
      name: slotPartitionName("A"),
      typeGuid: PARTITION_TYPES.ROOT_X86_64,
      sizeBytes: o.slotBytes,
      imagePath: o.slotAImage,
    },
    {
      name: slotPartitionName("B"),
      typeGuid: PARTITION_TYPES.ROOT_X86_64,
      sizeBytes: o.slotBytes,
      imagePath: o.slotBImage,
    },
    {
      name: STATE_PARTITION_NAME,
      typeGuid: PARTITION_TYPES.LINUX_GENERIC,
      sizeBytes: o.stateBytes,
      imagePath: o.stateImage,
    },
  ];
}
