import { BaseError } from "../errors.ts";

/**
 * - ENV_BAD_BLOCK: a GRUB environment block is not one we can read (size, header,
 *   a line without `=`, a value that runs off the end, bytes after the padding).
 * - ENV_TOO_LARGE: the variables do not fit (the block, or the first 512 bytes
 *   for the boot state).
 * - ENV_BAD_ENTRY: a variable name or `KEY=VALUE` argument GRUB cannot store.
 * - ENV_NOT_FOUND: the environment block file does not exist.
 * - BOOT_STATE_INVALID: the boot-state variables are missing or malformed.
 * - BOOT_REFUSED: a transition would lose the fallback slot, or its
 *   precondition does not hold.
 * - ESP_BAD: the ESP is not a FAT32 volume we can read, or `/GRUBENV` is
 *   missing, not 1024 bytes, or not contiguous.
 * - BOOT_DISK_NOT_FOUND: the running host's boot disk or booted slot could not
 *   be found.
 * - GRUB_BAD_CMDLINE: a kernel command line that GRUB script would misread.
 * - SECURE_BOOT_KEY_BAD: the Secure Boot key or certificate cannot be read,
 *   is encrypted, is not RSA, or the two do not match.
 */
export type BootloaderErrorCode =
  | "ENV_BAD_BLOCK"
  | "ENV_TOO_LARGE"
  | "ENV_BAD_ENTRY"
  | "ENV_NOT_FOUND"
  | "BOOT_STATE_INVALID"
  | "BOOT_REFUSED"
  | "ESP_BAD"
  | "BOOT_DISK_NOT_FOUND"
  | "GRUB_BAD_CMDLINE"
  | "SECURE_BOOT_KEY_BAD";

export class BootloaderError extends BaseError<BootloaderErrorCode> {}
