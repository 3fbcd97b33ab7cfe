/** The state filesystem (src/build/README.md, "State partition") checked with e2fsprogs. */
import { execFileSync, spawnSync } from "node:child_process";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { buildStateFs } from "../../../src/build/filesystems.ts";
import { STATE_FS_LABEL } from "../../../src/image/index.ts";
import { tempDir } from "../../helpers/tmp.ts";

const MiB = 1024 * 1024;

describe("buildStateFs", async () => {
  const dir = tempDir();
  const varDir = join(dir, "var");
  mkdirSync(join(varDir, "lib/app"), { recursive: true });
  writeFileSync(join(varDir, "lib/app/seed"), "seed\n");
  const a = await buildStateFs({
    outPath: join(dir, "a.img"),
    sizeBytes: 16 * MiB,
    uuidSeed: "demo",
    varSourceDir: varDir,
  });

  it("is byte-identical across builds made at different times", async () => {
    await new Promise((r) => setTimeout(r, 1100));
    const b = await buildStateFs({
      outPath: join(dir, "b.img"),
      sizeBytes: 16 * MiB,
      uuidSeed: "demo",
      varSourceDir: varDir,
    });
    expect(b.uuid).toBe(a.uuid);
    expect(readFileSync(a.path).equals(readFileSync(b.path))).toBe(true);
  });

  it("is a clean ext4 with the label and UUID", () => {
    const fsck = spawnSync("e2fsck", ["-fn", a.path], { encoding: "utf8" });
    expect(fsck.status, fsck.stdout + fsck.stderr).toBe(0);
    const head = execFileSync("dumpe2fs", ["-h", a.path], {
      encoding: "utf8",
      stdio: ["ignore", "pipe", "ignore"],
    });
    expect(head).toMatch(new RegExp(`Filesystem volume name:\\s+${STATE_FS_LABEL}`));
    expect(head).toMatch(new RegExp(`Filesystem UUID:\\s+${a.uuid}`));
  });

  it("holds var/ (seeded from the image's /var) and etc-overlay/{upper,work}", () => {
    const ls = (p: string) =>
      execFileSync("debugfs", ["-R", `ls ${p}`, a.path], {
        encoding: "utf8",
        stdio: ["ignore", "pipe", "ignore"],
      });
    expect(ls("/")).toMatch(/\bvar\b[\s\S]*\betc-overlay\b|\betc-overlay\b[\s\S]*\bvar\b/);
    expect(ls("/etc-overlay")).toMatch(/upper[\s\S]*work|work[\s\S]*upper/);
    const cat = execFileSync("debugfs", ["-R", "cat /var/lib/app/seed", a.path], {
      encoding: "utf8",
      stdio: ["ignore", "pipe", "ignore"],
    });
    expect(cat).toBe("seed\n");
  });

  it("refuses a size that is not a multiple of 4096", async () => {
    await expect(
      buildStateFs({ outPath: join(dir, "c.img"), sizeBytes: 16 * MiB + 1, uuidSeed: "x" }),
    ).rejects.toMatchObject({ code: "PARTITION_TOO_SMALL" });
  });
});
