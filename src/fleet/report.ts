/**
 * The report an agent sends to the fleet server (README.md, "The report"):
 * the contract both sides import. Pure validation, no I/O and nothing of the
 * server, so the agent (src/updater) imports this file alone.
 *
 * `validateReport` checks every field and throws one FleetError
 * FLEET_BAD_REPORT whose details list every invalid field, never only the
 * first (STYLE.md, sigstore-js).
 */
import semver from "semver";
import { CHANNEL_NAME } from "../image/names.ts";
import { FleetError } from "./errors.ts";

export const REPORT_FORMAT = 1;

/** Upper bound of a report's encoded size; the server refuses larger bodies unread. */
export const REPORT_MAX_BYTES = 16 * 1024;

export const REPORT_EVENTS = [
  "checked",
  "download-started",
  "download-finished",
  "installed",
  "waiting-reboot",
  "waiting-lock",
  "rebooting",
  "marked-good",
  "rollback",
  "fallback",
  "error",
] as const;
export type ReportEvent = (typeof REPORT_EVENTS)[number];

/** What the other (not running) slot holds. */
export const SLOT_STATES = ["empty", "good", "installed", "trying", "bad"] as const;
export type SlotStateName = (typeof SLOT_STATES)[number];

export interface Report {
  format: typeof REPORT_FORMAT;
  /** /etc/machine-id: 32 lowercase hex digits. */
  machineId: string;
  hostname: string;
  channel: string;
  /** The host's rollout seed, 0-2047, drawn at first boot. */
  seed: number;
  running: { slot: "A" | "B"; version: string };
  /** The other slot; `version` is "" when it is empty. */
  other: { slot: "A" | "B"; version: string; state: SlotStateName };
  event: ReportEvent;
  /**
   * The version the event is about (the download, the install, the version
   * that rolled back or failed); required for every event but checked,
   * marked-good (the running version) and fallback.
   */
  target?: string;
  /** Download or write progress of `target`, 0-100. */
  progressPercent?: number;
  /** Why: the rollback's, fallback's or error's reason in words. */
  reason?: string;
  lastError?: { code: string; message: string; at?: string };
  /** /proc/sys/kernel/random/boot_id. */
  bootId: string;
  uptimeMs: number;
  agentVersion: string;
  /** The agent's poll interval: the server calls a host silent after three of them. */
  pollIntervalMs?: number;
  /** When the agent wrote the report (ISO 8601 with a zone). */
  time: string;
}

export interface FieldProblem {
  field: string;
  problem: string;
}

const MACHINE_ID = /^[0-9a-f]{32}$/;
const BOOT_ID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const HOSTNAME =
  /^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/;
const ERROR_CODE = /^[A-Z][A-Z0-9_]{0,63}$/;
const ISO_TIME = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$/;
const AGENT_VERSION = /^[A-Za-z0-9][A-Za-z0-9.+_-]{0,63}$/;
const TEXT_MAX = 2048;
const KNOWN = new Set([
  "format",
  "machineId",
  "hostname",
  "channel",
  "seed",
  "running",
  "other",
  "event",
  "target",
  "progressPercent",
  "reason",
  "lastError",
  "bootId",
  "uptimeMs",
  "agentVersion",
  "pollIntervalMs",
  "time",
]);
const TARGET_OPTIONAL = new Set<ReportEvent>(["checked", "marked-good", "fallback"]);

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** Printable text without control characters, at most `max` UTF-16 units. */
function isText(v: unknown, max = TEXT_MAX): v is string {
  // biome-ignore lint/suspicious/noControlCharactersInRegex: refusing them is the point
  return typeof v === "string" && v.length <= max && !/[\u0000-\u0008\u000b-\u001f\u007f]/.test(v);
}

function isVersion(v: unknown): v is string {
  return typeof v === "string" && v.length <= 64 && semver.valid(v) === v;
}

function isInt(v: unknown, min: number, max: number): v is number {
  return typeof v === "number" && Number.isSafeInteger(v) && v >= min && v <= max;
}

/**
 * The problems of a decoded JSON value as a report, every one of them;
 * an empty list means it is a valid Report.
 */
