/** Real FAT32 volumes and GPT disks for the bootloader tests, made with mkfs.vfat and mtools. */

import { execFile } from "node:child_process";
import { closeSync, openSync, readSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import { PARTITION_TYPES, partitionRange, planDisk, writeGpt } from "../../../src/disk/index.ts";
import { requireTool } from "../../../src/exec.ts";

const execFileP = promisify(execFile);

/**
 * Runs a tool with stdin closed (a missing tool fails with the Debian package
 * to install). src/exec.ts's run() pipes stdin and can die of EPIPE when a
 * tool exits before reading it.
 */
export async function tool(name: string, args: readonly string[]): Promise<{ stdout: string }> {
  const { stdout } = await execFileP(requireTool(name), args, { encoding: "utf8" });
  return { stdout };
}

/** Like tool(), but resolves with the exit code instead of throwing. */
export async function toolStatus(
  name: string,
  args: readonly string[],
): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await execFileP(requireTool(name), args, { encoding: "utf8" });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code?: unknown; stdout?: string; stderr?: string };
    if (typeof e.code !== "number") throw err;
    return { code: e.code, stdout: e.stdout ?? "", stderr: e.stderr ?? "" };
  }
}

/** 264 MiB: mtools needs at least 65525 clusters to take a volume for FAT32. */
export const ESP_BYTES = 264 * 1024 * 1024;

export interface FatImageOptions {
  sizeBytes?: number;
  sectorsPerCluster?: number;
  /** Files to put into the root directory, in this order. */
  files?: Record<string, Uint8Array | string>;
}

/** mkfs.vfat -F 32 -s N, then mcopy each file into the root directory. A sparse file. */
export async function makeFatImage(path: string, o: FatImageOptions = {}): Promise<string> {
  const size = o.sizeBytes ?? ESP_BYTES;
  await tool("mkfs.vfat", [
    "-F",
    "32",
    "-s",
    String(o.sectorsPerCluster ?? 8),
    "-n",
    "ESP",
    "-C",
    path,
    String(size / 1024),
  ]);
  let n = 0;
  for (const [name, content] of Object.entries(o.files ?? {})) {
    const src = join(`${path}.d${n++}`);
    writeFileSync(src, content);
    await tool("mcopy", ["-i", path, src, `::/${name}`]);
  }
  return path;
}

/** A readAt over a file, for the pure FAT reader. */
export function fileReadAt(path: string, base = 0) {
  return (offset: number, length: number): Uint8Array => {
    const fd = openSync(path, "r");
    try {
      const buf = Buffer.alloc(length);
      const n = readSync(fd, buf, 0, length, base + offset);
      return buf.subarray(0, n);
    } finally {
      closeSync(fd);
    }
  };
}

export interface BootDiskImageOptions {
  /** The 1024 bytes of /GRUBENV; omit for none. */
  env?: Uint8Array;
  espName?: string;
  espType?: string;
  espBytes?: number;
  /** Files put into the ESP root before GRUBENV. */
  espFiles?: Record<string, Uint8Array | string>;
}

/**
 * A GPT disk image as the build makes it (src/disk planDisk + writeGpt):
 * esp (FAT32, mkfs.vfat --offset, files by mcopy -i disk@@offset),
 * abforge-A, abforge-B (1 MiB each), state. Sparse.
 */
export async function makeBootDiskImage(path: string, o: BootDiskImageOptions = {}) {
  const espBytes = o.espBytes ?? ESP_BYTES;
  const mib = 1024 * 1024;
  const table = planDisk({
    guidSeed: path,
    partitions: [
      { name: o.espName ?? "esp", typeGuid: o.espType ?? PARTITION_TYPES.ESP, sizeBytes: espBytes },
      { name: "abforge-A", typeGuid: PARTITION_TYPES.ROOT_X86_64, sizeBytes: 2 * mib },
      { name: "abforge-B", typeGuid: PARTITION_TYPES.ROOT_X86_64, sizeBytes: 2 * mib },
      { name: "state", typeGuid: PARTITION_TYPES.LINUX_GENERIC, sizeBytes: mib },
    ],
  });
  await writeGpt(path, table);
  const esp = partitionRange(table.partitions[0]!, table.sectorSize);
  await tool("mkfs.vfat", [
    "-F",
    "32",
    "-s",
    "8",
    "-n",
    "ESP",
    `--offset=${esp.offset / 512}`,
    path,
    String(esp.size / 1024),
  ]);
  const files = { ...o.espFiles, ...(o.env ? { GRUBENV: o.env } : {}) };
  let n = 0;
  for (const [name, content] of Object.entries(files)) {
    const src = `${path}.f${n++}`;
    writeFileSync(src, content);
    await tool("mcopy", ["-i", `${path}@@${esp.offset}`, src, `::/${name}`]);
  }
  return { table, esp };
}

/** Two slot images' boot-state fields for the bootloader tests (root hashes, verity text, versions). */
export const HASH_A = "a".repeat(64);
export const HASH_B = "b".repeat(64);
export const VERITY = `65536:65537:${"5a".repeat(32)}`;
export const imageA = { rootHash: HASH_A, verity: VERITY, version: "1.0.0" };
export const imageB = { rootHash: HASH_B, verity: VERITY, version: "2.0.0" };
