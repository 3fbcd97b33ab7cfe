// BootDisk on GPT images built like the real disk (src/bootloader/README.md, "BootDisk").

import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import {
  closeSync,
  createReadStream,
  mkdirSync,
  openSync,
  readSync,
  symlinkSync,
  writeFileSync,
  writeSync,
} from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import {
  activateSlot,
  BootDisk,
  bootStateToEnv,
  decodeEnv,
  ENV_HEADER,
  encodeEnv,
  findHostBootDisk,
  GRUB_EDITENV_NOTICE,
  initialBootState,
  markGood,
  markUnbootable,
  newEnvLines,
  serializeEnvBlock,
  setEnvVar,
  slotFromCmdline,
  withBootDisk,
} from "../../../src/bootloader/index.ts";
import { PARTITION_TYPES, partitionRange } from "../../../src/disk/index.ts";
import { BOOT_TOKEN_VAR } from "../../../src/image/index.ts";
import { tempDir } from "../../helpers/tmp.ts";
import { imageA, imageB, makeBootDiskImage } from "./images.ts";

const dir = tempDir();
const initial = initialBootState(imageA);

/** The block the build writes: the boot state, then another variable of GRUB's. */
function initialEnv(): Uint8Array {
  const vars = bootStateToEnv(initial);
  vars.set("saved_entry", "keep me");
  return encodeEnv(vars);
}

function readRange(path: string, offset: number, length: number): Buffer {
  const fd = openSync(path, "r");
  try {
    const b = Buffer.alloc(length);
    readSync(fd, b, 0, length, offset);
    return b;
  } finally {
    closeSync(fd);
  }
}

/** sha256 of the disk with the bytes [skip.offset, +skip.size) zeroed, streamed. */
async function hashExcept(path: string, skip: { offset: number; size: number }): Promise<string> {
  const h = createHash("sha256");
  let pos = 0;
  for await (const chunk of createReadStream(path, { highWaterMark: 1 << 20 })) {
    const c = Buffer.from(chunk as Buffer);
    const from = Math.max(skip.offset - pos, 0);
    const to = Math.min(skip.offset + skip.size - pos, c.length);
    if (from < to) c.fill(0, from, to);
    h.update(c);
    pos += c.length;
  }
  return h.digest("hex");
}

