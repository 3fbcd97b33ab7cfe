/**
 * The boot state on a disk (README.md, "BootDisk"): GPT → ESP → `/GRUBENV`
 * in its FAT32, read and rewritten in place with one 1024-byte write whose
 * variables all sit in the first 512 bytes. Works on a disk image or a block
 * device. Also finds the running host's boot disk and booted slot.
 */
import { type FileHandle, open, readdir, readFile, realpath } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import {
  findPartition,
  type GptPartition,
  type GptTable,
  PARTITION_TYPES,
  partitionRange,
  readGpt,
} from "../disk/index.ts";
import { BaseError, ToolError } from "../errors.ts";
import { ioError, ioStepSync, readAtSync, unlessMissing } from "../fileio.ts";
import {
  BOOT_TOKEN_VAR,
  bootTokenFromCmdline,
  CMDLINE_KEYS,
  ESP_PARTITION_NAME,
  SLOT_PARTITION_PREFIX,
  slotFromCmdline,
  slotPartitionName,
} from "../image/index.ts";
import {
  ENV_BLOCK_SIZE,
  type EnvLine,
  envContentLength,
  parseEnvBlock,
  serializeEnvBlock,
  setEnvVar,
} from "./env.ts";
import { BootloaderError } from "./errors.ts";
import { type FatReadAt, fatFileExists, locateFatFile } from "./fat.ts";
import { SLOT_BOOT_FILES } from "./secureboot.ts";
import { type BootState, bootStateFromEnv, bootStateToEnv, type SlotName } from "./state.ts";

/** The 8.3 name of the environment block in the ESP's root directory. */
export const GRUBENV_NAME = "GRUBENV";
/** The boot state must fit in the first sector of the block (README.md, "Torn writes"). */
export const BOOT_STATE_MAX_BYTES = 512;

export interface ByteRange {
  offset: number;
  size: number;
}

export interface BootDiskOptions {
  /** Open read-only (`slots show`); writeState then fails. */
  readOnly?: boolean;
}

export class BootDisk {
  readonly path: string;
  readonly table: GptTable;
  /** The ESP partition's bytes on the disk. */
  readonly esp: ByteRange;
  /** `/GRUBENV`'s 1024 bytes on the disk. */
  readonly env: ByteRange;
  readonly #fh: FileHandle;
  readonly #readOnly: boolean;
  readonly #espWhere: string;

  private constructor(
    path: string,
    fh: FileHandle,
    table: GptTable,
    esp: ByteRange,
    env: ByteRange,
    readOnly: boolean,
  ) {
    this.path = path;
    this.#fh = fh;
    this.table = table;
    this.esp = esp;
    this.env = env;
    this.#readOnly = readOnly;
    const index = table.partitions.find(
      (p) => partitionRange(p, table.sectorSize).offset === esp.offset,
    )?.index;
    this.#espWhere = `ESP (partition ${index}) of ${path}`;
  }

