import { BaseError } from "../errors.ts";

/**
 * Errors of the update repository: the channel index (its fields, signature,
 * expiry, serial), publishing, serving, and the agent's HTTP client.
 */
export type RepoErrorCode =
  | "REPO_BAD_INDEX"
  | "REPO_INDEX_EXPIRED"
  | "REPO_INDEX_REPLAYED"
  | "REPO_SERVE_FAILED"
  | "REPO_DOWNLOAD_FAILED"
  | "REPO_TOO_LARGE"
  | "REPO_STALLED"
  | "REPO_UNTRUSTED"
  | "REPO_PUBLISH_REFUSED";

export class RepoError extends BaseError<RepoErrorCode> {}
