/**
 * The fleet's records over one `Sql` (README.md, "Storage" and "Halting"):
 * a report updates its host's latest state, appends to its timeline (the
 * newest EVENTS_PER_HOST kept), counts the host as having tried the version
 * the event is about, and, on a failure, may write an automatic hold.
 * Everything a report changes is one transaction, so several servers on one
 * PostgreSQL agree.
 */
import { isBug } from "../errors.ts";
import type { Row, Sql } from "./db.ts";
import { FleetError } from "./errors.ts";
import { migrate } from "./migrations.ts";
import type { Report, ReportEvent } from "./report.ts";

export const EVENTS_PER_HOST = 200;

/** When a host has been in one state this long without a change, it is stuck. */
export const STATE_LIMITS_MS: Partial<Record<ReportEvent, number>> = {
  "download-started": 2 * 3_600_000,
  "download-finished": 30 * 60_000,
  installed: 30 * 60_000,
  rebooting: 15 * 60_000,
  "waiting-lock": 6 * 3_600_000,
  error: 3_600_000,
};

/** Silent: no report for this many poll intervals. */
export const SILENT_POLLS = 3;

export type HaltPolicy = { hosts: number } | { percent: number };

export interface Hold {
  channel: string;
  version: string;
  reason: string;
  by: "auto" | "operator";
  at: string;
  /** Set when an operator resumed it: no longer holding, kept so an automatic halt does not return. */
  resumedAt?: string;
}

export interface Stuck {
  kind: "silent" | "slow";
  /** In words: why, and the last error. */
  why: string;
}

export interface Host {
  machineId: string;
  hostname: string;
  channel: string;
  seed: number;
  runningSlot: string;
  version: string;
  otherVersion: string;
  otherState: string;
  event: ReportEvent;
  target: string | null;
  progressPercent: number | null;
  reason: string | null;
  lastError: { code: string; message: string } | null;
  bootId: string;
  uptimeMs: number;
  agentVersion: string;
  pollIntervalMs: number | null;
  reportedAt: string;
  receivedAt: string;
  stateSince: string;
  firstSeen: string;
  stuck: Stuck | null;
}

export interface TimelineEvent {
  receivedAt: string;
  reportedAt: string;
  event: ReportEvent;
  version: string;
  target: string | null;
  progressPercent: number | null;
  reason: string | null;
  error: { code: string; message: string } | null;
}

export interface Failure {
  machineId: string;
  hostname: string;
  channel: string;
  event: ReportEvent;
  target: string | null;
  version: string;
  reason: string | null;
  error: { code: string; message: string } | null;
  receivedAt: string;
}

export interface Summary {
  now: string;
  hosts: number;
  stuck: number;
  channels: { channel: string; hosts: number }[];
  versions: { channel: string; version: string; hosts: number }[];
  events: { event: string; hosts: number }[];
  holds: Hold[];
  failures: Failure[];
  stuckHosts: Host[];
}

export interface HostFilter {
  channel?: string;
  version?: string;
  /** An event name (the host's last), or "stuck". */
  state?: string;
  /** Part of a hostname or machine id, any case. */
  search?: string;
  limit?: number;
}

export interface RolloutSeries {
  channel: string;
  /** Bucket starts, ISO times. */
  times: string[];
  series: { version: string; hosts: number[] }[];
}

export interface RecordResult {
  /** An automatic hold this report's failure wrote. */
  halted?: Hold;
}

export interface StoreOptions {
  /** The poll interval of a host whose reports carry none. */
  defaultPollIntervalMs?: number;
  halt?: HaltPolicy;
}

type HostDbRow = Record<string, unknown> & {
  machine_id: string;
  received_at: number;
  state_since: number;
  event: ReportEvent;
  poll_interval_ms: number | null;
  error_code: string | null;
  error_message: string | null;
};

const iso = (ms: number) => new Date(Number(ms)).toISOString();

/**
 * The stuck condition in SQL, `?` = now, now: `silent_at` and `slow_at` are
 * written with each report (received + 3 polls; state since + its limit),
 * so it is two index range scans (see stuckOf, its twin in words).
 */
const STUCK_SQL = "(silent_at < ? OR slow_at < ?)";

