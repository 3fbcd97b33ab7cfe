/**
 * The scenario steps the QEMU and power-loss tests share: read and edit a
 * disk's boot state, wait for the banner, put demo 2.0.0 into slot B with the
 * real agent, and boot a disk with a repository served on 127.0.0.1 that the
 * guest reaches as http://10.0.2.100/.
 */
import { open } from "node:fs/promises";
import { dirname, join } from "node:path";
import { expect } from "vitest";
import { BANNER, publishBundle, type ServedRepo, serveRepo } from "../../qemu/fleet.ts";
import { Vm } from "../../qemu/vm.ts";
import {
  BootDisk,
  type BootState,
  type SlotName,
  withBootDisk,
} from "../../src/bootloader/index.ts";
import { abforge } from "../helpers/cli.ts";
import { tempDir } from "../helpers/tmp.ts";
import { image, SIGNING_KEY, SIGNING_PUB } from "./fixtures.ts";

export function bootState(disk: string): Promise<BootState> {
  return withBootDisk(disk, (d) => d.readState());
}

export function editBootState(disk: string, edit: (s: BootState) => BootState): Promise<void> {
  return withBootDisk(disk, async (d) => d.writeState(edit(await d.readState())));
}

/** The next banner on the console: the slot and version that booted, and its root hash. */
export async function banner(
  v: Vm,
  timeoutMs: number,
): Promise<{ slot: SlotName; version: string; rootHash: string }> {
  const m = await v.waitFor(BANNER, { timeoutMs });
  return { slot: m[1] as SlotName, version: m[2]!, rootHash: m[3]! };
}

/** Demo 2.0.0 into slot B of `disk` with the real agent (`--disk`, the fixtures' key). */
export async function installV2IntoB(disk: string): Promise<void> {
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
}

/**
 * Publish `bundles` (in order) to channel stable of a new repository, serve
 * it, and boot `disk` with the repository forwarded to the guest. The caller
 * keeps both to stop them.
 */
export async function bootWithRepo(
  disk: string,
  bundles: readonly string[],
  o: { extraDisks?: string[]; secureBoot?: boolean } = {},
): Promise<{ vm: Vm; server: ServedRepo; repoDir: string }> {
  const repoDir = tempDir("abforge-repo-");
  for (const b of bundles) await publishBundle(repoDir, b, SIGNING_KEY);
  const server = await serveRepo(repoDir);
  try {
    const vm = await Vm.start({
      disk,
      ...(o.extraDisks ? { extraDisks: o.extraDisks } : {}),
      ...(o.secureBoot ? { secureBoot: true } : {}),
      serialLog: join(dirname(disk), "serial.log"),
      forward: { guestAddress: "10.0.2.100", guestPort: 80, hostPort: server.port },
    });
    return { vm, server, repoDir };
  } catch (err) {
    server.stop();
    throw err;
  }
}

/**
 * Corrupt `slot` at rest where only the kernel notices: flip one bit of the
 * index of its squashfs's uid/gid table (the superblock's id_table_start,
 * bytes 48-55), a block GRUB never reads and the kernel reads through
 * dm-verity when it mounts the root. GRUB still loads the slot's kernel.
 */
export async function corruptSquashfsAtRest(disk: string, slot: SlotName): Promise<void> {
  const d = await BootDisk.open(disk);
  const { offset } = d.slotRange(slot);
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
