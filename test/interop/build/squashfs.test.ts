/** mksquashfs as the build drives it (src/build/README.md, "squashfs"), read back with unsquashfs. */
import { execFileSync } from "node:child_process";
import { mkdirSync, symlinkSync, utimesSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { buildSquashfs } from "../../../src/build/squashfs.ts";
import { tempDir } from "../../helpers/tmp.ts";

describe("buildSquashfs", () => {
  const dir = tempDir();
  const src = join(dir, "root");
  mkdirSync(join(src, "etc"), { recursive: true });
  mkdirSync(join(src, "bin"));
  writeFileSync(join(src, "etc/motd"), "hello\n");
  writeFileSync(join(src, "etc/secret"), "s\n", { mode: 0o600 });
  writeFileSync(join(src, "bin/tool"), Buffer.alloc(200_000, 3), { mode: 0o755 });
  symlinkSync("tool", join(src, "bin/link"));

  it("is byte-identical across builds, whatever the files' times on disk", async () => {
    const a = await buildSquashfs({
      sourceDir: src,
      outPath: join(dir, "a.sqfs"),
      compression: "xz",
    });
    utimesSync(join(src, "etc/motd"), 12345, 12345);
    const b = await buildSquashfs({
      sourceDir: src,
      outPath: join(dir, "b.sqfs"),
      compression: "xz",
    });
    expect(b.sha256).toBe(a.sha256);
    const list = execFileSync("unsquashfs", ["-lln", "-d", "", a.path], { encoding: "utf8" });
    expect(list).toMatch(/^-rw------- 0\/0 +2 1970-01-01 00:00 \/etc\/secret$/m);
    expect(list).toMatch(/^lrwxrwxrwx 0\/0 +4 1970-01-01 00:00 \/bin\/link -> tool$/m);
    expect(execFileSync("unsquashfs", ["-s", a.path], { encoding: "utf8" })).toMatch(
      /Compression xz/,
    );
  });

  it("uses SOURCE_DATE_EPOCH for the times and gzip when asked", async () => {
    const saved = process.env.SOURCE_DATE_EPOCH;
    process.env.SOURCE_DATE_EPOCH = "1700000000";
    try {
      const g = await buildSquashfs({
        sourceDir: src,
        outPath: join(dir, "g.sqfs"),
        compression: "gzip",
      });
      const sb = execFileSync("unsquashfs", ["-s", g.path], { encoding: "utf8" });
      expect(sb).toMatch(/Compression gzip/);
      expect(sb).toMatch(/Creation or last append time Tue Nov 14 22:13:20 2023/);
    } finally {
      if (saved === undefined) delete process.env.SOURCE_DATE_EPOCH;
      else process.env.SOURCE_DATE_EPOCH = saved;
    }
  });

  it("takes owners and modes from a pseudo file instead of -all-root", async () => {
    const pf = join(dir, "pseudo");
    writeFileSync(pf, "etc/motd m 0640 1000 100\n");
    const p = await buildSquashfs({
      sourceDir: src,
      outPath: join(dir, "p.sqfs"),
      compression: "xz",
      pseudoFile: { mksquashfsArgs: ["-pf", pf, "-root-uid", "0", "-root-gid", "0"] },
    });
    const list = execFileSync("unsquashfs", ["-lln", "-d", "", p.path], { encoding: "utf8" });
    expect(list).toMatch(/^-rw-r----- 1000\/100 +6 .* \/etc\/motd$/m);
  });

  it("refuses a compression GRUB cannot read", async () => {
    await expect(
      buildSquashfs({
        sourceDir: src,
        outPath: join(dir, "z.sqfs"),
        compression: "zstd" as "xz",
      }),
    ).rejects.toThrow(/GRUB reads only xz and gzip/);
  });
});
