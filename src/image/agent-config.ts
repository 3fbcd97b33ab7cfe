/**
 * The agent's configuration, `/etc/abforge/agent.yaml` (README.md, "Agent
 * config"): one type that the build serializes into the image and the agent
 * parses. Validated once, at load, by the located-YAML readers the spec uses
 * too (yaml.ts): every bad field is collected and reported with its line and
 * column, then one CONFIG_INVALID is thrown. Units are in the names.
 */
import { readFile } from "node:fs/promises";
import { resolve } from "node:path";
import { isDeepStrictEqual } from "node:util";
import { ImageError } from "./errors.ts";
import { AGENT_CONFIG_PATH, MAX_TRIES, SLOT_NAMES, type SlotName, STATE_DIR } from "./layout.ts";
import {
  CHANNEL_NAME,
  CHANNEL_NAME_RULE,
  COMPATIBLE_NAME,
  COMPATIBLE_NAME_RULE,
  repoUrlProblem,
} from "./names.ts";
import {
  defaultRebootConfig,
  type RebootConfig,
  readRebootConfig,
  rebootConfigYaml,
} from "./reboot.ts";
import {
  describe,
  get,
  Issues,
  issueReport,
  type MapNode,
  parseYaml,
  Reader,
  sortIssues,
  stringifyYaml,
  type YNode,
} from "./yaml.ts";

/**
 * When the agent confirms a boot of a good slot (src/bootloader `X_boots`):
 * `started` — as soon as it runs; `healthy` — once the health checks pass.
 */
export type ConfirmPolicy = "started" | "healthy";
export const CONFIRM_POLICIES: readonly ConfirmPolicy[] = ["started", "healthy"];

/**
 * Checks the agent carries out itself, beside `healthChecks`:
 * `no-failed-units` — systemd lists no failed unit and its state is
 * `running` (or `starting`, while the boot transaction that runs the
 * check is still going); src/updater "Built-in checks".
 */
export type BuiltinCheck = "no-failed-units";
export const BUILTIN_CHECKS: readonly BuiltinCheck[] = ["no-failed-units"];

export interface HealthCheckConfig {
  /** For logs; default `check-<n>`. */
  name: string;
  /** argv, run without a shell; a string in the YAML means `/bin/sh -c STRING`. */
  command: string[];
  timeoutMs: number;
}

/** Where a slot lives on the boot disk; by default the partition named `abforge-<slot>`. */
export interface SlotLocation {
  partitionLabel?: string;
  partitionIndex?: number;
}

export interface AgentConfig {
  /** Base URL of the update repository; the index is `<repoUrl>/channels/<channel>.json`. */
  repoUrl: string | null;
  channel: string;
  pollIntervalMs: number;
  pollJitterMs: number;
  /** Paths of trusted ed25519 public keys (several: key rotation). */
  trustedKeys: string[];
  /** Boot tries a newly installed slot gets (GRUB `X_tries`, 1-9). */
  tries: number;
  /** When and how an installed update is rebooted into (reboot.ts; `auto`/`manual` are shorthands). */
  reboot: RebootConfig;
  rebootCommand: string[];
  /** This host's name in the reboot lock and in reports; null: /etc/machine-id. */
  machineId: string | null;
  healthChecks: HealthCheckConfig[];
  /** Built-in checks run after `healthChecks`, with the same consequences. */
  builtinChecks: BuiltinCheck[];
  /** When a boot of a good slot counts as confirmed (GRUB falls back after too many unconfirmed ones). */
  confirm: ConfirmPolicy;
  stateDir: string;
  /** Boot disk (file or block device); null = discover it. */
  disk: string | null;
  /** Compatible string of this host; null = from /etc/abforge/release.json. */
  compatible: string | null;
  slots: Partial<Record<SlotName, SlotLocation>>;
  /** A download that delivers no byte for this long is aborted (and resumed later). */
  downloadStallTimeoutMs: number;
  /** Upper bound of the channel index size. */
  maxIndexBytes: number;
  /** Back-off after a failed poll grows from pollIntervalMs/8 up to this. */
  maxBackoffMs: number;
  /** The fleet server the agent reports to and reads holds from; null: none. */
  report: ReportConfig | null;
}

/**
 * What an agent does when the fleet server's hold document cannot be read
 * (src/updater README.md, "Holds"): `go` installs as if no hold were set,
 * `wait` installs nothing until it can be read.
 */
