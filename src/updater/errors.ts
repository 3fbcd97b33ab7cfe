/**
 * Errors of the update agent (src/updater/README.md). Each code maps to an
 * exit code in src/cli/exit-codes.ts (range 70-89). "Nothing to do" (equal
 * version) is not an error: it is a result of `check`.
 */
import { BaseError } from "../errors.ts";

export type UpdaterErrorCode =
  | "CONFIG_INVALID"
  | "UPDATE_DOWNGRADE"
  | "UPDATE_BAD_VERSION"
  | "UPDATE_INCOMPATIBLE"
  | "UPDATE_TOO_LARGE"
  | "UPDATE_DOWNLOAD_FAILED"
  | "UPDATE_VERIFY_FAILED"
  | "UPDATE_REFUSED"
  | "STATE_CORRUPT"
  | "STATE_SCHEMA_NEWER"
  | "HEALTH_CHECK_FAILED"
  | "UPDATE_ABORTED"
  | "HOST_DISK_NOT_FOUND"
  | "STATE_UNAVAILABLE"
  | "LOCK_FAILED"
  /** A validly signed bundle that is not the one the signed channel index names. */
  | "UPDATE_INDEX_MISMATCH"
  | "REBOOT_WAITING";

export class UpdaterError extends BaseError<UpdaterErrorCode> {}

/** The message of an error, or the thing thrown as text. */
export function errText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
