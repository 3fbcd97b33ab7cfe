/**
 * The reboot into an installed update (README.md, "Reboot"): the strategy
 * (immediate, etcd-lock, off), the maintenance window, and the method
 * (firmware reboot or kexec). The decisions are pure (`windowAt`,
 * `decideReboot`); `rebootIntoUpdate` carries them out and records what the
 * host waits for in the state file, so `agent status` can say it.
 */

import type { Clock } from "../clock.ts";
import { isBaseError } from "../errors.ts";
import {
  type AgentConfig,
  formatDuration,
  formatWindowStart,
  type RebootWindow,
  type SlotName,
} from "../image/index.ts";
import type { Logger } from "../log.ts";
import { errText } from "./errors.ts";
import type { BootStore, StateHandle } from "./installer.ts";
import type { ByteRange, Kexec, Rebooter, RebootLockClient } from "./machine.ts";
import { backoffMs } from "./policy.ts";
import type { RebootWait } from "./state-file.ts";

/** The longest wait between two tries of the reboot lock. */
export const MAX_LOCK_RETRY_MS = 5 * 60_000;
const DAY_MS = 24 * 3_600_000;

/** The wall clock of `ms` in `timeZone` (undefined: the host's). */
function wallClock(ms: number, timeZone: string | undefined) {
  const parts = new Intl.DateTimeFormat("en-US", {
    timeZone,
    hourCycle: "h23",
    year: "numeric",
    month: "numeric",
    day: "numeric",
    hour: "numeric",
    minute: "numeric",
    second: "numeric",
  }).formatToParts(new Date(ms));
  const n = (t: string) => Number(parts.find((p) => p.type === t)!.value);
  return {
    year: n("year"),
    month: n("month") - 1,
    day: n("day"),
    hour: n("hour"),
    minute: n("minute"),
    second: n("second"),
  };
}

/** The UTC offset of `timeZone` at `ms`, in ms. */
function offsetAt(ms: number, timeZone: string | undefined): number {
  const w = wallClock(ms, timeZone);
  const asUtc = Date.UTC(w.year, w.month, w.day, w.hour, w.minute, w.second);
  return asUtc - Math.floor(ms / 1000) * 1000;
}

/** The instant of a local wall time (a time skipped by a DST change falls after the gap). */
function instantOf(
  y: number,
  m: number,
  d: number,
  minute: number,
  timeZone: string | undefined,
): number {
  const wall = Date.UTC(y, m, d, 0, minute);
  let t = wall - offsetAt(wall, timeZone);
  t = wall - offsetAt(t, timeZone);
  return t;
}

export interface WindowState {
  open: boolean;
  /** Open: when this opening started; closed: when the next one starts. */
  start: number;
  end: number;
}

/**
 * Where `nowMs` stands in the window (host time zone unless `timeZone`): in
 * an opening (start ≤ now < start + length), or before the next one.
 */
export function windowAt(w: RebootWindow, nowMs: number, timeZone?: string): WindowState {
  const today = wallClock(nowMs, timeZone);
  let next: number | undefined;
  // Openings start on local days from a week back (a window up to a week
  // long may still be open) to a week ahead (the next weekly one).
  for (let k = -8; k <= 8; k++) {
    const day = new Date(Date.UTC(today.year, today.month, today.day + k));
    if (w.weekday !== null && day.getUTCDay() !== w.weekday) continue;
    const start = instantOf(
      day.getUTCFullYear(),
      day.getUTCMonth(),
      day.getUTCDate(),
      w.startMinute,
      timeZone,
    );
    if (start <= nowMs && nowMs < start + w.lengthMs)
      return { open: true, start, end: start + w.lengthMs };
    if (start > nowMs && (next === undefined || start < next)) next = start;
  }
  // A week ahead always holds an opening of a weekly or daily window.
  const start = next ?? nowMs + 7 * DAY_MS;
  return { open: false, start, end: start + w.lengthMs };
}

export function describeWindow(w: RebootWindow): string {
  return `${formatWindowStart(w)} for ${formatDuration(w.lengthMs)}`;
}

