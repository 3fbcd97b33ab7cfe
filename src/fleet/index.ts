/** The fleet server: report schema, storage (node:sqlite, PostgreSQL), HTTP API, holds, dashboard. */
export {
  type FleetClientOptions,
  fleetHosts,
  fleetPause,
  fleetResume,
  fleetSummary,
} from "./client.ts";
export {
  type DbTarget,
  type Dialect,
  openPostgres,
  openSql,
  openSqlite,
  parseDbUrl,
  type Sql,
} from "./db.ts";
export { FleetError, type FleetErrorCode } from "./errors.ts";
export { MIGRATIONS, migrate } from "./migrations.ts";
export { DEFAULT_RATE, RateLimiter, type RateOptions } from "./rate.ts";
export {
  decodeReport,
  type FieldProblem,
  REPORT_EVENTS,
  REPORT_FORMAT,
  REPORT_MAX_BYTES,
  type Report,
  type ReportEvent,
  reportProblems,
  SLOT_STATES,
  validateReport,
} from "./report.ts";
export {
  type FleetServer,
  type FleetServerOptions,
  parseHaltAfter,
  type ServeFleetOptions,
  serveFleet,
  startFleetServer,
} from "./server.ts";
export {
  EVENTS_PER_HOST,
  FleetStore,
  type HaltPolicy,
  type Hold,
  type Host,
  type HostFilter,
  type RolloutSeries,
  STATE_LIMITS_MS,
  type Summary,
  type TimelineEvent,
} from "./store.ts";
export {
  ENROLL_TOKEN_FILE,
  initTokens,
  OPERATOR_TOKEN_FILE,
  readToken,
  tokenMatches,
} from "./tokens.ts";
