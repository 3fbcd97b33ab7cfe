/**
 * GPT encode and decode over bytes, no file I/O (README.md). Every offset
 * and rule here is in the README's tables; decoding checks each of them and
 * reports a broken table as a GptError, never anything else.
 */
import { crc32 } from "node:zlib";
import { GptAttributes } from "./attributes.ts";
import { GptError } from "./errors.ts";
import { readGuid, writeGuid, ZERO_GUID } from "./guid.ts";
import {
  assertValidTable,
  ENTRY_SIZE,
  entryArraySectors,
  type GptPartition,
  type GptTable,
  MAX_ENTRY_ARRAY_BYTES,
  NAME_UNITS,
  overlapProblems,
} from "./table.ts";

export const GPT_SIGNATURE = "EFI PART";
export const GPT_REVISION = 0x00010000;
export const HEADER_SIZE = 92;
const MBR_TYPE_PROTECTIVE = 0xee;

// Header field offsets (README.md, "Header").
const H_SIGNATURE = 0;
const H_REVISION = 8;
const H_SIZE = 12;
const H_CRC = 16;
const H_RESERVED = 20;
const H_MY_LBA = 24;
const H_ALTERNATE_LBA = 32;
const H_FIRST_USABLE = 40;
const H_LAST_USABLE = 48;
const H_DISK_GUID = 56;
const H_ENTRIES_LBA = 72;
const H_ENTRY_COUNT = 80;
const H_ENTRY_SIZE = 84;
const H_ENTRIES_CRC = 88;

// Entry field offsets (README.md, "Partition entry").
const E_TYPE = 0;
const E_UNIQUE = 16;
const E_FIRST = 32;
const E_LAST = 40;
const E_ATTRS = 48;
const E_NAME = 56;

/** Bytes to write: the head region at byte 0 and the tail region at `tailOffset`. */
export interface EncodedGpt {
  /** Protective MBR, primary header, primary entry array (LBA 0..1+arraySectors). */
  head: Uint8Array;
  /** Backup entry array and backup header (the last 1+arraySectors LBAs). */
  tail: Uint8Array;
  tailOffset: number;
}

/** Reads `length` bytes at byte `offset` of the disk. */
export type ReadAt = (offset: number, length: number) => Uint8Array;

export interface DecodeOptions {
  /** 512, 1024, 2048 or 4096; probed (512, then 4096) when not given. */
  sectorSize?: number;
  /** Names the disk in messages (a path). */
  name?: string;
}

export interface DecodedGpt {
  table: GptTable;
  /** Which copy the table came from. */
  source: "primary" | "backup";
  /** Problems that did not stop the read (backup used, backup damaged, no protective MBR). */
  warnings: string[];
}

function view(b: Uint8Array): DataView {
  return new DataView(b.buffer, b.byteOffset, b.byteLength);
}

/** UTF-16LE, NUL-padded to 36 code units (README.md, "Names"). */
export function encodeName(name: string, out: Uint8Array, offset: number): void {
  for (let i = 0; i < name.length; i++) {
    const u = name.charCodeAt(i);
    out[offset + i * 2] = u & 0xff;
    out[offset + i * 2 + 1] = u >> 8;
  }
}

/** The code units up to the first NUL (or all 36); lone surrogates are kept as they are. */
export function decodeName(bytes: Uint8Array, offset: number): string {
  let s = "";
  for (let i = 0; i < NAME_UNITS; i++) {
    const u = (bytes[offset + i * 2] ?? 0) | ((bytes[offset + i * 2 + 1] ?? 0) << 8);
    if (u === 0) break;
    s += String.fromCharCode(u);
  }
  return s;
}

function crcOf(b: Uint8Array): number {
  return crc32(b) >>> 0;
}

/** CHS of an LBA for the MBR with 255 heads, 63 sectors a track; FF FF FF past cylinder 1023. */
function chs(lba: number): [number, number, number] {
  const c = Math.floor(lba / (255 * 63));
  if (c > 1023) return [0xff, 0xff, 0xff];
  const rem = lba % (255 * 63);
  const h = Math.floor(rem / 63);
  const s = (rem % 63) + 1;
  return [h, s | ((c >> 2) & 0xc0), c & 0xff];
}

