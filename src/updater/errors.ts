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
  | "HEALTH_CHECK_FAILED";

export class UpdaterError extends BaseError<UpdaterErrorCode> {}
