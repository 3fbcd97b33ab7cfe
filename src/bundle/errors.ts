import { BaseError } from "../errors.ts";

/**
 * What can be wrong with a bundle or a signing key. Each code has its own
 * exit code (src/cli/exit-codes.ts), so a script can tell a tampered bundle
 * (BAD_HASH) from one signed by a key it does not trust (UNTRUSTED_KEY) or
 * a download that stopped early (TRUNCATED, worth resuming).
 */
export type BundleErrorCode =
  /** Not a bundle of our layout: bad tar header, entry order, names, sizes, padding, extra data. */
  | "BUNDLE_MALFORMED"
  /** manifest.sig missing, not 64 bytes, or not a valid signature of manifest.json by a trusted key. */
  | "BUNDLE_BAD_SIGNATURE"
  /** The manifest names a signing key that is not among the trusted keys. */
  | "BUNDLE_UNTRUSTED_KEY"
  /** A slot image chunk, or the whole slot image, does not match its signed sha256. */
  | "BUNDLE_BAD_HASH"
  /** manifest.json is not a valid manifest (every invalid field is listed). */
  | "BUNDLE_BAD_MANIFEST"
  /** The slot image (or manifest.json) is larger than the reader's limit. */
  | "BUNDLE_TOO_LARGE"
  /** The bundle ends before its layout says it should. */
  | "BUNDLE_TRUNCATED"
  /** The slot image's dm-verity tree does not match the manifest's root hash and parameters. */
  | "BUNDLE_BAD_VERITY"
  /** A key file that is missing, unreadable or not an ed25519 key of the expected kind. */
  | "KEY_BAD"
  /** keygen refuses to overwrite an existing key file. */
  | "KEY_EXISTS";

export class BundleError extends BaseError<BundleErrorCode> {}
