/** The GRUB config against grub-script-check, and the EFI image from grub-mkimage. */
import { execFileSync, spawnSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { buildGrubEfi, grubConfig, ustarSingleFile } from "../../../src/bootloader/grub.ts";
import { tempDir } from "../../helpers/tmp.ts";

describe("GRUB config and EFI image", () => {
  const dir = tempDir();
  const cfg = grubConfig({ cmdline: "console=ttyS0 quiet" });

  it("is a script GRUB's own parser accepts", () => {
    const path = join(dir, "grub.cfg");
    writeFileSync(path, cfg);
    const r = spawnSync("grub-script-check", [path], { encoding: "utf8" });
    expect(r.status, r.stderr).toBe(0);
  });

  it("memdisk tar reads back with GNU tar", () => {
    const path = join(dir, "memdisk.tar");
    writeFileSync(path, ustarSingleFile("grub.cfg", new TextEncoder().encode(cfg)));
    expect(execFileSync("tar", ["-tvf", path], { encoding: "utf8" })).toMatch(
      /^-rw-r--r-- 0\/0 +\d+ 1970-01-01 00:00 grub.cfg$/m,
    );
    expect(execFileSync("tar", ["-xOf", path, "grub.cfg"], { encoding: "utf8" })).toBe(cfg);
  });

  it("builds a byte-identical x86_64 EFI image that carries the config", async () => {
    await buildGrubEfi(join(dir, "a.efi"), cfg);
    await buildGrubEfi(join(dir, "b.efi"), cfg);
    const a = readFileSync(join(dir, "a.efi"));
    expect(a.equals(readFileSync(join(dir, "b.efi")))).toBe(true);
    expect(a.subarray(0, 2).toString("latin1")).toBe("MZ");
    expect(a.includes(Buffer.from("abforge_try_A"))).toBe(true);
    expect(a.length).toBeLessThan(2 * 1024 * 1024);
    await buildGrubEfi(join(dir, "c.efi"), grubConfig({ cmdline: "console=tty0" }));
    expect(a.equals(readFileSync(join(dir, "c.efi")))).toBe(false);
  });
});