/** LBA 0: a protective MBR with one partition of type 0xEE over the whole disk. */
export function encodeProtectiveMbr(diskSectors: bigint, sectorSize: number): Uint8Array {
  const mbr = new Uint8Array(sectorSize);
  const v = view(mbr);
  const last = diskSectors - 1n;
  const size = last > 0xffffffffn ? 0xffffffff : Number(last);
  const p = 446;
  mbr[p] = 0x00; // not bootable
  mbr.set([0x00, 0x02, 0x00], p + 1); // CHS of LBA 1
  mbr[p + 4] = MBR_TYPE_PROTECTIVE;
  mbr.set(chs(size), p + 5);
  v.setUint32(p + 8, 1, true);
  v.setUint32(p + 12, size, true);
  mbr[510] = 0x55;
  mbr[511] = 0xaa;
  return mbr;
}

function encodeHeader(
  t: GptTable,
  myLba: bigint,
  alternateLba: bigint,
  entriesLba: bigint,
  entriesCrc: number,
): Uint8Array {
  const h = new Uint8Array(t.sectorSize);
  const v = view(h);
  h.set(new TextEncoder().encode(GPT_SIGNATURE), H_SIGNATURE);
  v.setUint32(H_REVISION, GPT_REVISION, true);
  v.setUint32(H_SIZE, HEADER_SIZE, true);
  v.setBigUint64(H_MY_LBA, myLba, true);
  v.setBigUint64(H_ALTERNATE_LBA, alternateLba, true);
  v.setBigUint64(H_FIRST_USABLE, t.firstUsableLba, true);
  v.setBigUint64(H_LAST_USABLE, t.lastUsableLba, true);
  writeGuid(h, H_DISK_GUID, t.diskGuid);
  v.setBigUint64(H_ENTRIES_LBA, entriesLba, true);
  v.setUint32(H_ENTRY_COUNT, t.entryCount, true);
  v.setUint32(H_ENTRY_SIZE, ENTRY_SIZE, true);
  v.setUint32(H_ENTRIES_CRC, entriesCrc, true);
  v.setUint32(H_CRC, crcOf(h.subarray(0, HEADER_SIZE)), true);
  return h;
}

/** The entry array, padded with zeros to whole sectors. */
export function encodeEntries(t: GptTable): Uint8Array {
  const arr = new Uint8Array(entryArraySectors(t.entryCount, t.sectorSize) * t.sectorSize);
  const v = view(arr);
  for (const p of t.partitions) {
    const o = (p.index - 1) * ENTRY_SIZE;
    writeGuid(arr, o + E_TYPE, p.typeGuid);
    writeGuid(arr, o + E_UNIQUE, p.uniqueGuid);
    v.setBigUint64(o + E_FIRST, p.firstLba, true);
    v.setBigUint64(o + E_LAST, p.lastLba, true);
    v.setBigUint64(o + E_ATTRS, p.attributes.raw, true);
    encodeName(p.name, arr, o + E_NAME);
  }
  return arr;
}

/**
 * The bytes of a whole GPT (README.md, "Layout"): protective MBR, primary
 * header at LBA 1 and entries from LBA 2; backup entries then backup header
 * in the last LBAs. Throws GPT_BAD_INPUT listing every problem of the table.
 */
export function encodeGpt(t: GptTable): EncodedGpt {
  assertValidTable(t);
  const ss = t.sectorSize;
  const entries = encodeEntries(t);
  const entriesCrc = crcOf(entries.subarray(0, t.entryCount * ENTRY_SIZE));
  const arraySectors = BigInt(entries.length / ss);
  const lastLba = t.diskSectors - 1n;
  const backupEntriesLba = lastLba - arraySectors;

  const head = new Uint8Array(2 * ss + entries.length);
  head.set(encodeProtectiveMbr(t.diskSectors, ss), 0);
  head.set(encodeHeader(t, 1n, lastLba, 2n, entriesCrc), ss);
  head.set(entries, 2 * ss);

  const tail = new Uint8Array(entries.length + ss);
  tail.set(entries, 0);
  tail.set(encodeHeader(t, lastLba, 1n, backupEntriesLba, entriesCrc), entries.length);
  return { head, tail, tailOffset: Number(backupEntriesLba) * ss };
}

interface HeaderRead {
  myLba: bigint;
  alternateLba: bigint;
  firstUsableLba: bigint;
  lastUsableLba: bigint;
  diskGuid: string;
  entriesLba: bigint;
  entryCount: number;
  entrySize: number;
  entriesCrc: number;
  partitions: GptPartition[];
}

type HeaderResult =
  | { ok: true; header: HeaderRead }
  | { ok: false; reason: string; signature: boolean };

class Invalid extends Error {}

