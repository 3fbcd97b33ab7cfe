// SystemKexec's decisions (src/updater/README.md, "Reboot by kexec") with fake
// tools: stub kexec, mount, umount, sync and systemctl scripts that record
// their argv, a fake /proc and /sys, and a boot store in memory. What the
// real kexec does is proven in QEMU (test/qemu/kexec.test.ts).
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import {
  activateSlot,
  type BootState,
  initialBootState,
  markUnbootable,
} from "../../../src/bootloader/index.ts";
import type { BootStore } from "../../../src/updater/installer.ts";
import { SystemKexec } from "../../../src/updater/kexec.ts";
import { FakeClock } from "../../helpers/clock.ts";
import { tempDir } from "../../helpers/tmp.ts";
import { imageA, imageB } from "../bootloader/images.ts";
import { captureLog } from "./harness.ts";

const SECTOR = 512;
/** Partition starts of the fake disk vdb, in sectors (B is vdb3). */
const STARTS = { vdb1: 2048, vdb2: 133120, vdb3: 919552 };
const B_OFFSET = STARTS.vdb3 * SECTOR;
const RUNNING = `BOOT_IMAGE=(hd0,gpt2)/boot/vmlinuz abforge.slot=A abforge.roothash=${imageA.rootHash} abforge.verity=${imageA.verity} abforge.version=1.0.0 abforge.boottoken=20261207205959 console=ttyS0 quiet panic=5\n`;

interface Fake {
  root: string;
  bin: string;
  calls: () => string[];
  store: BootStore & { writes: { state: BootState; bootToken: string | undefined }[] };
  initial: BootState;
}

/**
 * A machine: a root with proc/cmdline, sys/kernel/kexec_loaded and the disk
 * vdb's partitions in sys/class/block, a bin directory of stubs, and the boot
 * state of an update just installed into B with `tries` tries.
 * `fail` names the stub steps that exit 1 (`kexec-l`, `kexec-e`, `mount`, `systemctl`).
 */
function machine(o: { tries?: number; fail?: string[]; tools?: string[] } = {}): Fake {
  const root = tempDir("abforge-kexec-");
  const bin = join(root, "bin");
  const log = join(root, "calls.log");
  mkdirSync(bin);
  mkdirSync(join(root, "proc/sys/kernel"), { recursive: true });
  mkdirSync(join(root, "sys/kernel"), { recursive: true });
  writeFileSync(join(root, "proc/cmdline"), RUNNING);
  writeFileSync(join(root, "proc/sys/kernel/kexec_load_disabled"), "0\n");
  writeFileSync(join(root, "sys/kernel/kexec_loaded"), "0\n");
  for (const [p, start] of Object.entries(STARTS)) {
    mkdirSync(join(root, "sys/class/block/vdb", p), { recursive: true });
    writeFileSync(join(root, "sys/class/block/vdb", p, "start"), `${start}\n`);
  }
  const fail = new Set(o.fail ?? []);
  const loaded = join(root, "sys/kernel/kexec_loaded");
  const stubs: Record<string, string> = {
    kexec: `case "$1" in
  -a) ${fail.has("kexec-l") ? 'echo "kexec_load failed: Operation not permitted" >&2; exit 1' : `test -f "\${3}" && test -f "\${4#--initrd=}" || { echo "no kernel at $3" >&2; exit 1; }; echo 1 > ${loaded}`} ;;
  -u) echo 0 > ${loaded} ;;
  -e) ${fail.has("kexec-e") ? 'echo "kexec: no kernel loaded" >&2; exit 1' : "exit 0"} ;;
esac`,
    // the last argument is the mount point: give it the slot's /boot
    mount: fail.has("mount")
      ? 'echo "mount: mounting failed: Invalid argument" >&2; exit 1'
      : 'for a; do last="$a"; done; mkdir -p "$last/boot"; touch "$last/boot/vmlinuz" "$last/boot/initrd.img"',
    umount: 'rm -rf "$1/boot"',
    sync: "",
    systemctl: fail.has("systemctl") ? 'echo "Failed to kexec" >&2; exit 1' : "",
  };
  for (const [name, body] of Object.entries(stubs)) {
    if (o.tools && !o.tools.includes(name)) continue;
    writeFileSync(join(bin, name), `#!/bin/sh\necho "${name} $*" >> ${log}\n${body}\n`, {
      mode: 0o755,
    });
    chmodSync(join(bin, name), 0o755);
  }
  const initial = activateSlot(markUnbootable(initialBootState(imageA), "B"), "B", {
    tries: o.tries ?? 2,
    ...imageB,
  });
  let current = initial;
  const writes: { state: BootState; bootToken: string | undefined }[] = [];
  const store = {
    writes,
    readState: async () => current,
    writeState: async (s: BootState, w?: { bootToken?: string }) => {
      writeFileSync(log, `write tries=${s.slots.B.tries}\n`, { flag: "a" });
      writes.push({ state: s, bootToken: w?.bootToken });
      current = s;
    },
  };
  const calls = () => (existsSync(log) ? readFileSync(log, "utf8").trim().split("\n") : []);
  return { root, bin, calls, store, initial };
}

