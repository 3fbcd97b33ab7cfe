/**
 * Many disks (issue 11, point 5): a machine with two abforge disks from the
 * same build — byte for byte the same, GUIDs included. OVMF boots one (PCI
 * 0x5, bootindex 0); the copy sits at the lower PCI address 0x4, so Linux
 * names it vda and the boot disk vdb, and "the first partition named
 * abforge-A" would be the copy's. GRUB saves this boot's token on the disk it
 * booted from and passes it on the command line; the initramfs and the agent
 * take the disk that holds it. The host installs 2.0.0, boots it and marks it
 * good; then, B corrupted at rest (and goodSlotTries 1), GRUB passes it over
 * after its unconfirmed boot and the agent records the fallback to A — all on
 * vdb. The copy's
 * bytes are the build's at the end, and QEMU's block statistics show it was
 * never written and read only as much as finding the boot disk takes (no slot
 * of it was mounted).
 */
import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { dirname, join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { BANNER, type ServedRepo } from "../../qemu/fleet.ts";
import { Vm } from "../../qemu/vm.ts";
import { withBootDisk } from "../../src/bootloader/index.ts";
import { BOOT_TOKEN_VAR } from "../../src/image/index.ts";
import { tempDir } from "../helpers/tmp.ts";
import { freshDisk, image } from "./fixtures.ts";
import { bootWithRepo, corruptSquashfsAtRest } from "./scenarios.ts";

const BOOT_MS = 600_000;
/** The initramfs's line naming the disk it took (whole: the console arrives in chunks). */
const INITRAMFS_DISK =
  /abforge-initramfs: boot disk \/dev\/(\w+) \(boot token (\d{14})\): slot \/dev\/(\w+), state \/dev\/(\w+)\r?\n/;

let vm: Vm | undefined;
let server: ServedRepo | undefined;

afterAll(async () => {
  await vm?.kill();
  server?.stop();
});

async function sha256(path: string): Promise<string> {
  const h = createHash("sha256");
  for await (const chunk of createReadStream(path, { highWaterMark: 4 << 20 })) h.update(chunk);
  return h.digest("hex");
}

interface BlockStats {
  /** The drive's id: disk0 the boot disk, disk1 the copy (qemu/vm.ts). */
  device: string;
  stats: { rd_bytes: number; wr_bytes: number };
}

/** QEMU's block statistics of this VM process: the boot disk's and the copy's. */
async function copyStats(v: Vm): Promise<{ other: BlockStats["stats"]; text: string }> {
  const stats = (await v.qmp("query-blockstats")) as BlockStats[];
  const booted = stats.find((b) => b.device === "disk0")?.stats;
  const other = stats.find((b) => b.device === "disk1")?.stats;
  if (!booted || !other)
    throw new Error(`no block statistics for disk0 and disk1: ${JSON.stringify(stats)}`);
  return {
    other,
    text: `read ${booted.rd_bytes} bytes of the boot disk, ${other.rd_bytes} of the copy (written: ${booted.wr_bytes}, ${other.wr_bytes})`,
  };
}

describe("two byte-identical abforge disks", () => {
  it("boots, updates, marks good and falls back on the disk it booted from (vdb), and never writes the copy (vda)", {
    timeout: 1_200_000,
  }, async () => {
    const disk = freshDisk("v1");
    const copy = freshDisk("v1", tempDir("abforge-qemu-copy-"));
    const copyBefore = await sha256(copy);
    expect(await sha256(disk)).toBe(copyBefore);

    const started = Date.now();
    const run = await bootWithRepo(disk, [image("v2").bundle], { extraDisks: [copy] });
    vm = run.vm;
    server = run.server;

    // First boot: 1.0.0 from A, on vdb (the copy is vda).
    const first = await vm.waitFor(INITRAMFS_DISK, { timeoutMs: BOOT_MS });
    expect([first[1], first[3], first[4]]).toEqual(["vdb", "vdb2", "vdb4"]);
    let m = await vm.waitFor(BANNER, { timeoutMs: BOOT_MS });
    expect([m[1], m[2]]).toEqual(["A", "1.0.0"]);
    await vm.waitFor(/\/dev\/vdb[^\n]*agent started|agent started[^\n]*\/dev\/vdb/, {
      timeoutMs: BOOT_MS,
    });
    await vm.waitFor(/"msg":"installed"[^\n]*"version":"2\.0\.0"|installed[^\n]*2\.0\.0/, {
      timeoutMs: BOOT_MS,
    });

    // Second boot: 2.0.0 from B, on vdb again, with a new token; marked good there.
    const second = await vm.waitFor(INITRAMFS_DISK, { timeoutMs: BOOT_MS });
    expect([second[1], second[3], second[4]]).toEqual(["vdb", "vdb3", "vdb4"]);
    expect(second[2]).not.toBe(first[2]);
    m = await vm.waitFor(BANNER, { timeoutMs: BOOT_MS });
    expect([m[1], m[2]]).toEqual(["B", "2.0.0"]);
    await vm.waitFor(/marked good/, { timeoutMs: BOOT_MS });
    const bootMs = Date.now() - started;

    const updated = await copyStats(vm);
    await vm.powerOff();
    console.info(`disks: ${bootMs} ms to 2.0.0 marked good; ${updated.text}`);

    // The boot disk went through the update.
    const s = await withBootDisk(disk, (d) => d.readState());
    expect(s.order).toEqual(["B", "A"]);
    expect(s.slots.B).toMatchObject({ good: true, boots: 0, version: "2.0.0" });
    expect(s.slots.A).toMatchObject({ good: true, version: "1.0.0" });
    const env = await withBootDisk(disk, (d) => d.readEnv(), { readOnly: true });
    expect(env).toContainEqual({ kind: "var", name: BOOT_TOKEN_VAR, value: second[2] });

    // The copy: never written, its bytes the build's; read only to find the boot disk.
    const slotBytes = await withBootDisk(copy, async (d) => d.slotRange("A").size, {
      readOnly: true,
    });
    expect(updated.other.wr_bytes).toBe(0);
    expect(updated.other.rd_bytes).toBeLessThan(slotBytes / 8);
    expect(await sha256(copy)).toBe(copyBefore);

    // B (good) corrupted at rest on the boot disk: GRUB counts its unconfirmed
    // boot in vdb's block, passes it over and boots A; the agent records the
    // fallback and puts A first, all on vdb. (goodSlotTries 1, one wasted boot
    // instead of 3: fallback.test.ts proves the count.)
    await withBootDisk(disk, async (d) => d.writeState({ ...(await d.readState()), goodTries: 1 }));
    await corruptSquashfsAtRest(disk, "B");
    const restarted = Date.now();
    vm = await Vm.start({
      disk,
      extraDisks: [copy],
      serialLog: join(dirname(disk), "serial-2.log"),
    });
    m = await vm.waitFor(BANNER, { timeoutMs: BOOT_MS });
    expect([m[1], m[2]]).toEqual(["A", "1.0.0"]);
    const out = vm.console;
    expect(out.match(/abforge: booting slot B version 2\.0\.0/g)).toHaveLength(1);
    expect(out).toContain(
      "abforge: slot B was booted 1 times without a confirmation; passing it over",
    );
    const seen = [...out.matchAll(new RegExp(INITRAMFS_DISK, "g"))].map((x) => `${x[1]} ${x[3]}`);
    expect(seen).toEqual(["vdb vdb3", "vdb vdb2"]);
    await vm.waitFor(/fallback: slot B \(2\.0\.0\) was booted 1 times/, { timeoutMs: BOOT_MS });
    await vm.waitFor(/confirmed: slot A \(1\.0\.0\) is up; it boots first/, {
      timeoutMs: BOOT_MS,
    });
    const fellBackMs = Date.now() - restarted;
    const fellBack = await copyStats(vm);
    await vm.powerOff();
    console.info(`disks: ${fellBackMs} ms to the fallback to A confirmed; ${fellBack.text}`);
    const after = await withBootDisk(disk, (d) => d.readState());
    expect(after.order).toEqual(["A", "B"]);
    expect(after.slots.A).toMatchObject({ good: true, boots: 0, version: "1.0.0" });
    expect(after.slots.B).toMatchObject({ good: true, boots: 1, version: "2.0.0" });
    expect(fellBack.other.wr_bytes).toBe(0);
    expect(fellBack.other.rd_bytes).toBeLessThan(slotBytes / 8);
    expect(await sha256(copy)).toBe(copyBefore);
  });
});
