/**
 * Plain file I/O, once (issue 11, points 6 and 8): positional read and write
 * loops, directory fsync, atomic file replace, and the one mapping from an
 * errno to an error code that every module uses:
 *
 * - ENOSPC or EDQUOT (no space, quota) → DISK_FULL, wherever it happens;
 * - any other system error (EIO, EROFS, EACCES, ...) → IO_ERROR, with the
 *   errno in `details.errno` and the path in the message;
 * - an error that is not a system error (a TypeError: a bug) passes through
 *   untouched, so it surfaces as a bug and is never recoded as an expected
 *   failure; a BaseError (already typed) passes through too.
 */
import { readSync, writeSync } from "node:fs";
import { type FileHandle, open, rename, unlink } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import { isBaseError, ToolError } from "./errors.ts";

/** The errno name of a system error (`ENOENT`, `EIO`, ...), or undefined for anything else. */
export function errnoOf(err: unknown): string | undefined {
  if (!(err instanceof Error)) return undefined;
  const code = (err as NodeJS.ErrnoException).code;
  return typeof code === "string" && /^E[A-Z0-9]+$/.test(code) ? code : undefined;
}

/** Whether `err` is a system error (from a syscall), as opposed to a bug or a typed error. */
export function isSystemError(err: unknown): err is NodeJS.ErrnoException {
  return !isBaseError(err) && errnoOf(err) !== undefined;
}

/**
 * The system error behind `err`: `err` itself, or the cause of the
 * IO_ERROR/DISK_FULL this module made from one; undefined for anything else.
 */
export function systemCause(err: unknown): NodeJS.ErrnoException | undefined {
  if (isSystemError(err)) return err;
  if (err instanceof ToolError && (err.code === "IO_ERROR" || err.code === "DISK_FULL"))
    return isSystemError(err.cause) ? err.cause : undefined;
  return undefined;
}

/** The code of a system error: DISK_FULL for no space (ENOSPC, EDQUOT), else IO_ERROR. */
export function ioCodeFor(errno: string | undefined): "DISK_FULL" | "IO_ERROR" {
  return errno === "ENOSPC" || errno === "EDQUOT" ? "DISK_FULL" : "IO_ERROR";
}

function messageOf(cause: unknown): string {
  return cause instanceof Error ? cause.message : String(cause);
}

/** `cannot <what>: <system message>` as DISK_FULL or IO_ERROR. */
export function ioError(
  what: string,
  cause: unknown,
  details: Record<string, unknown> = {},
): ToolError {
  const errno = errnoOf(cause);
  return new ToolError(ioCodeFor(errno), `cannot ${what}: ${messageOf(cause)}`, {
    cause,
    details: { ...details, errno },
  });
}

/**
 * Run one I/O step. A system error becomes DISK_FULL or IO_ERROR saying what
 * was being done; typed errors and bugs pass through unchanged.
 */
export async function ioStep<T>(what: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (cause) {
    if (isSystemError(cause)) throw ioError(what, cause);
    throw cause;
  }
}

/**
 * `p`'s value, or `fallback` when what it reads does not exist (ENOENT); any
 * other failure (EACCES, EIO...) is thrown as DISK_FULL/IO_ERROR naming
 * `what`, never taken for "not there".
 */
export async function unlessMissing<T>(what: string, p: Promise<T>, fallback: T): Promise<T> {
  try {
    return await p;
  } catch (err) {
    if (errnoOf(err) === "ENOENT") return fallback;
    if (isSystemError(err)) throw ioError(what, err);
    throw err;
  }
}

/** The synchronous `ioStep`. */
export function ioStepSync<T>(what: string, fn: () => T): T {
  try {
    return fn();
  } catch (cause) {
    if (isSystemError(cause)) throw ioError(what, cause);
    throw cause;
  }
}

/**
 * Read into `buf` from `position` until it is full or the file ends; returns
 * the bytes read (less than `buf.length` only at the end of the file).
 * System errors are left to the caller (wrap in ioStep to type them).
 */
export function readAtSync(fd: number, buf: Uint8Array, position: number): number {
  let done = 0;
  while (done < buf.length) {
    const n = readSync(fd, buf, done, buf.length - done, position + done);
    if (n === 0) break;
    done += n;
  }
  return done;
}

/** Write all of `buf` at `position` (a short write is continued). */
export function writeAtSync(fd: number, buf: Uint8Array, position: number): void {
  let done = 0;
  while (done < buf.length) {
    const n = writeSync(fd, buf, done, buf.length - done, position + done);
    if (n === 0) throw wroteNothing(position + done);
    done += n;
  }
}

/** A write that made no progress: an I/O error (EIO), not a reason to loop forever. */
function wroteNothing(position: number): NodeJS.ErrnoException {
  return Object.assign(new Error(`write at byte ${position} wrote nothing`), { code: "EIO" });
}

/** The asynchronous `readAtSync`. */
export async function readAt(fh: FileHandle, buf: Uint8Array, position: number): Promise<number> {
  let done = 0;
  while (done < buf.length) {
    const { bytesRead } = await fh.read(buf, done, buf.length - done, position + done);
    if (bytesRead === 0) break;
    done += bytesRead;
  }
  return done;
}

/** The asynchronous `writeAtSync`. */
export async function writeAt(fh: FileHandle, buf: Uint8Array, position: number): Promise<void> {
  let done = 0;
  while (done < buf.length) {
    const { bytesWritten } = await fh.write(buf, done, buf.length - done, position + done);
    if (bytesWritten === 0) throw wroteNothing(position + done);
    done += bytesWritten;
  }
}

/** fsync a directory, so that a rename or a new file in it survives a power loss. */
export async function fsyncDir(dir: string): Promise<void> {
  await ioStep(`fsync directory ${dir}`, async () => {
    const d = await open(dir, "r");
    try {
      await d.sync();
    } finally {
      await d.close();
    }
  });
}

export interface ReplaceOptions {
  /** Mode of the new file, exactly (not reduced by the umask; default 0644). */
  mode?: number;
  /** Temp file name in the same directory (default `.<name>.<pid>.tmp`). */
  tempName?: string;
}

/**
 * Replace `path` with `bytes` atomically: write a temp file in the same
 * directory, fsync it, rename it over `path`, fsync the directory. A crash at
 * any instant leaves the old file or the new one, whole; on failure the temp
 * file is removed and `path` is as it was.
 */
export async function replaceFile(
  path: string,
  bytes: Uint8Array | string,
  options: ReplaceOptions = {},
): Promise<void> {
  const dir = dirname(path);
  const tmp = join(dir, options.tempName ?? `.${basename(path)}.${process.pid}.tmp`);
  try {
    await ioStep(`write ${tmp}`, async () => {
      const fh = await open(tmp, "w", options.mode ?? 0o644);
      try {
        await fh.chmod(options.mode ?? 0o644);
        await fh.writeFile(bytes);
        await fh.sync();
      } finally {
        await fh.close();
      }
    });
    await ioStep(`rename ${tmp} to ${path}`, () => rename(tmp, path));
  } catch (err) {
    await unlink(tmp).catch(() => undefined);
    throw err;
  }
  await fsyncDir(dir);
}
