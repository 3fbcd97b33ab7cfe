/**
 * Growing the state partition on an image file or block device (README.md,
 * "Growing the state partition"): the GPT (grow.ts's table, written in a
 * power-cut-safe order), then on a block device the kernel's idea of the
 * partition's size (`resizepart`) and the ext4 filesystem in it
 * (`resize2fs`, online when it is mounted). Every step compares what is with
 * what should be, so running it again, after a power cut or on every boot,
 * does only what is left, and nothing when the disk did not grow.
 */
import { closeSync, fstatSync, openSync, type Stats } from "node:fs";
import { type FileHandle, open, readdir, readFile, realpath, stat } from "node:fs/promises";
import { join } from "node:path";
import { ToolError } from "../errors.ts";
import { run } from "../exec.ts";
import { writeAt } from "../fileio.ts";
import { logger } from "../log.ts";
import { type DecodedGpt, decodeGpt, encodeGpt } from "./codec.ts";
import { GptError } from "./errors.ts";
import { DEFAULT_STATE_NAME, type GrowPlan, growStateTable, resizeProtectiveMbr } from "./grow.ts";
import { type DiskInfo, diskInfo, ioError, majorMinor, readAtFd } from "./io.ts";
import { partitionRange } from "./plan.ts";
import { entryArraySectors, type GptTable } from "./table.ts";

const log = () => logger().child({ module: "disk" });

export interface GrowGptResult {
  path: string;
  info: DiskInfo;
  plan: GrowPlan;
  /** The protective MBR's size was updated too. */
  mbrUpdated: boolean;
}

function refuse(message: string, details: Record<string, unknown> = {}): never {
  throw new GptError("GPT_GROW_REFUSED", message, { details });
}

function u64(b: Uint8Array, offset: number): bigint {
  return new DataView(b.buffer, b.byteOffset, b.byteLength).getBigUint64(offset, true);
}

/** The decoded table and the raw head, with the disk's size. */
async function readTable(path: string): Promise<{
  info: DiskInfo;
  stats: Stats;
  decoded: DecodedGpt;
  head: Uint8Array;
}> {
  let fd: number;
  try {
    fd = openSync(path, "r");
  } catch (err) {
    throw ioError(path, "cannot open", err);
  }
  try {
    const stats = fstatSync(fd);
    const info = await diskInfo(path, { stats });
    const readAt = readAtFd(fd, path);
    const decoded = decodeGpt(readAt, info.sizeBytes, {
      name: path,
      sectorSize: info.blockDevice ? info.sectorSize : undefined,
    });
    const ss = decoded.table.sectorSize;
    const headBytes = (2 + entryArraySectors(decoded.table.entryCount, ss)) * ss;
    const head = readAt(0, headBytes);
    return { info, stats, decoded, head };
  } finally {
    closeSync(fd);
  }
}

/**
 * Grow the GPT of `path` (README.md, "Growing the state partition", steps
 * 1-5): the table from grow.ts, written only when it changes, in this order:
 * backup entries and header at the disk's new end, fsync; the primary
 * header and entries in one write, fsync; the protective MBR's size, fsync.
 * GPT_GROW_REFUSED (nothing written) when the primary is not valid or holds
 * anything abforge's encoder would not write back byte for byte.
 */
