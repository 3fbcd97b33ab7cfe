/**
 * The one table from error code to process exit code (STYLE.md, point 4).
 * It is typed as a Record over every module's code union, so a new code
 * without an exit code does not compile. Ranges:
 *   0 ok · 1 unexpected (a bug) · 2 usage (commander)
 *   3-9 tools and I/O · 10-19 build/spec · 20-29 verity · 30-39 disk
 *   40-49 bootloader · 50-59 bundle · 60-69 repo · 70-89 updater · 90-99 qemu
 *   100-109 fleet
 * Each module's owner adds its rows in its own section only.
 */
import type { QemuErrorCode } from "../../qemu/errors.ts";
import type { BootloaderErrorCode } from "../bootloader/errors.ts";
import type { BuildErrorCode } from "../build/errors.ts";
import type { BundleErrorCode } from "../bundle/errors.ts";
import type { GptErrorCode } from "../disk/errors.ts";
import type { ToolErrorCode } from "../errors.ts";
import type { FleetErrorCode } from "../fleet/errors.ts";
import type { ImageErrorCode } from "../image/errors.ts";
import type { LockErrorCode } from "../lock/errors.ts";
import type { RepoErrorCode } from "../repo/errors.ts";
import type { UpdaterErrorCode } from "../updater/errors.ts";
import type { VerityErrorCode } from "../verity/errors.ts";

export type ErrorCode =
  | ToolErrorCode
  | BuildErrorCode
  | VerityErrorCode
  | GptErrorCode
  | BootloaderErrorCode
  | BundleErrorCode
  | RepoErrorCode
  | UpdaterErrorCode
  | LockErrorCode
  | ImageErrorCode
  | QemuErrorCode
  | FleetErrorCode;

export const EXIT_OK = 0;
export const EXIT_UNEXPECTED = 1;
export const EXIT_USAGE = 2;

export const EXIT_CODES: Record<ErrorCode, number> = {
  // tools and I/O
  TOOL_MISSING: 3,
  TOOL_FAILED: 4,
  IO_ERROR: 5,
  DISK_FULL: 6,
  // build
  SPEC_INVALID: 10,
  SPEC_NOT_FOUND: 11,
  LAYER_UNSAFE: 12,
  LAYER_FAILED: 13,
  KERNEL_NOT_FOUND: 14,
  BUILD_FAILED: 15,
  MODULE_NOT_FOUND: 16,
  CPIO_BAD_ENTRY: 17,
  PARTITION_TOO_SMALL: 18,
  BUILD_INTERRUPTED: 19,
  ROOTFS_HOST_STATE: 24,
  // verity
  VERITY_BAD_PARAMS: 20,
  VERITY_UNALIGNED_DATA: 21,
  VERITY_BAD_SUPERBLOCK: 22,
  VERITY_MISMATCH: 23,
  // disk
  GPT_BAD_INPUT: 30,
  GPT_CORRUPT: 31,
  GPT_NO_SPACE: 32,
  GPT_NOT_FOUND: 33,
  GPT_MISSING: 34,
  GPT_GROW_REFUSED: 35,
  // bootloader
  ENV_BAD_BLOCK: 40,
  ENV_TOO_LARGE: 41,
  ENV_BAD_ENTRY: 42,
  BOOT_STATE_INVALID: 43,
  BOOT_REFUSED: 44,
  ESP_BAD: 45,
  ENV_NOT_FOUND: 46,
  BOOT_DISK_NOT_FOUND: 47,
  GRUB_BAD_CMDLINE: 48,
  SECURE_BOOT_KEY_BAD: 49,
  // bundle
  BUNDLE_MALFORMED: 50,
  BUNDLE_BAD_SIGNATURE: 51,
  BUNDLE_UNTRUSTED_KEY: 52,
  BUNDLE_BAD_HASH: 53,
  BUNDLE_BAD_MANIFEST: 54,
  KEY_BAD: 55,
  KEY_EXISTS: 56,
  BUNDLE_TOO_LARGE: 57,
  BUNDLE_TRUNCATED: 58,
  BUNDLE_BAD_VERITY: 59,
  // repo
  REPO_BAD_INDEX: 60,
  REPO_INDEX_EXPIRED: 61,
  REPO_INDEX_REPLAYED: 62,
  REPO_SERVE_FAILED: 64,
  REPO_DOWNLOAD_FAILED: 65,
  REPO_TOO_LARGE: 66,
  REPO_STALLED: 67,
  REPO_UNTRUSTED: 68,
  REPO_PUBLISH_REFUSED: 69,
  // updater
  // (also the image contract's: a config or release file in the image that does not hold)
  CONFIG_INVALID: 70,
  UPDATE_DOWNGRADE: 71,
  UPDATE_BAD_VERSION: 72,
  UPDATE_INCOMPATIBLE: 73,
  UPDATE_TOO_LARGE: 74,
  UPDATE_DOWNLOAD_FAILED: 75,
  UPDATE_VERIFY_FAILED: 76,
  UPDATE_REFUSED: 77,
  STATE_CORRUPT: 78,
  HEALTH_CHECK_FAILED: 79,
  UPDATE_ABORTED: 80,
  HOST_DISK_NOT_FOUND: 81,
  STATE_SCHEMA_NEWER: 82,
  UPDATE_INDEX_MISMATCH: 83,
  // the reboot lock (src/lock), which the agent takes before it reboots
  REBOOT_LOCK_UNREACHABLE: 84,
  REBOOT_LOCK_BAD_VALUE: 85,
  REBOOT_LOCK_CONFLICT: 86,
  REBOOT_WAITING: 87,
  STATE_UNAVAILABLE: 88,
  LOCK_FAILED: 89,
  // qemu
  QEMU_FAILED: 90,
  QEMU_TIMEOUT: 91,
  QEMU_BAD_DISK: 92,
  QEMU_BAD_SEED: 93,
  QEMU_BAD_FORWARD: 94,
  // fleet
  FLEET_BAD_REPORT: 100,
  FLEET_TOKEN_EXISTS: 101,
  FLEET_TOKEN_UNREADABLE: 102,
  FLEET_BAD_DB_URL: 103,
  FLEET_DB_FAILED: 104,
  FLEET_DB_NEWER: 105,
  FLEET_SERVE_FAILED: 106,
  FLEET_REQUEST_FAILED: 107,
  FLEET_UNAUTHORIZED: 108,
  FLEET_NOT_FOUND: 109,
};

export function exitCodeFor(code: string): number {
  return (EXIT_CODES as Record<string, number>)[code] ?? EXIT_UNEXPECTED;
}
