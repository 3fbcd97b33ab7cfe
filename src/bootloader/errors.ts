import { BaseError } from "../errors.ts";

export type BootloaderErrorCode =
  | "ENV_BAD_BLOCK"
  | "ENV_TOO_LARGE"
  | "ENV_BAD_ENTRY"
  | "BOOT_STATE_INVALID"
  | "BOOT_REFUSED"
  | "ESP_BAD";

export class BootloaderError extends BaseError<BootloaderErrorCode> {}
