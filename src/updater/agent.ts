/**
 * The update agent (README.md): after-boot handling, one poll, one install,
 * the daemon loop and the status report. It carries out the decisions of
 * policy.ts with the installer, over the machine's interfaces (machine.ts).
 */
import type { KeyObject } from "node:crypto";
import type { BootState } from "../bootloader/index.ts";
import { keyId } from "../bundle/index.ts";
import type { Clock } from "../clock.ts";
import { isBaseError } from "../errors.ts";
import type { Report, ReportEvent } from "../fleet/report.ts";
import type { AgentConfig, EtcdLockConfig, SlotName } from "../image/index.ts";
import { KEYS_DIR } from "../image/index.ts";
import type { Logger } from "../log.ts";
import {
  type IndexSigned,
  resolveBundleUrl,
  rolloutBucket,
  SEED_RANGE,
  verifyIndex,
  waveSlot,
} from "../repo/index.ts";
import { type AfterBootResult, afterBoot } from "./after-boot.ts";
import { errText, UpdaterError } from "./errors.ts";
import { AGENT_VERSION, type FleetHttp, FleetReporter, gotFleetHttp } from "./fleet.ts";
import type { HealthRunner } from "./health.ts";
import {
  type BootStore,
  type BundleSource,
  type DeltaSummary,
  fileSource,
  type InstallResult,
  installBundle,
  type StateHandle,
} from "./installer.ts";
import { type AgentLock, acquireLock } from "./lock.ts";
import type {
  BootedSlotSource,
  ByteRange,
  HostFacts,
  HttpClient,
  ImageFiles,
  Kexec,
  Random,
  Rebooter,
  RebootLockClient,
} from "./machine.ts";
import { locateSlots, systemHostFacts } from "./machine.ts";
import { backoffMs, decideUpdate, otherSlot, pollDelayMs } from "./policy.ts";
import {
  type RebootDeps,
  type RebootOutcome,
  rebootIntoUpdate,
  releaseRebootLock,
} from "./reboot.ts";
import {
  type AgentState,
  type HeldRecord,
  initialAgentState,
  type RebootWait,
  type RolloutWait,
  StateStore,
} from "./state-file.ts";
import { type AgentStatus, statusOf } from "./status.ts";

/** How long a reboot or the end of a one-shot command waits for queued reports to go out. */
export const REBOOT_REPORT_WAIT_MS = 2000;

/** An open boot disk: the boot state, and closing it. */
export interface BootDiskHandle extends BootStore {
  close(): Promise<void>;
}

export type { AfterBootResult };

export interface AgentOptions {
  config: AgentConfig;
  /** Boot disk: a block device, or an image file standing for one. */
  diskPath: string;
  stateDir: string;
  log: Logger;
  clock: Clock;
  random: Random;
  rebooter: Rebooter;
  http: HttpClient;
  health: HealthRunner;
  bootedSlot: BootedSlotSource;
  openBootDisk: (path: string, o: { readOnly: boolean }) => Promise<BootDiskHandle>;
  /** What the booted image carries (keys, release), given where its slot lies on the disk. */
  imageFiles: (bootedSlot: SlotName, slotRange: ByteRange) => ImageFiles;
  /** `--pubkey`: when given, the only keys trusted. */
  pubkeys?: TrustedKey[];
  /** Keys from config.trustedKeys, loaded; when none, the booted image's keys directory. */
  configKeys?: TrustedKey[];
  /** Boots an installed slot without the firmware (`reboot.method: kexec`); absent: not on a host. */
  kexec?: Kexec;
  /** The reboot semaphore of `reboot.etcd` (src/lock); absent: no etcd client. */
  rebootLock?: (etcd: EtcdLockConfig) => RebootLockClient;
  /** This host's /etc/machine-id; null or absent: none (the config's `machineId`, else the rollout id). */
  machineId?: () => Promise<string | null>;
  /** Time zone of the reboot window; default the host's. */
  timeZone?: string;
  /** The requests to the fleet server (`report:`); default got's (fleet.ts). */
  fleetHttp?: FleetHttp;
  /** What reports say of the machine; default the running one's. */
  host?: HostFacts;
}

/** A trusted public key and where it came from (logged, so an operator sees what is trusted). */
export interface TrustedKey {
  key: KeyObject;
  source: string;
}

export type CheckResult =
  | { outcome: "up-to-date"; version: string }
  | { outcome: "skipped"; version: string; reason: string }
  | {
      outcome: "installed" | "pending-reboot";
      version: string;
      slot: SlotName;
      rebooting: boolean;
      /** Not rebooting: what the reboot waits for (README.md, "Reboot"). */
      waiting?: RebootWait;
      /** "installed": bytes received for it against the bundle's size; a delta install's counts. */
      bytesFetched?: number;
      bundleBytes?: number;
      delta?: DeltaSummary;
    };