  /** Reads the ESP's bytes, `offset` counted from its start (nothing past its end). */
  #espReadAt: FatReadAt = (offset, length) =>
    offset + length > this.esp.size
      ? new Uint8Array(0)
      : readExactSync(this.#fh, this.path, this.esp.offset + offset, length);

  /**
   * A Secure Boot disk (README.md, "Secure Boot"): its ESP holds a signed
   * boot file `/SLOTA` or `/SLOTB`, and GRUB boots a slot only by it.
   */
  isSecureBoot(): boolean {
    const o = { volumeBytes: this.esp.size, where: this.#espWhere };
    return Object.values(SLOT_BOOT_FILES).some((n) => fatFileExists(this.#espReadAt, n, o));
  }

  /**
   * Where slot `slot`'s boot file and its signature are on the disk, each
   * checked to be exactly `fileBytes` and `sigBytes` long (they are
   * rewritten in place): ESP_BAD naming the file otherwise.
   */
  slotBootFileRanges(
    slot: SlotName,
    fileBytes: number,
    sigBytes: number,
  ): { file: ByteRange; sig: ByteRange } {
    const at = (name: string, size: number): ByteRange => {
      const f = locateFatFile(this.#espReadAt, name, {
        size,
        volumeBytes: this.esp.size,
        where: this.#espWhere,
      });
      return { offset: this.esp.offset + f.offset, size };
    };
    const name = SLOT_BOOT_FILES[slot];
    return { file: at(name, fileBytes), sig: at(`${name}.SIG`, sigBytes) };
  }

  /**
   * Writes slot `slot`'s signed boot file and signature in place
   * (README.md, "Secure Boot", "Updates"), the signature first, then
   * fdatasync. Only for the slot GRUB does not try: the boot state is the
   * commit point, written after this.
   */
  async writeSlotBootFile(slot: SlotName, file: Uint8Array, sig: Uint8Array): Promise<void> {
    if (this.#readOnly) {
      throw new ToolError("IO_ERROR", `${this.path} was opened read-only`, {
        details: { path: this.path },
      });
    }
    const r = this.slotBootFileRanges(slot, file.length, sig.length);
    try {
      for (const [bytes, range] of [
        [sig, r.sig],
        [file, r.file],
      ] as const) {
        const { bytesWritten } = await this.#fh.write(bytes, 0, bytes.length, range.offset);
        if (bytesWritten !== bytes.length)
          throw new Error(`short write: ${bytesWritten} of ${bytes.length} bytes`);
      }
      await this.#fh.datasync();
    } catch (cause) {
      throw ioError(`write slot ${slot}'s boot file on ${this.path}`, cause, { path: this.path });
    }
  }

  /** Reads the GPT, finds the ESP and `/GRUBENV` in it (README.md, "BootDisk", steps 1-3). */
  static async open(path: string, options: BootDiskOptions = {}): Promise<BootDisk> {
    const readOnly = options.readOnly ?? false;
    const { table } = await readGpt(path);
    const espPartition = findEsp(table, path);
    const esp = partitionRange(espPartition, table.sectorSize);
    let fh: FileHandle;
    try {
      fh = await open(path, readOnly ? "r" : "r+");
    } catch (cause) {
      throw ioError(`open ${path}${readOnly ? "" : " for writing"}`, cause, { path });
    }
    try {
      const where = `ESP (partition ${espPartition.index}) of ${path}`;
      const readAt = (offset: number, length: number): Uint8Array => {
        if (offset + length > esp.size) return new Uint8Array(0);
        return readExactSync(fh, path, esp.offset + offset, length);
      };
      const file = locateFatFile(readAt, GRUBENV_NAME, {
        size: ENV_BLOCK_SIZE,
        volumeBytes: esp.size,
        where,
      });
      return new BootDisk(
        path,
        fh,
        table,
        esp,
        { offset: esp.offset + file.offset, size: ENV_BLOCK_SIZE },
        readOnly,
      );
    } catch (err) {
      await fh.close();
      throw err;
    }
  }

  /** The lines of the environment block as it is on the disk now. */
  async readEnv(): Promise<EnvLine[]> {
    const bytes = readExactSync(this.#fh, this.path, this.env.offset, ENV_BLOCK_SIZE);
    return parseEnvBlock(bytes, { source: `/${GRUBENV_NAME} on ${this.path}` });
  }

  async readState(): Promise<BootState> {
    const lines = await this.readEnv();
    const vars = new Map<string, string>();
    for (const l of lines) if (l.kind === "var") vars.set(l.name, l.value);
    try {
      return bootStateFromEnv(vars);
    } catch (err) {
      if (err instanceof BootloaderError) {
        throw new BootloaderError(err.code, `/${GRUBENV_NAME} on ${this.path}: ${err.message}`, {
          cause: err,
          details: err.details,
        });
      }
      throw err;
    }
  }

  /**
   * Writes the state (README.md, "BootDisk", step 4): the variables are set
   * in the block as it is (other variables keep their place), refused when
   * they would reach past the first 512 bytes, then the 1024 bytes are
   * written in place with one pwrite and fdatasync. With `bootToken`, the
   * same write sets `boot_token` too, as GRUB does at a boot (a kexec:
   * README.md, "Booting by kexec").
   */
  async writeState(s: BootState, o: { bootToken?: string } = {}): Promise<void> {
    if (this.#readOnly) {
      throw new ToolError("IO_ERROR", `${this.path} was opened read-only`, {
        details: { path: this.path },
      });
    }
    const vars = bootStateToEnv(s);
    let lines = await this.readEnv();
    for (const [name, value] of vars) lines = setEnvVar(lines, name, value);
    if (o.bootToken !== undefined) lines = setEnvVar(lines, BOOT_TOKEN_VAR, o.bootToken);
    const used = envContentLength(lines);
    if (used > BOOT_STATE_MAX_BYTES) {
      throw new BootloaderError(
        "ENV_TOO_LARGE",
        `/${GRUBENV_NAME} on ${this.path}: the boot state needs ${used} bytes, more than the first ${BOOT_STATE_MAX_BYTES} bytes of the block where a torn write cannot harm it`,
        { details: { usedBytes: used, maxBytes: BOOT_STATE_MAX_BYTES } },
      );
    }
    const bytes = serializeEnvBlock(lines);
    try {
      const { bytesWritten } = await this.#fh.write(bytes, 0, bytes.length, this.env.offset);
      if (bytesWritten !== bytes.length) {
        throw new Error(`short write: ${bytesWritten} of ${bytes.length} bytes`);
      }
      await this.#fh.datasync();
    } catch (cause) {
      throw ioError(`write the boot state at byte ${this.env.offset} of ${this.path}`, cause, {
        path: this.path,
      });
    }
  }

  /** The bytes of slot partition `abforge-A` / `abforge-B` on the disk. */
  slotRange(slot: SlotName): ByteRange {
    return partitionRange(
      findPartition(this.table, { name: slotPartitionName(slot) }),
      this.table.sectorSize,
    );
  }

  async close(): Promise<void> {
    await this.#fh.close();
  }
}

/** Opens the disk, runs `fn`, closes the disk. */
export async function withBootDisk<T>(
  path: string,
  fn: (d: BootDisk) => Promise<T>,
  options: BootDiskOptions = {},
): Promise<T> {
  const d = await BootDisk.open(path, options);
  try {
    return await fn(d);
  } finally {
    await d.close();
  }
}

function findEsp(table: GptTable, path: string): GptPartition {
  const byName = table.partitions.find((p) => p.name === ESP_PARTITION_NAME);
  if (byName) return byName;
  const byType = table.partitions.find((p) => p.typeGuid.toUpperCase() === PARTITION_TYPES.ESP);
  if (byType) return byType;
  throw new BootloaderError(
    "ESP_BAD",
    `${path}: no partition named "${ESP_PARTITION_NAME}" or of the EFI System Partition type`,
    { details: { path } },
  );
}

function readExactSync(fh: FileHandle, path: string, offset: number, length: number): Uint8Array {
  const buf = new Uint8Array(length);
  const done = ioStepSync(`read ${length} bytes at byte ${offset} of ${path}`, () =>
    readAtSync(fh.fd, buf, offset),
  );
  return done === length ? buf : buf.subarray(0, done);
}

// ---------------------------------------------------------------------------
// The running host (README.md, "The host's boot disk").

export { slotFromCmdline };

/** The slot this host booted, from `<root>/proc/cmdline`; null when not booted by abforge. */
export async function bootedSlot(root = "/"): Promise<SlotName | null> {
  const path = join(root, "proc/cmdline");
  const cmdline = await unlessMissing(`read ${path}`, readFile(path, "utf8"), undefined);
  return cmdline === undefined ? null : slotFromCmdline(cmdline);
}

/**
 * The host's boot disk (README.md, "The host's boot disk"): among the disks
 * with a partition named `abforge-A` (`<root>/sys/class/block/<part>/uevent`
 * PARTNAME=, the disk is the partition's parent in sysfs), the one whose
 * `/GRUBENV` holds `boot_token=` the `abforge.boottoken=` of
 * `<root>/proc/cmdline`: GRUB saved it on the disk it booted from, so a
 * byte-identical copy beside it is never taken. Without a token on the
 * command line (GRUB had no clock, or a disk from before tokens), the one
 * disk with such a partition. BOOT_DISK_NOT_FOUND when none or several.
 * Returns `<root>/dev/<name>`.
 */
export async function findHostBootDisk(root = "/"): Promise<string> {
  const classDir = join(root, "sys/class/block");
  let names: string[];
  try {
    names = await readdir(classDir);
  } catch (cause) {
    throw new BootloaderError("BOOT_DISK_NOT_FOUND", `cannot list ${classDir}: pass --disk`, {
      cause,
    });
  }
  const disks = new Set<string>();
  for (const name of names.sort()) {
    const uevent = await readFile(join(classDir, name, "uevent"), "utf8").catch(() => "");
    const props = parseUevent(uevent);
    if (props.get("PARTNAME") !== slotPartitionName("A")) continue;
    // /sys/class/block/vda2 -> .../block/vda/vda2: the parent is the disk.
    const real = await realpath(join(classDir, name)).catch(() => undefined);
    if (!real) continue;
    const parent = parseUevent(
      await readFile(join(dirname(real), "uevent"), "utf8").catch(() => ""),
    );
    disks.add(join(root, "dev", parent.get("DEVNAME") ?? basename(dirname(real))));
  }
  const candidates = [...disks];
  if (candidates.length === 0) {
    throw new BootloaderError(
      "BOOT_DISK_NOT_FOUND",
      `no disk has a partition named ${SLOT_PARTITION_PREFIX}A (looked in ${classDir}); pass --disk`,
      { details: { disks: [] } },
    );
  }
  const cmdlinePath = join(root, "proc/cmdline");
  const token = bootTokenFromCmdline(
    await unlessMissing(`read ${cmdlinePath}`, readFile(cmdlinePath, "utf8"), ""),
  );
  if (token === null) {
    if (candidates.length === 1) return candidates[0]!;
    throw new BootloaderError(
      "BOOT_DISK_NOT_FOUND",
      `several disks have a partition named ${SLOT_PARTITION_PREFIX}A (${candidates.join(", ")}) and ${cmdlinePath} has no ${CMDLINE_KEYS.bootToken}= to tell the boot disk; pass --disk`,
      { details: { disks: candidates } },
    );
  }
  const holding: string[] = [];
  const others: string[] = [];
  for (const path of candidates) {
    const held = await diskBootToken(path);
    if (held.token === token) holding.push(path);
    else
      others.push(
        `${path} ${held.token !== undefined ? `holds ${held.token}` : (held.why ?? `has no ${BOOT_TOKEN_VAR}`)}`,
      );
  }
  if (holding.length === 1) return holding[0]!;
  throw new BootloaderError(
    "BOOT_DISK_NOT_FOUND",
    holding.length === 0
      ? `no disk holds this boot's token ${token} (${CMDLINE_KEYS.bootToken}= in ${cmdlinePath}) in its /${GRUBENV_NAME}: ${others.join("; ")}; pass --disk`
      : `several disks hold this boot's token ${token} in their /${GRUBENV_NAME} (${holding.join(", ")}); pass --disk`,
    { details: { disks: candidates, token, holding } },
  );
}

/**
 * The `boot_token` in a disk's `/GRUBENV`; `why` not, when the disk is not
 * one BootDisk reads (typed errors only: a bug still surfaces).
 */
async function diskBootToken(path: string): Promise<{ token?: string; why?: string }> {
  try {
    return await withBootDisk(
      path,
      async (d) => {
        for (const l of await d.readEnv())
          if (l.kind === "var" && l.name === BOOT_TOKEN_VAR) return { token: l.value };
        return {};
      },
      { readOnly: true },
    );
  } catch (err) {
    if (err instanceof BaseError) return { why: `is unreadable as a boot disk (${err.message})` };
    throw err;
  }
}

/**
 * The disk the `slots` commands act on: `--disk` when given, else the
 * host's boot disk; `booted` is the host's booted slot (null with `--disk`).
 */
export async function openBootTarget(
  disk: string | undefined,
  options: BootDiskOptions & { root?: string } = {},
): Promise<{ disk: BootDisk; booted: SlotName | null }> {
  if (disk !== undefined) return { disk: await BootDisk.open(disk, options), booted: null };
  const path = await findHostBootDisk(options.root);
  return { disk: await BootDisk.open(path, options), booted: await bootedSlot(options.root) };
}

function parseUevent(text: string): Map<string, string> {
  const m = new Map<string, string>();
  for (const line of text.split("\n")) {
    const eq = line.indexOf("=");
    if (eq > 0) m.set(line.slice(0, eq), line.slice(eq + 1));
  }
  return m;
}
