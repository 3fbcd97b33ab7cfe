import { BaseError } from "../src/errors.ts";

export type QemuErrorCode = "QEMU_FAILED" | "QEMU_TIMEOUT" | "QEMU_BAD_DISK";

export class QemuError extends BaseError<QemuErrorCode> {}