export type HoldUnreachablePolicy = "go" | "wait";
export const HOLD_UNREACHABLE_POLICIES: readonly HoldUnreachablePolicy[] = ["go", "wait"];

/** `report:` (src/fleet): the fleet server and the enrollment token, inline or in a file. */
export interface ReportConfig {
  /** Base URL of the fleet server; the API is under `<url>/v1/`. */
  url: string;
  /** The enrollment token itself (a config on the host, never one in an image). */
  token: string | null;
  /** Or an absolute path to a file holding it (one line). */
  tokenFile: string | null;
  onUnreachable: HoldUnreachablePolicy;
}

/** A bearer token: 1-512 printable ASCII characters, no space. */
export const REPORT_TOKEN = /^[\x21-\x7e]{1,512}$/;

export const DEFAULT_CONFIG_PATH = AGENT_CONFIG_PATH;
export const DEFAULT_STATE_DIR = STATE_DIR;

export function defaultConfig(): AgentConfig {
  return {
    repoUrl: null,
    channel: "stable",
    pollIntervalMs: 3_600_000,
    pollJitterMs: 300_000,
    trustedKeys: [],
    tries: 3,
    reboot: defaultRebootConfig(),
    rebootCommand: ["reboot"],
    machineId: null,
    healthChecks: [],
    builtinChecks: [],
    confirm: "started",
    stateDir: DEFAULT_STATE_DIR,
    disk: null,
    compatible: null,
    slots: {},
    downloadStallTimeoutMs: 30_000,
    maxIndexBytes: 1_048_576,
    maxBackoffMs: 3_600_000,
    report: null,
  };
}

/** A machine id: what /etc/machine-id holds (32 hex digits) or any name of that alphabet. */
export const MACHINE_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
const MACHINE_ID_RULE =
  "a machine id: 1-64 letters, digits, '.', '_' or '-', the first a letter or digit";

const KNOWN_FIELDS = Object.keys(defaultConfig()) as (keyof AgentConfig)[];
const HEALTH_CHECK_FIELDS = ["name", "command", "timeoutMs"];
const SLOT_FIELDS = ["partitionLabel", "partitionIndex"];
const REPORT_FIELDS = ["url", "token", "tokenFile", "onUnreachable"];

/**
 * Parse and validate the YAML text of a config; `source` names it in errors.
 * Every problem is reported at once, in the form the spec's are
 * (yaml.ts): `SOURCE:LINE:COL: FIELD: problem`.
 */
export function parseConfig(text: string, source: string): AgentConfig {
  const issues = new Issues();
  const config = defaultConfig();
  const tree = parseYaml(text, source, issues);
  // An empty file (or one of comments only) is the defaults.
  if (tree && !(tree.kind === "scalar" && tree.value === null)) {
    if (tree.kind === "map") readFields(new Reader(issues), tree, config);
    else issues.add(tree.loc, "(config)", `must be a mapping of fields (got ${describe(tree)})`);
  }
  if (issues.list.length > 0) {
    throw new ImageError("CONFIG_INVALID", issueReport(`config ${source}`, issues.list), {
      details: { source, issues: sortIssues(issues.list) },
    });
  }
  return config;
}

