import { BaseError } from "../src/errors.ts";

export type QemuErrorCode =
  | "QEMU_FAILED"
  | "QEMU_TIMEOUT"
  | "QEMU_BAD_DISK"
  | "QEMU_BAD_SEED"
  | "QEMU_BAD_FORWARD";

export class QemuError extends BaseError<QemuErrorCode> {}
