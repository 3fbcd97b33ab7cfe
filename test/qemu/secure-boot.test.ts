/**
 * Secure Boot (src/bootloader/README.md, "Secure Boot"): the demo image
 * built with `secureBoot:` and Debian's OVMF test key boots under OVMF with
 * enforcement on, and every piece of the chain that is changed at rest is
 * refused before it runs — by the firmware (GRUB's image, its embedded
 * config) or by GRUB (a slot's kernel, initrd, signed boot file), with the
 * other slot booting — while variables planted in /GRUBENV change nothing.
 * Each case edits its own sparse copy of one two-slot disk offline. The last
 * case updates the disk as built to 2.0.0 and rolls back from a failing
 * 3.0.0: the agent writes each new slot's signed boot file.
 */
import { execFileSync } from "node:child_process";
import { createReadStream } from "node:fs";
import { open, readFile, stat, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { afterEach, beforeAll, describe, expect, it } from "vitest";
import { BANNER, PROMPT, publishBundle, type ServedRepo } from "../../qemu/fleet.ts";
import { Vm } from "../../qemu/vm.ts";
import {
  BootDisk,
  SLOT_BOOT_FILE_BYTES,
  SLOT_BOOT_FILES,
  type SlotName,
  serializeEnvBlock,
  setEnvVar,
  slotBootFile,
  withBootDisk,
} from "../../src/bootloader/index.ts";
import { readBundleHead } from "../../src/bundle/index.ts";
import { tempDir } from "../helpers/tmp.ts";
import { buildFixture } from "./build-images.ts";
import { freshDisk, image, SIGNING_KEY } from "./fixtures.ts";
import { bootState, bootWithRepo, editBootState } from "./scenarios.ts";

const BOOT_MS = 240_000;
/** What OVMF prints when the image's signature is not in db. */
const FIRMWARE_REFUSED = /BdsDxe: failed to load Boot\d+ "[^"]*" from [^:]*: Access Denied/;

let vm: Vm | undefined;
let twoSlots: string;

let server: ServedRepo | undefined;

afterEach(async () => {
  await vm?.kill();
  vm = undefined;
  server?.stop();
  server = undefined;
});

beforeAll(async () => {
  // Built by the global setup in a full run; here too when this file runs alone.
  await buildFixture("v1");
  await buildFixture("secureBootV1");
  await buildFixture("secureBootV2");
  await buildFixture("secureBootV3");
  // Slot B: the same signed image, as an install puts it there (the slot's
  // bytes, and its signed boot file copied to /SLOTB on the ESP), and good.
  twoSlots = freshDisk("secureBootV1", tempDir("abforge-sb-base-"));
  const d = await BootDisk.open(twoSlots);
  const a = d.slotRange("A");
  const b = d.slotRange("B");
  await d.close();
  execFileSync("dd", [
    `if=${twoSlots}`,
    `of=${twoSlots}`,
    "bs=1M",
    `skip=${a.offset / 2 ** 20}`,
    `seek=${b.offset / 2 ** 20}`,
    `count=${a.size / 2 ** 20}`,
    "conv=notrunc,sparse",
    "status=none",
  ]);
  // as the agent writes it (BootDisk.writeSlotBootFile, in place over the build's placeholder)
  const file = await getEspFile(twoSlots, `/${SLOT_BOOT_FILES.A}`);
  const sig = await getEspFile(twoSlots, `/${SLOT_BOOT_FILES.A}.SIG`);
  await withBootDisk(twoSlots, (disk) => disk.writeSlotBootFile("B", file, sig));
  await editBootState(twoSlots, (s) => ({ ...s, slots: { ...s.slots, B: { ...s.slots.A } } }));
}, 1_800_000);

function mtools(): NodeJS.ProcessEnv {
  return { ...process.env, MTOOLS_NO_VFAT: "1", MTOOLS_SKIP_CHECK: "1" };
}

function caseDisk(): string {
  const target = join(tempDir("abforge-sb-case-"), "disk.img");
  execFileSync("cp", ["--sparse=always", twoSlots, target]);
  return target;
}

async function start(disk: string, secureBoot = true): Promise<Vm> {
  vm = await Vm.start({ disk, secureBoot, serialLog: join(dirname(disk), "serial.log") });
  return vm;
}

