/**
 * The agent's configuration, `/etc/abforge/agent.yaml` (README.md, "Agent
 * config"): one type that the build serializes into the image and the agent
 * parses. Validated once, at load: every bad field is collected and reported
 * with its line, then one CONFIG_INVALID is thrown. Units are in the names.
 */
import { readFile } from "node:fs/promises";
import { createRequire } from "node:module";
import { isAbsolute, resolve } from "node:path";
import { isDeepStrictEqual } from "node:util";
import type * as Yaml from "yaml";
import type { Node } from "yaml";
import { ImageError } from "./errors.ts";
import { AGENT_CONFIG_PATH, MAX_TRIES, type SlotName, STATE_DIR } from "./layout.ts";
import {
  CHANNEL_NAME_RULE,
  COMPATIBLE_NAME_RULE,
  isChannelName,
  isCompatibleName,
  repoUrlProblem,
} from "./names.ts";

/**
 * The YAML parser, loaded with the first config parsed rather than at start:
 * a command without a config (`agent install --disk`) never needs it
 * (~10 MB and ~30 ms of start-up).
 */
let yamlLib: typeof Yaml | undefined;
function yaml(): typeof Yaml {
  yamlLib ??= createRequire(import.meta.url)("yaml") as typeof Yaml;
  return yamlLib;
}

export type RebootPolicy = "auto" | "manual";

/**
 * When the agent confirms a boot of a good slot (src/bootloader `X_boots`):
 * `started` — as soon as it runs; `healthy` — once the health checks pass.
 */
export type ConfirmPolicy = "started" | "healthy";
export const CONFIRM_POLICIES: readonly ConfirmPolicy[] = ["started", "healthy"];

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
  reboot: RebootPolicy;
  rebootCommand: string[];
  healthChecks: HealthCheckConfig[];
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
}

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
    reboot: "auto",
    rebootCommand: ["reboot"],
    healthChecks: [],
    confirm: "started",
    stateDir: DEFAULT_STATE_DIR,
    disk: null,
    compatible: null,
    slots: {},
    downloadStallTimeoutMs: 30_000,
    maxIndexBytes: 1_048_576,
    maxBackoffMs: 3_600_000,
  };
}

interface FieldError {
  line: number;
  field: string;
  message: string;
}

const KNOWN_FIELDS = new Set(Object.keys(defaultConfig()));