export async function growGpt(path: string, o: { name?: string } = {}): Promise<GrowGptResult> {
  const { info, decoded, head } = await readTable(path);
  const { table } = decoded;
  if (decoded.source !== "primary") {
    refuse(
      `${path}: the primary GPT is invalid (${decoded.warnings.join("; ")}); refusing to grow the state partition until the table is repaired (e.g. sgdisk -v, then sgdisk -e)`,
      { path, warnings: decoded.warnings },
    );
  }
  for (const w of decoded.warnings) {
    // the backup not at the end is what this repairs: not a warning here
    if (w.includes("(the disk was resized)")) log().debug({ path }, w);
    else log().warn({ path }, w);
  }
  const ss = table.sectorSize;
  const oldDiskSectors = u64(head, ss + 32) + 1n;
  checkRoundTrip(path, { ...table, diskSectors: oldDiskSectors }, head);

  const plan = growStateTable(table, { name: o.name, where: path });
  if (!plan.changed) return { path, info, plan, mbrUpdated: false };

  const encoded = encodeGpt(plan.table);
  const mbr = resizeProtectiveMbr(head.subarray(0, ss), plan.table.diskSectors);
  let fh: FileHandle;
  try {
    fh = await open(path, "r+");
  } catch (err) {
    throw ioError(path, "cannot open for writing", err);
  }
  try {
    const write = async (bytes: Uint8Array, at: number, what: string) => {
      try {
        await writeAt(fh, bytes, at);
        await fh.sync();
      } catch (err) {
        throw ioError(path, `cannot write the ${what} (${bytes.length} bytes at byte ${at})`, err);
      }
    };
    await write(encoded.tail, encoded.tailOffset, "backup GPT");
    await write(encoded.head.subarray(ss), ss, "primary GPT");
    if (mbr) await write(mbr, 0, "protective MBR");
  } finally {
    await fh.close();
  }
  const check = await readTable(path);
  if (
    check.decoded.source !== "primary" ||
    check.decoded.warnings.length ||
    JSON.stringify(check.decoded.table, jsonSafe) !== JSON.stringify(plan.table, jsonSafe)
  ) {
    throw new GptError(
      "GPT_CORRUPT",
      `${path}: after growing the GPT, reading it back does not give the table written (${check.decoded.warnings.join("; ") || "different table"})`,
      { details: { path } },
    );
  }
  log().info(
    {
      path,
      partition: plan.after.index,
      lastLbaBefore: plan.before.lastLba,
      lastLbaAfter: plan.after.lastLba,
    },
    "GPT grown to the end of the disk",
  );
  return { path, info, plan, mbrUpdated: mbr !== undefined };
}

function jsonSafe(_k: string, v: unknown): unknown {
  if (typeof v === "bigint") return v.toString();
  if (v && typeof v === "object" && "raw" in v) return String((v as { raw: bigint }).raw);
  return v;
}

/**
 * The table as it was must encode to exactly the primary header and entry
 * array on the disk: then rewriting it changes only the fields growStateTable
 * changed (entry size, array location, reserved bytes and stray bytes in
 * unused entries are all things our encoder would silently drop).
 */
function checkRoundTrip(path: string, old: GptTable, head: Uint8Array): void {
  const ss = old.sectorSize;
  let encoded: Uint8Array;
  try {
    encoded = encodeGpt(old).head;
  } catch (err) {
    if (err instanceof GptError)
      refuse(`${path}: the GPT is not one abforge can rewrite: ${err.message}`, { path });
    throw err;
  }
  const disk = head.subarray(ss);
  const ours = encoded.subarray(ss);
  if (disk.length !== ours.length) {
    refuse(`${path}: the GPT's entry array is not where abforge writes it`, { path });
  }
  for (let i = 0; i < disk.length; i++) {
    if (disk[i] !== ours[i]) {
      const lba = 1 + Math.floor(i / ss);
      refuse(
        `${path}: the GPT has bytes abforge would not write back (LBA ${lba}, byte ${i % ss}: a field or an unused entry abforge does not keep); refusing to rewrite it, grow it with sgdisk -e instead`,
        { path, lba, byte: i % ss },
      );
    }
  }
}

// ---------------------------------------------------------------------------
// The kernel and the filesystem (block devices)

interface KernelPartition {
  /** /dev/<name> */
  device: string;
  /** major:minor */
  dev: string;
  /** Its size as the kernel has it, in bytes. */
  sizeBytes: number;
}

function uevent(text: string): Map<string, string> {
  const m = new Map<string, string>();
  for (const line of text.split("\n")) {
    const eq = line.indexOf("=");
    if (eq > 0) m.set(line.slice(0, eq), line.slice(eq + 1));
  }
  return m;
}

