/**
 * GPT on a file or block device: the I/O around the pure codec
 * (README.md, "Reading" and "Writing").
 */
import { closeSync, fstatSync, openSync, type Stats } from "node:fs";
import { type FileHandle, open, readFile, stat } from "node:fs/promises";
import { join } from "node:path";
import { ToolError } from "../errors.ts";
import { errnoOf, ioCodeFor, readAtSync, writeAt } from "../fileio.ts";
import { logger } from "../log.ts";
import { type DecodedGpt, decodeGpt, encodeGpt } from "./codec.ts";
import { GptError } from "./errors.ts";
import { type PlannedPartition, planDisk } from "./plan.ts";
import type { GptTable } from "./table.ts";

export interface DiskInfo {
  sizeBytes: number;
  /** The device's logical sector size; 512 for a regular file. */
  sectorSize: number;
  blockDevice: boolean;
}

export function ioError(path: string, what: string, cause: unknown): ToolError {
  const msg = cause instanceof Error ? cause.message : String(cause);
  const errno = errnoOf(cause);
  return new ToolError(ioCodeFor(errno), `${path}: ${what}: ${msg}`, {
    cause,
    details: { path, errno },
  });
}

/** major:minor of a device number, as Linux's gnu_dev_major/minor split it. */
export function majorMinor(rdev: number): string {
  const d = BigInt(rdev);
  const major = ((d >> 8n) & 0xfffn) | ((d >> 32n) & ~0xfffn);
  const minor = (d & 0xffn) | ((d >> 12n) & ~0xffn);
  return `${major}:${minor}`;
}