/** Parse and validate the YAML text of a config; `source` names it in errors. */
export function parseConfig(text: string, source: string): AgentConfig {
  const { isMap, isScalar, isSeq, LineCounter, parseDocument } = yaml();
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, { lineCounter, prettyErrors: false });
  const errors: FieldError[] = [];
  const lineOf = (node: Node | null | undefined): number =>
    node?.range ? lineCounter.linePos(node.range[0]).line : 1;
  for (const e of doc.errors) {
    errors.push({
      line: e.linePos?.[0]?.line ?? 1,
      field: "(yaml)",
      message: e.message.split("\n")[0] ?? e.message,
    });
  }
  const config = defaultConfig();
  const root = doc.contents;
  if (errors.length === 0 && root !== null && !isMap(root)) {
    errors.push({ line: lineOf(root), field: "(root)", message: "must be a mapping of fields" });
  }
  if (errors.length === 0 && isMap(root)) {
    for (const pair of root.items) {
      const keyNode = pair.key as Node | null;
      const key = isScalar(keyNode) ? String(keyNode.value) : "";
      const valueNode = pair.value as Node | null;
      const line = lineOf(valueNode ?? keyNode);
      const bad = (message: string, at: Node | null | undefined = valueNode, field = key) =>
        errors.push({ line: at ? lineOf(at) : line, field, message });
      if (!KNOWN_FIELDS.has(key)) {
        bad(`unknown field (known: ${[...KNOWN_FIELDS].join(", ")})`, keyNode);
        continue;
      }
      const value: unknown = valueNode === null ? null : (valueNode as Node).toJSON();
      switch (key) {
        case "repoUrl":
          if (typeof value !== "string" || repoUrlProblem(value) !== undefined)
            bad(
              `must be an http(s) URL, got ${show(value)}${typeof value === "string" ? ` (${repoUrlProblem(value)})` : ""}`,
            );
          else config.repoUrl = value;
          break;
        case "channel":
          if (!isChannelName(value)) bad(`must be ${CHANNEL_NAME_RULE}, got ${show(value)}`);
          else config.channel = value;
          break;
        case "pollIntervalMs":
        case "downloadStallTimeoutMs":
        case "maxIndexBytes":
        case "maxBackoffMs":
          if (!isInt(value) || value <= 0) bad(`must be a positive integer, got ${show(value)}`);
          else config[key] = value;
          break;
        case "pollJitterMs":
          if (!isInt(value) || value < 0) bad(`must be an integer >= 0, got ${show(value)}`);
          else config.pollJitterMs = value;
          break;
        case "tries":
          if (!isInt(value) || value < 1 || value > MAX_TRIES)
            bad(
              `must be an integer from 1 to ${MAX_TRIES} (GRUB counts one digit), got ${show(value)}`,
            );
          else config.tries = value;
          break;
        case "reboot":
          if (value !== "auto" && value !== "manual")
            bad(`must be "auto" or "manual", got ${show(value)}`);
          else config.reboot = value;
          break;
        case "confirm":
          if (!CONFIRM_POLICIES.includes(value as ConfirmPolicy))
            bad(`must be "started" or "healthy", got ${show(value)}`);
          else config.confirm = value as ConfirmPolicy;
          break;
        case "rebootCommand": {
          const argv = commandOf(value);
          if (!argv) bad(`must be a command (a string or a list of strings), got ${show(value)}`);
          else config.rebootCommand = argv;
          break;
        }
        case "trustedKeys":
          if (
            !Array.isArray(value) ||
            value.length === 0 ||
            !value.every((p) => typeof p === "string" && p.length > 0)
          )
            bad(`must be a non-empty list of public key paths, got ${show(value)}`);
          else config.trustedKeys = value as string[];
          break;
        case "stateDir":
        case "disk":
          if (typeof value !== "string" || !isAbsolute(value))
            bad(`must be an absolute path, got ${show(value)}`);
          else config[key] = value;
          break;
        case "compatible":
          if (!isCompatibleName(value)) bad(`must be ${COMPATIBLE_NAME_RULE}, got ${show(value)}`);
          else config.compatible = value;
          break;
        case "healthChecks":
          if (!isSeq(valueNode)) {
            bad(`must be a list of {name, command, timeoutMs}, got ${show(value)}`);
            break;
          }
          config.healthChecks = [];
          valueNode.items.forEach((item, i) => {
            const check = parseHealthCheck(item as Node, i, `healthChecks[${i}]`, lineOf, errors);
            if (check) config.healthChecks.push(check);
          });
          break;
        case "slots":
          parseSlots(valueNode, lineOf, errors, config);
          break;
      }
    }
  }
  if (config.pollJitterMs >= config.pollIntervalMs && errors.length === 0) {
    errors.push({
      line: 1,
      field: "pollJitterMs",
      message: `must be smaller than pollIntervalMs (${config.pollIntervalMs})`,
    });
  }
  if (errors.length > 0) {
    errors.sort((a, b) => a.line - b.line);
    const lines = errors.map((e) => `${source}:${e.line}: ${e.field}: ${e.message}`);
    throw new ImageError(
      "CONFIG_INVALID",
      `config ${source} is invalid (${errors.length} error${errors.length > 1 ? "s" : ""}):\n  ${lines.join("\n  ")}`,
      { details: { source, errors } },
    );
  }
  return config;
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
  for (const key of KNOWN_FIELDS as Set<keyof AgentConfig>) {
    if (!isDeepStrictEqual(config[key], defaults[key])) out[key] = config[key];
  }
  const head = comment === undefined ? "" : `${comment.replace(/^/gm, "# ")}\n`;
  return Object.keys(out).length === 0 ? head : head + yaml().stringify(out);
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