function hex32(n: number): string {
  return `0x${(n >>> 0).toString(16).padStart(8, "0")}`;
}

/** Reads through `readAt`, insisting on exactly the bytes asked for. */
function reader(readAt: ReadAt) {
  return (offset: number, length: number): Uint8Array => {
    const b = readAt(offset, length);
    if (!(b instanceof Uint8Array) || b.length !== length) {
      throw new Invalid(`short read at byte ${offset}: wanted ${length} bytes`);
    }
    return b;
  };
}

/**
 * One header and its entry array (README.md, "Reading": steps 2-4). `which`
 * says where it must live: the primary at LBA 1, the backup at `lba`.
 */
function readHeader(
  read: (offset: number, length: number) => Uint8Array,
  lba: bigint,
  which: "primary" | "backup",
  ss: number,
  lastLba: bigint,
): HeaderResult {
  let signature = false;
  try {
    const h = read(Number(lba) * ss, ss);
    const v = view(h);
    if (new TextDecoder("latin1").decode(h.subarray(0, 8)) !== GPT_SIGNATURE) {
      throw new Invalid(`no "${GPT_SIGNATURE}" signature`);
    }
    signature = true;
    const revision = v.getUint32(H_REVISION, true);
    if (revision !== GPT_REVISION)
      throw new Invalid(`revision ${hex32(revision)} is not 1.0 (0x00010000)`);
    const size = v.getUint32(H_SIZE, true);
    if (size < HEADER_SIZE || size > ss) {
      throw new Invalid(`header size ${size} is not ${HEADER_SIZE}-${ss}`);
    }
    const stored = v.getUint32(H_CRC, true);
    const copy = Uint8Array.from(h.subarray(0, size));
    view(copy).setUint32(H_CRC, 0, true);
    const computed = crcOf(copy);
    if (stored !== computed) {
      throw new Invalid(
        `header CRC32 ${hex32(stored)} does not match the computed ${hex32(computed)}`,
      );
    }
    const reserved = v.getUint32(H_RESERVED, true);
    if (reserved !== 0)
      throw new Invalid(`reserved field at offset 20 is ${hex32(reserved)}, not 0`);

    const myLba = v.getBigUint64(H_MY_LBA, true);
    const alternateLba = v.getBigUint64(H_ALTERNATE_LBA, true);
    const firstUsableLba = v.getBigUint64(H_FIRST_USABLE, true);
    const lastUsableLba = v.getBigUint64(H_LAST_USABLE, true);
    const entriesLba = v.getBigUint64(H_ENTRIES_LBA, true);
    const entryCount = v.getUint32(H_ENTRY_COUNT, true);
    const entrySize = v.getUint32(H_ENTRY_SIZE, true);
    const entriesCrc = v.getUint32(H_ENTRIES_CRC, true);

    if (myLba !== lba)
      throw new Invalid(`its own LBA field says ${myLba}, but it is at LBA ${lba}`);
    if (which === "primary") {
      if (alternateLba <= 1n || alternateLba > lastLba) {
        throw new Invalid(
          `backup header LBA ${alternateLba} is outside the disk (LBA 2-${lastLba})`,
        );
      }
    } else if (alternateLba !== 1n) {
      throw new Invalid(`primary header LBA ${alternateLba} is not 1`);
    }
    if (
      entrySize < ENTRY_SIZE ||
      entrySize % ENTRY_SIZE !== 0 ||
      ((entrySize / ENTRY_SIZE) & (entrySize / ENTRY_SIZE - 1)) !== 0
    ) {
      throw new Invalid(`entry size ${entrySize} is not 128 times a power of 2`);
    }
    if (entryCount < 1 || entryCount * entrySize > MAX_ENTRY_ARRAY_BYTES) {
      throw new Invalid(
        `${entryCount} entries of ${entrySize} bytes is not 1 entry to ${MAX_ENTRY_ARRAY_BYTES} bytes`,
      );
    }
    const arrayBytes = entryCount * entrySize;
    const arraySectors = BigInt(entryArraySectors(entryCount, ss, entrySize));
    const backupLba = which === "primary" ? alternateLba : myLba;
    if (firstUsableLba > lastUsableLba) {
      throw new Invalid(
        `first usable LBA ${firstUsableLba} is after last usable LBA ${lastUsableLba}`,
      );
    }
    if (firstUsableLba < 2n || lastUsableLba >= backupLba) {
      throw new Invalid(
        `usable LBA range ${firstUsableLba}-${lastUsableLba} is not between the headers (LBA 1 and ${backupLba})`,
      );
    }
    const entriesEnd = entriesLba + arraySectors - 1n;
    if (which === "primary") {
      if (entriesLba < 2n || entriesEnd >= firstUsableLba) {
        throw new Invalid(
          `entry array at LBA ${entriesLba}-${entriesEnd} is not between the header and the first usable LBA ${firstUsableLba}`,
        );
      }
    } else if (entriesLba <= lastUsableLba || entriesEnd >= myLba) {
      throw new Invalid(
        `entry array at LBA ${entriesLba}-${entriesEnd} is not between the last usable LBA ${lastUsableLba} and the header`,
      );
    }

    const entries = read(Number(entriesLba) * ss, arrayBytes);
    const computedEntries = crcOf(entries);
    if (computedEntries !== entriesCrc) {
      throw new Invalid(
        `entry array CRC32 ${hex32(entriesCrc)} does not match the computed ${hex32(computedEntries)}`,
      );
    }
    const partitions = readEntries(entries, entryCount, entrySize, firstUsableLba, lastUsableLba);
    return {
      ok: true,
      header: {
        myLba,
        alternateLba,
        firstUsableLba,
        lastUsableLba,
        diskGuid: readGuid(h, H_DISK_GUID),
        entriesLba,
        entryCount,
        entrySize,
        entriesCrc,
        partitions,
      },
    };
  } catch (err) {
    if (err instanceof Invalid) return { ok: false, reason: err.message, signature };
    throw err;
  }
}

