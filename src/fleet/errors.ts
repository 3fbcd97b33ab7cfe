import { BaseError } from "../errors.ts";

/**
 * Errors of the fleet server and its client: a report that does not hold to
 * the schema, the token files, the database, serving, and the operator's
 * requests to a server. Exit codes 100-109 (src/cli/exit-codes.ts).
 */
export type FleetErrorCode =
  | "FLEET_BAD_REPORT"
  | "FLEET_TOKEN_EXISTS"
  | "FLEET_TOKEN_UNREADABLE"
  | "FLEET_BAD_DB_URL"
  | "FLEET_DB_FAILED"
  | "FLEET_DB_NEWER"
  | "FLEET_SERVE_FAILED"
  | "FLEET_REQUEST_FAILED"
  | "FLEET_UNAUTHORIZED"
  | "FLEET_NOT_FOUND";

export class FleetError extends BaseError<FleetErrorCode> {}