function parseHealthCheck(
  node: Node,
  index: number,
  field: string,
  lineOf: (n: Node | null | undefined) => number,
  errors: FieldError[],
): HealthCheckConfig | null {
  const { isMap } = yaml();
  if (!isMap(node)) {
    errors.push({
      line: lineOf(node),
      field,
      message: "must be a mapping {name, command, timeoutMs}",
    });
    return null;
  }
  const v = node.toJSON() as Record<string, unknown>;
  let ok = true;
  const bad = (sub: string, message: string) => {
    ok = false;
    const at = node.get(sub, true) as Node | undefined;
    errors.push({ line: lineOf(at ?? node), field: `${field}.${sub}`, message });
  };
  for (const k of Object.keys(v)) {
    if (!["name", "command", "timeoutMs"].includes(k))
      bad(k, "unknown field (known: name, command, timeoutMs)");
  }
  if (v.name !== undefined && (typeof v.name !== "string" || v.name.length === 0))
    bad("name", `must be a non-empty string, got ${show(v.name)}`);
  const argv = commandOf(v.command);
  if (!argv)
    bad("command", `must be a command (a string or a list of strings), got ${show(v.command)}`);
  if (!isInt(v.timeoutMs) || v.timeoutMs <= 0)
    bad("timeoutMs", `must be a positive integer, got ${show(v.timeoutMs)}`);
  const name = (v.name as string | undefined) ?? `check-${index + 1}`;
  return ok && argv ? { name, command: argv, timeoutMs: v.timeoutMs as number } : null;
}

function parseSlots(
  node: Node | null,
  lineOf: (n: Node | null | undefined) => number,
  errors: FieldError[],
  config: AgentConfig,
): void {
  const { isMap, isScalar } = yaml();
  if (!isMap(node)) {
    errors.push({
      line: lineOf(node),
      field: "slots",
      message: "must be a mapping {A: ..., B: ...}",
    });
    return;
  }
  for (const pair of node.items) {
    const keyNode = pair.key as Node;
    const slot = isScalar(keyNode) ? String(keyNode.value) : "";
    const at = (pair.value as Node | null) ?? keyNode;
    if (slot !== "A" && slot !== "B") {
      errors.push({
        line: lineOf(keyNode),
        field: `slots.${slot}`,
        message: "slot must be A or B",
      });
      continue;
    }
    const v = (at as Node).toJSON() as Record<string, unknown> | null;
    const label = v?.partitionLabel;
    const index = v?.partitionIndex;
    const keys = v && typeof v === "object" ? Object.keys(v) : [];
    if (
      keys.length !== 1 ||
      (label !== undefined && (typeof label !== "string" || label.length === 0)) ||
      (index !== undefined && (!isInt(index) || index < 1))
    ) {
      errors.push({
        line: lineOf(at),
        field: `slots.${slot}`,
        message: `must be {partitionLabel: NAME} or {partitionIndex: N}, got ${show(v)}`,
      });
      continue;
    }
    config.slots[slot] =
      label !== undefined
        ? { partitionLabel: label as string }
        : { partitionIndex: index as number };
  }
}

function commandOf(value: unknown): string[] | null {
  if (typeof value === "string" && value.trim().length > 0) return ["/bin/sh", "-c", value];
  if (
    Array.isArray(value) &&
    value.length > 0 &&
    value.every((a) => typeof a === "string") &&
    (value[0] as string).length > 0
  )
    return value as string[];
  return null;
}

function isInt(v: unknown): v is number {
  return typeof v === "number" && Number.isSafeInteger(v);
}

function show(v: unknown): string {
  return v === undefined ? "nothing" : JSON.stringify(v);
}

function errText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
