/**
 * The image contract (README.md): what the build writes into an image and the
 * bootloader, the initramfs and the agent read from it. Imports nothing of
 * ours but src/errors.ts, so every side can import it.
 */
export {
  type AgentConfig,
  BUILTIN_CHECKS,
  type BuiltinCheck,
  CONFIRM_POLICIES,
  type ConfirmPolicy,
  DEFAULT_CONFIG_PATH,
  DEFAULT_STATE_DIR,
  defaultConfig,
  type HealthCheckConfig,
  loadConfig,
  MACHINE_ID,
  parseConfig,
  type SlotLocation,
  serializeConfig,
} from "./agent-config.ts";
export {
  BOOT_TOKEN_PATTERN,
  BOOT_TOKEN_VAR,
  bootTokenFromCmdline,
  CMDLINE_KEYS,
  CMDLINE_PREFIX,
  type CmdlineKey,
  cmdlineValue,
  formatSlotVerity,
  parseSlotVerity,
  type SlotVerity,
  slotFromCmdline,
} from "./cmdline.ts";
export { ImageError, type ImageErrorCode } from "./errors.ts";
export {
  AGENT_CONFIG_PATH,
  AGENT_DIR,
  DEFAULT_GOOD_TRIES,
  ESP_PARTITION_NAME,
  isSlotName,
  KEYS_DIR,
  MAX_TRIES,
  otherSlot,
  RELEASE_PATH,
  SLOT_NAMES,
  SLOT_PARTITION_PREFIX,
  type SlotName,
  STATE_DIR,
  STATE_FS_LABEL,
  STATE_PARTITION_NAME,
  slotPartitionName,
} from "./layout.ts";
export {
  CHANNEL_NAME,
  CHANNEL_NAME_RULE,
  COMPATIBLE_NAME,
  COMPATIBLE_NAME_RULE,
  isChannelName,
  isCompatibleName,
  repoUrlProblem,
} from "./names.ts";
export {
  DEFAULT_LOCK_TTL_MS,
  defaultRebootConfig,
  type EtcdLockConfig,
  formatDuration,
  formatWindowStart,
  parseDuration,
  parseWindowStart,
  REBOOT_METHODS,
  REBOOT_STRATEGIES,
  type RebootConfig,
  type RebootMethod,
  type RebootStrategy,
  type RebootWindow,
  readRebootConfig,
  WEEKDAYS,
} from "./reboot.ts";
export { parseRelease, type Release, serializeRelease } from "./release.ts";
export {
  child,
  describe,
  formatIssues,
  get,
  type Issue,
  Issues,
  issueReport,
  type Loc,
  type MapNode,
  MIB,
  parseYaml,
  Reader,
  type ScalarNode,
  type SeqNode,
  sortIssues,
  stringifyYaml,
  type YNode,
} from "./yaml.ts";
