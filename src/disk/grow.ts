/**
 * Growing the state partition to a larger disk, as pure functions
 * (README.md, "Growing the state partition"): the new table for a table read
 * from a disk that grew, and the protective MBR's new size. grow-io.ts does
 * the I/O and the order of the writes.
 */
import { encodeProtectiveMbr } from "./codec.ts";
import { GptError } from "./errors.ts";
import { ALIGNMENT_BYTES } from "./plan.ts";
import { entryArraySectors, type GptPartition, type GptTable, tableProblems } from "./table.ts";

/** The GPT name of the state partition (src/image/layout.ts STATE_PARTITION_NAME). */
export const DEFAULT_STATE_NAME = "state";

export interface GrowPlan {
  /** False: the table already reaches the end of the disk (`table` is the input). */
  changed: boolean;
  /** The table to write: backup at the disk's end, last usable LBA and the state partition's end moved. */
  table: GptTable;
  /** The state partition before. */
  before: GptPartition;
  /** The state partition after (the same object as `before` when unchanged). */
  after: GptPartition;
  lastUsableBefore: bigint;
  lastUsableAfter: bigint;
}

function refuse(message: string, details: Record<string, unknown> = {}): never {
  throw new GptError("GPT_GROW_REFUSED", message, { details });
}

/**
 * The table for `table` (as decodeGpt reads it: `diskSectors` is the disk's
 * real size, the rest is what the headers say) once the backup table is at
 * the disk's end: last usable LBA = last LBA − 1 − entry array sectors, and
 * the partition named `name` (the state partition) ending at that LBA rounded
 * down to a 1 MiB boundary (the last sector before it). Never shrinks the
 * partition. Nothing else changes: GUIDs, names, attributes, indexes, the
 * other partitions. Unchanged (`changed: false`) when the disk did not grow,
 * so it is idempotent. GPT_GROW_REFUSED when the table is invalid, the
 * partition is missing or not the last on the disk.
 */
export function growStateTable(
  table: GptTable,
  o: { name?: string; where?: string } = {},
): GrowPlan {
  const name = o.name ?? DEFAULT_STATE_NAME;
  const where = o.where ?? "disk";
  const problems = tableProblems(table);
  if (problems.length) {
    refuse(`${where}: refusing to grow an invalid partition table: ${problems.join("; ")}`, {
      problems,
    });
  }
  const named = table.partitions.filter((p) => p.name === name);
  if (named.length === 0) {
    throw new GptError("GPT_NOT_FOUND", `${where}: no partition named "${name}" to grow`, {
      details: { name },
    });
  }
  if (named.length > 1) {
    refuse(
      `${where}: ${named.length} partitions are named "${name}" (${named.map((p) => p.index).join(", ")}); refusing to guess which to grow`,
      { name, indexes: named.map((p) => p.index) },
    );
  }
  const state = named[0]!;
  const after = table.partitions.filter(
    (p) => p !== state && (p.firstLba > state.firstLba || p.lastLba > state.lastLba),
  );
  if (after.length) {
    refuse(
      `${where}: partition ${state.index} "${name}" is not the last on the disk (partition ${after.map((p) => `${p.index} "${p.name}" at LBA ${p.firstLba}-${p.lastLba}`).join(", ")} comes after it); refusing to grow it`,
      { partition: state.index, after: after.map((p) => p.index) },
    );
  }

  const ss = table.sectorSize;
  const arraySectors = BigInt(entryArraySectors(table.entryCount, ss));
  const lastUsable = table.diskSectors - 2n - arraySectors;
  const align = BigInt(Math.max(1, ALIGNMENT_BYTES / ss));
  const alignedEnd = ((lastUsable + 1n) / align) * align - 1n;
  const end = alignedEnd > state.lastLba ? alignedEnd : state.lastLba;
  const changed = lastUsable !== table.lastUsableLba || end !== state.lastLba;
  if (!changed) {
    return {
      changed,
      table,
      before: state,
      after: state,
      lastUsableBefore: table.lastUsableLba,
      lastUsableAfter: table.lastUsableLba,
    };
  }
  const grown: GptPartition = { ...state, lastLba: end };
  return {
    changed,
    table: {
      ...table,
      lastUsableLba: lastUsable,
      partitions: table.partitions.map((p) => (p === state ? grown : p)),
    },
    before: state,
    after: grown,
    lastUsableBefore: table.lastUsableLba,
    lastUsableAfter: lastUsable,
  };
}

/**
 * LBA 0 with its protective (type 0xEE, starting at LBA 1) record resized to
 * the disk of `diskSectors` sectors, as `sgdisk -e` does; every other byte
 * (boot code, other records) kept. Undefined when there is no such record
 * or it already has that size: then LBA 0 is left as it is.
 */
export function resizeProtectiveMbr(lba0: Uint8Array, diskSectors: bigint): Uint8Array | undefined {
  if (lba0.length < 512 || lba0[510] !== 0x55 || lba0[511] !== 0xaa) return undefined;
  const v = new DataView(lba0.buffer, lba0.byteOffset, lba0.byteLength);
  // the end CHS and size fields as a fresh protective MBR has them
  const fresh = encodeProtectiveMbr(diskSectors, 512);
  for (let i = 0; i < 4; i++) {
    const p = 446 + i * 16;
    if (lba0[p + 4] !== 0xee || v.getUint32(p + 8, true) !== 1) continue;
    const out = Uint8Array.from(lba0);
    out.set(fresh.subarray(446 + 5, 446 + 8), p + 5);
    out.set(fresh.subarray(446 + 12, 446 + 16), p + 12);
    return out.every((b, j) => b === lba0[j]) ? undefined : out;
  }
  return undefined;
}