/** The kernel's partition `index` of the disk `rdev` (sysfs), or undefined when it has none. */
async function kernelPartition(
  rdev: number,
  index: number,
  o: { sysRoot: string; devRoot: string },
): Promise<KernelPartition | undefined> {
  const diskDir = await realpath(join(o.sysRoot, "dev/block", majorMinor(rdev))).catch(
    () => undefined,
  );
  if (!diskDir) return undefined;
  for (const name of (await readdir(diskDir).catch(() => [] as string[])).sort()) {
    const dir = join(diskDir, name);
    const n = (await readFile(join(dir, "partition"), "utf8").catch(() => "")).trim();
    if (n !== String(index)) continue;
    const props = uevent(await readFile(join(dir, "uevent"), "utf8").catch(() => ""));
    const size = Number((await readFile(join(dir, "size"), "utf8")).trim());
    return {
      device: join(o.devRoot, props.get("DEVNAME") ?? name),
      dev: (await readFile(join(dir, "dev"), "utf8")).trim(),
      sizeBytes: size * 512,
    };
  }
  return undefined;
}

/** Whether the block device major:minor is mounted (`/proc/self/mountinfo`, field 3). */
async function isMounted(dev: string, procRoot: string): Promise<boolean> {
  const text = await readFile(join(procRoot, "self/mountinfo"), "utf8").catch(() => "");
  return text.split("\n").some((l) => l.split(" ")[2] === dev);
}

export interface Ext4Size {
  blockSize: number;
  blocks: number;
  bytes: number;
}

/** The size an ext2/3/4 superblock at byte `offset` of `path` gives; undefined when there is none. */
export async function ext4Size(path: string, offset: number): Promise<Ext4Size | undefined> {
  let fh: FileHandle;
  try {
    fh = await open(path, "r");
  } catch (err) {
    throw ioError(path, "cannot open", err);
  }
  try {
    const sb = new Uint8Array(1024);
    const { bytesRead } = await fh.read(sb, 0, 1024, offset + 1024);
    if (bytesRead !== 1024) return undefined;
    const v = new DataView(sb.buffer);
    if (v.getUint16(0x38, true) !== 0xef53) return undefined;
    const logBlock = v.getUint32(0x18, true);
    if (logBlock > 6) return undefined;
    const blockSize = 1024 << logBlock;
    const is64 = (v.getUint32(0x60, true) & 0x80) !== 0;
    const blocks = v.getUint32(0x04, true) + (is64 ? v.getUint32(0x150, true) * 2 ** 32 : 0);
    return { blockSize, blocks, bytes: blocks * blockSize };
  } catch (err) {
    throw ioError(path, `cannot read the ext4 superblock at byte ${offset + 1024}`, err);
  } finally {
    await fh.close();
  }
}

export interface GrowStateResult {
  disk: string;
  blockDevice: boolean;
  partition: {
    index: number;
    name: string;
    firstLba: bigint;
    lastLbaBefore: bigint;
    lastLbaAfter: bigint;
    bytesBefore: number;
    bytesAfter: number;
  };
  /** `grown`: the GPT was written; `unchanged`: it already reached the disk's end. */
  table: "grown" | "unchanged";
  /** The kernel's size of the partition: `updated` (resizepart), `unchanged`, or `n/a` for a file. */
  kernel: "updated" | "unchanged" | "n/a";
  filesystem: {
    /** The partition's device (block device), or the image file. */
    device: string;
    /** `grown`: resize2fs ran; `unchanged`: it fills the partition; `next-boot`: an image file, grown by the host's first boot; `none`: no ext4 in it. */
    action: "grown" | "unchanged" | "next-boot" | "none";
    bytesBefore?: number;
    bytesAfter?: number;
  };
  /** Nothing was changed. */
  nothingToDo: boolean;
}

/**
 * The whole growth (README.md, "Growing the state partition"): the GPT, and
 * on a block device the kernel's partition size (`resizepart`) and the ext4
 * in it (`resize2fs`; when it is not mounted, `e2fsck -f -p` first, as
 * resize2fs asks). On an image file only the GPT: the filesystem grows on the
 * first boot of a host, where this runs again. Each step runs only when what
 * is on the disk says it is needed.
 */
