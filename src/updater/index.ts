/** The update agent: the public face of src/updater (README.md states the procedures). */

export { type Clock, systemClock, type Timer } from "../clock.ts";
export {
  type AgentConfig,
  DEFAULT_CONFIG_PATH,
  DEFAULT_STATE_DIR,
  defaultConfig,
  type HealthCheckConfig,
  loadConfig,
  parseConfig,
  type RebootConfig,
  type Release,
  type SlotLocation,
} from "../image/index.ts";
export {
  type AfterBootResult,
  Agent,
  type AgentOptions,
  type BootDiskHandle,
  type CheckResult,
  REBOOT_REPORT_WAIT_MS,
} from "./agent.ts";
export { emptySlotNow, formatEmptySlot, readEmptySlot } from "./empty-slot.ts";
export { UpdaterError, type UpdaterErrorCode } from "./errors.ts";
export {
  AGENT_VERSION,
  type FleetHttp,
  FleetReporter,
  gotFleetHttp,
  type Hold,
  type HoldsResult,
  parseHolds,
  REPORT_QUEUE_MAX,
} from "./fleet.ts";
export {
  type HealthResult,
  type HealthRunner,
  ProcessHealthRunner,
  runConfiguredChecks,
  runHealthChecks,
} from "./health.ts";
export {
  type BootStore,
  type BundleSource,
  fileSource,
  type InstallContext,
  type InstallRequest,
  type InstallResult,
  installBundle,
  type StateHandle,
} from "./installer.ts";
export {
  type BootedSlotSource,
  type ByteRange,
  bootStateBootedSlot,
  CmdlineBootedSlot,
  CommandRebooter,
  type HostFacts,
  type HttpClient,
  type ImageFiles,
  LogOnlyRebooter,
  locateSlots,
  type Random,
  type Rebooter,
  RepoHttpClient,
  RootImageFiles,
  SquashfsImageFiles,
  systemHostFacts,
  systemRandom,
} from "./machine.ts";
export {
  type AfterBootDecision,
  backoffMs,
  decideAfterBoot,
  decideUpdate,
  installBlocker,
  pollDelayMs,
  type UpdateDecision,
} from "./policy.ts";
export { formatAfterBoot, formatCheck, formatStatus } from "./report.ts";
export {
  type AgentCliOptions,
  agentOptions,
  createAgent,
  diskStateDir,
  imageHostname,
  TEST_CLOCK_ENV,
} from "./setup.ts";
export {
  type AgentState,
  type EmptySlot,
  type FallbackRecord,
  type HeldRecord,
  type InstallProgress,
  initialAgentState,
  type PendingSlot,
  type RollbackRecord,
  type RolloutWait,
  STATE_SCHEMA_VERSION,
  StateStore,
  validateState,
} from "./state-file.ts";
export { type AgentStatus, type SlotStatus, statusOf } from "./status.ts";
