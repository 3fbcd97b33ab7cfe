/**
 * The machine the agent runs on, as small interfaces (STYLE.md, point 7):
 * randomness (time is src/clock.ts, shared with src/repo), reboot, HTTP, which slot booted, where the slots are and
 * what the booted image trusts. The real implementations are here too; tests
 * swap in their own where the real thing cannot run (a reboot), and keep the
 * real one everywhere else (files as block devices, child processes, HTTP on
 * 127.0.0.1).
 */
import { execFile } from "node:child_process";
import { type KeyObject, randomInt } from "node:crypto";
import { mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { hostname as osHostname, uptime as osUptime, tmpdir } from "node:os";
import { join } from "node:path";
import type { Readable } from "node:stream";
import { promisify } from "node:util";
import { type BootState, nextBootSlot, slotFromCmdline } from "../bootloader/index.ts";
import { loadPublicKey } from "../bundle/index.ts";
import type { Clock } from "../clock.ts";
import {
  findPartition,
  type GptTable,
  PARTITION_TYPES,
  partitionRange,
  readGpt,
} from "../disk/index.ts";
import { ToolError } from "../errors.ts";
import { requireTool } from "../exec.ts";
import { unlessMissing } from "../fileio.ts";
import {
  KEYS_DIR as IMAGE_KEYS_DIR,
  RELEASE_PATH as IMAGE_RELEASE_PATH,
  otherSlot,
  parseRelease,
  type Release,
  type SlotLocation,
  type SlotName,
  slotPartitionName,
} from "../image/index.ts";
import type { Logger } from "../log.ts";
import {
  fetchIndex,
  fetchRanges,
  openRange,
  type RangePiece,
  type RangeStats,
  type Span,
} from "../repo/index.ts";
import { errText, UpdaterError } from "./errors.ts";
import type { BootStore } from "./installer.ts";

/** Randomness: poll jitter, and the host's rollout identity. */
export interface Random {
  /** Uniform in [0, 1). */
  fraction(): number;
  /** A fresh random identifier. */
  id(): string;
  /** An integer in [0, n), uniform (the rollout seed). */
  int(n: number): number;
}

export const systemRandom: Random = {
  fraction: () => (crypto.getRandomValues(new Uint32Array(1))[0] as number) / 2 ** 32,
  id: () => crypto.randomUUID(),
  int: (n) => randomInt(0, n),
};

/** Restarts the host. */
export interface Rebooter {
  reboot(reason: string): Promise<void>;
}

/**
 * Boots an installed slot without the firmware (kexec.ts, README.md "Reboot
 * by kexec"): loads the slot's kernel and initramfs from the boot disk with
 * the command line GRUB would build for it, counts the try in the boot state
 * as GRUB does (src/bootloader `grubBoot`) and jumps. It returns only when it
 * did not jump, with the reason; the caller then reboots through the
 * firmware, and GRUB counts the tries from the boot state as always.
 */
export interface Kexec {
  boot(o: {
    slot: SlotName;
    disk: BootStore;
    diskPath: string;
    slotRange: ByteRange;
  }): Promise<{ why: string }>;
}

/**
 * The cluster's reboot semaphore (src/lock, locksmith's): a place taken
 * before the reboot, given back once the host is up again. Both are
 * idempotent for the same holder.
 */
export interface RebootLockClient {
  acquire(
    holder: string,
  ): Promise<{ acquired: boolean; holders: string[]; max: number; removedStale: string[] }>;
  release(holder: string): Promise<{ released: boolean }>;
}

export const MACHINE_ID_PATH = "/etc/machine-id";

/** The host's machine id (systemd's file: 32 hex digits); null when there is none. */
export async function readMachineId(path: string): Promise<string | null> {
  const text = await unlessMissing(`read ${path}`, readFile(path, "utf8"), "");
  const id = text.trim();
  return id && /^[0-9a-f]{32}$/.test(id) ? id : null;
}

/** What a report says of the machine (src/fleet README.md, "The report"). */
export interface HostFacts {
  hostname(): string;
  /** This boot's id (/proc/sys/kernel/random/boot_id); null when there is none. */
  bootId(): Promise<string | null>;
  uptimeMs(): number;
}

export const BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id";

/**
 * The running machine's facts; `hostname` overrides the kernel's (an image
 * file stands for a host of its own: its name is the file's).
 */
export function systemHostFacts(hostname?: string): HostFacts {
  return {
    hostname: () => hostname ?? osHostname(),
    bootId: async () => {
      const id = (
        await unlessMissing(`read ${BOOT_ID_PATH}`, readFile(BOOT_ID_PATH, "utf8"), "")
      ).trim();
      return /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/.test(id) ? id : null;
    },
    uptimeMs: () => Math.round(osUptime() * 1000),
  };
}

/** Runs the configured reboot command (busybox `reboot`, or `systemctl reboot` in a systemd image). */
export class CommandRebooter implements Rebooter {
  readonly #argv: string[];
  constructor(argv: readonly string[]) {
    this.#argv = [...argv];
  }
  async reboot(): Promise<void> {
    const [cmd, ...args] = this.#argv as [string, ...string[]];
    await tool(cmd, args);
  }
}

/** For a disk image standing in for the boot disk: there is no host to restart. */
export class LogOnlyRebooter implements Rebooter {
  readonly #log: Logger;
  readonly reasons: string[] = [];
  constructor(log: Logger) {
    this.#log = log;
  }
  async reboot(reason: string): Promise<void> {
    this.reasons.push(reason);
    this.#log.info({ reason }, "reboot requested (disk image: nothing to restart)");
  }
}

/** The HTTP the agent needs: a small bounded fetch, and a byte stream from an offset. */
export interface HttpClient {
  fetch(url: string, o: { maxBytes: number; signal?: AbortSignal }): Promise<Uint8Array>;
  openRange(url: string, o: { offset: number; maxBytes: number; signal?: AbortSignal }): Readable;
  /** Byte ranges of a file of `fileSize` bytes (a delta install); absent: full downloads only. */
  ranges?(
    url: string,
    spans: readonly Span[],
    o: { fileSize: number; stats: RangeStats; signal?: AbortSignal },
  ): AsyncIterable<RangePiece>;
}

/** src/repo's client (Range resume, size limits, stall timeout, retries). */
export class RepoHttpClient implements HttpClient {
  readonly #stallTimeoutMs: number;
  readonly #log: Logger;
  readonly #clock: Clock;
  constructor(o: { stallTimeoutMs: number; log: Logger; clock: Clock }) {
    this.#stallTimeoutMs = o.stallTimeoutMs;
    this.#log = o.log;
    this.#clock = o.clock;
  }
  fetch(url: string, o: { maxBytes: number; signal?: AbortSignal }): Promise<Uint8Array> {
    return fetchIndex(url, {
      maxBytes: o.maxBytes,
      stallTimeoutMs: this.#stallTimeoutMs,
      log: this.#log,
      clock: this.#clock,
      ...(o.signal ? { signal: o.signal } : {}),
    });
  }
  ranges(
    url: string,
    spans: readonly Span[],
    o: { fileSize: number; stats: RangeStats; signal?: AbortSignal },
  ): AsyncIterable<RangePiece> {
    return fetchRanges(
      url,
      spans,
      {
        fileSize: o.fileSize,
        timeoutMs: this.#stallTimeoutMs,
        log: this.#log,
        ...(o.signal ? { signal: o.signal } : {}),
      },
      o.stats,
    );
  }
  openRange(url: string, o: { offset: number; maxBytes: number; signal?: AbortSignal }): Readable {
    return openRange(url, {
      offset: o.offset,
      maxBytes: o.maxBytes,
      stallTimeoutMs: this.#stallTimeoutMs,
      log: this.#log,
      clock: this.#clock,
      ...(o.signal ? { signal: o.signal } : {}),
    });
  }
}

/** Which slot is running. */
export interface BootedSlotSource {
  /**
   * `awaitingReboot`: the slot of an installed update whose reboot has not
   * happened yet (README.md, "Reboot": it waits for the window, the lock or
   * the operator), for an image file, which has no kernel command line.
   */
  bootedSlot(boot: BootState, o?: { awaitingReboot: SlotName | null }): Promise<SlotName>;
}

/** On the host: `abforge.slot=X` on the kernel command line (GRUB puts it there). */
export class CmdlineBootedSlot implements BootedSlotSource {
  readonly #path: string;
  constructor(path = "/proc/cmdline") {
    this.#path = path;
  }
  async bootedSlot(): Promise<SlotName> {
    let cmdline: string;
    try {
      cmdline = await readFile(this.#path, "utf8");
    } catch (cause) {
      throw new UpdaterError(
        "HOST_DISK_NOT_FOUND",
        `cannot read ${this.#path}: ${errText(cause)}`,
        { cause },
      );
    }
    const slot = slotFromCmdline(cmdline);
    if (slot === null)
      throw new UpdaterError(
        "HOST_DISK_NOT_FOUND",
        `${this.#path} has no abforge.slot=A|B: this host was not booted by abforge's GRUB (use --disk for an image)`,
      );
    return slot;
  }
}

/**
 * A disk image stands for the boot disk: the slot GRUB would boot now counts
 * as booted — unless that is an installed update still waiting for its
 * reboot: the host it stands for has not rebooted, and runs the other slot.
 */
export const bootStateBootedSlot: BootedSlotSource = {
  async bootedSlot(boot, o) {
    const next = nextBootSlot(boot);
    const waiting = o?.awaitingReboot;
    const slot =
      waiting && next === waiting && boot.slots[otherSlot(waiting)].good
        ? otherSlot(waiting)
        : next;
    if (slot === null)
      throw new UpdaterError(
        "UPDATE_REFUSED",
        "the boot state has no bootable slot (neither good nor with tries left)",
      );
    return slot;
  },
};

const execFileP = promisify(execFile);

export interface ByteRange {
  offset: number;
  size: number;
}

export const SLOT_PARTITION_TYPES: readonly string[] = [
  PARTITION_TYPES.ROOT_X86_64,
  PARTITION_TYPES.ROOT_ARM64,
];

/**
 * Where slots A and B are on the disk (README.md, "Slots"): the partition
 * named `abforge-<slot>` with a root partition type, unless the config gives
 * a label or an index.
 */
export async function locateSlots(
  diskPath: string,
  given: Partial<Record<SlotName, SlotLocation>> = {},
): Promise<Record<SlotName, ByteRange>> {
  const { table } = await readGpt(diskPath);
  return {
    A: locateSlot(table, diskPath, "A", given.A),
    B: locateSlot(table, diskPath, "B", given.B),
  };
}

function locateSlot(
  table: GptTable,
  diskPath: string,
  slot: SlotName,
  given?: SlotLocation,
): ByteRange {
  const by =
    given?.partitionIndex !== undefined
      ? { index: given.partitionIndex }
      : { name: given?.partitionLabel ?? slotPartitionName(slot) };
  const p = findPartition(table, by);
  if (given === undefined && !SLOT_PARTITION_TYPES.includes(p.typeGuid.toUpperCase()))
    throw new UpdaterError(
      "HOST_DISK_NOT_FOUND",
      `${diskPath}: partition ${p.index} "${p.name}" has type ${p.typeGuid}, not a root partition type; give slots.${slot} in the config`,
      { details: { disk: diskPath, partition: p.index, typeGuid: p.typeGuid } },
    );
  return partitionRange(p, table.sectorSize);
}

/** In-image paths relative to a root (the contract's, without the leading `/`). */
export const RELEASE_PATH = IMAGE_RELEASE_PATH.slice(1);
export const KEYS_DIR = IMAGE_KEYS_DIR.slice(1);

/** What the running image carries: its release identity and its trusted keys. */
export interface ImageFiles {
  release(): Promise<Release>;
  trustedKeys(): Promise<KeyObject[]>;
}

/** On the host: the files of the running root. */
export class RootImageFiles implements ImageFiles {
  readonly #root: string;
  constructor(root = "/") {
    this.#root = root;
  }
  async release(): Promise<Release> {
    const path = join(this.#root, RELEASE_PATH);
    return parseRelease(
      await readFile(path, "utf8").catch((cause) => releaseError(path, cause)),
      path,
    );
  }
  async trustedKeys(): Promise<KeyObject[]> {
    const dir = join(this.#root, KEYS_DIR);
    const names = (await unlessMissing(`list ${dir}`, readdir(dir), [] as string[]))
      .filter((n) => n.endsWith(".pub"))
      .sort();
    return Promise.all(names.map((n) => loadPublicKey(join(dir, n))));
  }
}

/**
 * In a disk image: the files of the booted slot's squashfs, read with
 * `unsquashfs -o <slot offset> -cat` (squashfs-tools), without mounting.
 */
export class SquashfsImageFiles implements ImageFiles {
  readonly #disk: string;
  readonly #offset: number;
  constructor(disk: string, slotOffset: number) {
    this.#disk = disk;
    this.#offset = slotOffset;
  }
  async release(): Promise<Release> {
    const where = `${this.#disk} (squashfs at byte ${this.#offset}) /${RELEASE_PATH}`;
    return parseRelease(
      await this.#cat(RELEASE_PATH).catch((cause) => releaseError(where, cause)),
      where,
    );
  }
  async trustedKeys(): Promise<KeyObject[]> {
    const files = (await this.#list(KEYS_DIR))
      .filter((l) => l.startsWith(`${KEYS_DIR}/`) && l.endsWith(".pub"))
      .sort();
    return this.keys(files);
  }
  /** Public keys at these in-image paths (absolute or relative to the root). */
  async keys(paths: readonly string[]): Promise<KeyObject[]> {
    const dir = await mkdtemp(join(tmpdir(), "abforge-keys-"));
    try {
      const keys: KeyObject[] = [];
      for (const [i, f] of paths.entries()) {
        const path = join(dir, `${i}.pub`);
        await writeFile(path, await this.#cat(f.replace(/^\/+/, "")));
        keys.push(await loadPublicKey(path));
      }
      return keys;
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }
  /** The text of an in-image file, or undefined when the image has none at that path. */
  async text(path: string): Promise<string | undefined> {
    const rel = path.replace(/^\/+/, "");
    if (!(await this.#list(rel)).includes(rel)) return undefined;
    return this.#cat(rel);
  }
  async #list(path: string): Promise<string[]> {
    const listing = await unsquashfs(["-o", String(this.#offset), "-lc", this.#disk, path]);
    return listing.split("\n").map((l) => l.trim().replace(/^squashfs-root\//, ""));
  }
  async #cat(path: string): Promise<string> {
    return unsquashfs(["-o", String(this.#offset), "-cat", this.#disk, path]);
  }
}

/**
 * Run a tool with stdin closed (src/exec.ts run() writes to the tool's
 * stdin, and a tool that exits before reading it makes that write fail
 * with EPIPE).
 */
async function tool(name: string, args: readonly string[]): Promise<string> {
  const bin = requireTool(name);
  try {
    const { stdout } = await execFileP(bin, args, {
      encoding: "utf8",
      maxBuffer: 16 * 1024 * 1024,
    });
    return stdout;
  } catch (cause) {
    const e = cause as { stderr?: string; code?: unknown };
    throw new ToolError(
      "TOOL_FAILED",
      `${name} ${args.join(" ")} failed: ${(e.stderr || errText(cause)).trim()}`,
      {
        cause,
        details: { tool: name, args, exitCode: e.code },
      },
    );
  }
}

const unsquashfs = (args: readonly string[]) => tool("unsquashfs", args);

function releaseError(where: string, cause: unknown): never {
  throw new UpdaterError(
    "CONFIG_INVALID",
    `cannot read the image identity ${where}: ${errText(cause)}`,
    {
      cause,
    },
  );
}
