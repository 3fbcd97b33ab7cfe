/**
 * A good slot that stops booting falls back (issue 11, point 3): demo 2.0.0
 * in slot B, marked good and first, is corrupted at rest (one byte of its
 * squashfs that dm-verity reads at mount). GRUB boots it `goodSlotTries` (3)
 * times without a confirmation, then boots the good slot A; its agent
 * confirms A, records the fallback naming B and its version, and puts A
 * first. Every assertion reads the serial console or the disk's boot state.
 */
import { open } from "node:fs/promises";
import { dirname, join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { BANNER, PROMPT } from "../../qemu/fleet.ts";
import { Vm } from "../../qemu/vm.ts";
import {
  BootDisk,
  type BootState,
  decodeEnv,
  markGood,
  withBootDisk,
} from "../../src/bootloader/index.ts";
import { abforge } from "../helpers/cli.ts";
import { freshDisk, image, SIGNING_PUB } from "./fixtures.ts";

const BOOT_MS = 300_000;

let vm: Vm | undefined;
afterAll(async () => {
  await vm?.kill();
});

function bootState(disk: string): Promise<BootState> {
  return withBootDisk(disk, (d) => d.readState());
}

/** Flip one bit of B's squashfs id table: GRUB still loads B's kernel; the root mount fails verity. */
async function corruptAtRest(disk: string): Promise<void> {
  const d = await BootDisk.open(disk);
  const { offset } = d.slotRange("B");
  await d.close();
  const fh = await open(disk, "r+");
  try {
    const superblock = Buffer.alloc(96);
    await fh.read(superblock, 0, 96, offset);
    expect(superblock.readUInt32LE(0)).toBe(0x73717368); // "hsqs"
    const target = offset + Number(superblock.readBigUInt64LE(48));
    const byte = Buffer.alloc(1);
    await fh.read(byte, 0, 1, target);
    byte[0] = byte[0]! ^ 0x01;
    await fh.write(byte, 0, 1, target);
  } finally {
    await fh.close();
  }
}

describe("a good slot that stops booting", () => {
  it("B (good) corrupted at rest: booted goodSlotTries times unconfirmed, then A boots, confirms, records the fallback and goes first", async () => {
    const disk = freshDisk("v1");
    const install = await abforge([
      "agent",
      "install",
      image("v2").bundle,
      "--disk",
      disk,
      "--pubkey",
      SIGNING_PUB,
      "--state-dir",
      join(dirname(disk), "agent-state"),
    ]);
    expect(install.code, install.stderr).toBe(0);
    await withBootDisk(disk, async (d) => d.writeState(markGood(await d.readState(), "B")));
    const before = await bootState(disk);
    expect(before.order).toEqual(["B", "A"]);
    expect(before.goodTries).toBe(3);
    expect(before.slots.B).toMatchObject({ good: true, boots: 0, version: "2.0.0" });
    await corruptAtRest(disk);

    const started = Date.now();
    vm = await Vm.start({ disk, serialLog: join(dirname(disk), "serial.log") });
    const m = await vm.waitFor(BANNER, { timeoutMs: BOOT_MS * 2 });
    expect([m[1], m[2]]).toEqual(["A", "1.0.0"]);
    const bannerMs = Date.now() - started;
    const out = vm.console;
    // GRUB booted B three times (each a dm-verity failure and a reset), then passed it over
    expect(out.match(/abforge: booting slot B version 2\.0\.0/g)).toHaveLength(3);
    for (const n of [1, 2, 3]) expect(out).toContain(`tries=0 boots=${n})`);
    expect(out).toMatch(/verity.*corrupt|corrupt.*verity/i);
    expect(out).toContain(
      "abforge: slot B was booted 3 times without a confirmation; passing it over",
    );
    expect(out).toMatch(/abforge: booting slot A version 1\.0\.0 \(good=1 tries=0 boots=1\)/);

    await vm.waitFor(PROMPT, { timeoutMs: 60_000 });
    await vm.waitFor(/fallback: slot B \(2\.0\.0\) was booted 3 times/, { timeoutMs: BOOT_MS });
    await vm.waitFor(/confirmed: slot A \(1\.0\.0\) is up; it boots first/, { timeoutMs: BOOT_MS });
    const s = await bootState(disk);
    expect(s.order).toEqual(["A", "B"]);
    expect(s.slots.A).toMatchObject({ good: true, boots: 0, version: "1.0.0" });
    expect(s.slots.B).toMatchObject({ good: true, boots: 3, version: "2.0.0" });
    // every counter in the block is one digit
    const d = await BootDisk.open(disk, { readOnly: true });
    const block = Buffer.alloc(1024);
    const fh = await open(disk, "r");
    await fh.read(block, 0, 1024, d.env.offset);
    await fh.close();
    await d.close();
    const counters = [...decodeEnv(block)].filter(([k]) => /_(tries|boots)$|^good_tries$/.test(k));
    expect(counters).toHaveLength(5);
    for (const [k, v] of counters) expect(v, k).toMatch(/^\d$/);

    const status = await vm.run(
      "echo STATUS=$(/usr/lib/abforge/bin/abforge agent status --json 2>/dev/null | tr -d '\\n')",
      { timeoutMs: 300_000 },
    );
    const line = /^STATUS=(\{.*\})$/m.exec(status.output);
    expect(line, status.output).not.toBeNull();
    const parsed = JSON.parse(line![1]!) as {
      booted: { slot: string };
      fallbacks: { slot: string; version: string; booted: string; reason: string }[];
      badVersions: string[];
    };
    expect(parsed.booted.slot).toBe("A");
    expect(parsed.fallbacks).toEqual([
      expect.objectContaining({
        slot: "B",
        version: "2.0.0",
        booted: "A",
        reason: expect.stringMatching(/booted 3 times in a row without a confirmation/),
      }),
    ]);
    // the agent read B back through its verity tree: the reason names the corruption
    expect(parsed.fallbacks[0]!.reason).toMatch(
      /dm-verity: its image does not match its root hash, it is corrupted at rest/,
    );
    expect(parsed.badVersions).toEqual([]);
    console.info(`fallback: banner of A after ${bannerMs} ms`);
  });
});