export type RebootDecision =
  | { action: "wait-operator" }
  | { action: "wait-window"; opensAt: number }
  | { action: "lock" }
  | { action: "reboot" };

/**
 * What to do now with an installed update (pure). `operator`: `agent
 * reboot` asked for it — the strategy `off` and the window do not hold it
 * back; the lock still does (it protects the cluster, not this host).
 */
export function decideReboot(o: {
  reboot: AgentConfig["reboot"];
  nowMs: number;
  operator: boolean;
  timeZone?: string;
}): RebootDecision {
  const r = o.reboot;
  if (!o.operator && r.strategy === "off") return { action: "wait-operator" };
  if (!o.operator && r.window) {
    const w = windowAt(r.window, o.nowMs, o.timeZone);
    if (!w.open) return { action: "wait-window", opensAt: w.start };
  }
  return r.strategy === "etcd-lock" ? { action: "lock" } : { action: "reboot" };
}

export interface RebootDeps {
  config: AgentConfig;
  log: Logger;
  clock: Clock;
  state: StateHandle;
  rebooter: Rebooter;
  kexec?: Kexec;
  /** The cluster's reboot semaphore (src/lock); required with `etcd-lock`. */
  lock?: RebootLockClient;
  machineId: string;
  timeZone?: string;
  /** Called once the reboot is decided, before kexec or the reboot command (the `rebooting` report). */
  beforeReboot?: (version: string, reason: string) => Promise<void>;
}

export interface RebootTarget {
  slot: SlotName;
  version: string;
  disk: BootStore;
  diskPath: string;
  slotRange: ByteRange;
}

export type RebootOutcome =
  | { rebooting: true; method: "reboot" | "kexec" }
  | { rebooting: false; waiting: RebootWait };

/**
 * Carry out `decideReboot` for an installed update: record what it waits for
 * (README.md, "Reboot", steps 1-4), or take the lock and reboot (steps 5-6).
 */
export async function rebootIntoUpdate(
  d: RebootDeps,
  t: RebootTarget,
  o: { operator?: boolean } = {},
): Promise<RebootOutcome> {
  const now = d.clock.now();
  const nowMs = now.getTime();
  const decision = decideReboot({
    reboot: d.config.reboot,
    nowMs,
    operator: o.operator ?? false,
    ...(d.timeZone ? { timeZone: d.timeZone } : {}),
  });
  const previous = d.state.current.rebootWait;
  const same = previous && previous.slot === t.slot && previous.version === t.version;
  const wait = async (w: Omit<RebootWait, "slot" | "version" | "since" | "attempts">) => {
    const waiting: RebootWait = {
      slot: t.slot,
      version: t.version,
      since: same && previous.for === w.for ? previous.since : now.toISOString(),
      attempts: same && previous.for === w.for ? previous.attempts + 1 : 1,
      ...w,
    };
    await d.state.update((s) => ({ ...s, rebootWait: waiting }));
    return { rebooting: false as const, waiting };
  };
  const where = `slot ${t.slot} (${t.version})`;
  if (decision.action === "wait-operator") {
    const message = `reboot strategy is off: ${t.version} is installed in slot ${t.slot}; run \`abforge agent reboot\` to run it`;
    d.log.info({ slot: t.slot, version: t.version }, message);
    return wait({ for: "operator", until: null, detail: message });
  }
  if (decision.action === "wait-window") {
    const w = d.config.reboot.window!;
    const until = new Date(decision.opensAt).toISOString();
    const message = `waiting for the reboot window (${describeWindow(w)}): reboots into ${where} at ${until}`;
    d.log.info({ slot: t.slot, version: t.version, until }, message);
    return wait({ for: "window", until, detail: message });
  }
  if (decision.action === "lock") {
    const taken = await takeLock(
      d,
      t,
      now,
      same && previous.for === "lock" ? previous.attempts : 0,
    );
    if (!taken.ok) return wait(taken.wait);
  }
  await d.state.update((s) => ({ ...s, rebootWait: null }));
  const reason = `update ${t.version} installed in slot ${t.slot}`;
  await d.beforeReboot?.(t.version, reason);
  if (d.config.reboot.method === "kexec") {
    if (d.kexec) {
      d.log.info({ slot: t.slot, version: t.version }, `rebooting into ${where} by kexec`);
      const r = await d.kexec.boot({
        slot: t.slot,
        disk: t.disk,
        diskPath: t.diskPath,
        slotRange: t.slotRange,
      });
      d.log.warn({ why: r.why }, `kexec unavailable (${r.why}): rebooting through the firmware`);
    } else d.log.warn("kexec unavailable (not on a host): rebooting through the firmware");
  } else d.log.info({ slot: t.slot, version: t.version }, `rebooting into ${where}`);
  await d.rebooter.reboot(reason);
  return { rebooting: true, method: d.config.reboot.method };
}