async function banner(v: Vm): Promise<{ slot: SlotName; version: string; rootHash: string }> {
  const m = await v.waitFor(BANNER, { timeoutMs: BOOT_MS });
  await v.waitFor(PROMPT, { timeoutMs: 60_000 });
  return { slot: m[1] as SlotName, version: m[2]!, rootHash: m[3]! };
}

/**
 * Rewrite slot `slot`'s squashfs with one file changed by a byte: unpack it
 * (`unsquashfs` of the partition's bytes), flip a bit of `path` in the
 * middle, pack it again (uncompressed: quicker, and GRUB reads it as well)
 * and write it over the partition. The filesystem is valid; only the file's
 * content differs from what the build signed.
 */
async function tamperSlotFile(disk: string, slot: SlotName, path: string): Promise<void> {
  const d = await BootDisk.open(disk);
  const { offset, size } = d.slotRange(slot);
  await d.close();
  const work = tempDir("abforge-sb-tamper-");
  const tree = join(work, "root");
  const original = join(work, "original.img");
  execFileSync("dd", [
    `if=${disk}`,
    `of=${original}`,
    "bs=1M",
    `skip=${offset / 2 ** 20}`,
    `count=${size / 2 ** 20}`,
    "conv=sparse",
    "status=none",
  ]);
  execFileSync("unsquashfs", ["-q", "-n", "-d", tree, original]);
  const file = join(tree, path);
  const content = await readFile(file);
  const at = Math.floor(content.length / 2);
  content[at] = content[at]! ^ 0x01;
  await writeFile(file, content);
  const image = join(work, "slot.squashfs");
  execFileSync("mksquashfs", [
    tree,
    image,
    "-noappend",
    "-quiet",
    "-no-progress",
    "-noI",
    "-noD",
    "-noF",
    "-noX",
    "-no-xattrs",
  ]);
  const bytes = (await stat(image)).size;
  expect(bytes).toBeLessThanOrEqual(size);
  execFileSync("dd", [
    `if=${image}`,
    `of=${disk}`,
    "bs=1M",
    `seek=${offset / 2 ** 20}`,
    "conv=notrunc",
    "status=none",
  ]);
}

/** Replace a file in the ESP's root directory (or /EFI/BOOT/...) with `data`. */
async function putEspFile(disk: string, name: string, data: Uint8Array): Promise<void> {
  const d = await BootDisk.open(disk);
  const esp = d.esp.offset;
  await d.close();
  const local = join(tempDir("abforge-sb-put-"), "f");
  await writeFile(local, data);
  execFileSync("mcopy", ["-o", "-i", `${disk}@@${esp}`, local, `::${name}`], { env: mtools() });
}

async function getEspFile(disk: string, name: string): Promise<Buffer> {
  const d = await BootDisk.open(disk);
  const esp = d.esp.offset;
  await d.close();
  const local = join(tempDir("abforge-sb-get-"), "f");
  execFileSync("mcopy", ["-i", `${disk}@@${esp}`, `::${name}`, local], { env: mtools() });
  return readFile(local);
}

const consoleSince = (v: Vm, from: number) => v.console.slice(from);

