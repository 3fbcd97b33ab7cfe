/** File-system plumbing shared by the key and bundle writers. */
import { lstat, open } from "node:fs/promises";
import { isBaseError, ToolError } from "../errors.ts";

/** Run an I/O step; a plain fs error becomes IO_ERROR (or DISK_FULL) saying what was being done. */
export async function ioStep<T>(what: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (cause) {
    if (isBaseError(cause)) throw cause;
    const code = (cause as NodeJS.ErrnoException).code;
    throw new ToolError(
      code === "ENOSPC" ? "DISK_FULL" : "IO_ERROR",
      `cannot ${what}: ${(cause as Error).message}`,
      { cause, details: { errno: code } },
    );
  }
}

export async function pathExists(path: string): Promise<boolean> {
  return ioStep(`check ${path}`, async () => {
    try {
      await lstat(path);
      return true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return false;
      throw err;
    }
  });
}

/** fsync a directory, so that a rename or link in it survives a crash. */
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
