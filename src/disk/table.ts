/**
 * The in-memory GPT: the value that `decodeGpt` returns and `encodeGpt`
 * writes, and the checks every table must pass before it is written.
 */
import type { GptAttributes } from "./attributes.ts";
import { GptAttributes as Attributes } from "./attributes.ts";
import { GptError } from "./errors.ts";
import { isGuid, ZERO_GUID } from "./guid.ts";

export interface GptPartition {
  /** 1-based slot in the entry array (what Linux calls partition number). */
  index: number;
  /** Uppercase GUID string. */
  typeGuid: string;
  /** Uppercase GUID string. */
  uniqueGuid: string;
  firstLba: bigint;
  /** Inclusive. */
  lastLba: bigint;
  attributes: GptAttributes;
  /** At most 36 UTF-16 code units. */
  name: string;
}

export interface GptTable {
  diskGuid: string;
  sectorSize: number;
  diskSectors: bigint;
  firstUsableLba: bigint;
  lastUsableLba: bigint;
  entryCount: number;
  /** The used entries, by index. */
  partitions: GptPartition[];
}

export const ENTRY_SIZE = 128;
export const NAME_UNITS = 36;
export const DEFAULT_ENTRY_COUNT = 128;
/** Largest entry array we read or write (32768 entries of 128 bytes). */
export const MAX_ENTRY_ARRAY_BYTES = 4 * 1024 * 1024;
export const SECTOR_SIZES: readonly number[] = [512, 1024, 2048, 4096];

/** Sectors the entry array takes. */
export function entryArraySectors(
  entryCount: number,
  sectorSize: number,
  entrySize = ENTRY_SIZE,
): number {
  return Math.ceil((entryCount * entrySize) / sectorSize);
}

/** Why a partition name cannot be stored, or undefined when it can. */
export function nameProblem(name: unknown): string | undefined {
  if (typeof name !== "string") return "is not a string";
  if (name.length > NAME_UNITS) {
    return `is ${name.length} UTF-16 code units long; GPT names hold at most ${NAME_UNITS}`;
  }
  if (name.includes("\0")) return "contains a NUL character";
  return undefined;
}

/**
 * Every reason this table cannot be written, each naming the field. An empty
 * list means `encodeGpt` accepts it.
 */
export function tableProblems(t: GptTable): string[] {
  const problems: string[] = [];
  const ss = t.sectorSize;
  if (!SECTOR_SIZES.includes(ss))
    problems.push(`sector size ${ss} is not one of ${SECTOR_SIZES.join(", ")}`);
  if (typeof t.diskGuid !== "string" || !isGuid(t.diskGuid))
    problems.push(`disk GUID "${t.diskGuid}" is not a GUID`);
  if (
    !Number.isInteger(t.entryCount) ||
    t.entryCount < 1 ||
    t.entryCount * ENTRY_SIZE > MAX_ENTRY_ARRAY_BYTES
  ) {
    problems.push(
      `entry count ${t.entryCount} is not an integer 1-${MAX_ENTRY_ARRAY_BYTES / ENTRY_SIZE}`,
    );
  }
  for (const [k, v] of [
    ["disk sectors", t.diskSectors],
    ["first usable LBA", t.firstUsableLba],
    ["last usable LBA", t.lastUsableLba],
  ] as const) {
    if (typeof v !== "bigint") problems.push(`${k} ${String(v)} is not a bigint`);
  }
  if (problems.length) return problems;

  const arraySectors = BigInt(entryArraySectors(t.entryCount, ss));
  const lastLba = t.diskSectors - 1n;
  const minFirst = 2n + arraySectors;
  const maxLast = lastLba - 1n - arraySectors;
  if (t.firstUsableLba < minFirst) {
    problems.push(
      `first usable LBA ${t.firstUsableLba} is inside the primary table (must be >= ${minFirst})`,
    );
  }
  if (t.lastUsableLba > maxLast) {
    problems.push(
      `last usable LBA ${t.lastUsableLba} is inside the backup table or past the end of a disk of ${t.diskSectors} sectors (must be <= ${maxLast})`,
    );
  }
  if (t.firstUsableLba > t.lastUsableLba) {
    problems.push(
      `first usable LBA ${t.firstUsableLba} is after last usable LBA ${t.lastUsableLba}`,
    );
  }

  const seen = new Set<number>();
  for (const [i, p] of t.partitions.entries()) {
    const where = `partition ${Number.isInteger(p.index) ? p.index : `#${i}`}${typeof p.name === "string" && p.name ? ` (${p.name})` : ""}`;
    if (!Number.isInteger(p.index) || p.index < 1 || p.index > t.entryCount) {
      problems.push(`${where}: index ${p.index} is not 1-${t.entryCount}`);
    } else if (seen.has(p.index)) {
      problems.push(`${where}: index ${p.index} is used twice`);
    } else {
      seen.add(p.index);
    }
    if (typeof p.typeGuid !== "string" || !isGuid(p.typeGuid)) {
      problems.push(`${where}: type GUID "${p.typeGuid}" is not a GUID`);
    } else if (p.typeGuid === ZERO_GUID) {
      problems.push(`${where}: type GUID is all zeros (that marks an unused entry)`);
    }
    if (typeof p.uniqueGuid !== "string" || !isGuid(p.uniqueGuid)) {
      problems.push(`${where}: unique GUID "${p.uniqueGuid}" is not a GUID`);
    }
    const np = nameProblem(p.name);
    if (np) problems.push(`${where}: name ${np}`);
    if (!(p.attributes instanceof Attributes))
      problems.push(`${where}: attributes are not a GptAttributes`);
    if (typeof p.firstLba !== "bigint" || typeof p.lastLba !== "bigint") {
      problems.push(`${where}: first and last LBA must be bigints`);
      continue;
    }
    if (p.firstLba > p.lastLba)
      problems.push(`${where}: first LBA ${p.firstLba} is after last LBA ${p.lastLba}`);
    if (p.firstLba < t.firstUsableLba || p.lastLba > t.lastUsableLba) {
      problems.push(
        `${where}: LBA ${p.firstLba}-${p.lastLba} is outside the usable range ${t.firstUsableLba}-${t.lastUsableLba}`,
      );
    }
  }
  problems.push(...overlapProblems(t.partitions));
  return problems;
}

/** Pairs of partitions that share sectors. */
export function overlapProblems(partitions: readonly GptPartition[]): string[] {
  const sorted = partitions
    .filter((p) => typeof p.firstLba === "bigint" && typeof p.lastLba === "bigint")
    .sort((a, b) => (a.firstLba < b.firstLba ? -1 : a.firstLba > b.firstLba ? 1 : 0));
  const problems: string[] = [];
  let prev: GptPartition | undefined;
  for (const p of sorted) {
    if (prev && p.firstLba <= prev.lastLba) {
      problems.push(
        `partition ${p.index} (LBA ${p.firstLba}-${p.lastLba}) overlaps partition ${prev.index} (LBA ${prev.firstLba}-${prev.lastLba})`,
      );
    }
    if (!prev || p.lastLba > prev.lastLba) prev = p;
  }
  return problems;
}

export function assertValidTable(t: GptTable): void {
  const problems = tableProblems(t);
  if (problems.length) {
    throw new GptError(
      "GPT_BAD_INPUT",
      `invalid partition table: ${problems.slice(0, 5).join("; ")}${problems.length > 5 ? `; and ${problems.length - 5} more` : ""}`,
      { details: { problems } },
    );
  }
}
