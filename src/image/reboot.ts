/**
 * How a host reboots into an installed update (README.md, "Reboot"): the
 * `reboot:` object of the agent config, which the spec's `update.reboot:`
 * writes. One reader for both, so the two can never disagree. Durations and
 * window starts are written as locksmith writes them (`1h30m`, `Thu 23:00`)
 * and held with their units in the names.
 */
import { CHANNEL_NAME, CHANNEL_NAME_RULE, repoUrlProblem } from "./names.ts";
import { describe, get, type Loc, type Reader, type YNode } from "./yaml.ts";

/**
 * `immediate`: reboot as soon as an install is done; `etcd-lock`: first take
 * a place in the cluster's reboot semaphore (src/lock); `off`: wait for
 * `abforge agent reboot`.
 */
export type RebootStrategy = "immediate" | "etcd-lock" | "off";
export const REBOOT_STRATEGIES: readonly RebootStrategy[] = ["immediate", "etcd-lock", "off"];

/** `reboot`: through the firmware and GRUB; `kexec`: straight into the new slot's kernel. */
export type RebootMethod = "reboot" | "kexec";
export const REBOOT_METHODS: readonly RebootMethod[] = ["reboot", "kexec"];

/** Sunday first, as `Date.getDay()`. */
export const WEEKDAYS = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"] as const;

/** A maintenance window in the host's time zone: every day, or one day a week. */
export interface RebootWindow {
  /** 0 (Sunday) to 6; null: every day. */
  weekday: number | null;
  /** Minutes after local midnight, 0-1439. */
  startMinute: number;
  lengthMs: number;
}

export interface EtcdLockConfig {
  /** Client URLs of the members, tried in order. */
  endpoints: string[];
  /** Semaphore group; null: the default semaphore. */
  group: string | null;
  /** A holder that has not released within this long may be removed by another host. */
  lockTTLMs: number;
  /** PEM files on the host (etcd's --cacert, --cert, --key); never in the image. */
  ca: string | null;
  cert: string | null;
  key: string | null;
}

export interface RebootConfig {
  strategy: RebootStrategy;
  window: RebootWindow | null;
  method: RebootMethod;
  /** Required with `etcd-lock`, refused without it. */
  etcd: EtcdLockConfig | null;
}

export const DEFAULT_LOCK_TTL_MS = 30 * 60_000;
const WEEK_MS = 7 * 24 * 3_600_000;

export function defaultRebootConfig(): RebootConfig {
  return { strategy: "immediate", window: null, method: "reboot", etcd: null };
}

/** Today's shorthands: `auto` is `immediate`, `manual` is `off`. */
const SHORTHANDS: Record<string, RebootStrategy> = { auto: "immediate", manual: "off" };

const DURATION_UNITS: Record<string, number> = { h: 3_600_000, m: 60_000, s: 1000 };

/** `1h30m`, `30m`, `45s` (Go's duration units h, m, s); undefined when it is not one. */
export function parseDuration(text: string): number | undefined {
  if (!/^(?:\d+[hms])+$/.test(text)) return undefined;
  let ms = 0;
  for (const [, n, unit] of text.matchAll(/(\d+)([hms])/g))
    ms += Number(n) * DURATION_UNITS[unit!]!;
  return Number.isSafeInteger(ms) && ms > 0 ? ms : undefined;
}

/** The shortest `parseDuration` text of `ms` (whole seconds). */
export function formatDuration(ms: number): string {
  let s = Math.round(ms / 1000);
  const h = Math.floor(s / 3600);
  s -= h * 3600;
  const m = Math.floor(s / 60);
  s -= m * 60;
  return `${h ? `${h}h` : ""}${m ? `${m}m` : ""}${s || (!h && !m) ? `${s}s` : ""}`;
}

