/**
 * The root filesystem as a squashfs, reproducibly (README.md, "squashfs").
 * GRUB 2.06 reads gzip and xz squashfs, not zstd, so those are the choices.
 */
import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { lstat, mkdir, readdir, rename, rm, stat } from "node:fs/promises";
import { dirname, join } from "node:path";
import { run } from "../exec.ts";
import { logger } from "../log.ts";
import { BuildError } from "./errors.ts";
import { sourceDateEpoch } from "./initramfs.ts";

export type SquashfsCompression = "xz" | "gzip";

export interface SquashfsOptions {
  sourceDir: string;
  outPath: string;
  compression: SquashfsCompression;
  /**
   * Owners, modes and device nodes from a mksquashfs pseudo file (the layers'
   * `PseudoFile.mksquashfsArgs`: `-pf FILE -root-mode ...`). Without it every
   * file is owned by root (`-all-root`).
   */
  pseudoFile?: { mksquashfsArgs: readonly string[] };
  /** Timestamp of every file and of the filesystem (default: SOURCE_DATE_EPOCH, else 0). */
  mtime?: number;
  /**
   * Called as mksquashfs progresses: bytes of file content it has taken in, of
   * the total in `sourceDir` (from its `-info` line per file).
   */
  onProgress?: (done: number, total: number) => void;
}

export interface FileDigest {
  path: string;
  bytes: number;
  sha256: string;
}

/** sha256 and size of a file, streamed. */
export async function fileDigest(path: string): Promise<FileDigest> {
  const hash = createHash("sha256");
  let bytes = 0;
  for await (const chunk of createReadStream(path)) {
    hash.update(chunk as Buffer);
    bytes += (chunk as Buffer).length;
  }
  return { path, bytes, sha256: hash.digest("hex") };
}

/** The mksquashfs arguments (README.md, "squashfs"); exported for tests and --explain. */
export function mksquashfsArgs(o: SquashfsOptions, mtime: number): string[] {
  return [
    o.sourceDir,
    o.outPath,
    "-noappend",
    "-comp",
    o.compression,
    "-all-time",
    String(mtime),
    "-mkfs-time",
    String(mtime),
    "-no-xattrs",
    // -info: a line per file, which is the progress when someone watches
    o.onProgress ? "-info" : "-quiet",
    "-no-progress",
    ...(o.pseudoFile ? o.pseudoFile.mksquashfsArgs : ["-all-root"]),
  ];
}

export async function buildSquashfs(o: SquashfsOptions): Promise<FileDigest> {
  const started = Date.now();
  if (o.compression !== "xz" && o.compression !== "gzip") {
    throw new BuildError(
      "BUILD_FAILED",
      `squashfs compression "${o.compression}": GRUB reads only xz and gzip`,
      { details: { compression: o.compression } },
    );
  }
  const mtime = o.mtime ?? sourceDateEpoch();
  await mkdir(dirname(o.outPath), { recursive: true });
  const tmp = `${o.outPath}.tmp-${process.pid}`;
  // mksquashfs refuses SOURCE_DATE_EPOCH together with -all-time/-mkfs-time.
  const env = { ...process.env };
  delete env.SOURCE_DATE_EPOCH;
  try {
    const onProgress = o.onProgress;
    const total = onProgress ? await contentBytes(o.sourceDir) : 0;
    await run("mksquashfs", mksquashfsArgs({ ...o, outPath: tmp }, mtime), {
      env,
      ...(onProgress ? { onStdout: progressParser(total, onProgress) } : {}),
    });
    onProgress?.(total, total);
    await rename(tmp, o.outPath);
  } catch (cause) {
    await rm(tmp, { force: true });
    throw cause;
  }
  const digest = await fileDigest(o.outPath);
  logger()
    .child({ module: "build", step: "squashfs" })
    .info({ ...digest, compression: o.compression, ms: Date.now() - started }, "squashfs built");
  return digest;
}

/**
 * Follow mksquashfs's `-info` output (`file /etc/motd, uncompressed size 19
 * bytes`, a line per file as it goes in) from its stdout chunks: the bytes
 * taken in so far, never more than `total`.
 */
export function progressParser(
  total: number,
  onProgress: (done: number, total: number) => void,
): (chunk: Buffer) => void {
  let pending = "";
  let done = 0;
  return (chunk) => {
    const lines = (pending + chunk.toString("utf8")).split("\n");
    pending = lines.pop() ?? "";
    const before = done;
    for (const line of lines) {
      const m = /^file .*, uncompressed size (\d+) bytes/.exec(line);
      if (m) done = Math.min(total, done + Number(m[1]));
    }
    if (done !== before) onProgress(done, total);
  };
}

/** Bytes of regular-file content under a directory, each inode once (as mksquashfs stores it). */
async function contentBytes(dir: string): Promise<number> {
  const seen = new Set<number>();
  let bytes = 0;
  const walk = async (d: string): Promise<void> => {
    for (const e of await readdir(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) await walk(p);
      else if (e.isFile()) {
        const st = await lstat(p);
        if (st.nlink > 1 && seen.has(st.ino)) continue;
        seen.add(st.ino);
        bytes += st.size;
      }
    }
  };
  await walk(dir);
  return bytes;
}

/** Size of a file in bytes. */
export async function fileSize(path: string): Promise<number> {
  return (await stat(path)).size;
}