/** The used entries (type GUID not zero), checked (README.md, "Reading": step 4). */
function readEntries(
  entries: Uint8Array,
  count: number,
  size: number,
  firstUsable: bigint,
  lastUsable: bigint,
): GptPartition[] {
  const v = view(entries);
  const partitions: GptPartition[] = [];
  for (let i = 0; i < count; i++) {
    const o = i * size;
    const typeGuid = readGuid(entries, o + E_TYPE);
    if (typeGuid === ZERO_GUID) continue;
    const index = i + 1;
    const firstLba = v.getBigUint64(o + E_FIRST, true);
    const lastLba = v.getBigUint64(o + E_LAST, true);
    if (firstLba > lastLba) {
      throw new Invalid(`partition ${index}: first LBA ${firstLba} is after last LBA ${lastLba}`);
    }
    if (firstLba < firstUsable || lastLba > lastUsable) {
      throw new Invalid(
        `partition ${index}: LBA ${firstLba}-${lastLba} is outside the usable range ${firstUsable}-${lastUsable}`,
      );
    }
    partitions.push({
      index,
      typeGuid,
      uniqueGuid: readGuid(entries, o + E_UNIQUE),
      firstLba,
      lastLba,
      attributes: new GptAttributes(v.getBigUint64(o + E_ATTRS, true)),
      name: decodeName(entries, o + E_NAME),
    });
  }
  const overlaps = overlapProblems(partitions);
  if (overlaps.length) throw new Invalid(overlaps[0]!);
  return partitions;
}

function mbrWarning(read: (o: number, l: number) => Uint8Array, label: string): string | undefined {
  const mbr = read(0, 512);
  if (mbr[510] !== 0x55 || mbr[511] !== 0xaa) {
    return `${label}: LBA 0 has no MBR signature (0x55AA): no protective MBR`;
  }
  for (let i = 0; i < 4; i++) {
    if (mbr[446 + i * 16 + 4] === MBR_TYPE_PROTECTIVE) return undefined;
  }
  return `${label}: the MBR has no protective (type 0xEE) partition`;
}

function hasSignature(read: (o: number, l: number) => Uint8Array, offset: number): boolean {
  try {
    return new TextDecoder("latin1").decode(read(offset, 8)) === GPT_SIGNATURE;
  } catch (err) {
    if (err instanceof Invalid) return false;
    throw err;
  }
}

function probeSectorSize(read: (o: number, l: number) => Uint8Array, sizeBytes: number): number {
  for (const ss of [512, 4096]) {
    if (sizeBytes >= 2 * ss && hasSignature(read, ss)) return ss;
  }
  for (const ss of [512, 4096]) {
    const last = Math.floor(sizeBytes / ss) - 1;
    if (last >= 2 && hasSignature(read, last * ss)) return ss;
  }
  return 512;
}