function readFields(r: Reader, root: MapNode, config: AgentConfig): void {
  const m = r.map(root, "", KNOWN_FIELDS, [], root.loc)!;
  const set = <K extends keyof AgentConfig>(key: K, value: AgentConfig[K] | undefined) => {
    if (value !== undefined) config[key] = value;
  };
  set("repoUrl", r.url(get(m, "repoUrl"), "repoUrl", repoUrlProblem));
  set("channel", r.string(get(m, "channel"), "channel", CHANNEL_NAME, CHANNEL_NAME_RULE));
  for (const key of [
    "pollIntervalMs",
    "downloadStallTimeoutMs",
    "maxIndexBytes",
    "maxBackoffMs",
  ] as const) {
    set(key, r.integer(get(m, key), key, 1));
  }
  set("pollJitterMs", r.integer(get(m, "pollJitterMs"), "pollJitterMs", 0));
  // A slot's tries live in a one-digit GRUB variable (layout.ts MAX_TRIES).
  set("tries", r.integer(get(m, "tries"), "tries", 1, MAX_TRIES));
  set("reboot", readRebootConfig(r, get(m, "reboot"), "reboot", root.loc));
  set("machineId", r.string(get(m, "machineId"), "machineId", MACHINE_ID, MACHINE_ID_RULE));
  set("confirm", r.enum(get(m, "confirm"), "confirm", CONFIRM_POLICIES));
  set("rebootCommand", command(r, get(m, "rebootCommand"), "rebootCommand"));
  const keysNode = get(m, "trustedKeys");
  const keys = r.strings(keysNode, "trustedKeys");
  if (keys && keysNode?.kind === "seq") {
    const filled = keys.map((k, i) => nonEmpty(r, k, keysNode.items[i]!, `trustedKeys[${i}]`));
    if (keys.length === 0) r.issues.add(keysNode.loc, "trustedKeys", "must list at least one key");
    else if (filled.every(Boolean)) config.trustedKeys = keys;
  }
  for (const key of ["stateDir", "disk"] as const) {
    set(key, r.string(get(m, key), key, /^\//, "an absolute path"));
  }
  set(
    "compatible",
    r.string(get(m, "compatible"), "compatible", COMPATIBLE_NAME, COMPATIBLE_NAME_RULE),
  );
  const checks = r.list(get(m, "healthChecks"), "healthChecks");
  if (checks) {
    const parsed = checks.map((n, i) => healthCheck(r, n, i));
    if (parsed.every((c) => c !== undefined)) config.healthChecks = parsed;
  }
  const builtinNode = get(m, "builtinChecks");
  const builtins = r.list(builtinNode, "builtinChecks");
  if (builtins) {
    const parsed = builtins.map((n, i) => r.enum(n, `builtinChecks[${i}]`, BUILTIN_CHECKS));
    if (parsed.every((c) => c !== undefined)) config.builtinChecks = [...new Set(parsed)];
  }
  const slots = get(m, "slots");
  if (slots) {
    const s = r.map(slots, "slots", SLOT_NAMES, [], slots.loc);
    for (const name of SLOT_NAMES) {
      const location = slotLocation(r, get(s, name), `slots.${name}`);
      if (location) config.slots[name] = location;
    }
  }
  const reportNode = get(m, "report");
  if (reportNode) set("report", readReport(r, reportNode));
  // Jitter is checked against the interval once both are valid numbers.
  const jitterNode = get(m, "pollJitterMs") ?? get(m, "pollIntervalMs");
  const timing = r.issues.list.some(
    (i) => i.field === "pollJitterMs" || i.field === "pollIntervalMs",
  );
  if (!timing && config.pollJitterMs >= config.pollIntervalMs) {
    r.issues.add(
      jitterNode?.loc ?? root.loc,
      "pollJitterMs",
      `must be smaller than pollIntervalMs (${config.pollIntervalMs})`,
    );
  }
}

/** `report: {url, token | tokenFile, onUnreachable?}`; undefined when anything is wrong. */
function readReport(r: Reader, n: YNode): ReportConfig | undefined {
  const m = r.map(n, "report", REPORT_FIELDS, ["url"], n.loc);
  if (!m) return undefined;
  const before = r.issues.list.length;
  const url = r.url(get(m, "url"), "report.url", repoUrlProblem);
  const tokenNode = get(m, "token");
  const token = r.string(
    tokenNode,
    "report.token",
    REPORT_TOKEN,
    "a token: 1-512 printable characters, no space",
  );
  const tokenFile = r.string(
    get(m, "tokenFile"),
    "report.tokenFile",
    /^\//,
    "an absolute path on the host",
  );
  if (get(m, "token") && get(m, "tokenFile"))
    r.issues.add(m.loc, "report.token", "set one of token and tokenFile, not both");
  else if (!get(m, "token") && !get(m, "tokenFile"))
    r.issues.add(
      m.loc,
      "report.token",
      "is required: set token or tokenFile (the fleet's enroll.token)",
    );
  const policy = r.enum(get(m, "onUnreachable"), "report.onUnreachable", HOLD_UNREACHABLE_POLICIES);
  if (r.issues.list.length > before || url === undefined) return undefined;
  return { url, token: token ?? null, tokenFile: tokenFile ?? null, onUnreachable: policy ?? "go" };
}

function healthCheck(r: Reader, n: YNode, index: number): HealthCheckConfig | undefined {
  const field = `healthChecks[${index}]`;
  const m = r.map(n, field, HEALTH_CHECK_FIELDS, ["command", "timeoutMs"], n.loc);
  if (!m) return undefined;
  const nameNode = get(m, "name");
  const name = r.string(nameNode, `${field}.name`);
  const argv = command(r, get(m, "command"), `${field}.command`);
  const timeoutMs = r.integer(get(m, "timeoutMs"), `${field}.timeoutMs`, 1);
  if (nameNode && (name === undefined || !nonEmpty(r, name, nameNode, `${field}.name`)))
    return undefined;
  if (!argv || timeoutMs === undefined) return undefined;
  return { name: name ?? `check-${index + 1}`, command: argv, timeoutMs };
}

function slotLocation(r: Reader, n: YNode | undefined, field: string): SlotLocation | undefined {
  if (!n) return undefined;
  const m = r.map(n, field, SLOT_FIELDS, [], n.loc);
  if (!m) return undefined;
  if (m.entries.size !== 1) {
    r.issues.add(m.loc, field, "set exactly one of partitionLabel and partitionIndex");
    return undefined;
  }
  const labelNode = get(m, "partitionLabel");
  if (labelNode) {
    const label = r.string(labelNode, `${field}.partitionLabel`);
    return label !== undefined && nonEmpty(r, label, labelNode, `${field}.partitionLabel`)
      ? { partitionLabel: label }
      : undefined;
  }
  const index = r.integer(get(m, "partitionIndex"), `${field}.partitionIndex`, 1);
  return index === undefined ? undefined : { partitionIndex: index };
}

/** A command: a string runs with `/bin/sh -c`; a list of strings is the argv. */
function command(r: Reader, n: YNode | undefined, field: string): string[] | undefined {
  if (!n) return undefined;
  if (n.kind === "scalar" && typeof n.value === "string" && n.value.trim().length > 0)
    return ["/bin/sh", "-c", n.value];
  if (n.kind === "seq") {
    const argv = r.strings(n, field);
    if (!argv) return undefined;
    if (argv.length > 0 && argv[0] !== "") return argv;
  }
  r.issues.add(
    n.loc,
    field,
    `must be a command: a string (run with /bin/sh -c) or a list of strings, the first not empty (got ${describe(n)})`,
  );
  return undefined;
}

/** True when `value` is not empty; else records that at its node. */
function nonEmpty(r: Reader, value: string, n: YNode, field: string): boolean {
  if (value === "") r.issues.add(n.loc, field, "must not be empty");
  return value !== "";
}

/**
 * The YAML text of a config, which `parseConfig` reads back as the same value.
 * A field equal to its default is left out (so the file holds the choices
 * made, and an empty `trustedKeys` is never written); the rest are written in
 * the order of `defaultConfig()`. `comment` becomes leading `#` lines.
 */
export function serializeConfig(config: AgentConfig, comment?: string): string {
  const defaults = defaultConfig();
  const out: Record<string, unknown> = {};
  for (const key of KNOWN_FIELDS) {
    if (isDeepStrictEqual(config[key], defaults[key])) continue;
    out[key] =
      key === "reboot"
        ? rebootConfigYaml(config.reboot)
        : key === "report" && config.report
          ? reportConfigYaml(config.report)
          : config[key];
  }
  const head = comment === undefined ? "" : `${comment.replace(/^/gm, "# ")}\n`;
  return Object.keys(out).length === 0 ? head : head + stringifyYaml(out);
}

function reportConfigYaml(c: ReportConfig): Record<string, string> {
  return {
    url: c.url,
    ...(c.token !== null ? { token: c.token } : {}),
    ...(c.tokenFile !== null ? { tokenFile: c.tokenFile } : {}),
    ...(c.onUnreachable !== "go" ? { onUnreachable: c.onUnreachable } : {}),
  };
}

/** Load a config file; relative key paths are resolved against the file's directory. */
export async function loadConfig(path: string): Promise<AgentConfig> {
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch (cause) {
    throw new ImageError("CONFIG_INVALID", `config ${path} cannot be read: ${errText(cause)}`, {
      cause,
      details: { source: path },
    });
  }
  const config = parseConfig(text, path);
  const dir = resolve(path, "..");
  config.trustedKeys = config.trustedKeys.map((k) => resolve(dir, k));
  return config;
}

function errText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
