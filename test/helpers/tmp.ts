/**
 * Temporary directories that are removed when the test file ends, wherever
 * they were made (top level, a hook or a test body): one afterAll, registered
 * when this module is loaded by the test file, removes them all.
 */
import { mkdtempSync, readdirSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll } from "vitest";

const made: string[] = [];

try {
  afterAll(() => {
    for (const dir of made.splice(0)) rmSync(dir, { recursive: true, force: true });
  });
} catch {
  // Loaded outside a test file (a global setup imports the fixtures): there is
  // no suite to hook, and nothing here makes temp dirs.
}

export function tempDir(prefix = "abforge-test-"): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  made.push(dir);
  return dir;
}

/** Names, sizes and mtimes of what is in a directory: what a failed or interrupted build must not change. */
export function dirSnapshot(dir: string): string[] {
  return readdirSync(dir)
    .sort()
    .map((n) => {
      const st = statSync(join(dir, n));
      return `${n} ${st.size} ${st.mtimeMs}`;
    });
}
