/**
 * The disk image in the forms clouds and hypervisors import (README.md, "Disk
 * formats"): each is converted from the raw disk with qemu-img (the GCE form
 * with GNU tar) inside the build's temporary directory and checked before the
 * build renames it into the output directory.
 */
import { link, mkdir, open, rm, stat } from "node:fs/promises";
import { join } from "node:path";
import { run } from "../exec.ts";
import { BuildError } from "./errors.ts";
import { fileDigest } from "./squashfs.ts";

/** The formats `abforge build --format` knows, in the order the help lists them. */
export const DISK_FORMATS = ["raw", "qcow2", "vmdk", "vhd", "gce"] as const;
export type DiskFormat = (typeof DISK_FORMATS)[number];

/** One disk output of a build, as build.json lists it. */
export interface DiskOutput {
  format: DiskFormat;
  /** Its name in the output directory. */
  file: string;
  /** Its size (the apparent size: raw and gce's member are sparse). */
  bytes: number;
  sha256: string;
}

/**
 * `raw,qcow2,gce` → the formats, each once, in the order given. An unknown or
 * empty name is an error naming the known ones.
 */
export function parseFormats(list: string): DiskFormat[] {
  const known = DISK_FORMATS.join(", ");
  const formats: DiskFormat[] = [];
  for (const raw of list.split(",")) {
    const name = raw.trim().toLowerCase();
    if (!(DISK_FORMATS as readonly string[]).includes(name)) {
      throw new Error(
        name === ""
          ? `an empty disk format in "${list}"; known: ${known}`
          : `unknown disk format "${raw.trim()}"; known: ${known}`,
      );
    }
    if (!formats.includes(name as DiskFormat)) formats.push(name as DiskFormat);
  }
  return formats;
}

/** The file name of a format's output: disk.<ext>, and GCE's own naming for its tarball. */
export function formatFileName(format: DiskFormat, name: string, version: string): string {
  switch (format) {
    case "raw":
      return "disk.img";
    case "gce":
      return `${name}-${version}.gce.tar.gz`;
    default:
      return `disk.${format}`;
  }
}

/** qemu-img's name of each converted format and the options it is written with. */
const QEMU: Record<
  "qcow2" | "vmdk" | "vhd",
  { driver: string; options: string[]; check: boolean }
> = {
  // Uncompressed: the slot holds squashfs (compressed already), and the rest is
  // holes qcow2 does not store, so -c saved 1.7% of the demo's qcow2 for 1.1 s
  // of CPU, and compressed clusters are rewritten uncompressed on first write.
  qcow2: { driver: "qcow2", options: [], check: true },
  // streamOptimized: the deflated, sequential form vSphere and VirtualBox import.
  vmdk: { driver: "vmdk", options: ["-o", "subformat=streamOptimized"], check: true },
  // Azure's form: fixed (raw data + footer), its size exactly the disk's
  // (force_size: no rounding to CHS geometry). qemu-img has no check for vpc.
  vhd: { driver: "vpc", options: ["-o", "subformat=fixed,force_size"], check: false },
};

/**
 * Write `format`'s form of the raw disk `diskPath` into `workDir` and check it;
 * the raw form is the disk itself. Returns what build.json lists.
 */
export async function writeDiskFormat(o: {
  format: DiskFormat;
  diskPath: string;
  workDir: string;
  name: string;
  version: string;
  /** The gzip header's and tar member's mtime (SOURCE_DATE_EPOCH, or 0). */
  mtime: number;
}): Promise<DiskOutput> {
  const file = formatFileName(o.format, o.name, o.version);
  const path = o.format === "raw" ? o.diskPath : join(o.workDir, file);
  const rawSize = (await stat(o.diskPath)).size;
  if (o.format === "gce") {
    await writeGceTarball(o.diskPath, path, o.workDir, o.mtime);
  } else if (o.format !== "raw") {
    const q = QEMU[o.format];
    await run("qemu-img", ["convert", "-f", "raw", "-O", q.driver, ...q.options, o.diskPath, path]);
  }
  await checkDiskFormat(o.format, path, rawSize);
  return {
    format: o.format,
    file,
    bytes: (await stat(path)).size,
    sha256: (await fileDigest(path)).sha256,
  };
}

function badOutput(format: DiskFormat, path: string, problem: string, details = {}): BuildError {
  return new BuildError("BUILD_FAILED", `the ${format} disk ${path} failed its check: ${problem}`, {
    details: { format, path, ...details },
  });
}