/**
 * Read a GPT from a disk of `sizeBytes` bytes through `readAt`
 * (README.md, "Reading"). The primary is used when valid; otherwise the
 * backup, with a warning. Throws GPT_MISSING when neither header has a
 * signature, GPT_CORRUPT when neither is valid.
 */
export function decodeGpt(
  readAt: ReadAt,
  sizeBytes: number,
  options: DecodeOptions = {},
): DecodedGpt {
  const label = options.name ?? "disk";
  const read = reader(readAt);
  if (!Number.isSafeInteger(sizeBytes) || sizeBytes < 0) {
    throw new GptError("GPT_BAD_INPUT", `${label}: size ${sizeBytes} is not a byte count`);
  }
  const ss = options.sectorSize ?? probeSectorSize(read, sizeBytes);
  if (![512, 1024, 2048, 4096].includes(ss)) {
    throw new GptError(
      "GPT_BAD_INPUT",
      `${label}: sector size ${ss} is not 512, 1024, 2048 or 4096`,
    );
  }
  const diskSectors = BigInt(Math.floor(sizeBytes / ss));
  const minSectors = 3n + 2n * BigInt(entryArraySectors(1, ss));
  if (diskSectors < minSectors) {
    throw new GptError(
      "GPT_MISSING",
      `${label}: ${sizeBytes} bytes is too small to hold a GPT (${minSectors} sectors of ${ss} bytes at least)`,
      { details: { sizeBytes, sectorSize: ss } },
    );
  }
  const lastLba = diskSectors - 1n;
  const warnings: string[] = [];
  try {
    const w = mbrWarning(read, label);
    if (w) warnings.push(w);
  } catch (err) {
    if (!(err instanceof Invalid)) throw err;
    warnings.push(`${label}: LBA 0 could not be read: ${err.message}`);
  }

  const primary = readHeader(read, 1n, "primary", ss, lastLba);
  let chosen: HeaderRead;
  let source: "primary" | "backup";
  if (primary.ok) {
    chosen = primary.header;
    source = "primary";
    const at = primary.header.alternateLba;
    if (at !== lastLba) {
      warnings.push(
        `${label}: the backup GPT header is at LBA ${at}, not at the last LBA ${lastLba} (the disk was resized); writing the table again moves it`,
      );
    }
    const backup = readHeader(read, at, "backup", ss, lastLba);
    if (!backup.ok) {
      warnings.push(
        `${label}: the backup GPT header at LBA ${at} is invalid (${backup.reason}); the primary is intact, writing the table again repairs the backup`,
      );
    } else {
      const diff = differences(primary.header, backup.header);
      if (diff.length) {
        warnings.push(
          `${label}: the primary and backup GPT differ (${diff.join(", ")}); using the primary`,
        );
      }
    }
  } else {
    const backup = readHeader(read, lastLba, "backup", ss, lastLba);
    if (!backup.ok) {
      const details = { primary: primary.reason, backup: backup.reason, sectorSize: ss, sizeBytes };
      if (!primary.signature && !backup.signature) {
        throw new GptError(
          "GPT_MISSING",
          `${label}: no GPT: no "${GPT_SIGNATURE}" signature at LBA 1 or at the last LBA ${lastLba}`,
          { details },
        );
      }
      throw new GptError(
        "GPT_CORRUPT",
        `${label}: no valid GPT: primary header at LBA 1: ${primary.reason}; backup header at LBA ${lastLba}: ${backup.reason}`,
        { details },
      );
    }
    chosen = backup.header;
    source = "backup";
    warnings.push(
      `${label}: the primary GPT header at LBA 1 is invalid (${primary.reason}); using the backup at LBA ${lastLba}`,
    );
  }

  return {
    table: {
      diskGuid: chosen.diskGuid,
      sectorSize: ss,
      diskSectors,
      firstUsableLba: chosen.firstUsableLba,
      lastUsableLba: chosen.lastUsableLba,
      entryCount: chosen.entryCount,
      partitions: chosen.partitions,
    },
    source,
    warnings,
  };
}

function differences(a: HeaderRead, b: HeaderRead): string[] {
  const d: string[] = [];
  if (a.diskGuid !== b.diskGuid) d.push("disk GUID");
  if (a.firstUsableLba !== b.firstUsableLba || a.lastUsableLba !== b.lastUsableLba)
    d.push("usable range");
  if (a.entryCount !== b.entryCount || a.entrySize !== b.entrySize) d.push("entry array size");
  if (a.entriesCrc !== b.entriesCrc) d.push("entries");
  return d;
}