/** Step 5: a place in the semaphore, or what to wait for (the lock's state, or why etcd did not answer). */
async function takeLock(
  d: RebootDeps,
  t: RebootTarget,
  now: Date,
  attempts: number,
): Promise<
  { ok: true } | { ok: false; wait: Omit<RebootWait, "slot" | "version" | "since" | "attempts"> }
> {
  const cfg = d.config;
  const retryMs = Math.min(
    backoffMs(cfg.pollIntervalMs, attempts + 1, cfg.maxBackoffMs),
    MAX_LOCK_RETRY_MS,
  );
  const until = new Date(now.getTime() + retryMs).toISOString();
  const group = cfg.reboot.etcd?.group ?? null;
  const name = group === null ? "the reboot lock" : `the reboot lock of group ${group}`;
  if (!d.lock) {
    const detail = `${name}: no etcd client (not on a host)`;
    return { ok: false, wait: { for: "lock", until, detail } };
  }
  let r: Awaited<ReturnType<RebootLockClient["acquire"]>>;
  try {
    r = await d.lock.acquire(d.machineId);
  } catch (err) {
    if (!isBaseError(err)) throw err;
    const detail = `${name}: ${errText(err)}; never rebooting without it, next try at ${until}`;
    d.log.warn({ code: err.code, retryInMs: retryMs }, detail);
    return { ok: false, wait: { for: "lock", until, detail } };
  }
  if (!r.acquired) {
    const detail = `${name}: all ${r.max} place(s) held (by ${r.holders.join(", ") || "nobody listed"}); next try at ${until}`;
    d.log.info({ holders: r.holders, max: r.max, retryInMs: retryMs }, detail);
    return { ok: false, wait: { for: "lock", until, detail } };
  }
  await d.state.update((s) => ({
    ...s,
    rebootLock: { holder: d.machineId, group, version: t.version, takenAt: now.toISOString() },
  }));
  d.log.info(
    { holder: d.machineId, holders: r.holders, max: r.max },
    `took ${name} as ${d.machineId} (${r.holders.length} of ${r.max} place(s) held)`,
  );
  return { ok: true };
}

/**
 * Give the lock back once the host is up again: its new slot marked good,
 * or its old slot confirmed after a rollback (README.md, "Reboot", step 7).
 * A failure is logged and kept for the next check; it never fails the boot.
 */
export async function releaseRebootLock(
  d: Pick<RebootDeps, "log" | "state" | "lock">,
): Promise<boolean> {
  const held = d.state.current.rebootLock;
  if (!held) return false;
  if (!d.lock) {
    d.log.warn(
      { holder: held.holder },
      "the reboot lock is recorded as held, but the config has no etcd to release it in",
    );
    return false;
  }
  try {
    const r = await d.lock.release(held.holder);
    await d.state.update((s) => ({ ...s, rebootLock: null }));
    d.log.info(
      { holder: held.holder, released: r.released },
      r.released
        ? `released the reboot lock (${held.holder})`
        : `the reboot lock no longer listed ${held.holder} (removed as stale, or by an operator)`,
    );
    return true;
  } catch (err) {
    if (!isBaseError(err)) throw err;
    d.log.warn(
      { code: err.code },
      `cannot release the reboot lock yet: ${errText(err)}; trying again at the next check`,
    );
    return false;
  }
}