export function describeDuration(ms: number): string {
  const m = Math.round(ms / 60_000);
  if (m < 60) return `${m} min`;
  const h = Math.floor(m / 60);
  if (h < 48) return `${h} h${m % 60 ? ` ${m % 60} min` : ""}`;
  return `${Math.floor(h / 24)} days`;
}

/** Why a host is stuck, in words, or null: the condition of STUCK_SQL. */
export function stuckOf(r: HostDbRow, nowMs: number, defaultPollMs: number): Stuck | null {
  const poll = Number(r.poll_interval_ms ?? defaultPollMs);
  const error = r.error_code ? `; last error ${r.error_code}: ${r.error_message}` : "";
  if (Number(r.silent_at) < nowMs) {
    const silentFor = nowMs - Number(r.received_at);
    return {
      kind: "silent",
      why: `no report for ${describeDuration(silentFor)} (${SILENT_POLLS} poll intervals are ${describeDuration(SILENT_POLLS * poll)}); last event ${r.event}${error}`,
    };
  }
  const limit = STATE_LIMITS_MS[r.event];
  if (r.slow_at != null && Number(r.slow_at) < nowMs && limit !== undefined)
    return {
      kind: "slow",
      why: `${r.event} for ${describeDuration(nowMs - Number(r.state_since))} (expected under ${describeDuration(limit)})${error}`,
    };
  return null;
}

function errorOf(code: unknown, message: unknown): { code: string; message: string } | null {
  return typeof code === "string" ? { code, message: String(message ?? "") } : null;
}

export class FleetStore {
  readonly sql: Sql;
  readonly defaultPollIntervalMs: number;
  halt: HaltPolicy | undefined;

  private constructor(sql: Sql, o: StoreOptions) {
    this.sql = sql;
    this.defaultPollIntervalMs = o.defaultPollIntervalMs ?? 3_600_000;
    this.halt = o.halt;
  }

  /** The store over `sql`, its schema migrated to the newest. */
  static async open(sql: Sql, o: StoreOptions & { now?: () => Date } = {}): Promise<FleetStore> {
    try {
      await migrate(sql, o.now ?? (() => new Date()));
    } catch (cause) {
      if (cause instanceof FleetError || isBug(cause)) throw cause;
      throw new FleetError(
        "FLEET_DB_FAILED",
        `cannot migrate the fleet database: ${(cause as Error).message}`,
        {
          cause,
        },
      );
    }
    return new FleetStore(sql, o);
  }

  close(): Promise<void> {
    return this.sql.close();
  }