async function readSysNumber(path: string): Promise<number | undefined> {
  try {
    const n = Number((await readFile(path, "utf8")).trim());
    return Number.isSafeInteger(n) ? n : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Size and sector size of an image file or block device. `fs.stat` says 0
 * for a block device, so its size comes from
 * `<sysRoot>/dev/block/MAJ:MIN/size` (always in 512-byte units) and its
 * logical sector size from `queue/logical_block_size` there.
 */
export async function diskInfo(
  path: string,
  o: { stats?: Stats; sysRoot?: string } = {},
): Promise<DiskInfo> {
  let stats = o.stats;
  if (!stats) {
    try {
      stats = await stat(path);
    } catch (err) {
      throw ioError(path, "cannot stat", err);
    }
  }
  if (stats.isFile()) return { sizeBytes: stats.size, sectorSize: 512, blockDevice: false };
  if (!stats.isBlockDevice()) {
    throw new GptError("GPT_BAD_INPUT", `${path} is neither a regular file nor a block device`, {
      details: { path },
    });
  }
  const dir = join(o.sysRoot ?? "/sys", "dev/block", majorMinor(stats.rdev));
  const sectors512 = await readSysNumber(join(dir, "size"));
  if (sectors512 === undefined) {
    throw ioError(path, "block device size unknown", new Error(`cannot read ${join(dir, "size")}`));
  }
  const sectorSize =
    (await readSysNumber(join(dir, "queue/logical_block_size"))) ??
    (await readSysNumber(join(dir, "../queue/logical_block_size"))) ??
    512;
  return { sizeBytes: sectors512 * 512, sectorSize, blockDevice: true };
}

/**
 * Read the GPT of an image file or block device. Warnings (backup used,
 * backup damaged, no protective MBR) are returned and logged.
 */
export async function readGpt(
  path: string,
): Promise<{ table: GptTable; warnings: string[]; source: DecodedGpt["source"] }> {
  let fd: number;
  try {
    fd = openSync(path, "r");
  } catch (err) {
    throw ioError(path, "cannot open", err);
  }
  try {
    const info = await diskInfo(path, { stats: fstatSync(fd) });
    const readAt = readAtFd(fd, path);
    const decoded = decodeGpt(readAt, info.sizeBytes, {
      name: path,
      sectorSize: info.blockDevice ? info.sectorSize : undefined,
    });
    const log = logger().child({ module: "disk" });
    for (const w of decoded.warnings) log.warn({ path, source: decoded.source }, w);
    return decoded;
  } finally {
    closeSync(fd);
  }
}

async function writeAll(
  fh: FileHandle,
  path: string,
  bytes: Uint8Array,
  position: number,
): Promise<void> {
  try {
    await writeAt(fh, bytes, position);
  } catch (err) {
    throw ioError(path, `cannot write ${bytes.length} bytes at byte ${position}`, err);
  }
}

/**
 * Write `table` to an image file (created, or extended to the table's disk
 * size) or a block device (whose size must be the table's). Order
 * (README.md, "Writing"): backup entries and header, fsync, then protective
 * MBR, primary header and entries, fsync — so a crash leaves at least one
 * valid copy when a valid table was there before.
 */
export async function writeGpt(path: string, table: GptTable): Promise<void> {
  const encoded = encodeGpt(table);
  const tableBytes = Number(table.diskSectors) * table.sectorSize;
  let fh: FileHandle;
  try {
    fh = await open(path, "r+").catch(async (err: NodeJS.ErrnoException) => {
      if (err.code === "ENOENT") return open(path, "w+");
      throw err;
    });
  } catch (err) {
    throw ioError(path, "cannot open for writing", err);
  }
  try {
    const info = await diskInfo(path, { stats: await fh.stat() });
    if (info.blockDevice) {
      if (info.sizeBytes !== tableBytes || info.sectorSize !== table.sectorSize) {
        throw new GptError(
          "GPT_BAD_INPUT",
          `${path}: the device has ${info.sizeBytes} bytes in ${info.sectorSize}-byte sectors, but the table is for ${tableBytes} bytes in ${table.sectorSize}-byte sectors`,
          { details: { path, deviceBytes: info.sizeBytes, tableBytes } },
        );
      }
    } else if (info.sizeBytes > tableBytes) {
      throw new GptError(
        "GPT_BAD_INPUT",
        `${path}: the file has ${info.sizeBytes} bytes, more than the table's disk of ${tableBytes} bytes (the backup table must end the disk)`,
        { details: { path, fileBytes: info.sizeBytes, tableBytes } },
      );
    }
    try {
      if (!info.blockDevice && info.sizeBytes < tableBytes) await fh.truncate(tableBytes);
      await writeAll(fh, path, encoded.tail, encoded.tailOffset);
      await fh.sync();
      await writeAll(fh, path, encoded.head, 0);
      await fh.sync();
    } catch (err) {
      if (err instanceof ToolError) throw err;
      const code = (err as NodeJS.ErrnoException).code;
      if (code === "ENOSPC") {
        throw new ToolError("DISK_FULL", `${path}: no space left to write the partition table`, {
          cause: err,
        });
      }
      throw ioError(path, "cannot write the partition table", err);
    }
  } finally {
    await fh.close();
  }
}

/**
 * Plan and write a new table on `path`. An existing file or device keeps its
 * size (GPT_NO_SPACE when the partitions do not fit); a new file is as small
 * as fits unless `diskSizeBytes` says otherwise.
 */
export async function createDisk(
  path: string,
  o: {
    partitions: PlannedPartition[];
    diskSizeBytes?: number;
    guidSeed?: string;
    diskGuid?: string;
  },
): Promise<GptTable> {
  let existing: number | undefined;
  let fh: FileHandle | undefined;
  try {
    fh = await open(path, "r");
    existing = (await diskInfo(path, { stats: await fh.stat() })).sizeBytes;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOENT") {
      if (err instanceof GptError || err instanceof ToolError) throw err;
      throw ioError(path, "cannot open", err);
    }
  } finally {
    await fh?.close();
  }
  const table = planDisk({
    partitions: o.partitions,
    diskGuid: o.diskGuid,
    guidSeed: o.guidSeed,
    diskSizeBytes: o.diskSizeBytes ?? (existing || undefined),
  });
  await writeGpt(path, table);
  return table;
}

/** A positional reader of an open disk for the GPT decoder: short at the end, typed on error. */
export function readAtFd(fd: number, path: string) {
  return (offset: number, length: number): Uint8Array => {
    const buf = new Uint8Array(length);
    let done: number;
    try {
      done = readAtSync(fd, buf, offset);
    } catch (err) {
      throw ioError(path, `cannot read ${length} bytes at byte ${offset}`, err);
    }
    return done === length ? buf : buf.subarray(0, done);
  };
}
