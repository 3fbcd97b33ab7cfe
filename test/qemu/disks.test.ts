/**
 * Many disks (issue 11, point 5): a machine with two abforge disks from the
 * same build — byte for byte the same, GUIDs included. OVMF boots one (PCI
 * 0x5, bootindex 0); the copy sits at the lower PCI address 0x4, so Linux
 * names it vda and the boot disk vdb, and "the first partition named
 * abforge-A" would be the copy's. GRUB saves this boot's token on the disk it
 * booted from and passes it on the command line; the initramfs and the agent
 * take the disk that holds it. The host installs 2.0.0, boots it and marks it
 * good, all on vdb; the copy's bytes are the build's at the end, and QEMU's
 * block statistics show it was never written and read only as much as finding
 * the boot disk takes (no slot of it was mounted).
 */
import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { dirname, join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { BANNER, publishBundle, type ServedRepo, serveRepo } from "../../qemu/fleet.ts";
import { Vm } from "../../qemu/vm.ts";
import { withBootDisk } from "../../src/bootloader/index.ts";
import { BOOT_TOKEN_VAR } from "../../src/image/index.ts";
import { tempDir } from "../helpers/tmp.ts";
import { freshDisk, image, SIGNING_KEY } from "./fixtures.ts";

const BOOT_MS = 600_000;
const INITRAMFS_DISK =
  /abforge-initramfs: boot disk \/dev\/(\w+) \(boot token (\d{14})\): slot \/dev\/(\w+), state \/dev\/(\w+)/;

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

describe("two byte-identical abforge disks", () => {
  it("boots, updates and marks good on the disk it booted from (vdb), and never writes the copy (vda)", {
    timeout: 1_200_000,
  }, async () => {
    const repoDir = tempDir("abforge-repo-");
    await publishBundle(repoDir, image("v2").bundle, SIGNING_KEY);
    server = await serveRepo(repoDir);
    const disk = freshDisk("v1");
    const copy = freshDisk("v1", tempDir("abforge-qemu-copy-"));
    const copyBefore = await sha256(copy);
    expect(await sha256(disk)).toBe(copyBefore);

    const started = Date.now();
    vm = await Vm.start({
      disk,
      extraDisks: [copy],
      serialLog: join(dirname(disk), "serial.log"),
      forward: { guestAddress: "10.0.2.100", guestPort: 80, hostPort: server.port },
    });

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
    await vm.waitFor(/confirmed: slot B \(2\.0\.0\) is up/, { timeoutMs: BOOT_MS });
    const bootMs = Date.now() - started;

    const stats = (await vm.qmp("query-blockstats")) as BlockStats[];
    await vm.powerOff();
    const booted = stats.find((b) => b.device === "disk0")?.stats;
    const other = stats.find((b) => b.device === "disk1")?.stats;
    expect(booted && other, JSON.stringify(stats)).toBeTruthy();
    console.info(
      `disks: ${bootMs} ms to 2.0.0 marked good; read ${booted!.rd_bytes} bytes of the boot disk, ${other!.rd_bytes} of the copy`,
    );

    // The boot disk went through the update.
    const s = await withBootDisk(disk, (d) => d.readState());
    expect(s.order).toEqual(["B", "A"]);
    expect(s.slots.B).toMatchObject({ good: true, boots: 0, version: "2.0.0" });
    expect(s.slots.A).toMatchObject({ good: true, version: "1.0.0" });
    const env = await withBootDisk(disk, (d) => d.readEnv(), { readOnly: true });
    expect(env).toContainEqual({ kind: "var", name: BOOT_TOKEN_VAR, value: second[2] });

    // The copy: never written, its bytes the build's; read only to find the boot disk.
    expect(other!.wr_bytes).toBe(0);
    expect(await sha256(copy)).toBe(copyBefore);
    const slotBytes = await withBootDisk(copy, async (d) => d.slotRange("A").size, {
      readOnly: true,
    });
    expect(other!.rd_bytes).toBeLessThan(slotBytes / 8);
  });
});
