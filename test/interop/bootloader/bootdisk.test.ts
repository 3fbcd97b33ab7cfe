// The boot state on a disk image against mtools and grub-editenv: what
// BootDisk writes in place is the file /GRUBENV for a FAT driver, and GRUB's
// reader lists it; what grub-editenv changes (as GRUB's save_env does in
// place) BootDisk reads (src/bootloader/README.md, "BootDisk").
import { closeSync, openSync, readFileSync, writeSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import {
  activateSlot,
  bootStateToEnv,
  encodeEnv,
  initialBootState,
  markUnbootable,
  withBootDisk,
} from "../../../src/bootloader/index.ts";
import { tempDir } from "../../helpers/tmp.ts";
import { makeBootDiskImage, tool, toolStatus } from "../../unit/bootloader/images.ts";

const dir = tempDir();
const VERITY = `65536:65537:${"5a".repeat(32)}`;
const imageA = { rootHash: "a".repeat(64), verity: VERITY, version: "1.0.0" };
const imageB = { rootHash: "b".repeat(64), verity: VERITY, version: "2.0.0" };

describe("BootDisk with mtools and grub-editenv", () => {
  it("round-trips the boot state through GRUB's reader and writer", async () => {
    const disk = join(dir, "disk.img");
    const initial = initialBootState(imageA);
    const { esp } = await makeBootDiskImage(disk, { env: encodeEnv(bootStateToEnv(initial)) });
    const next = activateSlot(markUnbootable(initial, "B"), "B", { ...imageB, tries: 3 });
    const envOffset = await withBootDisk(disk, async (d) => {
      await d.writeState(next);
      return d.env.offset;
    });

    // mtools reads the file through the FAT: our bytes; grub-editenv lists them
    const out = join(dir, "GRUBENV.out");
    await tool("mcopy", ["-n", "-i", `${disk}@@${esp.offset}`, "::/GRUBENV", out]);
    const listed = await toolStatus("grub-editenv", [out, "list"]);
    expect(listed.code).toBe(0);
    expect(listed.stdout).toBe([...bootStateToEnv(next)].map(([k, v]) => `${k}=${v}\n`).join(""));

    // GRUB takes a try (save_env rewrites the block in place): BootDisk sees it
    expect((await toolStatus("grub-editenv", [out, "set", "B_tries=2"])).code).toBe(0);
    const fd = openSync(disk, "r+");
    writeSync(fd, readFileSync(out), 0, 1024, envOffset);
    closeSync(fd);
    const after = await withBootDisk(disk, (d) => d.readState());
    expect(after.slots.B).toMatchObject({ tries: 2, good: false, version: "2.0.0" });
    expect(after.order).toEqual(["B", "A"]);
  });
});
