/**
 * Laying out a new disk (README.md, "Planning") and finding partitions in a
 * table.
 */
import { GptAttributes } from "./attributes.ts";
import { GptError } from "./errors.ts";
import { guidFromSeed, normalizeGuid, randomGuid } from "./guid.ts";
import {
  assertValidTable,
  DEFAULT_ENTRY_COUNT,
  entryArraySectors,
  type GptPartition,
  type GptTable,
} from "./table.ts";

export const ALIGNMENT_BYTES = 1024 * 1024;
export const SECTOR_SIZE = 512;
/** LBA of the first partition: 1 MiB in 512-byte sectors. */
export const FIRST_PARTITION_LBA = 2048n;

export interface PlannedPartition {
  name: string;
  typeGuid: string;
  /** Rounded up to whole sectors. */
  sizeBytes: number;
  uniqueGuid?: string;
  attributes?: GptAttributes;
}

export interface PlanOptions {
  partitions: PlannedPartition[];
  diskGuid?: string;
  /**
   * Derive every GUID not given from this seed (`guidFromSeed`), so the same
   * plan always gives the same table. Without it, GUIDs are random.
   */
  guidSeed?: string;
  /**
   * The disk's size when it is fixed (a block device, an existing image);
   * without it, the disk is as small as fits. GPT_NO_SPACE when too small.
   */
  diskSizeBytes?: number;
  /** Randomness for GUIDs; tests pass their own. */
  random?: (n: number) => Uint8Array;
}

function alignUp(n: bigint, to: bigint): bigint {
  return ((n + to - 1n) / to) * to;
}

/**
 * A table with the partitions one after the other from LBA 2048, each
 * starting on a 1 MiB boundary. Without `diskSizeBytes` the disk ends 1 MiB
 * after the last partition's end rounded up to 1 MiB (room for the backup
 * table); with it, the usable range runs to just before the backup table.
 */
export function planDisk(o: PlanOptions): GptTable {
  const ss = BigInt(SECTOR_SIZE);
  const alignSectors = BigInt(ALIGNMENT_BYTES) / ss;
  const guid = (given: string | undefined, role: string, what: string): string => {
    if (given !== undefined) return normalizeGuid(given, what);
    if (o.guidSeed !== undefined) return guidFromSeed(`abforge-gpt:${o.guidSeed}:${role}`);
    return randomGuid(o.random);
  };
  if (!Array.isArray(o.partitions)) {
    throw new GptError("GPT_BAD_INPUT", "planDisk: partitions must be a list");
  }
  const partitions: GptPartition[] = [];
  let next = FIRST_PARTITION_LBA;
  for (const [i, p] of o.partitions.entries()) {
    const where = `partition ${i + 1} (${p.name})`;
    if (!Number.isSafeInteger(p.sizeBytes) || p.sizeBytes <= 0) {
      throw new GptError(
        "GPT_BAD_INPUT",
        `${where}: size ${p.sizeBytes} is not a positive byte count`,
        {
          details: { partition: i + 1, sizeBytes: p.sizeBytes },
        },
      );
    }
    const sectors = alignUp(BigInt(p.sizeBytes), ss) / ss;
    const first = alignUp(next, alignSectors);
    partitions.push({
      index: i + 1,
      typeGuid: normalizeGuid(p.typeGuid, `${where}: type GUID`),
      uniqueGuid: guid(p.uniqueGuid, `partition:${i + 1}`, `${where}: unique GUID`),
      firstLba: first,
      lastLba: first + sectors - 1n,
      attributes: p.attributes ?? GptAttributes.NONE,
      name: p.name,
    });
    next = first + sectors;
  }
  const arraySectors = BigInt(entryArraySectors(DEFAULT_ENTRY_COUNT, SECTOR_SIZE));
  const neededSectors = alignUp(next, alignSectors) + alignSectors;
  let diskSectors = neededSectors;
  if (o.diskSizeBytes !== undefined) {
    if (!Number.isSafeInteger(o.diskSizeBytes) || o.diskSizeBytes < 0) {
      throw new GptError("GPT_BAD_INPUT", `disk size ${o.diskSizeBytes} is not a byte count`);
    }
    diskSectors = BigInt(o.diskSizeBytes) / ss;
    const lastUsable = diskSectors - 2n - arraySectors;
    const end = next - 1n;
    if (end > lastUsable) {
      const neededBytes = Number((next + arraySectors + 1n) * ss);
      throw new GptError(
        "GPT_NO_SPACE",
        `the partitions need a disk of ${neededBytes} bytes at least (up to LBA ${end}, then the backup table), but the disk has ${o.diskSizeBytes} bytes`,
        { details: { neededBytes, diskSizeBytes: o.diskSizeBytes } },
      );
    }
  }
  const table: GptTable = {
    diskGuid: guid(o.diskGuid, "disk", "disk GUID"),
    sectorSize: SECTOR_SIZE,
    diskSectors,
    firstUsableLba: 2n + arraySectors,
    lastUsableLba: diskSectors - 2n - arraySectors,
    entryCount: DEFAULT_ENTRY_COUNT,
    partitions,
  };
  assertValidTable(table);
  return table;
}

/** Byte offset and size of a partition on its disk. */
export function partitionRange(
  p: GptPartition,
  sectorSize = SECTOR_SIZE,
): { offset: number; size: number } {
  const offset = p.firstLba * BigInt(sectorSize);
  const size = (p.lastLba - p.firstLba + 1n) * BigInt(sectorSize);
  if (offset + size > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new GptError(
      "GPT_BAD_INPUT",
      `partition ${p.index} ends past byte 2^53, beyond what we address`,
    );
  }
  return { offset: Number(offset), size: Number(size) };
}

/**
 * The first partition (by index) matching every criterion given; GPT_NOT_FOUND
 * when none does. Type GUIDs compare case-insensitively.
 */
export function findPartition(
  table: GptTable,
  by: { name?: string; typeGuid?: string; index?: number },
): GptPartition {
  if (by.name === undefined && by.typeGuid === undefined && by.index === undefined) {
    throw new GptError("GPT_BAD_INPUT", "findPartition: give a name, a type GUID or an index");
  }
  const type = by.typeGuid?.toUpperCase();
  const found = [...table.partitions]
    .sort((a, b) => a.index - b.index)
    .find(
      (p) =>
        (by.name === undefined || p.name === by.name) &&
        (type === undefined || p.typeGuid.toUpperCase() === type) &&
        (by.index === undefined || p.index === by.index),
    );
  if (!found) {
    const what = [
      by.name !== undefined ? `name "${by.name}"` : "",
      type !== undefined ? `type ${type}` : "",
      by.index !== undefined ? `index ${by.index}` : "",
    ]
      .filter(Boolean)
      .join(", ");
    throw new GptError(
      "GPT_NOT_FOUND",
      `no partition with ${what} in the table of disk ${table.diskGuid}`,
      {
        details: { ...by },
      },
    );
  }
  return found;
}