describe("BootDisk", () => {
  it("finds the ESP, /GRUBENV and the slots, and reads the state", async () => {
    const path = join(dir, "disk.img");
    const { table, esp } = await makeBootDiskImage(path, { env: initialEnv() });
    await withBootDisk(path, async (d) => {
      expect(d.esp).toEqual(esp);
      expect(d.env.offset).toBeGreaterThan(esp.offset);
      expect(d.env.offset % 4096).toBe(0);
      expect(readRange(path, d.env.offset, 1024)).toEqual(Buffer.from(initialEnv()));
      expect(await d.readState()).toEqual(initial);
      expect(d.slotRange("A")).toEqual(partitionRange(table.partitions[1]!, 512));
      expect(d.slotRange("B")).toEqual(partitionRange(table.partitions[2]!, 512));
    });
  });

  it("writes the state in place: only /GRUBENV's first 512 bytes change, other variables stay", async () => {
    const path = join(dir, "write.img");
    await makeBootDiskImage(path, { env: initialEnv() });
    const d = await BootDisk.open(path);
    try {
      const before = await hashExcept(path, d.env);
      const next = activateSlot(markUnbootable(initial, "B"), "B", { ...imageB, tries: 3 });
      await d.writeState(next);
      expect(await d.readState()).toEqual(next);
      const block = readRange(path, d.env.offset, 1024);
      expect(block.subarray(512).every((b) => b === 0x23)).toBe(true);
      const vars = decodeEnv(block);
      expect(vars.get("saved_entry")).toBe("keep me");
      expect([...vars.keys()]).toEqual([...bootStateToEnv(next).keys(), "saved_entry"]);
      expect(await hashExcept(path, d.env)).toBe(before);

      await d.writeState(markGood(next, "B"));
      expect((await d.readState()).slots.B).toMatchObject({ good: true, tries: 0 });
    } finally {
      await d.close();
    }
  });

  it("two full slots and GRUB's boot_token fit the first 512 bytes (492), and writes keep the token", async () => {
    const path = join(dir, "token.img");
    // GRUB appends boot_token at the first boot, after the build's variables
    const vars = bootStateToEnv(initial);
    vars.set(BOOT_TOKEN_VAR, "20261207121059");
    await makeBootDiskImage(path, { env: encodeEnv(vars) });
    const d = await BootDisk.open(path);
    try {
      const wide = `999999:999999:${"5a".repeat(32)}`;
      const full = markGood(
        activateSlot({ ...initial, goodTries: 9 }, "B", {
          ...imageB,
          verity: wide,
          version: "1.0.0",
          tries: 9,
        }),
        "B",
      );
      await d.writeState({
        ...full,
        slots: { ...full.slots, A: { ...full.slots.A, verity: wide } },
      });
      const block = readRange(path, d.env.offset, 1024);
      expect(block.indexOf("#".repeat(20))).toBe(492);
      expect(decodeEnv(block).get(BOOT_TOKEN_VAR)).toBe("20261207121059");
    } finally {
      await d.close();
    }
  });

  it("refuses a state that would reach past the first 512 bytes and leaves the disk as it was", async () => {
    const path = join(dir, "large.img");
    // a block made by grub-editenv create: its notice line takes 69 bytes
    let lines = newEnvLines();
    for (const [k, v] of bootStateToEnv(initial)) lines = setEnvVar(lines, k, v);
    await makeBootDiskImage(path, { env: serializeEnvBlock(lines) });
    const d = await BootDisk.open(path);
    try {
      const before = readRange(path, d.env.offset, 1024);
      expect(before.toString("latin1").startsWith(ENV_HEADER + GRUB_EDITENV_NOTICE)).toBe(true);
      const long = { ...imageB, version: `2.0.0-${"x".repeat(20)}`, tries: 3 };
      await expect(d.writeState(activateSlot(initial, "B", long))).rejects.toMatchObject({
        code: "ENV_TOO_LARGE",
        message: expect.stringMatching(/the boot state needs 5\d\d bytes, more than the first 512/),
      });
      expect(readRange(path, d.env.offset, 1024)).toEqual(before);
    } finally {
      await d.close();
    }
    // the same state fits where the block has no notice line (as the build writes it)
    const plain = join(dir, "large-plain.img");
    await makeBootDiskImage(plain, { env: initialEnv() });
    const p = await BootDisk.open(plain);
    try {
      const long = { ...imageB, version: `2.0.0-${"x".repeat(20)}`, tries: 3 };
      await p.writeState(activateSlot(initial, "B", long));
      expect((await p.readState()).slots.B.version).toBe(long.version);
    } finally {
      await p.close();
    }
  });

  it("finds the ESP by type when it is not named esp", async () => {
    const path = join(dir, "bytype.img");
    await makeBootDiskImage(path, { env: initialEnv(), espName: "EFI system" });
    expect(await withBootDisk(path, (d) => d.readState())).toEqual(initial);
  });

  it("refuses a disk without an ESP, without /GRUBENV, or with a bad state", async () => {
    const noEsp = join(dir, "noesp.img");
    await makeBootDiskImage(noEsp, {
      env: initialEnv(),
      espName: "boot",
      espType: PARTITION_TYPES.LINUX_GENERIC,
    });
    await expect(BootDisk.open(noEsp)).rejects.toMatchObject({
      code: "ESP_BAD",
      message: expect.stringMatching(
        /no partition named "esp" or of the EFI System Partition type/,
      ),
    });

    const noEnv = join(dir, "noenv.img");
    await makeBootDiskImage(noEnv, { espFiles: { "OTHER.TXT": "x" } });
    await expect(BootDisk.open(noEnv)).rejects.toMatchObject({
      code: "ESP_BAD",
      message: expect.stringMatching(/ESP \(partition 1\) of .*noenv\.img: no file GRUBENV/),
    });

    const badState = join(dir, "badstate.img");
    const vars = bootStateToEnv(initial);
    vars.set("A_tries", "x");
    await makeBootDiskImage(badState, { env: encodeEnv(vars) });
    await expect(withBootDisk(badState, (d) => d.readState())).rejects.toMatchObject({
      code: "BOOT_STATE_INVALID",
      message: expect.stringMatching(/\/GRUBENV on .*badstate\.img: boot state: A_tries="x"/),
    });

    const notGpt = join(dir, "notgpt.img");
    writeFileSync(notGpt, Buffer.alloc(1024 * 1024));
    await expect(BootDisk.open(notGpt)).rejects.toMatchObject({ code: "GPT_MISSING" });
  });

  it("a read-only BootDisk does not write", async () => {
    const path = join(dir, "ro.img");
    await makeBootDiskImage(path, { env: initialEnv() });
    await expect(
      withBootDisk(path, (d) => d.writeState(initial), { readOnly: true }),
    ).rejects.toMatchObject({ code: "IO_ERROR" });
  });
});