/** `Thu 23:00` or `23:00` (every day); undefined when it is not one. */
export function parseWindowStart(
  text: string,
): Pick<RebootWindow, "weekday" | "startMinute"> | undefined {
  const m = /^(?:([A-Za-z]+)\s+)?(\d{1,2}):(\d{2})$/.exec(text.trim());
  if (!m) return undefined;
  let weekday: number | null = null;
  if (m[1] !== undefined) {
    const name = m[1].toLowerCase();
    const i = WEEKDAYS.findIndex((d) => name === d.toLowerCase() || FULL_DAYS[d] === name);
    if (i < 0) return undefined;
    weekday = i;
  }
  const hour = Number(m[2]);
  const minute = Number(m[3]);
  if (hour > 23 || minute > 59) return undefined;
  return { weekday, startMinute: hour * 60 + minute };
}

const FULL_DAYS: Record<string, string> = {
  Sun: "sunday",
  Mon: "monday",
  Tue: "tuesday",
  Wed: "wednesday",
  Thu: "thursday",
  Fri: "friday",
  Sat: "saturday",
};

export function formatWindowStart(w: Pick<RebootWindow, "weekday" | "startMinute">): string {
  const hh = String(Math.floor(w.startMinute / 60)).padStart(2, "0");
  const mm = String(w.startMinute % 60).padStart(2, "0");
  return `${w.weekday === null ? "" : `${WEEKDAYS[w.weekday]} `}${hh}:${mm}`;
}

const WINDOW_RULE = 'a start like "Thu 23:00" (a day of the week, optional, then HH:MM)';
const DURATION_RULE = 'a duration like "1h30m", "30m" or "45s"';
const GROUP_RULE = CHANNEL_NAME_RULE;
const FIELDS = ["strategy", "window", "method", "etcd"];
const WINDOW_FIELDS = ["start", "length"];
const ETCD_FIELDS = ["endpoints", "group", "lockTTL", "ca", "cert", "key"];

/**
 * Reads `reboot:` — `auto`/`manual` (shorthands) or the object — recording
 * every problem at its node; undefined when any was found.
 */
export function readRebootConfig<K extends string>(
  r: Reader<K>,
  n: YNode | undefined,
  field: string,
  parentLoc: Loc,
): RebootConfig | undefined {
  const out = defaultRebootConfig();
  if (!n) return out;
  if (n.kind === "scalar" && typeof n.value === "string" && n.value in SHORTHANDS) {
    out.strategy = SHORTHANDS[n.value]!;
    return out;
  }
  if (n.kind !== "map") {
    r.issues.add(
      n.loc,
      field,
      `must be "auto", "manual" or a mapping of ${FIELDS.join(", ")} (got ${describe(n)})`,
    );
    return undefined;
  }
  const before = r.issues.list.length;
  const m = r.map(n, field, FIELDS, [], parentLoc);
  const strategy = r.enum(get(m, "strategy"), `${field}.strategy`, REBOOT_STRATEGIES);
  if (strategy) out.strategy = strategy;
  const method = r.enum(get(m, "method"), `${field}.method`, REBOOT_METHODS);
  if (method) out.method = method;
  const windowNode = get(m, "window");
  if (windowNode) out.window = readWindow(r, windowNode, `${field}.window`) ?? null;
  const etcdNode = get(m, "etcd");
  if (etcdNode) out.etcd = readEtcd(r, etcdNode, `${field}.etcd`) ?? null;
  if (r.issues.list.length > before) return undefined;
  if (out.strategy === "etcd-lock" && !out.etcd)
    r.issues.add(n.loc, `${field}.etcd`, 'is required with strategy "etcd-lock"');
  if (out.strategy !== "etcd-lock" && out.etcd)
    r.issues.add(
      etcdNode!.loc,
      `${field}.etcd`,
      `is only used with strategy "etcd-lock" (strategy is "${out.strategy}")`,
    );
  return r.issues.list.length > before ? undefined : out;
}

