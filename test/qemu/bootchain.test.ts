/**
 * The boot chain from the build's own pieces (src/build/README.md, "Boot
 * artifacts"), without the pipeline: a busybox root filesystem with the
 * kernel and our initramfs → squashfs → slot image with dm-verity → ESP with
 * GRUB and the boot state → state ext4 → GPT disk, booted under QEMU (OVMF,
 * TCG) until the guest prints its banner and offers a root shell.
 */
import { execFileSync } from "node:child_process";
import { mkdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { open } from "node:fs/promises";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { Vm } from "../../qemu/vm.ts";
import {
  BootDisk,
  type BootState,
  bootStateToEnv,
  buildEsp,
  buildGrubEfi,
  encodeEnv,
  grubConfig,
  initialBootState,
} from "../../src/bootloader/index.ts";
import {
  abforgePartitions,
  assembleDisk,
  buildInitramfs,
  buildSlotImage,
  buildSquashfs,
  buildStateFs,
  fetchKernel,
  installKernel,
  installRootfsBootFiles,
} from "../../src/build/index.ts";
import { requireTool } from "../../src/exec.ts";
import { formatSlotVerity } from "../../src/image/index.ts";
import { CACHE_DIR, KERNEL_PACKAGE } from "../helpers/cache.ts";
import { tempDir } from "../helpers/tmp.ts";

const MiB = 1024 * 1024;
const BANNER = /abforge: booted slot (A|B) version (\S+) roothash ([0-9a-f]{64})/;
// busybox ash asks the terminal for the cursor position (ESC [6n) right after each prompt.
// biome-ignore lint/suspicious/noControlCharactersInRegex: that ESC is what the guest sends
const PROMPT = /abforge:[^\n]*# (\x1b\[6n)?$/m;
const VERSION = "1.0.0";

/** A minimal root filesystem: busybox with its applet links, plus the boot files. */
async function makeRootfs(root: string): Promise<void> {
  const busybox = requireTool("busybox");
  mkdirSync(join(root, "bin"), { recursive: true });
  execFileSync("cp", [busybox, join(root, "bin/busybox")]);
  for (const applet of execFileSync(busybox, ["--list-full"], { encoding: "utf8" }).split("\n")) {
    if (!applet || applet === "bin/busybox") continue;
    const depth = applet.split("/").length - 1;
    mkdirSync(join(root, applet, ".."), { recursive: true });
    symlinkSync(`${"../".repeat(depth)}bin/busybox`, join(root, applet));
  }
  await installRootfsBootFiles(root);
  writeFileSync(join(root, "etc/hostname"), "bootchain\n");
}

describe("boot chain: OVMF → GRUB → kernel + initramfs → dm-verity root", async () => {
  const dir = tempDir("abforge-bootchain-");
  const root = join(dir, "rootfs");
  await makeRootfs(root);
  const tree = await fetchKernel({ package: KERNEL_PACKAGE, cacheDir: CACHE_DIR });
  await installKernel(tree, root);
  await buildInitramfs({ kernelTree: tree, modules: [], outPath: join(root, "boot/initrd.img") });

  const squashfs = await buildSquashfs({
    sourceDir: root,
    outPath: join(dir, "root.squashfs"),
    // gzip here, xz in the demo image: both of GRUB's squashfs decompressors get booted.
    compression: "gzip",
  });
  const slot = await buildSlotImage({
    squashfsPath: squashfs.path,
    outPath: join(dir, "slot.img"),
    maxBytes: 96 * MiB,
  });
  const state = initialBootState({
    rootHash: slot.verity.rootHash,
    verity: formatSlotVerity(slot.verity),
    version: VERSION,
  });
  const efi = join(dir, "BOOTX64.EFI");
  await buildGrubEfi(efi, grubConfig({ cmdline: "console=ttyS0" }));
  await buildEsp({
    outPath: join(dir, "esp.img"),
    sizeBytes: 64 * MiB,
    efiPath: efi,
    env: encodeEnv(bootStateToEnv(state)),
    volumeId: "ABF0B007",
  });
  await buildStateFs({
    outPath: join(dir, "state.img"),
    sizeBytes: 32 * MiB,
    uuidSeed: "bootchain",
  });
  const disk = join(dir, "disk.img");
  await assembleDisk({
    outPath: disk,
    diskGuidSeed: "bootchain",
    partitions: abforgePartitions({
      espBytes: 64 * MiB,
      slotBytes: 96 * MiB,
      stateBytes: 32 * MiB,
      espImage: join(dir, "esp.img"),
      slotAImage: slot.path,
      stateImage: join(dir, "state.img"),
    }),
  });

  /** A private copy of the disk with another boot state and, optionally, an image in slot B. */
  async function variant(name: string, next: BootState, slotB?: string): Promise<string> {
    const copy = join(dir, `${name}.img`);
    execFileSync("cp", ["--sparse=always", disk, copy]);
    const d = await BootDisk.open(copy);
    try {
      await d.writeState(next);
      if (slotB) {
        const fh = await open(copy, "r+");
        await fh.write(readFileSync(slotB), 0, undefined, d.slotRange("B").offset);
        await fh.close();
      }
    } finally {
      await d.close();
    }
    return copy;
  }

  // A slot image of the root without /boot/initrd.img, built once for the cases that use it.
  let noInitrdSlot: ReturnType<typeof buildSlotImage> | undefined;
  function slotWithoutInitrd(): ReturnType<typeof buildSlotImage> {
    noInitrdSlot ??= (async () => {
      const noInitrd = join(dir, "noinitrd-rootfs");
      execFileSync("cp", ["-a", root, noInitrd]);
      rmSync(join(noInitrd, "boot/initrd.img"));
      const sq = await buildSquashfs({
        sourceDir: noInitrd,
        outPath: join(dir, "noinitrd.squashfs"),
        compression: "gzip",
      });
      return buildSlotImage({ squashfsPath: sq.path, outPath: join(dir, "noinitrd-slot.img") });
    })();
    return noInitrdSlot;
  }

  async function slotState(path: string, slotName: "A" | "B") {
    const d = await BootDisk.open(path);
    try {
      return (await d.readState()).slots[slotName];
    } finally {
      await d.close();
    }
  }

  let vm: Vm | undefined;
  // After each test, so a failing test never leaves its VM running behind the next one.
  afterEach(async () => {
    await vm?.kill();
    vm = undefined;
  });

  it("the disk's partitions and boot state read back as built", async () => {
    const sgdisk = execFileSync("sgdisk", ["-v", disk], { encoding: "utf8" });
    expect(sgdisk).toMatch(/No problems found/);
    const d = await BootDisk.open(disk);
    try {
      expect(await d.readState()).toEqual(state);
      const { offset } = d.slotRange("A");
      const fh = readFileSync(disk).subarray(offset, offset + slot.bytes);
      expect(Buffer.compare(fh, readFileSync(slot.path))).toBe(0);
    } finally {
      await d.close();
    }
  });

  it("boots slot A to the banner and a root shell on the serial console", async () => {
    const started = Date.now();
    vm = await Vm.start({ disk, serialLog: join(dir, "serial.log") });
    // Where the time goes: firmware → GRUB picks the slot → /init runs → banner.
    const at: string[] = [];
    for (const [label, re] of [
      ["GRUB", /abforge: booting slot A/],
      ["/init", /abforge-initramfs: slot A/],
      ["banner", BANNER],
    ] as const) {
      await vm.waitFor(re, { timeoutMs: 300_000 });
      at.push(`${label} ${((Date.now() - started) / 1000).toFixed(1)} s`);
    }
    process.stderr.write(`bootchain: from QEMU start: ${at.join(", ")}\n`);
    const m = BANNER.exec(vm.console)!;
    expect(m.slice(1, 4)).toEqual(["A", VERSION, slot.verity.rootHash]);
    await vm.waitFor(PROMPT, { timeoutMs: 60_000 });

    const mounts = await vm.run("cat /proc/mounts");
    expect(mounts.output).toMatch(/^\/dev\/mapper\/abforge-root \/ squashfs ro/m);
    expect(mounts.output).toMatch(/ \/var ext4 rw/);
    expect(mounts.output).toMatch(/ \/etc overlay rw/);
    expect((await vm.run("cat /sys/block/dm-0/dm/name")).output).toBe("abforge-root\n");
    expect(vm.console).toMatch(/abforge: booting slot A version 1\.0\.0/);
    expect((await vm.run("touch /probe")).output).toMatch(/Read-only file system/);
  });

  it("counts a try of a slot that is not good, and halts once no slot is left", async () => {
    const copy = await variant("tries", {
      ...state,
      slots: { ...state.slots, A: { ...state.slots.A, good: false, tries: 1 } },
    });

    vm = await Vm.start({ disk: copy, serialLog: join(dir, "tries.log") });
    await vm.waitFor(BANNER, { timeoutMs: 300_000 });
    expect(vm.console).toMatch(
      /abforge: booting slot A version 1\.0\.0 \(good=0 tries=0 boots=0\)/,
    );
    await vm.waitFor(PROMPT, { timeoutMs: 60_000 });
    expect(await slotState(copy, "A")).toMatchObject({ good: false, tries: 0 });

    vm.sendLine("reboot");
    await vm.waitFor(/abforge: skipping slot A \(not good, no tries left\)/, {
      timeoutMs: 300_000,
    });
    await vm.waitFor(/abforge: no bootable slot/, { timeoutMs: 60_000 });
    const exit = await Promise.race([
      vm.exited,
      new Promise<"running">((r) => setTimeout(() => r("running"), 60_000)),
    ]);
    expect(exit).toMatchObject({ kind: "exited" });
  });
  it("falls through to the other slot when GRUB cannot load the kernel", async () => {
    // B says it holds an image, but its partition is all zeros: `linux` fails.
    const copy = await variant("nokernel", {
      ...state,
      order: ["B", "A"],
      slots: { ...state.slots, B: { ...state.slots.A, good: false, tries: 1, version: "2.0.0" } },
    });
    vm = await Vm.start({ disk: copy, serialLog: join(dir, "nokernel.log") });
    const m = await vm.waitFor(BANNER, { timeoutMs: 300_000 });
    expect(m[1]).toBe("A");
    expect(vm.console).toMatch(/abforge: slot B: cannot load its kernel or initrd/);
    expect(await slotState(copy, "B")).toMatchObject({ good: false, tries: 0 });
  });

  it("restarts into a fresh GRUB when a slot's kernel loads but its initrd does not, then falls back", async () => {
    // Slot B without /boot/initrd.img: `linux` succeeds, `initrd` fails. GRUB 2.06 cannot
    // boot another kernel after that, so the slot gives up its tries and GRUB restarts.
    const b = await slotWithoutInitrd();
    const copy = await variant(
      "noinitrd",
      {
        ...state,
        order: ["B", "A"],
        slots: {
          ...state.slots,
          B: {
            tries: 3,
            good: false,
            boots: 0,
            rootHash: b.verity.rootHash,
            verity: formatSlotVerity(b.verity),
            version: "2.0.0",
          },
        },
      },
      b.path,
    );
    vm = await Vm.start({ disk: copy, serialLog: join(dir, "noinitrd.log") });
    await vm.waitFor(/abforge: slot B: giving up its tries, restarting/, { timeoutMs: 300_000 });
    const m = await vm.waitFor(BANNER, { timeoutMs: 300_000 });
    expect(m[1]).toBe("A");
    expect(vm.console).toMatch(/abforge: skipping slot B \(not good, no tries left\)/);
    expect(await slotState(copy, "B")).toMatchObject({ good: false, tries: 0 });
  });

  it("a good slot whose initrd does not load restarts, counted, until GRUB passes it over and boots the other good slot", async () => {
    const b = await slotWithoutInitrd();
    const copy = await variant(
      "good-noinitrd",
      {
        ...state,
        order: ["B", "A"],
        slots: {
          ...state.slots,
          B: {
            tries: 0,
            good: true,
            boots: 0,
            rootHash: b.verity.rootHash,
            verity: formatSlotVerity(b.verity),
            version: "2.0.0",
          },
        },
      },
      b.path,
    );
    vm = await Vm.start({ disk: copy, serialLog: join(dir, "good-noinitrd.log") });
    const m = await vm.waitFor(BANNER, { timeoutMs: 300_000 });
    expect(m[1]).toBe("A");
    // three restarts (no hang in a GRUB that loaded a kernel), then B is passed over
    expect(
      vm.console.match(/abforge: slot B: restarting \(this boot is counted as unconfirmed\)/g),
    ).toHaveLength(3);
    expect(vm.console).toContain(
      "abforge: slot B was booted 3 times without a confirmation; passing it over",
    );
    // this disk has no agent: nothing confirmed A's boot either
    expect(await slotState(copy, "B")).toMatchObject({ good: true, boots: 3 });
    expect(await slotState(copy, "A")).toMatchObject({ good: true, boots: 1 });
  });

  it("panics out of a failing /init, resets, and falls back once the try is spent", async () => {
    // Slot B: a root filesystem without /sbin/init, so /init gives up after dm-verity and mount.
    const broken = join(dir, "broken-rootfs");
    execFileSync("cp", ["-a", root, broken]);
    rmSync(join(broken, "sbin/init"));
    const sq = await buildSquashfs({
      sourceDir: broken,
      outPath: join(dir, "broken.squashfs"),
      compression: "gzip",
    });
    const b = await buildSlotImage({
      squashfsPath: sq.path,
      outPath: join(dir, "broken-slot.img"),
    });
    const copy = await variant(
      "broken",
      {
        ...state,
        order: ["B", "A"],
        slots: {
          ...state.slots,
          B: {
            tries: 1,
            good: false,
            boots: 0,
            rootHash: b.verity.rootHash,
            verity: formatSlotVerity(b.verity),
            version: "2.0.0",
          },
        },
      },
      b.path,
    );
    vm = await Vm.start({ disk: copy, serialLog: join(dir, "broken.log") });
    await vm.waitFor(/abforge-initramfs: slot B has no \/sbin\/init/, { timeoutMs: 300_000 });
    await vm.waitFor(/Kernel panic/, { timeoutMs: 60_000 });
    const m = await vm.waitFor(BANNER, { timeoutMs: 300_000 });
    expect(m[1]).toBe("A");
    expect(vm.console).toMatch(/abforge: skipping slot B \(not good, no tries left\)/);
    expect(await slotState(copy, "B")).toMatchObject({ good: false, tries: 0 });
  });
});
