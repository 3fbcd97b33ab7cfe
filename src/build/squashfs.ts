/**
 * The root filesystem as a squashfs, reproducibly (README.md, "squashfs").
 * GRUB 2.06 reads gzip and xz squashfs, not zstd, so those are the choices.
 */
import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { mkdir, rename, rm, stat } from "node:fs/promises";
import { dirname } from "node:path";
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
    "-quiet",
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
    await run("mksquashfs", mksquashfsArgs({ ...o, outPath: tmp }, mtime), { env });
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

/** Size of a file in bytes. */
export async function fileSize(path: string): Promise<number> {
  return (await stat(path)).size;
}