export async function growState(
  path: string,
  o: { name?: string; sysRoot?: string; devRoot?: string; procRoot?: string } = {},
): Promise<GrowStateResult> {
  const name = o.name ?? DEFAULT_STATE_NAME;
  const g = await growGpt(path, { name });
  const { plan } = g;
  const ss = plan.table.sectorSize;
  const before = partitionRange(plan.before, ss);
  const after = partitionRange(plan.after, ss);
  const result: GrowStateResult = {
    disk: path,
    blockDevice: g.info.blockDevice,
    partition: {
      index: plan.after.index,
      name,
      firstLba: plan.after.firstLba,
      lastLbaBefore: plan.before.lastLba,
      lastLbaAfter: plan.after.lastLba,
      bytesBefore: before.size,
      bytesAfter: after.size,
    },
    table: plan.changed ? "grown" : "unchanged",
    kernel: "n/a",
    filesystem: { device: path, action: "none" },
    nothingToDo: !plan.changed,
  };

  if (!g.info.blockDevice) {
    const fs = await ext4Size(path, after.offset);
    if (fs) {
      result.filesystem = {
        device: path,
        action: after.size - fs.bytes >= GROW_THRESHOLD_BYTES ? "next-boot" : "unchanged",
        bytesBefore: fs.bytes,
        bytesAfter: fs.bytes,
      };
    }
    return result;
  }

  const sysRoot = o.sysRoot ?? "/sys";
  const devRoot = o.devRoot ?? "/dev";
  const { rdev } = await statOf(path);
  let part = await kernelPartition(rdev, plan.after.index, { sysRoot, devRoot });
  if (!part) {
    throw new ToolError(
      "IO_ERROR",
      `${path}: the kernel has no device for partition ${plan.after.index} (looked in ${join(sysRoot, "dev/block", majorMinor(rdev))}); run partx -a ${path}`,
      { details: { path, partition: plan.after.index } },
    );
  }
  if (part.sizeBytes !== after.size) {
    // resizepart's length is in 512-byte sectors whatever the sector size (BLKPG takes bytes)
    await run("resizepart", [path, String(plan.after.index), String(after.size / 512)]);
    part = await kernelPartition(rdev, plan.after.index, { sysRoot, devRoot });
    if (part?.sizeBytes !== after.size) {
      throw new ToolError(
        "TOOL_FAILED",
        `${path}: after resizepart the kernel has partition ${plan.after.index} at ${part?.sizeBytes} bytes, not ${after.size}`,
        { details: { path, partition: plan.after.index } },
      );
    }
    result.kernel = "updated";
    result.nothingToDo = false;
    log().info({ path, device: part.device, bytes: after.size }, "kernel partition size updated");
  } else {
    result.kernel = "unchanged";
  }

  const fs = await ext4Size(part.device, 0);
  result.filesystem = { device: part.device, action: "none" };
  if (!fs) return result;
  result.filesystem.bytesBefore = fs.bytes;
  result.filesystem.bytesAfter = fs.bytes;
  if (after.size - fs.bytes < GROW_THRESHOLD_BYTES) {
    result.filesystem.action = "unchanged";
    return result;
  }
  const mounted = await isMounted(part.dev, o.procRoot ?? "/proc");
  if (!mounted) {
    const r = await run("e2fsck", ["-f", "-p", part.device], { allowFailure: true });
    // 0: clean; 1: errors corrected; anything else: not safe to resize
    if (r.code > 1) {
      throw new ToolError(
        "TOOL_FAILED",
        `e2fsck -f -p ${part.device} failed (exit ${r.code}): ${(r.stderr || r.stdout).trim()}; not resizing it`,
        { details: { device: part.device, exitCode: r.code } },
      );
    }
  }
  await run("resize2fs", [part.device]);
  const grown = await ext4Size(part.device, 0);
  result.filesystem.bytesAfter = grown?.bytes;
  result.filesystem.action = "grown";
  result.nothingToDo = false;
  log().info(
    { device: part.device, mounted, bytesBefore: fs.bytes, bytesAfter: grown?.bytes },
    "state filesystem grown",
  );
  return result;
}

/**
 * resize2fs leaves off a last block group too small to hold its own
 * metadata, so an ext4 can stay a little short of its partition for good:
 * below this gap it counts as filling it (the partition grows in whole MiB).
 */
export const GROW_THRESHOLD_BYTES = 1024 * 1024;

async function statOf(path: string): Promise<Stats> {
  try {
    return await stat(path);
  } catch (err) {
    throw ioError(path, "cannot stat", err);
  }
}
