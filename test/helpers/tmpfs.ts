/**
 * A small tmpfs mounted on a temporary directory: a file system that really
 * fills up (ENOSPC) or is really read-only (EROFS), for the I/O error tests.
 * Needs root (the test machines run as root, as CI does); unmounted when the
 * test file ends.
 */
import { execFileSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll } from "vitest";
import { tempDir } from "./tmp.ts";

const mounted: string[] = [];
afterAll(() => {
  for (const dir of mounted.splice(0).reverse())
    execFileSync("umount", ["-l", dir], { stdio: "ignore" });
});

/** Mount a tmpfs of `sizeKiB` on a new directory; `readOnly` mounts it read-only. */
export function tmpfs(sizeKiB: number, options: { readOnly?: boolean } = {}): string {
  const dir = tempDir("abforge-tmpfs-");
  const opts = [`size=${sizeKiB}k`, "mode=0755", ...(options.readOnly ? ["ro"] : [])].join(",");
  execFileSync("mount", ["-t", "tmpfs", "-o", opts, "tmpfs", dir]);
  mounted.push(dir);
  return dir;
}

/** Fill the file system under `dir` until it has no space left (ENOSPC). */
export function fill(dir: string): void {
  const block = Buffer.alloc(4096, 0x5a);
  for (let i = 0; ; i++) {
    try {
      writeFileSync(join(dir, `filler-${i}`), block);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOSPC") return;
      throw err;
    }
  }
}
