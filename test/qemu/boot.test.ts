/**
 * Boot scenarios (the boot issue): real OVMF, real GRUB, the Debian kernel and
 * dm-verity under QEMU TCG. Every assertion comes from the serial console or
 * the boot state in the disk's GRUB environment block, never from timing.
 */
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { BANNER, PROMPT } from "../../qemu/fleet.ts";
import { Vm } from "../../qemu/vm.ts";
import type { SlotName } from "../../src/bootloader/index.ts";
import { ABFORGE, abforge } from "../helpers/cli.ts";
import { freshDisk, image } from "./fixtures.ts";
import { bootState, corruptSquashfsAtRest, editBootState, installV2IntoB } from "./scenarios.ts";

const BOOT_MS = 180_000;

let vm: Vm | undefined;

afterEach(async () => {
  await vm?.kill();
  vm = undefined;
});

async function start(disk: string): Promise<Vm> {
  vm = await Vm.start({ disk, serialLog: join(dirname(disk), "serial.log") });
  return vm;
}

async function waitBanner(v: Vm): Promise<{ slot: SlotName; version: string; rootHash: string }> {
  const m = await v.waitFor(BANNER, { timeoutMs: BOOT_MS });
  await v.waitFor(PROMPT, { timeoutMs: 60_000 });
  return { slot: m[1] as SlotName, version: m[2]!, rootHash: m[3]! };
}

/** Put demo 2.0.0 into slot B with the real agent (manual reboot), then set B next, not good. */
async function installIntoB(disk: string, tries: number): Promise<void> {
  await installV2IntoB(disk);
  const setNext = await abforge([
    "slots",
    "set-next",
    "B",
    "--tries",
    String(tries),
    "--disk",
    disk,
  ]);
  expect(setNext.code, setNext.stderr).toBe(0);
  const s = await bootState(disk);
  expect(s.order[0]).toBe("B");
  expect(s.slots.B).toMatchObject({ tries, good: false, version: "2.0.0" });
}

describe("booting the demo image", () => {
  it("boots slot A read-only with the banner, and /var survives a reboot", async () => {
    const v1 = image("v1");
    const disk = freshDisk("v1");
    const v = await start(disk);
    const booted = await waitBanner(v);
    expect(booted).toEqual({ slot: "A", version: "1.0.0", rootHash: v1.rootHash });

    const write = await v.run("touch /abforge-probe");
    expect(write.status).not.toBe(0);
    expect(write.output).toMatch(/Read-only file system/);
    const mounts = await v.run("cat /proc/mounts");
    expect(mounts.output).toMatch(/^\/dev\/mapper\/\S+ \/ squashfs ro/m);
    expect(mounts.output).toMatch(/ \/var ext4 rw/);
    expect(mounts.output).toMatch(/ \/etc overlay rw/);

    const token = `persisted-${Date.now()}`;
    expect(
      (await v.run(`echo ${token} > /var/probe && echo etc-${token} > /etc/probe && sync`)).status,
    ).toBe(0);
    v.sendLine("reboot");
    expect((await waitBanner(v)).slot).toBe("A");
    expect((await v.run("cat /var/probe /etc/probe")).output).toBe(`${token}\netc-${token}\n`);
  });

  it("counts the tries of a slot that is never marked good, then boots the other one", async () => {
    const disk = freshDisk("v1");
    await installIntoB(disk, 2);
    const v = await start(disk);

    expect(await waitBanner(v)).toMatchObject({ slot: "B", version: "2.0.0" });
    expect((await bootState(disk)).slots.B).toMatchObject({ tries: 1, good: false });
    v.sendLine("reboot");
    expect(await waitBanner(v)).toMatchObject({ slot: "B", version: "2.0.0" });
    expect((await bootState(disk)).slots.B).toMatchObject({ tries: 0, good: false });
    v.sendLine("reboot");
    expect(await waitBanner(v)).toMatchObject({ slot: "A", version: "1.0.0" });
    const s = await bootState(disk);
    expect(s.slots.A.good).toBe(true);
    expect(s.slots.B).toMatchObject({ tries: 0, good: false });
  });

  it("resets when a byte of the squashfs is changed, and falls back once the tries are spent", async () => {
    const disk = freshDisk("v1");
    await installIntoB(disk, 1);
    // One byte GRUB never reads but the kernel reads at mount, through dm-verity.
    await corruptSquashfsAtRest(disk, "B");

    const v = await start(disk);
    await v.waitFor(/verity.*corrupt|corrupt.*verity/i, { timeoutMs: BOOT_MS });
    // GRUB loaded B's kernel; it was the kernel's dm-verity that refused the root.
    expect(v.console).toMatch(/abforge-initramfs: slot B version 2\.0\.0/);
    expect(await waitBanner(v)).toMatchObject({ slot: "A", version: "1.0.0" });
    expect(v.console).not.toMatch(/abforge: booted slot B/);
    expect((await bootState(disk)).slots.B).toMatchObject({ tries: 0, good: false });
  });

  it("resets when the recorded root hash is wrong, and falls back once the tries are spent", async () => {
    const disk = freshDisk("v1");
    await installIntoB(disk, 1);
    await editBootState(disk, (s) => ({
      ...s,
      slots: { ...s.slots, B: { ...s.slots.B, rootHash: "0".repeat(64) } },
    }));
    const v = await start(disk);
    await v.waitFor(/verity.*corrupt|corrupt.*verity/i, { timeoutMs: BOOT_MS });
    expect(await waitBanner(v)).toMatchObject({ slot: "A", version: "1.0.0" });
    expect(v.console).not.toMatch(/abforge: booted slot B/);
  });

  it("falls back from an empty slot set next without hanging", async () => {
    const disk = freshDisk("v1");
    await editBootState(disk, (s) => ({
      ...s,
      order: ["B", "A"],
      slots: { ...s.slots, B: { ...s.slots.B, tries: 2, good: false } },
    }));
    const v = await start(disk);
    expect(await waitBanner(v)).toMatchObject({ slot: "A", version: "1.0.0" });
    // GRUB counted the try on B before finding nothing to boot there.
    expect((await bootState(disk)).slots.B.tries).toBe(1);
  });
});

describe("abforge qemu", () => {
  it("exits with QEMU_TIMEOUT's status when the guest does not power off in time", async () => {
    const disk = freshDisk("v1");
    const r = await abforge(["qemu", disk, "--timeout", "5"]);
    expect(r.code).toBe(91);
    expect(r.stderr).toMatch(/did not power off within 5 s/);
  });

  it("exits 0 when the guest powers off, with the console on stdout and in --serial", async () => {
    const disk = freshDisk("v1");
    const serial = join(dirname(disk), "console.txt");
    const child = spawn(ABFORGE, ["qemu", disk, "--serial", serial, "--timeout", "300"], {
      stdio: ["pipe", "pipe", "pipe"],
    });
    let stdout = "";
    let poweredOff = false;
    child.stdout.on("data", (d: Buffer) => {
      stdout += d.toString();
      if (!poweredOff && PROMPT.test(stdout)) {
        poweredOff = true;
        child.stdin.write("poweroff\n");
      }
    });
    const code = await new Promise<number | null>((resolve) => child.on("close", resolve));
    expect(code).toBe(0);
    expect(stdout).toMatch(BANNER);
    expect(readFileSync(serial, "utf8")).toMatch(BANNER);
  });
});
