import { BaseError } from "../errors.ts";

export type BuildErrorCode =
  | "SPEC_INVALID"
  | "SPEC_NOT_FOUND"
  | "LAYER_UNSAFE"
  | "LAYER_FAILED"
  | "ROOTFS_HOST_STATE"
  | "KERNEL_NOT_FOUND"
  | "BUILD_FAILED"
  | "MODULE_NOT_FOUND"
  | "CPIO_BAD_ENTRY"
  | "PARTITION_TOO_SMALL"
  | "BUILD_INTERRUPTED";

export class BuildError extends BaseError<BuildErrorCode> {}
