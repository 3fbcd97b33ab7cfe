/**
 * Errors of the reboot lock (src/lock/README.md, "Failures"). Each code maps
 * to an exit code in src/cli/exit-codes.ts (updater range, 84-86). Messages
 * name the etcd endpoint(s) and the key; TLS file contents never appear.
 */
import { BaseError } from "../errors.ts";

export type LockErrorCode =
  /** No endpoint served the request: refused, timed out, not etcd, TLS failed, or etcd said no. */
  | "REBOOT_LOCK_UNREACHABLE"
  /** The semaphore key holds something that is not a locksmith semaphore; never overwritten by acquire. */
  | "REBOOT_LOCK_BAD_VALUE"
  /** Compare-and-swap lost too many times in a row to other hosts. */
  | "REBOOT_LOCK_CONFLICT";

export class LockError extends BaseError<LockErrorCode> {}