function readWindow<K extends string>(
  r: Reader<K>,
  n: YNode,
  field: string,
): RebootWindow | undefined {
  const m = r.map(n, field, WINDOW_FIELDS, WINDOW_FIELDS, n.loc);
  if (!m) return undefined;
  const startNode = get(m, "start");
  const start = r.string(startNode, `${field}.start`);
  const parsed = start === undefined ? undefined : parseWindowStart(start);
  if (start !== undefined && !parsed)
    r.issues.add(
      startNode!.loc,
      `${field}.start`,
      `${JSON.stringify(start)} is not ${WINDOW_RULE}`,
    );
  const lengthMs = readDuration(r, get(m, "length"), `${field}.length`);
  if (lengthMs !== undefined && lengthMs > WEEK_MS) {
    r.issues.add(get(m, "length")!.loc, `${field}.length`, "must be at most a week (168h)");
    return undefined;
  }
  if (lengthMs !== undefined && lengthMs < 60_000) {
    r.issues.add(get(m, "length")!.loc, `${field}.length`, "must be at least a minute");
    return undefined;
  }
  return parsed && lengthMs !== undefined ? { ...parsed, lengthMs } : undefined;
}

function readEtcd<K extends string>(
  r: Reader<K>,
  n: YNode,
  field: string,
): EtcdLockConfig | undefined {
  const m = r.map(n, field, ETCD_FIELDS, ["endpoints"], n.loc);
  if (!m) return undefined;
  const before = r.issues.list.length;
  const endpointsNode = get(m, "endpoints");
  const endpoints = r.list(endpointsNode, `${field}.endpoints`);
  const urls = endpoints?.map((e, i) => r.url(e, `${field}.endpoints[${i}]`, repoUrlProblem));
  if (endpoints && endpoints.length === 0)
    r.issues.add(endpointsNode!.loc, `${field}.endpoints`, "must list at least one URL");
  const groupNode = get(m, "group");
  const group = groupNode ? r.string(groupNode, `${field}.group`, CHANNEL_NAME, GROUP_RULE) : null;
  const ttlNode = get(m, "lockTTL");
  const lockTTLMs = ttlNode ? readDuration(r, ttlNode, `${field}.lockTTL`) : DEFAULT_LOCK_TTL_MS;
  const paths: Record<"ca" | "cert" | "key", string | null> = { ca: null, cert: null, key: null };
  for (const k of ["ca", "cert", "key"] as const) {
    const v = r.string(get(m, k), `${field}.${k}`, /^\//, "an absolute path on the host");
    if (v !== undefined) paths[k] = v;
  }
  if ((paths.cert === null) !== (paths.key === null))
    r.issues.add(n.loc, `${field}.cert`, "cert and key go together: set both or neither");
  if (r.issues.list.length > before || !urls || group === undefined || lockTTLMs === undefined)
    return undefined;
  return { endpoints: urls as string[], group, lockTTLMs, ...paths };
}

function readDuration<K extends string>(
  r: Reader<K>,
  n: YNode | undefined,
  field: string,
): number | undefined {
  const s = r.string(n, field);
  if (s === undefined) return undefined;
  const ms = parseDuration(s);
  if (ms === undefined) r.issues.add(n!.loc, field, `${JSON.stringify(s)} is not ${DURATION_RULE}`);
  return ms;
}

/**
 * The YAML value of a reboot config, which `readRebootConfig` reads back as
 * the same value; undefined for the default (left out of the file).
 */
export function rebootConfigYaml(c: RebootConfig): unknown {
  const d = defaultRebootConfig();
  if (c.strategy === d.strategy && c.method === d.method && !c.window && !c.etcd) return undefined;
  const out: Record<string, unknown> = { strategy: c.strategy };
  if (c.window)
    out.window = { start: formatWindowStart(c.window), length: formatDuration(c.window.lengthMs) };
  if (c.method !== d.method) out.method = c.method;
  if (c.etcd) {
    const e: Record<string, unknown> = { endpoints: c.etcd.endpoints };
    if (c.etcd.group !== null) e.group = c.etcd.group;
    if (c.etcd.lockTTLMs !== DEFAULT_LOCK_TTL_MS) e.lockTTL = formatDuration(c.etcd.lockTTLMs);
    for (const k of ["ca", "cert", "key"] as const) if (c.etcd[k] !== null) e[k] = c.etcd[k];
    out.etcd = e;
  }
  return out;
}
