import { BaseError } from "../errors.ts";

export type BundleErrorCode =
  | "BUNDLE_MALFORMED"
  | "BUNDLE_BAD_SIGNATURE"
  | "BUNDLE_UNTRUSTED_KEY"
  | "BUNDLE_BAD_HASH"
  | "BUNDLE_BAD_MANIFEST"
  | "KEY_BAD"
  | "KEY_EXISTS";

export class BundleError extends BaseError<BundleErrorCode> {}