export function reportProblems(v: unknown): FieldProblem[] {
  const out: FieldProblem[] = [];
  const bad = (field: string, problem: string) => out.push({ field, problem });
  if (!isObject(v)) return [{ field: "", problem: "must be a JSON object" }];
  for (const k of Object.keys(v)) if (!KNOWN.has(k)) bad(k, "is not a report field");
  if (v.format !== REPORT_FORMAT) bad("format", `must be ${REPORT_FORMAT}`);
  if (typeof v.machineId !== "string" || !MACHINE_ID.test(v.machineId))
    bad("machineId", "must be 32 lowercase hex digits (/etc/machine-id)");
  if (typeof v.hostname !== "string" || !HOSTNAME.test(v.hostname))
    bad("hostname", "must be a host name (RFC 1123 labels, at most 253 characters)");
  if (typeof v.channel !== "string" || !CHANNEL_NAME.test(v.channel))
    bad("channel", "must be a channel name: 1-64 of a-z 0-9 . _ -");
  if (!isInt(v.seed, 0, 2047)) bad("seed", "must be an integer 0-2047");
  const slot = (field: string, s: unknown) => {
    if (s !== "A" && s !== "B") bad(field, 'must be "A" or "B"');
  };
  if (!isObject(v.running)) bad("running", "must be an object {slot, version}");
  else {
    slot("running.slot", v.running.slot);
    if (!isVersion(v.running.version)) bad("running.version", "must be a semantic version");
    for (const k of Object.keys(v.running))
      if (k !== "slot" && k !== "version") bad(`running.${k}`, "is not a field of running");
  }
  if (!isObject(v.other)) bad("other", "must be an object {slot, version, state}");
  else {
    slot("other.slot", v.other.slot);
    if (isObject(v.running) && v.other.slot === v.running.slot)
      bad("other.slot", "must not be the running slot");
    const empty = v.other.state === "empty";
    if (empty ? v.other.version !== "" : !isVersion(v.other.version))
      bad("other.version", 'must be a semantic version, or "" when the state is empty');
    if (!SLOT_STATES.includes(v.other.state as SlotStateName))
      bad("other.state", `must be one of ${SLOT_STATES.join(", ")}`);
    for (const k of Object.keys(v.other))
      if (k !== "slot" && k !== "version" && k !== "state")
        bad(`other.${k}`, "is not a field of other");
  }
  const event = v.event as ReportEvent;
  if (!REPORT_EVENTS.includes(event)) bad("event", `must be one of ${REPORT_EVENTS.join(", ")}`);
  if (v.target !== undefined) {
    if (!isVersion(v.target)) bad("target", "must be a semantic version");
  } else if (REPORT_EVENTS.includes(event) && !TARGET_OPTIONAL.has(event))
    bad("target", `is required for the event ${event}: the version it is about`);
  if (v.progressPercent !== undefined && !isInt(v.progressPercent, 0, 100))
    bad("progressPercent", "must be an integer 0-100");
  if (v.reason !== undefined && !isText(v.reason))
    bad("reason", `must be text of at most ${TEXT_MAX} characters, no control characters`);
  if ((event === "rollback" || event === "fallback") && v.reason === undefined)
    bad("reason", `is required for the event ${event}`);
  if (v.lastError !== undefined && v.lastError !== null) {
    if (!isObject(v.lastError)) bad("lastError", "must be an object {code, message} or null");
    else {
      if (typeof v.lastError.code !== "string" || !ERROR_CODE.test(v.lastError.code))
        bad("lastError.code", "must be an error code like UPDATE_VERIFY_FAILED");
      if (!isText(v.lastError.message) || v.lastError.message === "")
        bad("lastError.message", `must be text of 1-${TEXT_MAX} characters`);
      if (v.lastError.at !== undefined && !isTime(v.lastError.at))
        bad("lastError.at", "must be an ISO 8601 time with a zone");
      for (const k of Object.keys(v.lastError))
        if (k !== "code" && k !== "message" && k !== "at")
          bad(`lastError.${k}`, "is not a field of lastError");
    }
  }
  if (event === "error" && !isObject(v.lastError))
    bad("lastError", "is required for the event error");
  if (typeof v.bootId !== "string" || !BOOT_ID.test(v.bootId))
    bad("bootId", "must be a lowercase UUID (/proc/sys/kernel/random/boot_id)");
  if (!isInt(v.uptimeMs, 0, Number.MAX_SAFE_INTEGER))
    bad("uptimeMs", "must be a non-negative integer");
  if (typeof v.agentVersion !== "string" || !AGENT_VERSION.test(v.agentVersion))
    bad("agentVersion", "must be 1-64 of A-Z a-z 0-9 . + _ -");
  if (v.pollIntervalMs !== undefined && !isInt(v.pollIntervalMs, 1000, 30 * 86_400_000))
    bad("pollIntervalMs", "must be an integer from 1000 (1 s) to 30 days");
  if (!isTime(v.time)) bad("time", "must be an ISO 8601 time with a zone");
  return out;
}

function isTime(v: unknown): v is string {
  return typeof v === "string" && ISO_TIME.test(v) && !Number.isNaN(Date.parse(v));
}

/** A decoded JSON value as a Report, or FLEET_BAD_REPORT listing every bad field. */
export function validateReport(json: unknown): Report {
  const problems = reportProblems(json);
  if (problems.length > 0) {
    const shown = problems
      .slice(0, 5)
      .map((p) => (p.field ? `${p.field} ${p.problem}` : p.problem))
      .join("; ");
    throw new FleetError(
      "FLEET_BAD_REPORT",
      `invalid report: ${shown}${problems.length > 5 ? `; and ${problems.length - 5} more` : ""}`,
      { details: { problems } },
    );
  }
  return json as Report;
}

/** Bytes to a Report: size limit, UTF-8, JSON, schema. */
export function decodeReport(bytes: Uint8Array): Report {
  if (bytes.length > REPORT_MAX_BYTES)
    throw new FleetError(
      "FLEET_BAD_REPORT",
      `report of ${bytes.length} bytes is larger than ${REPORT_MAX_BYTES}`,
      { details: { problems: [{ field: "", problem: "too large" }], size: bytes.length } },
    );
  let json: unknown;
  try {
    json = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch (cause) {
    throw new FleetError("FLEET_BAD_REPORT", `report is not JSON: ${(cause as Error).message}`, {
      cause,
      details: { problems: [{ field: "", problem: "not UTF-8 JSON" }] },
    });
  }
  return validateReport(json);
}
