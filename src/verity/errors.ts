import { BaseError } from "../errors.ts";

export type VerityErrorCode =
  | "VERITY_BAD_PARAMS"
  | "VERITY_UNALIGNED_DATA"
  | "VERITY_BAD_SUPERBLOCK"
  | "VERITY_MISMATCH";

export class VerityError extends BaseError<VerityErrorCode> {}
