/** File-system plumbing shared by the key and bundle writers. */
import { lstat } from "node:fs/promises";
import { ioStep } from "../fileio.ts";

export { fsyncDir, ioStep } from "../fileio.ts";

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