describe("Secure Boot", () => {
  it("boots with enforcement on and the guest reports it; prints the cost of the checks", async () => {
    const sb = image("secureBootV1");
    // Without the checks: the demo image under OVMF without Secure Boot.
    const plainStarted = performance.now();
    const plain = await start(freshDisk("v1"), false);
    await banner(plain);
    const plainMs = performance.now() - plainStarted;
    expect((await plain.run("dmesg | grep -i 'secure boot'")).output).toMatch(
      /secureboot: Secure boot disabled/,
    );
    await plain.kill();

    const started = performance.now();
    const v = await start(freshDisk("secureBootV1"));
    const booted = await banner(v);
    const sbMs = performance.now() - started;
    expect(booted).toEqual({ slot: "A", version: "1.0.0", rootHash: sb.rootHash });
    // The kernel reads the firmware's SecureBoot variable at start and locks itself down.
    const dmesg = await v.run("dmesg | grep -i -e 'secure boot' -e 'locked down'");
    expect(dmesg.output).toMatch(/secureboot: Secure boot enabled/);
    expect(dmesg.output).toMatch(/Kernel is locked down from EFI Secure Boot/);
    const load = (await readFile("/proc/loadavg", "utf8")).split(" ").slice(0, 3).join(" ");
    process.stderr.write(
      `secure boot: boot to banner ${(plainMs / 1000).toFixed(1)} s without the checks, ${(sbMs / 1000).toFixed(1)} s with Secure Boot enforced and GRUB checking signatures (TCG, load average ${load})\n`,
    );
  });

  it("refuses a slot whose kernel was changed, and boots the other slot", async () => {
    const disk = caseDisk();
    await tamperSlotFile(disk, "A", "boot/vmlinuz");
    const v = await start(disk);
    expect((await banner(v)).slot).toBe("B");
    const out = consoleSince(v, 0);
    expect(out).toMatch(/error: bad signature[\s\S]*abforge: slot A: cannot load its kernel/);
    expect(out).not.toMatch(/abforge: booted slot A/);
  });

  it("refuses a slot whose initramfs was changed, and boots the other slot", async () => {
    const disk = caseDisk();
    await tamperSlotFile(disk, "A", "boot/initrd.img");
    const v = await start(disk);
    expect((await banner(v)).slot).toBe("B");
    expect(consoleSince(v, 0)).toMatch(
      /error: bad signature[\s\S]*abforge: slot A: its initrd's signature does not verify/,
    );
    // Refused before the kernel was loaded: slot A's kernel never started.
    expect(consoleSince(v, 0).match(/abforge-initramfs: slot (A|B)/g)).toEqual([
      "abforge-initramfs: slot B",
    ]);
  });

  it("the bundle carries the signed boot file the build put in /SLOTA; /SLOTB holds a signed placeholder of the same sizes", async () => {
    const sb = image("secureBootV1");
    const { manifest } = await readBundleHead(createReadStream(sb.bundle), sb.bundle);
    const file = await getEspFile(sb.disk, `/${SLOT_BOOT_FILES.A}`);
    const sig = await getEspFile(sb.disk, `/${SLOT_BOOT_FILES.A}.SIG`);
    expect(manifest.secureBoot).toEqual({
      slotFile: file.toString("base64"),
      slotSig: sig.toString("base64"),
    });
    expect(file.length).toBe(SLOT_BOOT_FILE_BYTES);
    expect(file.toString("latin1")).toContain(`set abforge_roothash=${sb.rootHash}\n`);
    const b = await getEspFile(sb.disk, `/${SLOT_BOOT_FILES.B}`);
    expect(b.length).toBe(SLOT_BOOT_FILE_BYTES);
    expect(b.toString("latin1")).toMatch(/^# abforge: no image in this slot\n/);
    expect((await getEspFile(sb.disk, `/${SLOT_BOOT_FILES.B}.SIG`)).length).toBe(sig.length);
    // the plain image's bundle has no such field
    const plain = image("v1");
    const head = await readBundleHead(createReadStream(plain.bundle), plain.bundle);
    expect(head.manifest.secureBoot).toBeUndefined();
  });

  it("refuses a slot whose root hash was changed in its boot file, and boots the other slot", async () => {
    const disk = caseDisk();
    const s = await bootState(disk);
    const signed = (await getEspFile(disk, `/${SLOT_BOOT_FILES.A}`)).toString("latin1");
    const real = slotBootFile({
      rootHash: s.slots.A.rootHash,
      verity: s.slots.A.verity,
      version: s.slots.A.version,
    });
    expect(signed.startsWith(real)).toBe(true);
    const forged = signed.replace(s.slots.A.rootHash, "0".repeat(64));
    expect(forged.length).toBe(signed.length);
    await putEspFile(disk, `/${SLOT_BOOT_FILES.A}`, Buffer.from(forged, "latin1"));
    const v = await start(disk);
    expect((await banner(v)).slot).toBe("B");
    expect(consoleSince(v, 0)).toMatch(
      /abforge: slot A: no signed boot file \(the slot is empty, or its signature does not verify\)/,
    );
  });

  it("ignores variables planted in /GRUBENV: root hash, verity, signature policy", async () => {
    const disk = caseDisk();
    const sb = image("secureBootV1");
    const d = await BootDisk.open(disk);
    let lines = await d.readEnv();
    for (const [name, value] of [
      ["A_roothash", "0".repeat(64)],
      ["A_verity", "1:2:00"],
      ["check_signatures", "no"],
      ["abforge_roothash", "1".repeat(64)],
    ] as const)
      lines = setEnvVar(lines, name, value);
    const envOffset = d.env.offset;
    await d.close();
    const fh = await open(disk, "r+");
    await fh.write(serializeEnvBlock(lines), 0, 1024, envOffset);
    await fh.close();
    // And a grub.cfg planted where a GRUB with an ESP prefix would read it.
    await putEspFile(disk, "/EFI/BOOT/GRUB.CFG", new TextEncoder().encode("echo planted\nhalt\n"));
    const v = await start(disk);
    expect(await banner(v)).toEqual({ slot: "A", version: "1.0.0", rootHash: sb.rootHash });
    expect(consoleSince(v, 0)).not.toMatch(/planted/);
  });

  it("the firmware refuses a GRUB image whose embedded config was changed", async () => {
    const disk = caseDisk();
    const efi = await getEspFile(disk, "/EFI/BOOT/BOOTX64.EFI");
    const at = efi.indexOf("abforge grub.cfg");
    expect(at).toBeGreaterThan(0);
    efi[at] = efi[at]! ^ 0x20;
    await putEspFile(disk, "/EFI/BOOT/BOOTX64.EFI", efi);
    const v = await start(disk);
    await v.waitFor(FIRMWARE_REFUSED, { timeoutMs: BOOT_MS });
    await v.waitFor(/BdsDxe: No bootable option or device was found/, { timeoutMs: 60_000 });
    expect(consoleSince(v, 0)).not.toMatch(/abforge:/);
  });

  it("the firmware refuses a GRUB image whose code was changed", async () => {
    const disk = caseDisk();
    const efi = await getEspFile(disk, "/EFI/BOOT/BOOTX64.EFI");
    // A byte of the first section (.text), past the PE headers.
    const peOffset = efi.readUInt32LE(0x3c);
    const optionalSize = efi.readUInt16LE(peOffset + 20);
    const firstSection = peOffset + 24 + optionalSize;
    const textStart = efi.readUInt32LE(firstSection + 20);
    efi[textStart + 64] = efi[textStart + 64]! ^ 0x01;
    await putEspFile(disk, "/EFI/BOOT/BOOTX64.EFI", efi);
    const v = await start(disk);
    await v.waitFor(FIRMWARE_REFUSED, { timeoutMs: BOOT_MS });
    expect(consoleSince(v, 0)).not.toMatch(/abforge:/);
  });
  it("updates to 2.0.0, marks it good, and rolls back from a failing 3.0.0, enforcement on", {
    timeout: 2_400_000,
  }, async () => {
    // One boot of 1.0.0, one of 2.0.0 (installed by the agent from the repository),
    // 3.0.0's tries, and 2.0.0 again: the agent writes each new slot's signed boot file.
    // the disk as built: slot B empty, its /SLOTB the build's signed placeholder
    const disk = freshDisk("secureBootV1", tempDir("abforge-sb-update-"));
    const run = await bootWithRepo(disk, [image("secureBootV2").bundle], { secureBoot: true });
    vm = run.vm;
    server = run.server;
    const v = run.vm;
    const long = 600_000;
    const next = async () => {
      const m = await v.waitFor(BANNER, { timeoutMs: long });
      return { slot: m[1] as SlotName, version: m[2]! };
    };
    expect(await banner(v)).toMatchObject({ slot: "A", version: "1.0.0" });
    expect(await next()).toEqual({ slot: "B", version: "2.0.0" });
    await v.waitFor(/marked good/, { timeoutMs: long });
    let s = await bootState(disk);
    expect(s.slots.B).toMatchObject({ good: true, version: "2.0.0" });
    expect((await getEspFile(disk, `/${SLOT_BOOT_FILES.B}`)).toString("latin1")).toContain(
      "set abforge_version=2.0.0\n",
    );

    await publishBundle(run.repoDir, image("secureBootV3").bundle, SIGNING_KEY);
    let b = await next();
    expect(b).toEqual({ slot: "A", version: "3.0.0" });
    await v.waitFor(/health check[^\n]*fail/i, { timeoutMs: long });
    while (b.slot === "A") {
      expect(b.version).toBe("3.0.0");
      b = await next();
    }
    expect(b).toEqual({ slot: "B", version: "2.0.0" });
    await v.waitFor(/rollback/i, { timeoutMs: long });
    s = await bootState(disk);
    expect(s.slots.A).toMatchObject({ good: false, tries: 0, version: "3.0.0" });
    expect(s.slots.B).toMatchObject({ good: true, version: "2.0.0" });
    expect(v.console).toMatch(/abforge: booting slot A version 3\.0\.0/);
  });
});
