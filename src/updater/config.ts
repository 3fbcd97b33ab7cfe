/**
 * The agent config moved to the image contract (src/image/agent-config.ts);
 * this keeps the updater's old imports working while the other branches land.
 */
export {
  type AgentConfig,
  DEFAULT_CONFIG_PATH,
  DEFAULT_STATE_DIR,
  defaultConfig,
  type HealthCheckConfig,
  loadConfig,
  parseConfig,
  type RebootPolicy,
  type SlotLocation,
  type SlotName,
} from "../image/index.ts";
export { errText } from "./errors.ts";