describe("the host's boot disk", () => {
  it("reads abforge.slot= from the kernel command line", () => {
    expect(slotFromCmdline("console=ttyS0 abforge.slot=B abforge.roothash=ab panic=5\n")).toBe("B");
    expect(slotFromCmdline("console=ttyS0")).toBeNull();
    expect(slotFromCmdline("abforge.slot=C")).toBeNull();
  });

  /** A sysfs tree: /sys/class/block/<name> -> ../../devices/.../block/<disk>/<name>. */
  function fakeSys(root: string, disks: Record<string, Record<string, string>>): void {
    mkdirSync(join(root, "sys/class/block"), { recursive: true });
    for (const [disk, parts] of Object.entries(disks)) {
      const diskDir = join(root, "sys/devices/pci0000:00/virtio1/block", disk);
      mkdirSync(diskDir, { recursive: true });
      writeFileSync(join(diskDir, "uevent"), `MAJOR=253\nMINOR=0\nDEVNAME=${disk}\nDEVTYPE=disk\n`);
      symlinkSync(diskDir, join(root, "sys/class/block", disk));
      for (const [part, partname] of Object.entries(parts)) {
        mkdirSync(join(diskDir, part));
        writeFileSync(
          join(diskDir, part, "uevent"),
          `DEVNAME=${part}\nDEVTYPE=partition\nPARTN=2\nPARTNAME=${partname}\n`,
        );
        symlinkSync(join(diskDir, part), join(root, "sys/class/block", part));
      }
    }
  }

  it("finds the one disk with a partition named abforge-A", async () => {
    const root = join(dir, "host1");
    fakeSys(root, {
      sda: { sda1: "data" },
      vda: { vda1: "esp", vda2: "abforge-A", vda3: "abforge-B", vda4: "state" },
    });
    expect(await findHostBootDisk(root)).toBe(join(root, "dev/vda"));
  });

  it("BOOT_DISK_NOT_FOUND when no disk has it, or several and no boot token tells them apart", async () => {
    const none = join(dir, "host2");
    fakeSys(none, { sda: { sda1: "data" } });
    await expect(findHostBootDisk(none)).rejects.toMatchObject({ code: "BOOT_DISK_NOT_FOUND" });
    const two = join(dir, "host3");
    fakeSys(two, { vda: { vda2: "abforge-A" }, sdb: { sdb2: "abforge-A" } });
    await expect(findHostBootDisk(two)).rejects.toMatchObject({
      code: "BOOT_DISK_NOT_FOUND",
      message: expect.stringMatching(
        /several disks .*\/dev\/sdb, .*\/dev\/vda\).*has no abforge\.boottoken=.*pass --disk/,
      ),
    });
  });

  const TOKEN = "20261207121059";
  const ABFORGE_DISK = {
    esp: "esp",
    "abforge-A": "abforge-A",
    "abforge-B": "abforge-B",
    state: "state",
  };
  const partsOf = (disk: string) =>
    Object.fromEntries(Object.values(ABFORGE_DISK).map((name, i) => [`${disk}${i + 1}`, name]));

  /** One built disk whose block holds an older boot's token (the build has none; any earlier boot one). */
  let built: string | undefined;
  async function builtDisk(): Promise<string> {
    if (built) return built;
    const vars = bootStateToEnv(initial);
    vars.set(BOOT_TOKEN_VAR, "20261207115959");
    built = join(dir, "two-disks.img");
    await makeBootDiskImage(built, { env: encodeEnv(vars) });
    return built;
  }

  /** What GRUB does at boot: boot_token=TOKEN into the disk's block, in place. */
  async function grubSavesToken(path: string, token: string): Promise<void> {
    const d = await BootDisk.open(path);
    try {
      const lines = setEnvVar(await d.readEnv(), BOOT_TOKEN_VAR, token);
      const fd = openSync(path, "r+");
      try {
        writeSync(fd, serializeEnvBlock(lines), 0, 1024, d.env.offset);
      } finally {
        closeSync(fd);
      }
    } finally {
      await d.close();
    }
  }

  /**
   * A host with byte-identical abforge disks vda and vdb (copies of one
   * image, so the same GUIDs and names), GRUB having booted `booted` with
   * TOKEN: `<root>/dev/<disk>` are the images, `<root>/proc/cmdline` GRUB's.
   */
  async function twoDiskHost(name: string, booted: string[], cmdline: string): Promise<string> {
    const root = join(dir, name);
    fakeSys(root, { sda: { sda1: "data" }, vda: partsOf("vda"), vdb: partsOf("vdb") });
    mkdirSync(join(root, "dev"), { recursive: true });
    mkdirSync(join(root, "proc"), { recursive: true });
    writeFileSync(join(root, "proc/cmdline"), `${cmdline}\n`);
    const image = await builtDisk();
    for (const disk of ["vda", "vdb"]) {
      execFileSync("cp", ["--sparse=always", image, join(root, "dev", disk)]);
      if (booted.includes(disk)) await grubSavesToken(join(root, "dev", disk), TOKEN);
    }
    writeFileSync(join(root, "dev/sda"), "not a disk");
    return root;
  }

  const CMDLINE = `console=ttyS0 abforge.slot=A abforge.boottoken=${TOKEN} panic=5`;

  it("of two byte-identical disks, takes the one whose /GRUBENV holds this boot's token, wherever it is", async () => {
    const second = await twoDiskHost("twins-b", ["vdb"], CMDLINE);
    expect(await findHostBootDisk(second)).toBe(join(second, "dev/vdb"));
    const first = await twoDiskHost("twins-a", ["vda"], CMDLINE);
    expect(await findHostBootDisk(first)).toBe(join(first, "dev/vda"));
    // it only read: the other disk is still the build's bytes
    const all = { offset: 0, size: 0 };
    expect(await hashExcept(join(first, "dev/vdb"), all)).toBe(
      await hashExcept(await builtDisk(), all),
    );
  });

  it("BOOT_DISK_NOT_FOUND when no disk or several hold the token, naming what each holds", async () => {
    const none = await twoDiskHost("twins-none", [], CMDLINE);
    await expect(findHostBootDisk(none)).rejects.toMatchObject({
      code: "BOOT_DISK_NOT_FOUND",
      message: expect.stringMatching(
        /no disk holds this boot's token 20261207121059 .*\/dev\/vda holds 20261207115959.*\/dev\/vdb holds 20261207115959/,
      ),
    });
    const both = await twoDiskHost("twins-both", ["vda", "vdb"], CMDLINE);
    await expect(findHostBootDisk(both)).rejects.toMatchObject({
      code: "BOOT_DISK_NOT_FOUND",
      message: expect.stringMatching(/several disks hold this boot's token 20261207121059/),
    });
  });

  it("a malformed token counts as none: one disk is still found, two are refused", async () => {
    const root = await twoDiskHost("twins-bad", ["vdb"], "abforge.slot=A abforge.boottoken=x1");
    await expect(findHostBootDisk(root)).rejects.toMatchObject({
      code: "BOOT_DISK_NOT_FOUND",
      message: expect.stringMatching(/several disks/),
    });
  });
});
