import { BaseError } from "../errors.ts";

export type RepoErrorCode =
  | "REPO_BAD_INDEX"
  | "REPO_INDEX_EXPIRED"
  | "REPO_INDEX_REPLAYED"
  | "REPO_PUBLISH_FAILED"
  | "REPO_SERVE_FAILED";

export class RepoError extends BaseError<RepoErrorCode> {}
