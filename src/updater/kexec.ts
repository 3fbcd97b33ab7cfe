/**
 * Reboot by kexec (README.md, "Reboot by kexec"): boot an installed slot
 * without the firmware and GRUB. The slot's kernel and initramfs are read
 * from its squashfs on the boot disk, loaded with the command line GRUB
 * would build for the slot, the try is counted in the boot state as GRUB
 * counts it (with a fresh boot token, in the same write), and the host
 * jumps. `boot` returns only when it did not jump, with the reason; the
 * caller then reboots through the firmware.
 */
import { accessSync, constants } from "node:fs";
import { mkdtemp, readdir, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { basename, join } from "node:path";
import {
  BootloaderError,
  kexecBoot,
  nextBootToken,
  slotCmdline,
  specCmdline,
} from "../bootloader/index.ts";
import type { Clock } from "../clock.ts";
import { findTool, run } from "../exec.ts";
import { bootTokenFromCmdline, type SlotName } from "../image/index.ts";
import type { Logger } from "../log.ts";
import { errText } from "./errors.ts";
import type { BootStore } from "./installer.ts";
import type { ByteRange, Kexec } from "./machine.ts";

/** In-slot paths of the kernel and the initramfs (what GRUB loads). */
const KERNEL = "boot/vmlinuz";
const INITRD = "boot/initrd.img";

/** After `systemctl kexec` succeeded: how long the host may take to go down before it counts as a failed jump. */
export const DEFAULT_JUMP_TIMEOUT_MS = 120_000;

export interface SystemKexecOptions {
  log: Logger;
  clock: Clock;
  /** The agent config's rebootCommand: `systemctl …` means a systemd image (jump with `systemctl kexec`). */
  rebootCommand: readonly string[];
  /** Only these directories hold the tools (tests: a directory of stubs); default: PATH and the sbin directories. */
  toolDirs?: readonly string[];
  /** Where /proc, /sys and /dev are (tests: a fake tree); default `/`. */
  root?: string;
  jumpTimeoutMs?: number;
}

/** A step that could not be done: why the host reboots through the firmware instead. */
class NoJump extends Error {}

export class SystemKexec implements Kexec {
  readonly #o: SystemKexecOptions;
  readonly #root: string;
  constructor(o: SystemKexecOptions) {
    this.#o = o;
    this.#root = o.root ?? "/";
  }

  /** README.md, "Reboot by kexec", steps 1-7. */
  async boot(o: {
    slot: SlotName;
    disk: BootStore;
    diskPath: string;
    slotRange: ByteRange;
  }): Promise<{ why: string }> {
    const log = this.#o.log.child({ module: "kexec" });
    try {
      // 1. The tool and the kernel's support.
      const kexec = this.#tool("kexec", "no kexec tool in the image (Debian package kexec-tools)");
      await this.#kernelSupport();
      // 2. The bookkeeping, in memory: GRUB's count of this boot.
      const before = await o.disk.readState();
      const after = refusedAs(() => kexecBoot(before, o.slot));
      // 3. The command line GRUB would build, with a fresh boot token.
      const running = await this.#read("proc/cmdline");
      const bootToken = nextBootToken(this.#o.clock.now(), bootTokenFromCmdline(running));
      const cmdline = refusedAs(() =>
        slotCmdline({
          slot: o.slot,
          state: after.slots[o.slot],
          bootToken,
          cmdline: specCmdline(running),
        }),
      );
      // 4. The kernel and initramfs out of the slot's squashfs, loaded.
      const device = await this.#partitionDevice(o.diskPath, o.slotRange);
      await this.#load(kexec, device, cmdline);
      log.info({ slot: o.slot, device, cmdline }, `kexec: loaded slot ${o.slot}'s kernel`);
      // 5. One boot-state write: the try counted, the token saved.
      try {
        await o.disk.writeState(after, { bootToken });
      } catch (cause) {
        await this.#unload(kexec);
        throw new NoJump(`cannot count the try in the boot state: ${errText(cause)}`);
      }
      const x = after.slots[o.slot];
      log.info(
        { slot: o.slot, version: x.version, tries: x.tries, boots: x.boots, bootToken },
        `kexec: jumping into slot ${o.slot} (${x.version}); the boot is counted (tries ${x.tries}, boots ${x.boots})`,
      );
      // 6. The jump. It returns only when it failed.
      const why = await this.#jump(kexec);
      // 7. Not jumped: give the try back, so the firmware boot that follows counts it once.
      await this.#unload(kexec);
      await o.disk
        .writeState(before)
        .catch((cause) =>
          log.warn(
            { err: errText(cause) },
            "kexec: cannot give the try back; GRUB counts one more",
          ),
        );
      return { why };
    } catch (err) {
      if (err instanceof NoJump) return { why: err.message };
      throw err;
    }
  }

  #tool(name: string, missing: string): string {
    const dirs = this.#o.toolDirs;
    if (dirs === undefined) {
      const found = findTool(name);
      if (found) return found;
    } else {
      for (const d of dirs) {
        const candidate = join(d, name);
        try {
          accessSync(candidate, constants.X_OK);
          return candidate;
        } catch {
          // not in this directory
        }
      }
    }
    throw new NoJump(missing);
  }

  async #read(rel: string): Promise<string> {
    return readFile(join(this.#root, rel), "utf8");
  }

  /** CONFIG_KEXEC_CORE gives /sys/kernel/kexec_loaded; kernel.kexec_load_disabled=1 forbids loading until the next boot. */
  async #kernelSupport(): Promise<void> {
    try {
      await this.#read("sys/kernel/kexec_loaded");
    } catch {
      throw new NoJump("the kernel has no kexec support (no /sys/kernel/kexec_loaded)");
    }
    const disabled = await this.#read("proc/sys/kernel/kexec_load_disabled").catch(() => "0");
    if (disabled.trim() === "1")
      throw new NoJump("kexec is disabled (kernel.kexec_load_disabled=1)");
  }

  /**
   * The partition of `diskPath` that starts at the slot's offset, from sysfs
   * (`/sys/class/block/<disk>/<part>/start`, in 512-byte sectors): the slot
   * of this disk, even beside a byte-identical copy.
   */
  async #partitionDevice(diskPath: string, range: ByteRange): Promise<string> {
    const disk = basename(diskPath);
    const dir = join(this.#root, "sys/class/block", disk);
    const entries = await readdir(dir).catch(() => {
      throw new NoJump(`${diskPath} is not a block device in /sys/class/block (an image file?)`);
    });
    for (const e of entries.filter((n) => n.startsWith(disk)).sort()) {
      const start = await readFile(join(dir, e, "start"), "utf8").catch(() => undefined);
      if (start !== undefined && Number(start.trim()) * 512 === range.offset)
        return join(this.#root, "dev", e);
    }
    throw new NoJump(`no partition of ${diskPath} starts at byte ${range.offset}`);
  }

  /**
   * Mount the slot's squashfs read-only on the partition itself (no loop
   * device: the squashfs starts the partition and ends before its verity
   * tree), `kexec -l` its kernel and initramfs, unmount. Not through
   * dm-verity: the install verified the whole slot against its root hash
   * (installer step 8) and GRUB reads the same files unverified too.
   */
  async #load(kexec: string, device: string, cmdline: string): Promise<void> {
    const mount = this.#tool("mount", "no mount tool in the image");
    const umount = this.#tool("umount", "no umount tool in the image");
    const dir = await mkdtemp(join(tmpdir(), "abforge-kexec-"));
    try {
      const m = await run(mount, ["-t", "squashfs", "-o", "ro", device, dir], {
        allowFailure: true,
      });
      if (m.code !== 0) throw new NoJump(`cannot mount ${device} (squashfs): ${tail(m)}`);
      try {
        // -a: kexec_file_load where the kernel has it (the only way under
        // lockdown, e.g. Secure Boot), else kexec_load.
        const l = await run(
          kexec,
          [
            "-a",
            "-l",
            join(dir, KERNEL),
            `--initrd=${join(dir, INITRD)}`,
            `--command-line=${cmdline}`,
          ],
          { allowFailure: true },
        );
        if (l.code !== 0) throw new NoJump(`kexec -l failed: ${tail(l)}`);
      } finally {
        await run(umount, [dir], { allowFailure: true });
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
    const loaded = await this.#read("sys/kernel/kexec_loaded").catch(() => "");
    if (loaded.trim() !== "1")
      throw new NoJump("kexec -l succeeded but the kernel holds no loaded image");
  }

  async #unload(kexec: string): Promise<void> {
    await run(kexec, ["-u"], { allowFailure: true });
  }

  /**
   * systemd: `systemctl kexec` stops the units, unmounts and jumps, as
   * `systemctl reboot` would reboot; it returns once the job is queued, so
   * the agent waits to go down. busybox: there is no init path to kexec, so
   * as busybox `reboot -f`: sync (the agent's and the boot state's writes
   * are fsynced already; the state partition's ext4 journal covers the
   * rest), then `kexec -e`, which shuts the devices down and jumps.
   */
  async #jump(kexec: string): Promise<string> {
    if (basename(this.#o.rebootCommand[0] ?? "") === "systemctl") {
      const systemctl = this.#tool("systemctl", "no systemctl");
      const r = await run(systemctl, ["kexec"], { allowFailure: true });
      if (r.code !== 0) return `systemctl kexec failed: ${tail(r)}`;
      const ms = this.#o.jumpTimeoutMs ?? DEFAULT_JUMP_TIMEOUT_MS;
      await this.#o.clock.sleep(ms);
      return `systemctl kexec was accepted but the host did not go down within ${ms / 1000} s`;
    }
    const sync = this.#tool("sync", "no sync tool in the image");
    await run(sync, [], { allowFailure: true });
    const r = await run(kexec, ["-e"], { allowFailure: true });
    return `kexec -e failed: ${tail(r) || `exit ${r.code}`}`;
  }
}

function tail(r: { stderr: string; stdout: string }): string {
  return (r.stderr || r.stdout).trim().split("\n").slice(-3).join("; ");
}

/** A transition the boot state refuses (BOOT_REFUSED, GRUB_BAD_CMDLINE) is a reason not to jump. */
function refusedAs<T>(fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    if (
      err instanceof BootloaderError &&
      (err.code === "BOOT_REFUSED" || err.code === "GRUB_BAD_CMDLINE")
    )
      throw new NoJump(err.message);
    throw err;
  }
}
