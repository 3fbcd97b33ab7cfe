/**
 * The kernel command line GRUB writes and the initramfs and the agent read
 * (README.md, "Kernel command line"), and the text form of a slot's verity
 * parameters (GRUB's `X_verity`, the value of `abforge.verity=`).
 */
import { isSlotName, type SlotName } from "./layout.ts";

/** Every `abforge.*` key, by what it carries. GRUB sets them all; a spec may set none. */
export const CMDLINE_KEYS = {
  /** The slot booted: A or B. */
  slot: "abforge.slot",
  /** The slot's dm-verity root hash (lowercase hex). */
  rootHash: "abforge.roothash",
  /** The slot's verity parameters, `<dataBlocks>:<hashStartBlock>:<saltHex>`. */
  verity: "abforge.verity",
  /** The version of the image in the slot (for the log). */
  version: "abforge.version",
  /**
   * This boot's token (README.md, "Boot token"): GRUB saved the same value as
   * `boot_token` in the environment block of the disk it booted from, so the
   * initramfs and the agent tell that disk from a byte-identical copy. Empty
   * when GRUB had no clock or could not save it.
   */
  bootToken: "abforge.boottoken",
} as const;

/** The GRUB environment variable that holds the boot token on the booted disk's ESP. */
export const BOOT_TOKEN_VAR = "boot_token";

/** A boot token as GRUB writes it: the firmware clock's time, `YYYYMMDDhhmmss`. */
export const BOOT_TOKEN_PATTERN = /^[0-9]{14}$/;

/** The boot token on a kernel command line; null without a well-formed one. */
export function bootTokenFromCmdline(cmdline: string): string | null {
  const v = cmdlineValue(cmdline, CMDLINE_KEYS.bootToken);
  return v !== undefined && BOOT_TOKEN_PATTERN.test(v) ? v : null;
}

export type CmdlineKey = (typeof CMDLINE_KEYS)[keyof typeof CMDLINE_KEYS];

/** Every key starts with this; a spec's `kernel.cmdline` may not set one. */
export const CMDLINE_PREFIX = "abforge.";

/** The value of `key=` on a kernel command line; undefined without one (the first one counts). */
export function cmdlineValue(cmdline: string, key: CmdlineKey): string | undefined {
  for (const word of cmdline.trim().split(/\s+/)) {
    if (word.startsWith(`${key}=`)) return word.slice(key.length + 1);
  }
  return undefined;
}

/** The slot named by `abforge.slot=` on a kernel command line; null without a valid one. */
export function slotFromCmdline(cmdline: string): SlotName | null {
  const v = cmdlineValue(cmdline, CMDLINE_KEYS.slot);
  return v !== undefined && isSlotName(v) ? v : null;
}

/** A slot's verity parameters (the tree is in the slot, after the data). */
export interface SlotVerity {
  dataBlocks: number;
  hashStartBlock: number;
  /** Lowercase hex, possibly empty. */
  salt: string;
}

/** `<dataBlocks>:<hashStartBlock>:<saltHex>`. */
export function formatSlotVerity(v: SlotVerity): string {
  return `${v.dataBlocks}:${v.hashStartBlock}:${v.salt}`;
}

/** Parses a `formatSlotVerity` value; undefined when it is not one. */
export function parseSlotVerity(value: string): SlotVerity | undefined {
  const m = /^([1-9][0-9]*):([1-9][0-9]*):((?:[0-9a-f]{2})*)$/.exec(value);
  if (!m) return undefined;
  const dataBlocks = Number(m[1]);
  const hashStartBlock = Number(m[2]);
  if (!Number.isSafeInteger(dataBlocks) || !Number.isSafeInteger(hashStartBlock)) return undefined;
  return { dataBlocks, hashStartBlock, salt: m[3]! };
}