/**
 * Check that `path` is `format`'s form of a raw disk of `rawSize` bytes
 * (`BUILD_FAILED` naming the format, the file and what is wrong).
 */
export async function checkDiskFormat(
  format: DiskFormat,
  path: string,
  rawSize: number,
): Promise<void> {
  if (format === "gce") return checkGceTarball(path, rawSize);
  if (format !== "raw") return checkQemuImage(format, path, rawSize);
  const { size } = await stat(path);
  if (size !== rawSize) throw badOutput(format, path, `${size} bytes, not ${rawSize}`);
}

/**
 * qemu-img check (qcow2, vmdk), then qemu-img info: the format it reads and a
 * virtual size equal to the raw disk's. qcow2 and vmdk are probed, so the
 * header itself must say the format; a fixed VHD probes as raw (its data comes
 * first), so it is read as vpc and its footer's cookie and disk type checked.
 */
async function checkQemuImage(
  format: "qcow2" | "vmdk" | "vhd",
  path: string,
  rawSize: number,
): Promise<void> {
  const q = QEMU[format];
  if (q.check) {
    const r = await run("qemu-img", ["check", path], { allowFailure: true });
    if (r.code !== 0) {
      throw badOutput(
        format,
        path,
        `qemu-img check exited ${r.code}: ${r.stdout}${r.stderr}`.trim(),
      );
    }
  }
  const forced = format === "vhd" ? ["-f", q.driver] : [];
  const info = JSON.parse(
    (await run("qemu-img", ["info", ...forced, "--output=json", path])).stdout,
  ) as { format?: string; "virtual-size"?: number };
  if (info.format !== q.driver) {
    throw badOutput(format, path, `qemu-img info reads it as ${info.format}, not ${q.driver}`);
  }
  if (info["virtual-size"] !== rawSize) {
    throw badOutput(
      format,
      path,
      `its virtual size is ${info["virtual-size"]} bytes, the raw disk's ${rawSize}`,
    );
  }
  if (format === "vhd") await checkVhdFooter(path, rawSize);
}

/** The last 512 bytes of a fixed VHD: cookie "conectix", current size (48), disk type 2 (60). */
async function checkVhdFooter(path: string, rawSize: number): Promise<void> {
  const fh = await open(path, "r");
  const footer = Buffer.alloc(512);
  try {
    const { size } = await fh.stat();
    await fh.read(footer, 0, 512, size - 512);
  } finally {
    await fh.close();
  }
  const cookie = footer.subarray(0, 8).toString("latin1");
  const current = Number(footer.readBigUInt64BE(48));
  const type = footer.readUInt32BE(60);
  if (cookie !== "conectix" || type !== 2 || current !== rawSize) {
    throw badOutput("vhd", path, "its footer is not a fixed VHD of the disk's size", {
      cookie,
      type,
      current,
    });
  }
}

/**
 * GCE's import form: one member `disk.raw`, a sparse GNU tar (oldgnu, as GCE
 * documents), gzip'd. The member is a hard link to the raw disk, named
 * disk.raw; owner 0 and a fixed mtime, and gzip -n, so the same disk makes the
 * same tarball.
 */
async function writeGceTarball(
  diskPath: string,
  outPath: string,
  workDir: string,
  mtime: number,
): Promise<void> {
  const dir = join(workDir, "gce");
  await mkdir(dir);
  try {
    await link(diskPath, join(dir, "disk.raw"));
    await run("tar", [
      "--create",
      "--sparse",
      "--format=oldgnu",
      "--owner=0",
      "--group=0",
      "--numeric-owner",
      `--mtime=@${mtime}`,
      "--use-compress-program=gzip -n",
      "--file",
      outPath,
      "--directory",
      dir,
      "disk.raw",
    ]);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** The tarball lists exactly one member, the regular file `disk.raw` of the raw disk's size. */
async function checkGceTarball(path: string, rawSize: number): Promise<void> {
  const listing = (
    await run("tar", ["--list", "--verbose", "--numeric-owner", "--gzip", "--file", path])
  ).stdout
    .split("\n")
    .filter((l) => l !== "");
  const [only] = listing;
  const m = listing.length === 1 ? /^-\S*\s+\S+\s+(\d+)\s+\S+\s+\S+\s+(.+)$/.exec(only!) : null;
  const [, size, name] = m ?? [];
  if (name !== "disk.raw" || Number(size) !== rawSize) {
    throw badOutput(
      "gce",
      path,
      `it must hold exactly the file disk.raw of ${rawSize} bytes; tar lists: ${listing.join(" | ")}`,
    );
  }
}