  /**
   * One valid report, received at `nowMs`: all it changes in one transaction,
   * in two or three statements (the hot path: the host's upsert returns what
   * it replaced, so nothing is read first).
   */
  record(r: Report, nowMs: number): Promise<RecordResult> {
    const err = r.lastError ?? null;
    const poll = r.pollIntervalMs ?? this.defaultPollIntervalMs;
    const limit = STATE_LIMITS_MS[r.event];
    return this.sql.transaction(async (tx) => {
      const [prev] = await tx.query<{
        prev_channel: string | null;
        prev_version: string | null;
        prev_event: string | null;
        event_count: number;
      }>(
        `INSERT INTO hosts (machine_id, hostname, channel, seed, running_slot, version, other_version,
           other_state, event, target, progress_percent, reason, error_code, error_message, boot_id,
           uptime_ms, agent_version, poll_interval_ms, reported_at, received_at, state_since, first_seen,
           silent_at, slow_at, event_count)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1)
         ON CONFLICT (machine_id) DO UPDATE SET hostname = excluded.hostname, channel = excluded.channel,
           seed = excluded.seed, running_slot = excluded.running_slot, version = excluded.version,
           other_version = excluded.other_version, other_state = excluded.other_state,
           event = excluded.event, target = excluded.target, progress_percent = excluded.progress_percent,
           reason = excluded.reason, error_code = excluded.error_code, error_message = excluded.error_message,
           boot_id = excluded.boot_id, uptime_ms = excluded.uptime_ms, agent_version = excluded.agent_version,
           poll_interval_ms = excluded.poll_interval_ms, reported_at = excluded.reported_at,
           received_at = excluded.received_at, silent_at = excluded.silent_at,
           state_since = CASE WHEN hosts.event = excluded.event THEN hosts.state_since ELSE excluded.state_since END,
           slow_at = CASE WHEN hosts.event = excluded.event THEN hosts.slow_at ELSE excluded.slow_at END,
           prev_channel = hosts.channel, prev_version = hosts.version, prev_event = hosts.event,
           event_count = hosts.event_count
             + CASE WHEN hosts.event = 'checked' AND excluded.event = 'checked' THEN 0 ELSE 1 END
         RETURNING prev_channel, prev_version, prev_event, event_count`,
        [
          r.machineId,
          r.hostname,
          r.channel,
          r.seed,
          r.running.slot,
          r.running.version,
          r.other.version,
          r.other.state,
          r.event,
          r.target ?? null,
          r.progressPercent ?? null,
          r.reason ?? null,
          err?.code ?? null,
          err?.message ?? null,
          r.bootId,
          r.uptimeMs,
          r.agentVersion,
          r.pollIntervalMs ?? null,
          r.time,
          nowMs,
          nowMs,
          nowMs,
          nowMs + SILENT_POLLS * poll,
          limit === undefined ? null : nowMs + limit,
        ],
      );
      const first = !prev || prev.prev_version === null;
      if (first || prev.prev_version !== r.running.version || prev.prev_channel !== r.channel) {
        if (!first)
          await tx.run(
            "INSERT INTO version_changes (channel, version, at, delta) VALUES (?, ?, ?, -1)",
            [prev.prev_channel, prev.prev_version, nowMs],
          );
        await tx.run(
          "INSERT INTO version_changes (channel, version, at, delta) VALUES (?, ?, ?, 1)",
          [r.channel, r.running.version, nowMs],
        );
      }
      const eventRow = [
        nowMs,
        r.time,
        r.event,
        r.running.version,
        r.target ?? null,
        r.progressPercent ?? null,
        r.reason ?? null,
        err?.code ?? null,
        err?.message ?? null,
      ];
      // A timeline keeps its host's newest events; a repeated "checked" replaces the one before.
      if (!first && prev?.prev_event === "checked" && r.event === "checked")
        await tx.run(
          `UPDATE events SET received_at = ?, reported_at = ?, event = ?, version = ?, target = ?,
             progress_percent = ?, reason = ?, error_code = ?, error_message = ?
           WHERE id = (SELECT MAX(id) FROM events WHERE machine_id = ?)`,
          [...eventRow, r.machineId],
        );
      else {
        await tx.run(
          `INSERT INTO events (machine_id, received_at, reported_at, event, version, target,
             progress_percent, reason, error_code, error_message) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
          [r.machineId, ...eventRow],
        );
        // trimmed in steps of 16, so the delete runs once per 16 events of a host
        if (Number(prev?.event_count ?? 1) > EVENTS_PER_HOST + 16) {
          await tx.run(
            `DELETE FROM events WHERE machine_id = ? AND id <= (SELECT id FROM events WHERE machine_id = ?
               ORDER BY id DESC LIMIT 1 OFFSET ${EVENTS_PER_HOST})`,
            [r.machineId, r.machineId],
          );
          await tx.run(`UPDATE hosts SET event_count = ${EVENTS_PER_HOST} WHERE machine_id = ?`, [
            r.machineId,
          ]);
        }
      }
      const tried = r.target ?? (r.event === "marked-good" ? r.running.version : undefined);
      if (tried === undefined) return {};
      const failure =
        r.event === "rollback" ? "rollback" : r.event === "error" && r.target ? "error" : null;
      const why = failure ? (r.reason ?? (err ? `${err.code}: ${err.message}` : r.event)) : null;
      await tx.run(
        `INSERT INTO attempts (channel, version, machine_id, first_at, failure, reason) VALUES (?, ?, ?, ?, ?, ?)
         ON CONFLICT (channel, version, machine_id) DO UPDATE SET
           failure = COALESCE(attempts.failure, excluded.failure),
           reason = COALESCE(attempts.reason, excluded.reason)`,
        [r.channel, tried, r.machineId, nowMs, failure, why],
      );
      if (!failure || !this.halt) return {};
      const halted = await this.haltIfDue(tx, r.channel, tried, nowMs);
      return halted ? { halted } : {};
    });
  }

  /** README.md, "Halting": the automatic hold, when the version's failures pass the policy. */
  private async haltIfDue(
    tx: Sql,
    channel: string,
    version: string,
    nowMs: number,
  ): Promise<Hold | undefined> {
    const policy = this.halt;
    if (!policy) return undefined;
    // Servers sharing a PostgreSQL count one version's failures in turn, so
    // two failures arriving at once through two servers are not both missed.
    if (tx.dialect === "postgres")
      await tx.query("SELECT pg_advisory_xact_lock(hashtext(?))", [`${channel} ${version}`]);
    const [held] = await tx.query("SELECT 1 AS x FROM holds WHERE channel = ? AND version = ?", [
      channel,
      version,
    ]);
    // Any hold row, resumed ones too: once an operator resumed a version, it is theirs.
    if (held) return undefined;
    const [c] = await tx.query<{ tried: number; failed: number; rolled: number }>(
      `SELECT COUNT(*) AS tried, COUNT(failure) AS failed,
         SUM(CASE WHEN failure = 'rollback' THEN 1 ELSE 0 END) AS rolled
       FROM attempts WHERE channel = ? AND version = ?`,
      [channel, version],
    );
    const tried = Number(c?.tried ?? 0);
    const failed = Number(c?.failed ?? 0);
    const due = "hosts" in policy ? failed >= policy.hosts : failed * 100 >= policy.percent * tried;
    if (!due || failed === 0) return undefined;
    const reasons = await tx.query<{ hostname: string; reason: string }>(
      `SELECT h.hostname AS hostname, a.reason AS reason FROM attempts a JOIN hosts h ON h.machine_id = a.machine_id
       WHERE a.channel = ? AND a.version = ? AND a.failure IS NOT NULL ORDER BY a.first_at, h.hostname LIMIT 5`,
      [channel, version],
    );
    const rolled = Number(c?.rolled ?? 0);
    const what =
      rolled === failed
        ? "rolled back"
        : rolled === 0
          ? "failed to install"
          : `rolled back or failed to install (${rolled} rolled back)`;
    const listed = reasons.map((x) => `${x.hostname}: ${x.reason}`).join("; ");
    const reason = `halted: ${failed} of ${tried} hosts that tried ${version} ${what}: ${listed}${failed > reasons.length ? "; ..." : ""}`;
    const hold: Hold = { channel, version, reason, by: "auto", at: iso(nowMs) };
    const n = await tx.run(
      "INSERT INTO holds (channel, version, reason, set_by, at) VALUES (?, ?, ?, 'auto', ?) ON CONFLICT (channel, version) DO NOTHING",
      [channel, version, reason, nowMs],
    );
    return n > 0 ? hold : undefined;
  }

  /** Pause: an operator's hold (replacing a resumed one). false when it was already holding. */
  async pause(channel: string, version: string, reason: string, nowMs: number): Promise<boolean> {
    const n = await this.sql.run(
      `INSERT INTO holds (channel, version, reason, set_by, at) VALUES (?, ?, ?, 'operator', ?)
       ON CONFLICT (channel, version) DO UPDATE SET reason = excluded.reason, set_by = 'operator',
         at = excluded.at, resumed_at = NULL WHERE holds.resumed_at IS NOT NULL`,
      [channel, version, reason, nowMs],
    );
    return n > 0;
  }

  /** Resume: the hold stops holding. false when there was none holding. */
  async resume(channel: string, version: string, nowMs: number): Promise<boolean> {
    const n = await this.sql.run(
      "UPDATE holds SET resumed_at = ? WHERE channel = ? AND version = ? AND resumed_at IS NULL",
      [nowMs, channel, version],
    );
    return n > 0;
  }

  /** Holds of one channel (or all), holding ones only unless `withResumed`. */
  async holds(channel?: string, withResumed = false): Promise<Hold[]> {
    const where = [
      channel === undefined ? "" : "channel = ?",
      withResumed ? "" : "resumed_at IS NULL",
    ]
      .filter(Boolean)
      .join(" AND ");
    const rows = await this.sql.query(
      `SELECT channel, version, reason, set_by, at, resumed_at FROM holds ${where ? `WHERE ${where}` : ""} ORDER BY at DESC, version`,
      channel === undefined ? [] : [channel],
    );
    return rows.map((h) => ({
      channel: String(h.channel),
      version: String(h.version),
      reason: String(h.reason),
      by: h.set_by as Hold["by"],
      at: iso(Number(h.at)),
      ...(h.resumed_at == null ? {} : { resumedAt: iso(Number(h.resumed_at)) }),
    }));
  }

  private toHost(r: HostDbRow, nowMs: number): Host {
    return {
      machineId: r.machine_id,
      hostname: String(r.hostname),
      channel: String(r.channel),
      seed: Number(r.seed),
      runningSlot: String(r.running_slot),
      version: String(r.version),
      otherVersion: String(r.other_version),
      otherState: String(r.other_state),
      event: r.event,
      target: (r.target as string | null) ?? null,
      progressPercent: r.progress_percent == null ? null : Number(r.progress_percent),
      reason: (r.reason as string | null) ?? null,
      lastError: errorOf(r.error_code, r.error_message),
      bootId: String(r.boot_id),
      uptimeMs: Number(r.uptime_ms),
      agentVersion: String(r.agent_version),
      pollIntervalMs: r.poll_interval_ms == null ? null : Number(r.poll_interval_ms),
      reportedAt: String(r.reported_at),
      receivedAt: iso(r.received_at),
      stateSince: iso(r.state_since),
      firstSeen: iso(Number(r.first_seen)),
      stuck: stuckOf(r, nowMs, this.defaultPollIntervalMs),
    };
  }

  async hosts(f: HostFilter, nowMs: number): Promise<Host[]> {
    const where: string[] = [];
    const params: unknown[] = [];
    const add = (cond: string, ...values: unknown[]) => {
      where.push(cond);
      params.push(...values);
    };
    if (f.channel !== undefined) add("channel = ?", f.channel);
    if (f.version !== undefined) add("version = ?", f.version);
    if (f.state === "stuck") add(STUCK_SQL, nowMs, nowMs);
    else if (f.state !== undefined) add("event = ?", f.state);
    if (f.search !== undefined && f.search !== "") {
      const like = `%${f.search.toLowerCase().replace(/[\\%_]/g, (c) => `\\${c}`)}%`;
      where.push("(LOWER(hostname) LIKE ? ESCAPE '\\' OR machine_id LIKE ? ESCAPE '\\')");
      params.push(like, like);
    }
    const limit = Math.min(Math.max(f.limit ?? 500, 1), 5000);
    const rows = await this.sql.query<HostDbRow>(
      `SELECT * FROM hosts ${where.length ? `WHERE ${where.join(" AND ")}` : ""} ORDER BY hostname, machine_id LIMIT ${limit}`,
      params,
    );
    return rows.map((r) => this.toHost(r, nowMs));
  }

  async host(
    machineId: string,
    nowMs: number,
  ): Promise<{ host: Host; events: TimelineEvent[] } | undefined> {
    const [row] = await this.sql.query<HostDbRow>("SELECT * FROM hosts WHERE machine_id = ?", [
      machineId,
    ]);
    if (!row) return undefined;
    const events = await this.sql.query(
      `SELECT * FROM events WHERE machine_id = ? ORDER BY id DESC LIMIT ${EVENTS_PER_HOST}`,
      [machineId],
    );
    return {
      host: this.toHost(row, nowMs),
      events: events.map((e) => ({
        receivedAt: iso(Number(e.received_at)),
        reportedAt: String(e.reported_at),
        event: e.event as ReportEvent,
        version: String(e.version),
        target: (e.target as string | null) ?? null,
        progressPercent: e.progress_percent == null ? null : Number(e.progress_percent),
        reason: (e.reason as string | null) ?? null,
        error: errorOf(e.error_code, e.error_message),
      })),
    };
  }

  async summary(nowMs: number): Promise<Summary> {
    // One scan of a covering index for the counts; the stuck ones by their two indexes.
    const [groups, [counts], stuckRows, failures, holds] = await Promise.all([
      this.sql.query(
        "SELECT channel, version, event, COUNT(*) AS n FROM hosts GROUP BY channel, version, event",
      ),
      this.sql.query(`SELECT COUNT(*) AS stuck FROM hosts WHERE ${STUCK_SQL}`, [nowMs, nowMs]),
      this.sql.query<HostDbRow>(
        `SELECT * FROM hosts WHERE ${STUCK_SQL} ORDER BY received_at LIMIT 100`,
        [nowMs, nowMs],
      ),
      this.sql.query(
        `SELECT e.machine_id AS machine_id, h.hostname AS hostname, h.channel AS channel, e.event AS event,
           e.target AS target, e.version AS version, e.reason AS reason, e.error_code AS error_code,
           e.error_message AS error_message, e.received_at AS received_at
         FROM events e JOIN hosts h ON h.machine_id = e.machine_id
         WHERE e.event IN ('rollback', 'fallback', 'error') ORDER BY e.id DESC LIMIT 50`,
      ),
      this.holds(undefined, true),
    ]);
    const sum = <K extends string>(keyOf: (g: Row) => K) => {
      const m = new Map<K, number>();
      for (const g of groups) m.set(keyOf(g), (m.get(keyOf(g)) ?? 0) + Number(g.n));
      return [...m].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    };
    return {
      now: iso(nowMs),
      hosts: groups.reduce((n, g) => n + Number(g.n), 0),
      stuck: Number(counts?.stuck ?? 0),
      channels: sum((g) => String(g.channel)).map(([channel, hosts]) => ({ channel, hosts })),
      versions: sum((g) => `${g.channel}\u0000${g.version}`).map(([k, hosts]) => {
        const [channel = "", version = ""] = k.split("\u0000");
        return { channel, version, hosts };
      }),
      events: sum((g) => String(g.event)).map(([event, hosts]) => ({ event, hosts })),
      holds,
      failures: failures.map((f) => ({
        machineId: String(f.machine_id),
        hostname: String(f.hostname),
        channel: String(f.channel),
        event: f.event as ReportEvent,
        target: (f.target as string | null) ?? null,
        version: String(f.version),
        reason: (f.reason as string | null) ?? null,
        error: errorOf(f.error_code, f.error_message),
        receivedAt: iso(Number(f.received_at)),
      })),
      stuckHosts: stuckRows.map((r) => this.toHost(r, nowMs)),
    };
  }

  /** Hosts running each version of a channel over time, in at most `buckets` steps. */
  async rollout(channel: string, nowMs: number, buckets = 60): Promise<RolloutSeries> {
    const [span] = await this.sql.query<{ lo: number | null }>(
      "SELECT MIN(at) AS lo FROM version_changes WHERE channel = ?",
      [channel],
    );
    if (span?.lo == null) return { channel, times: [], series: [] };
    const lo = Number(span.lo);
    const step = Math.max(1000, Math.ceil((nowMs - lo + 1) / buckets));
    const rows = await this.sql.query(
      `SELECT version, b, SUM(delta) AS d FROM (SELECT version, (at - CAST(? AS BIGINT)) / CAST(? AS BIGINT) AS b,
         delta FROM version_changes WHERE channel = ?) s GROUP BY version, b ORDER BY b`,
      [lo, step, channel],
    );
    const n = Math.floor((nowMs - lo) / step) + 1;
    const byVersion = new Map<string, number[]>();
    for (const r of rows) {
      const v = String(r.version);
      let d = byVersion.get(v);
      if (!d) {
        d = new Array<number>(n).fill(0);
        byVersion.set(v, d);
      }
      const b = Math.min(Number(r.b), n - 1);
      d[b] = (d[b] ?? 0) + Number(r.d);
    }
    const series = [...byVersion].map(([version, deltas]) => {
      let sum = 0;
      return { version, hosts: deltas.map((x) => (sum += x)) };
    });
    const times = Array.from({ length: n }, (_, i) => iso(lo + (i + 1) * step - 1));
    return { channel, times, series };
  }
}
