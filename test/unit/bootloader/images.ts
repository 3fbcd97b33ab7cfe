/** Real FAT32 volumes and GPT disks for the bootloader tests, made with mkfs.vfat and mtools. */

import { execFile } from "node:child_process";
import { closeSync, openSync, readSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
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