interface Context {
  disk: BootDiskHandle;
  boot: BootState;
  booted: SlotName;
  slots: Record<SlotName, ByteRange>;
}

class FileStateHandle implements StateHandle {
  current: AgentState;
  readonly #store: StateStore;
  constructor(store: StateStore, state: AgentState) {
    this.#store = store;
    this.current = state;
  }
  async update(change: (s: AgentState) => AgentState): Promise<void> {
    const next = change(this.current);
    await this.#store.save(next);
    this.current = next;
  }
}

export class Agent {
  readonly #o: AgentOptions;
  readonly #log: Logger;
  readonly #store: StateStore;
  readonly #state: FileStateHandle;

  readonly #readOnly: boolean;
  /** Read-only: why the state file could not be used (shown as the last error). */
  #unreadable: AgentState["lastError"] = null;
  /** Reports to the fleet server (`report:`); absent: none. */
  readonly #reporter: FleetReporter | undefined;
  /** The boot state last read: what a report says of the slots. */
  #seen: { boot: BootState; booted: SlotName } | undefined;
  /** The version an install is under way for: an error is about it. */
  #attempting: string | null = null;
  /** The rebooter, sending `rebooting` first. */
  readonly #rebooter: Rebooter;

  private constructor(
    o: AgentOptions,
    store: StateStore,
    state: FileStateHandle,
    readOnly: boolean,
  ) {
    this.#o = o;
    this.#log = o.log;
    this.#store = store;
    this.#state = state;
    this.#readOnly = readOnly;
    this.#reporter =
      o.config.report && !readOnly
        ? new FleetReporter({
            config: o.config.report,
            http: o.fleetHttp ?? gotFleetHttp,
            clock: o.clock,
            log: o.log,
          })
        : undefined;
    // after boot, an unhealthy slot's reboot (the update's own goes through beforeReboot)
    this.#rebooter = {
      reboot: async (reason) => {
        const booted = this.#seen?.boot.slots[this.#seen.booted].version;
        await this.#announceReboot(booted, reason);
        await o.rebooter.reboot(reason);
      },
    };
  }

  /**
   * The `rebooting` report, and a bounded wait (REBOOT_REPORT_WAIT_MS) for
   * the queue to go out before the host goes down, never holding it up.
   */
  async #announceReboot(target: string | undefined, reason: string): Promise<void> {
    if (!this.#reporter) return;
    await this.#reportNow("rebooting", target ? { target, reason } : { reason });
    await this.#reporter.flush(REBOOT_REPORT_WAIT_MS);
  }

  /** The reports still queued, sent (sent, dropped), for status and tests. */
  get reports(): { queued: number; sent: number; dropped: number } | null {
    const r = this.#reporter;
    return r ? { queued: r.queued, sent: r.sent, dropped: r.dropped } : null;
  }

  /**
   * One-shot commands end here: the queued reports get a bounded time to go
   * out (REBOOT_REPORT_WAIT_MS), then the reporter stops.
   */
  async close(): Promise<void> {
    if (!this.#reporter) return;
    await this.#reporter.flush(REBOOT_REPORT_WAIT_MS);
    this.#reporter.close();
  }

  /**
   * Queue a report (README.md, "Reports") of `event` with the slots as last
   * read: never awaited, never failing the caller.
   */
  #report(
    event: ReportEvent,
    extra: Pick<Report, "target" | "progressPercent" | "reason"> = {},
    withError = false,
  ): void {
    void this.#reportNow(event, extra, withError);
  }

  /** As #report, resolving once the report is queued (never rejecting). */
  async #reportNow(
    event: ReportEvent,
    extra: Pick<Report, "target" | "progressPercent" | "reason"> = {},
    withError = false,
  ): Promise<void> {
    const reporter = this.#reporter;
    const seen = this.#seen;
    if (!reporter || !seen) return;
    try {
      reporter.send(await this.#buildReport(event, extra, withError, seen));
    } catch (err) {
      this.#log.error(`cannot build a report: ${errText(err)}`);
    }
  }

  #hostFacts(): HostFacts {
    return this.#o.host ?? systemHostFacts();
  }

  async #buildReport(
    event: ReportEvent,
    extra: Pick<Report, "target" | "progressPercent" | "reason">,
    withError: boolean,
    seen: { boot: BootState; booted: SlotName },
  ): Promise<Report> {
    const { boot, booted } = seen;
    const other = otherSlot(booted);
    const o = boot.slots[other];
    const host = this.#hostFacts();
    const e = this.state.lastError;
    // the schema allows no control characters but tab and newline
    const clean = (t: string, n: number) =>
      [...t.slice(0, n)]
        .map((ch) => {
          const code = ch.charCodeAt(0);
          return (code < 32 && ch !== "\t" && ch !== "\n") || code === 127 ? " " : ch;
        })
        .join("");
    const reason = extra.reason === undefined ? undefined : clean(extra.reason, 2000);
    return {
      format: 1,
      machineId: (await this.#machineId()).toLowerCase().replaceAll("-", ""),
      hostname: host.hostname(),
      channel: this.#o.config.channel,
      seed: this.state.seed ?? 0,
      running: { slot: booted, version: boot.slots[booted].version },
      other: {
        slot: other,
        version: o.version,
        state:
          o.version === "" || o.rootHash === ""
            ? "empty"
            : o.good
              ? "good"
              : o.tries > 0
                ? "installed"
                : "bad",
      },
      event,
      ...(extra.target !== undefined ? { target: extra.target } : {}),
      ...(extra.progressPercent !== undefined ? { progressPercent: extra.progressPercent } : {}),
      ...(reason ? { reason } : {}),
      ...(withError && e
        ? { lastError: { code: e.code, message: clean(e.message, 2000) || e.code, at: e.at } }
        : {}),
      bootId: (await host.bootId()) ?? "00000000-0000-0000-0000-000000000000",
      uptimeMs: host.uptimeMs(),
      agentVersion: AGENT_VERSION,
      pollIntervalMs: Math.min(30 * 86_400_000, Math.max(1000, this.#o.config.pollIntervalMs)),
      time: this.#o.clock.now().toISOString(),
    };
  }

  /**
   * Load the state file (README.md, "State file"). A corrupt one was moved
   * aside by the store; it is logged and recorded as the last error, and the
   * agent goes on from an empty state (the boot state stays the authority).
   * `readOnly` (status): nothing on disk changes — no temp file removed, a
   * corrupt file left where it is (reported as the last error), no rollout
   * identity made; the writing commands refuse to run.
   */
  static async open(o: AgentOptions, mode: { readOnly?: boolean } = {}): Promise<Agent> {
    const store = new StateStore(o.stateDir);
    if (mode.readOnly) {
      const r = await store.read();
      const state = "state" in r ? r.state : initialAgentState();
      const agent = new Agent(o, store, new FileStateHandle(store, state), true);
      if ("corrupt" in r)
        agent.#unreadable = {
          at: o.clock.now().toISOString(),
          code: "STATE_CORRUPT",
          message: `state file ${store.path} is corrupt (${r.corrupt.join("; ")}); the next command that writes it moves it aside and starts from an empty state`,
        };
      return agent;
    }
    await store.removeStaleTemps();
    let state: AgentState;
    let corrupt: UpdaterError | undefined;
    try {
      state = await store.load(o.clock.now());
    } catch (err) {
      if (!(err instanceof UpdaterError) || err.code !== "STATE_CORRUPT" || !err.details.movedTo)
        throw err;
      o.log.error({ code: err.code, movedTo: err.details.movedTo }, err.message);
      corrupt = err;
      state = initialAgentState();
    }
    const handle = new FileStateHandle(store, state);
    const agent = new Agent(o, store, handle, false);
    if (corrupt) await agent.#recordError(corrupt);
    if (handle.current.rolloutId === null) {
      const id = o.random.id();
      await handle.update((s) => ({ ...s, rolloutId: id }));
    }
    // drawn once, kept: the host's place in every staged rollout (README.md, "Waves")
    if (handle.current.seed === null) {
      const seed = o.random.int(SEED_RANGE);
      await handle.update((s) => ({ ...s, seed }));
    }
    return agent;
  }

  get state(): AgentState {
    return this.#state.current;
  }

  async #context(): Promise<Context> {
    const disk = await this.#o.openBootDisk(this.#o.diskPath, { readOnly: this.#readOnly });
    try {
      const boot = await disk.readState();
      const booted = await this.#o.bootedSlot.bootedSlot(boot, {
        // strategy off leaves the reboot to whoever runs the image; a window or
        // the lock means the host it stands for has not rebooted yet
        awaitingReboot:
          this.state.rebootWait && this.state.rebootWait.for !== "operator"
            ? this.state.rebootWait.slot
            : null,
      });
      const slots = await locateSlots(this.#o.diskPath, this.#o.config.slots);
      this.#seen = { boot, booted };
      return { disk, boot, booted, slots };
    } catch (err) {
      await disk.close();
      throw err;
    }
  }

  async #withContext<T>(fn: (c: Context) => Promise<T>): Promise<T> {
    const c = await this.#context();
    try {
      return await fn(c);
    } finally {
      await c.disk.close();
    }
  }

  #lockDepth = 0;
  #lock: AgentLock | undefined;

  /** Run `fn` holding the state directory's lock (reentrant: run() holds it for its lifetime). */
  async #locked<T>(fn: () => Promise<T>): Promise<T> {
    if (this.#readOnly)
      throw new Error("a read-only agent (status) cannot run a command that writes");
    if (this.#lockDepth === 0) this.#lock = await acquireLock(this.#o.stateDir);
    this.#lockDepth += 1;
    try {
      return await fn();
    } finally {
      this.#lockDepth -= 1;
      if (this.#lockDepth === 0) await this.#lock?.release();
    }
  }

  async #recordError(err: unknown): Promise<void> {
    const code = isBaseError(err) ? err.code : "UNEXPECTED";
    const at = this.#o.clock.now().toISOString();
    await this.#state.update((s) => ({ ...s, lastError: { at, code, message: errText(err) } }));
  }

  /**
   * Record a failure of `fn` as the last error, and rethrow it. A failure
   * because `signal` aborted (SIGTERM stopping a poll or a download) is no
   * error: nothing is recorded (the progress of a download is kept).
   */
  async #recording<T>(fn: () => Promise<T>, signal?: AbortSignal): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      if (signal?.aborted) throw err;
      await this.#recordError(err).catch((e: unknown) =>
        this.#log.error({ err: e }, `cannot record the error in the state file: ${errText(e)}`),
      );
      // an install's failure is an `error` of its version; any other is a check that failed
      // (README.md, "Reports": a repository outage is no failure of a release)
      const target = this.#attempting;
      if (target) this.#report("error", { target }, true);
      else this.#report("checked", {}, true);
      throw err;
    }
  }

  /** --pubkey alone when given; else the config's keys; else the booted image's keys directory. */
  async #trustedKeys(c: Context): Promise<KeyObject[]> {
    const given = this.#o.pubkeys ?? [];
    const own = this.#o.configKeys ?? [];
    const keys: TrustedKey[] =
      given.length > 0
        ? given
        : own.length > 0
          ? own
          : (await this.#image(c).trustedKeys()).map((key) => ({
              key,
              source: `${KEYS_DIR} of the booted image (slot ${c.booted})`,
            }));
    if (keys.length === 0)
      throw new UpdaterError(
        "CONFIG_INVALID",
        `no trusted public keys: none given with --pubkey, none in the config (trustedKeys), none in the booted image (${KEYS_DIR})`,
      );
    const listed = keys.map((k) => `${keyId(k.key)} from ${k.source}`);
    this.#log.info(`trusting ${listed.join("; ")}`);
    return keys.map((k) => k.key);
  }

  async #compatible(c: Context): Promise<string> {
    return this.#o.config.compatible ?? (await this.#image(c).release()).compatible;
  }

  #image(c: Context): ImageFiles {
    return this.#o.imageFiles(c.booted, c.slots[c.booted]);
  }

  /**
   * After boot (README.md, "After boot", the decision table; after-boot.ts):
   * mark the new slot good when its health checks pass, reboot when they
   * fail, record a rollback or a fallback, confirm the boot of a good slot.
   */
  afterBoot(): Promise<AfterBootResult> {
    return this.#locked(() => this.#afterBoot());
  }

  #afterBoot(): Promise<AfterBootResult> {
    return this.#recording(() =>
      this.#withContext(async (c) => {
        const r = await afterBoot(
          {
            config: this.#o.config,
            log: this.#log,
            clock: this.#o.clock,
            health: this.#o.health,
            rebooter: this.#rebooter,
            state: this.#state,
            recordError: (err) => this.#recordError(err),
          },
          { ...c, diskPath: this.#o.diskPath },
        );
        if (r.action !== "await-reboot" && r.action !== "unhealthy")
          await this.#releaseLockIfUp(c.booted, await c.disk.readState());
        this.#seen = { boot: await c.disk.readState(), booted: c.booted };
        if (r.action === "marked-good") this.#report("marked-good");
        else if (r.action === "rollback")
          this.#report("rollback", { target: r.version, reason: r.reason });
        else if (r.action === "fallback")
          this.#report("fallback", { target: r.version, reason: r.reason });
        return r;
      }),
    );
  }

  /**
   * One poll (README.md, "Update policy"): fetch and verify the channel
   * index, decide, and install when there is something to install.
   */
  check(signal?: AbortSignal): Promise<CheckResult> {
    return this.#locked(() => this.#check(signal));
  }

  #check(signal?: AbortSignal): Promise<CheckResult> {
    return this.#recording(
      () =>
        this.#withContext(async (c): Promise<CheckResult> => {
          const cfg = this.#o.config;
          if (cfg.repoUrl === null)
            throw new UpdaterError(
              "CONFIG_INVALID",
              "repoUrl is not set in the config: nowhere to check for updates",
            );
          const indexUrl = new URL(
            `channels/${cfg.channel}.json`,
            cfg.repoUrl.endsWith("/") ? cfg.repoUrl : `${cfg.repoUrl}/`,
          ).href;
          await this.#releaseLockIfUp(c.booted, c.boot);
          const now = this.#o.clock.now();
          this.#log.info({ url: indexUrl }, `checking ${indexUrl}`);
          const keys = await this.#trustedKeys(c);
          const compatible = await this.#compatible(c);
          const bytes = await this.#o.http.fetch(indexUrl, {
            maxBytes: cfg.maxIndexBytes,
            ...(signal ? { signal } : {}),
          });
          const seen = this.state.index;
          const v = verifyIndex(bytes, {
            channel: cfg.channel,
            trustedKeys: keys,
            now,
            minSerial: seen?.serial ?? 0,
            ...(seen ? { minSerialDigest: seen.sha256 } : {}),
          });
          await this.#state.update((s) => ({
            ...s,
            index: { serial: v.signed.serial, sha256: v.digest },
          }));
          const latest = v.signed.latest;
          const record = (outcome: string) =>
            this.#state.update((s) => ({
              ...s,
              lastCheck: { at: now.toISOString(), outcome, version: latest.version },
            }));
          const decision = decideUpdate({
            bootedVersion: c.boot.slots[c.booted].version,
            compatible,
            candidate: {
              version: latest.version,
              compatible: v.signed.compatible,
              minUpdateFrom: latest.minUpdateFrom,
            },
            badVersions: this.state.badVersions,
          });
          if (decision.action === "refuse") {
            await record(`refused: ${decision.code}`);
            throw new UpdaterError(decision.code, `channel ${cfg.channel}: ${decision.message}`, {
              details: { version: latest.version, serial: v.signed.serial },
            });
          }
          if (decision.action === "none") {
            await record(decision.reason);
            this.#report("checked", { reason: decision.message });
            if (decision.reason === "bad-version") {
              this.#log.info(
                { version: latest.version },
                `skip ${latest.version}: recorded as bad (it rolled back)`,
              );
              return { outcome: "skipped", version: latest.version, reason: decision.message };
            }
            this.#log.info({ version: latest.version }, `up to date: ${decision.message}`);
            return { outcome: "up-to-date", version: latest.version };
          }
          const percent = v.signed.rollout.percent;
          if (
            percent < 100 &&
            rolloutBucket(this.state.rolloutId ?? "", latest.version) >= percent
          ) {
            await record("rollout");
            this.#report("checked", {
              reason: `skip ${latest.version}: not in the ${percent}% rollout`,
            });
            this.#log.info(
              { version: latest.version, percent },
              `skip ${latest.version}: this host is not in its ${percent}% rollout yet`,
            );
            return {
              outcome: "skipped",
              version: latest.version,
              reason: `not in the ${percent}% rollout`,
            };
          }
          const waiting = await this.#waveWait(v.signed, now);
          if (waiting) {
            await record("wave");
            const reason = `waiting for wave ${waiting.wave} of ${waiting.waves} (${waiting.percent}%): this host takes ${latest.version} at ${waiting.startsAt}`;
            this.#log.info(
              { version: latest.version, startsAt: waiting.startsAt },
              `skip ${latest.version}: ${reason}`,
            );
            this.#report("checked", { reason });
            return { outcome: "skipped", version: latest.version, reason };
          }
          const held = await this.#heldBy(latest.version, now);
          if (held) {
            await record("held");
            this.#log.info({ version: latest.version }, `skip ${latest.version}: ${held}`);
            this.#report("checked", { reason: `skip ${latest.version}: ${held}` });
            return { outcome: "skipped", version: latest.version, reason: held };
          }
          // no target: the server counts a report with one as a try of that version
          this.#report("checked", { reason: `update ${latest.version} available` });
          const url = resolveBundleUrl(indexUrl, latest.bundle).href;
          const http = this.#o.http;
          const source: BundleSource = {
            location: url,
            open: (offset, sig) =>
              http.openRange(url, {
                offset,
                maxBytes: latest.size - offset,
                ...(sig ? { signal: sig } : {}),
              }),
            ...rangesOf(http, url),
          };
          this.#log.info(
            { version: latest.version, url },
            `update ${latest.version} available (running ${c.boot.slots[c.booted].version})`,
          );
          this.#attempting = latest.version;
          this.#report("download-started", { target: latest.version, progressPercent: 0 });
          const result = await this.#install(c, keys, compatible, {
            source,
            expected: {
              version: latest.version,
              slotDataOffset: latest.slotDataOffset,
              manifestSha256: v.manifestSha256,
              bundleSize: latest.size,
              bundleSha256: latest.sha256,
            },
            ...(signal ? { signal } : {}),
          });
          await record(result.outcome);
          return await this.#afterInstall(result, c);
        }),
      signal,
    ).finally(() => {
      this.#attempting = null;
    });
  }

  /**
   * Whether this host's wave has not come yet (README.md, "Waves"): its start
   * time from its seed; recorded for `agent status`, cleared once it has come.
   */
  async #waveWait(signed: IndexSigned, now: Date): Promise<RolloutWait | null> {
    const waves = signed.rollout.waves;
    let wait: RolloutWait | null = null;
    if (waves && waves.length > 0) {
      const slot = waveSlot(waves, Date.parse(signed.issuedAt), this.state.seed ?? 0);
      if (now.getTime() < slot.startsAtMs)
        wait = {
          version: signed.latest.version,
          startsAt: new Date(slot.startsAtMs).toISOString(),
          wave: slot.wave + 1,
          waves: waves.length,
          percent: slot.percent,
          issuedAt: signed.issuedAt,
        };
    }
    if (wait !== null || this.state.rolloutWait !== null)
      await this.#state.update((s) => ({ ...s, rolloutWait: wait }));
    return wait;
  }

  /**
   * Whether the fleet server holds `version` (README.md, "Holds"): the reason
   * in words, or null to go on. A hold document that cannot be read decides
   * nothing: `report.onUnreachable` does (go on by default).
   */
  async #heldBy(version: string, now: Date): Promise<string | null> {
    const reporter = this.#reporter;
    const channel = this.#o.config.channel;
    let held: HeldRecord | null = null;
    let why: string | null = null;
    if (reporter) {
      const h = await reporter.holds(channel);
      if (h.ok) {
        const hold = h.holds.find((x) => x.version === version);
        if (hold) {
          held = { channel, version, reason: hold.reason, by: hold.by, at: now.toISOString() };
          why = `held by the fleet server (${hold.by}, since ${hold.at}): ${hold.reason}`;
        }
      } else if (reporter.onUnreachable === "wait") {
        held = {
          channel,
          version,
          reason: `the hold document cannot be read: ${h.why}`,
          by: "unreachable",
          at: now.toISOString(),
        };
        why = `the fleet server's holds cannot be read (${h.why}); report.onUnreachable is wait`;
      } else
        this.#log.warn(
          { version },
          `the fleet server's holds cannot be read (${h.why}); going on (report.onUnreachable: go)`,
        );
    }
    if (held !== null || this.state.held !== null)
      await this.#state.update((s) => ({ ...s, held }));
    return why;
  }

  /** Install from a local bundle file or a URL (air-gapped hosts, tests). */
  install(location: string, signal?: AbortSignal): Promise<CheckResult> {
    return this.#locked(() => this.#installFrom(location, signal));
  }

  #installFrom(location: string, signal?: AbortSignal): Promise<CheckResult> {
    return this.#recording(
      () =>
        this.#withContext(async (c) => {
          const keys = await this.#trustedKeys(c);
          const compatible = await this.#compatible(c);
          let source: BundleSource;
          if (/^https?:\/\//.test(location)) {
            // No index names the size: the slot partition plus the bundle head bound it.
            const limit = c.slots[otherSlot(c.booted)].size + 4 * 1024 * 1024;
            const http = this.#o.http;
            source = {
              location,
              open: (offset, sig) =>
                http.openRange(location, {
                  offset,
                  maxBytes: limit - offset,
                  ...(sig ? { signal: sig } : {}),
                }),
              ...rangesOf(http, location),
            };
          } else source = fileSource(location);
          const result = await this.#install(c, keys, compatible, {
            source,
            ...(signal ? { signal } : {}),
          });
          if (result.outcome === "up-to-date") {
            this.#log.info({ version: result.version }, `up to date: ${result.version} is running`);
            return { outcome: "up-to-date", version: result.version };
          }
          return this.#afterInstall(result, c);
        }),
      signal,
    );
  }

  #install(
    c: Context,
    trustedKeys: KeyObject[],
    compatible: string,
    req: Parameters<typeof installBundle>[1],
  ): Promise<InstallResult> {
    return installBundle(
      {
        log: this.#log,
        clock: this.#o.clock,
        boot: c.disk,
        state: this.#state,
        diskPath: this.#o.diskPath,
        slots: c.slots,
        booted: c.booted,
        trustedKeys,
        compatible,
        tries: this.#o.config.tries,
        ...(this.onChunk ? { onChunk: this.onChunk } : {}),
      },
      req,
    );
  }

  /** Test and progress hook: called after each chunk is written (installer.ts, onChunk). */
  onChunk?: (verifiedChunks: number, chunksTotal: number) => void;

  async #afterInstall(result: InstallResult, c: Context): Promise<CheckResult> {
    if (result.outcome === "up-to-date") return { outcome: "up-to-date", version: result.version };
    this.#seen = { boot: await c.disk.readState(), booted: c.booted };
    if (result.outcome === "installed") {
      this.#report("download-finished", { target: result.version, progressPercent: 100 });
      this.#report("installed", { target: result.version });
    }
    if (result.outcome === "pending-reboot")
      this.#log.info(
        { version: result.version, slot: result.slot },
        `${result.version} is installed in slot ${result.slot}; it runs after a reboot`,
      );
    const r = await this.#rebootInto(c, result.slot, result.version);
    if (!r.rebooting)
      this.#report(r.waiting.for === "lock" ? "waiting-lock" : "waiting-reboot", {
        target: result.version,
        reason: r.waiting.detail,
      });
    return {
      outcome: result.outcome,
      version: result.version,
      slot: result.slot,
      rebooting: r.rebooting,
      ...(r.rebooting ? {} : { waiting: r.waiting }),
      ...(result.outcome === "installed"
        ? {
            bytesFetched: result.bytesFetched,
            bundleBytes: result.bundleBytes,
            ...(result.delta ? { delta: result.delta } : {}),
          }
        : {}),
    };
  }

  #rebootLockClient: RebootLockClient | undefined;

  #lockClient(): RebootLockClient | undefined {
    const etcd = this.#o.config.reboot.etcd;
    if (!etcd || !this.#o.rebootLock) return undefined;
    this.#rebootLockClient ??= this.#o.rebootLock(etcd);
    return this.#rebootLockClient;
  }

  /** The holder name in the reboot lock: the config's machineId, /etc/machine-id, else the rollout id. */
  async #machineId(): Promise<string> {
    return (
      this.#o.config.machineId ?? (await this.#o.machineId?.()) ?? this.state.rolloutId ?? "unknown"
    );
  }

  async #rebootDeps(): Promise<RebootDeps> {
    const lock = this.#lockClient();
    return {
      config: this.#o.config,
      log: this.#log,
      clock: this.#o.clock,
      state: this.#state,
      rebooter: this.#o.rebooter,
      beforeReboot: (version, reason) => this.#announceReboot(version, reason),
      machineId: await this.#machineId(),
      ...(this.#o.kexec ? { kexec: this.#o.kexec } : {}),
      ...(lock ? { lock } : {}),
      ...(this.#o.timeZone ? { timeZone: this.#o.timeZone } : {}),
    };
  }

  async #rebootInto(
    c: Context,
    slot: SlotName,
    version: string,
    o: { operator?: boolean } = {},
  ): Promise<RebootOutcome> {
    return rebootIntoUpdate(
      await this.#rebootDeps(),
      { slot, version, disk: c.disk, diskPath: this.#o.diskPath, slotRange: c.slots[slot] },
      o,
    );
  }

  /**
   * Give the reboot lock back when the host is up: the booted slot good and
   * no installed update waiting for its reboot (README.md, "Reboot", step 7).
   */
  async #releaseLockIfUp(booted: SlotName, boot: BootState): Promise<void> {
    const s = this.state;
    if (!s.rebootLock || !boot.slots[booted].good) return;
    if (s.pending && s.pending.slot !== booted) return;
    const lock = this.#lockClient();
    await releaseRebootLock({ log: this.#log, state: this.#state, ...(lock ? { lock } : {}) });
  }

  /**
   * `abforge agent reboot`: reboot into the installed update now, whatever
   * the strategy (`off` included) and the window; with `etcd-lock` only
   * holding a place in the lock. Refused when no installed update waits.
   */
  reboot(): Promise<Extract<CheckResult, { rebooting: boolean }>> {
    return this.#locked(() =>
      this.#recording(() =>
        this.#withContext(async (c) => {
          const p = this.state.pending;
          const slot = otherSlot(c.booted);
          const x = c.boot.slots[slot];
          if (
            !p ||
            p.slot !== slot ||
            x.good ||
            x.tries === 0 ||
            x.rootHash !== p.rootHash ||
            c.boot.order[0] !== slot
          )
            throw new UpdaterError(
              "UPDATE_REFUSED",
              `no installed update waits for a reboot (slot ${slot}: ${x.version || "empty"}, ${x.good ? "good" : `${x.tries} tries left`}); nothing to reboot into`,
              { details: { slot } },
            );
          const r = await this.#rebootInto(c, slot, p.version, { operator: true });
          return {
            outcome: "pending-reboot" as const,
            version: p.version,
            slot,
            rebooting: r.rebooting,
            ...(r.rebooting ? {} : { waiting: r.waiting }),
          };
        }),
      ),
    );
  }

  /**
   * What `abforge agent status` shows: what is true now. A pending install
   * whose slot the boot state shows as good (or as holding another image) is
   * done, not pending; the last error says whether a later success (a check,
   * an install, a mark-good) came after it.
   */
  status(): Promise<AgentStatus> {
    return this.#withContext(async (c) =>
      statusOf({
        disk: this.#o.diskPath,
        stateFile: this.#store.path,
        state: this.state,
        unreadable: this.#unreadable,
        boot: c.boot,
        booted: c.booted,
      }),
    );
  }

  /**
   * The daemon (README.md, "The daemon"): after-boot handling, then a check
   * at once and every pollIntervalMs ± pollJitterMs. An error is logged and
   * recorded and the next check backs off; it never ends the loop, except a
   * config that cannot work (CONFIG_INVALID: no repository, no trusted key,
   * no image identity), which no retry mends: the loop ends with that error,
   * and the process exits with its code for the service manager to restart
   * it. Returns when `signal` aborts (SIGTERM), also in the middle of a
   * download.
   */
  run(signal: AbortSignal): Promise<void> {
    return this.#locked(() => this.#run(signal));
  }

  async #run(signal: AbortSignal): Promise<void> {
    const cfg = this.#o.config;
    this.#log.info({ disk: this.#o.diskPath, stateDir: this.#o.stateDir }, "agent started");
    try {
      try {
        await this.afterBoot();
      } catch (err) {
        if (isConfigError(err)) throw err;
        this.#log.error(
          { err, code: isBaseError(err) ? err.code : undefined },
          `after-boot handling failed: ${errText(err)}`,
        );
      }
      let failures = 0;
      while (!signal.aborted) {
        let delay: number;
        try {
          const r = await this.check(signal);
          failures = 0;
          delay = pollDelayMs(cfg.pollIntervalMs, cfg.pollJitterMs, this.#o.random.fraction());
          // A reboot that waits for its window or for the lock is tried again
          // when the window opens or the lock's back-off ends, not a poll later.
          const until = "waiting" in r && r.waiting?.until;
          if (until)
            delay = Math.min(delay, Math.max(0, Date.parse(until) - this.#o.clock.now().getTime()));
        } catch (err) {
          if (signal.aborted) break;
          if (isConfigError(err)) throw err;
          failures += 1;
          delay = backoffMs(cfg.pollIntervalMs, failures, cfg.maxBackoffMs);
          this.#log.error(
            { err, code: isBaseError(err) ? err.code : undefined, failures, retryInMs: delay },
            `check failed: ${errText(err)}; next check in ${delay} ms`,
          );
        }
        try {
          await this.#o.clock.sleep(delay, signal);
        } catch {
          break;
        }
      }
    } catch (err) {
      if (isConfigError(err))
        this.#log.error(
          { code: err.code },
          `stopping: the config cannot work (${err.message}); fix it, the agent is started again`,
        );
      throw err;
    } finally {
      await this.close();
      this.#log.info("agent stopped");
    }
  }
}

/** An error that no retry mends: the config (or what it points at) cannot work. */
function isConfigError(err: unknown): err is UpdaterError {
  return err instanceof UpdaterError && err.code === "CONFIG_INVALID";
}

/** A bundle URL's byte ranges for a delta install, when the HTTP client reads ranges. */
function rangesOf(http: HttpClient, url: string): Pick<BundleSource, "ranges"> {
  const ranges = http.ranges?.bind(http);
  return ranges ? { ranges: (spans, o) => ranges(url, spans, o) } : {};
}
