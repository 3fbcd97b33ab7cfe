/** The ESP image against mtools, fsck.vfat and our own BootDisk/FAT reader. */
import { execFileSync, spawnSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import {
  bootStateToEnv,
  buildEsp,
  decodeEnv,
  encodeEnv,
  fatClusterCount,
  initialBootState,
  locateFatFile,
  readFatGeometry,
} from "../../../src/bootloader/index.ts";
import { tempDir } from "../../helpers/tmp.ts";

const MiB = 1024 * 1024;

describe("buildEsp", () => {
  const dir = tempDir();
  const efi = join(dir, "BOOTX64.EFI");
  writeFileSync(efi, Buffer.alloc(700_000, 0x5a));
  const state = initialBootState({
    rootHash: "ab".repeat(32),
    verity: "10:11:00ff",
    version: "1.0.0",
  });
  const env = encodeEnv(bootStateToEnv(state));

  it("is byte-identical across runs, passes fsck.vfat and holds the two files", async () => {
    const a = join(dir, "a.img");
    const b = join(dir, "b.img");
    await buildEsp({ outPath: a, sizeBytes: 64 * MiB, efiPath: efi, env, volumeId: "abf00001" });
    await new Promise((r) => setTimeout(r, 1100)); // a different wall-clock second
    await buildEsp({ outPath: b, sizeBytes: 64 * MiB, efiPath: efi, env, volumeId: "abf00001" });
    expect(readFileSync(a).equals(readFileSync(b))).toBe(true);
    const fsck = spawnSync("fsck.vfat", ["-n", a], { encoding: "utf8" });
    expect(fsck.status, fsck.stdout + fsck.stderr).toBe(0);
    const dirList = execFileSync("mdir", ["-i", a, "-/", "-b", "::"], { encoding: "utf8" });
    expect(dirList.split("\n").filter(Boolean).sort()).toEqual([
      "::/EFI/",
      "::/EFI/BOOT/",
      "::/EFI/BOOT/BOOTX64.EFI",
      "::/GRUBENV",
    ]);
    const got = execFileSync("mtype", ["-i", a, "::/GRUBENV"]);
    expect(decodeEnv(new Uint8Array(got))).toEqual(bootStateToEnv(state));
    expect(
      execFileSync("mtype", ["-i", a, "::/EFI/BOOT/BOOTX64.EFI"]).equals(readFileSync(efi)),
    ).toBe(true);
  });

  it("uses the largest cluster that still makes a valid FAT32, and keeps /GRUBENV contiguous", async () => {
    for (const [size, cluster] of [
      [64 * MiB, 512],
      [300 * MiB, 4096],
    ] as const) {
      const p = join(dir, `esp-${size}.img`);
      await buildEsp({ outPath: p, sizeBytes: size, efiPath: efi, env, volumeId: "ABF00002" });
      const bytes = readFileSync(p);
      expect(fatClusterCount(bytes.subarray(0, 512))).toBeGreaterThanOrEqual(65525);
      const readAt = (o: number, n: number) => bytes.subarray(o, o + n);
      const g = readFatGeometry(readAt, { where: p });
      expect(g.clusterBytes).toBe(cluster);
      const f = locateFatFile(readAt, "GRUBENV", { size: 1024, where: p });
      expect(f.size).toBe(1024);
      expect(bytes.subarray(f.offset, f.offset + 1024).equals(Buffer.from(env))).toBe(true);
    }
  });

  it("refuses a volume too small for FAT32 and a bad volume ID", async () => {
    await expect(
      buildEsp({
        outPath: join(dir, "s.img"),
        sizeBytes: 16 * MiB,
        efiPath: efi,
        env,
        volumeId: "ABF00003",
      }),
    ).rejects.toMatchObject({
      code: "ESP_BAD",
      message: expect.stringMatching(/too small for FAT32/),
    });
    await expect(
      buildEsp({
        outPath: join(dir, "s.img"),
        sizeBytes: 64 * MiB,
        efiPath: efi,
        env,
        volumeId: "xyz",
      }),
    ).rejects.toMatchObject({ code: "ESP_BAD" });
  });
});