function kexecOf(f: Fake, o: { rebootCommand?: string[]; clock?: FakeClock } = {}) {
  const { log, lines } = captureLog();
  const clock = o.clock ?? new FakeClock({ start: new Date("2026-12-07T21:01:02Z") });
  const k = new SystemKexec({
    log,
    clock,
    rebootCommand: o.rebootCommand ?? ["reboot"],
    toolDirs: [f.bin],
    root: f.root,
    jumpTimeoutMs: 60_000,
  });
  const boot = (slot: "A" | "B" = "B", offset = B_OFFSET) =>
    k.boot({
      slot,
      disk: f.store,
      diskPath: "/dev/vdb",
      slotRange: { offset, size: 384 * 1024 * 1024 },
    });
  return { boot, lines, clock };
}

const CMDLINE = `abforge.slot=B abforge.roothash=${imageB.rootHash} abforge.verity=${imageB.verity} abforge.version=2.0.0 abforge.boottoken=20261207210102 console=ttyS0 quiet panic=5`;

describe("SystemKexec", () => {
  it("busybox: mounts B's partition, loads its kernel with GRUB's command line, counts the try with a new token in one write, syncs, jumps", async () => {
    const f = machine({ tries: 2, fail: ["kexec-e"] });
    const { boot, lines } = kexecOf(f);
    const { why } = await boot();
    const calls = f.calls();
    const mnt = /^mount -t squashfs -o ro \S+\/dev\/vdb3 (\S+)$/.exec(calls[0]!)?.[1];
    expect(mnt, calls.join("\n")).toBeDefined();
    expect(calls).toEqual([
      `mount -t squashfs -o ro ${f.root}/dev/vdb3 ${mnt}`,
      `kexec -a -l ${mnt}/boot/vmlinuz --initrd=${mnt}/boot/initrd.img --command-line=${CMDLINE}`,
      `umount ${mnt}`,
      "write tries=1",
      "sync ",
      "kexec -e",
      // kexec -e came back: the kernel unloaded, the try given back
      "kexec -u",
      "write tries=2",
    ]);
    expect(f.store.writes[0]!.bootToken).toBe("20261207210102");
    expect(f.store.writes[0]!.state.slots.B).toMatchObject({ tries: 1, good: false });
    expect(f.store.writes[1]).toEqual({ state: f.initial, bootToken: undefined });
    expect(why).toBe("kexec -e failed: kexec: no kernel loaded");
    expect(lines.map((l) => l.msg)).toContain(
      "kexec: jumping into slot B (2.0.0); the boot is counted (tries 1, boots 0)",
    );
    expect(existsSync(mnt!)).toBe(false);
  });

  it("systemd: jumps with systemctl kexec (units stop cleanly) and waits to go down", async () => {
    const f = machine({ tries: 1 });
    const clock = new FakeClock({ start: new Date("2026-12-07T21:01:02Z") });
    const { boot } = kexecOf(f, { rebootCommand: ["systemctl", "reboot"], clock });
    let done = false;
    const p = boot().then((r) => {
      done = true;
      return r;
    });
    for (let i = 0; i < 200 && clock.pending === 0; i++)
      await new Promise((r) => setTimeout(r, 10));
    expect(clock.sleeps).toEqual([60_000]);
    expect(done).toBe(false);
    expect(f.calls().slice(3)).toEqual(["write tries=0", "systemctl kexec"]);
    expect(f.store.writes).toHaveLength(1);
    clock.advance(60_000);
    expect((await p).why).toBe(
      "systemctl kexec was accepted but the host did not go down within 60 s",
    );
  });

  it("a failed systemctl kexec gives the try back and says why", async () => {
    const f = machine({ fail: ["systemctl"] });
    const { why } = await kexecOf(f, { rebootCommand: ["/bin/systemctl", "reboot"] }).boot();
    expect(why).toBe("systemctl kexec failed: Failed to kexec");
    expect(f.store.writes.map((w) => w.state.slots.B.tries)).toEqual([1, 2]);
  });

  it("does not jump, touches nothing and says why: no tool, no kernel support, kexec disabled", async () => {
    const noTool = machine({ tools: ["mount", "umount", "sync"] });
    expect(await kexecOf(noTool).boot()).toEqual({
      why: "no kexec tool in the image (Debian package kexec-tools)",
    });
    const noSupport = machine();
    await import("node:fs/promises").then((fs) =>
      fs.rm(join(noSupport.root, "sys/kernel/kexec_loaded")),
    );
    expect((await kexecOf(noSupport).boot()).why).toBe(
      "the kernel has no kexec support (no /sys/kernel/kexec_loaded)",
    );
    const disabled = machine();
    writeFileSync(join(disabled.root, "proc/sys/kernel/kexec_load_disabled"), "1\n");
    expect((await kexecOf(disabled).boot()).why).toBe(
      "kexec is disabled (kernel.kexec_load_disabled=1)",
    );
    for (const f of [noTool, noSupport, disabled]) {
      expect(f.calls()).toEqual([]);
      expect(f.store.writes).toEqual([]);
    }
  });

  it("does not count a try when the kernel does not load, the slot cannot be mounted or found, or GRUB would boot another slot", async () => {
    const loadFails = machine({ fail: ["kexec-l"] });
    expect((await kexecOf(loadFails).boot()).why).toBe(
      "kexec -l failed: kexec_load failed: Operation not permitted",
    );
    expect(loadFails.calls().map((c) => c.split(" ")[0])).toEqual(["mount", "kexec", "umount"]);

    const mountFails = machine({ fail: ["mount"] });
    expect((await kexecOf(mountFails).boot()).why).toMatch(
      /^cannot mount \S+\/dev\/vdb3 \(squashfs\): mount: mounting failed: Invalid argument$/,
    );

    const noPartition = machine();
    expect((await kexecOf(noPartition).boot("B", 12345 * SECTOR)).why).toBe(
      "no partition of /dev/vdb starts at byte 6320640",
    );

    // A is the running good slot; GRUB would boot B (on trial) now, not A.
    const otherSlot = machine();
    expect((await kexecOf(otherSlot).boot("A", STARTS.vdb2 * SECTOR)).why).toBe(
      "cannot boot slot A by kexec: GRUB would boot slot B now",
    );
    expect(otherSlot.calls()).toEqual([]);
    for (const f of [loadFails, mountFails, noPartition, otherSlot])
      expect(f.store.writes).toEqual([]);
  });
});
