/**
 * The agent's state file, `<stateDir>/state.json` (README.md, "State file").
 * Written atomically: temp file, fsync, rename over the old one, fsync the
 * directory — a crash at any instant leaves the old or the new file, whole.
 * A file that does not parse or validate is moved aside to
 * `state.json.corrupt-<time>` by a command that writes and reported as
 * STATE_CORRUPT, never dropped; `read()` (status) only reports it. A file of a
 * newer schema is never touched (STATE_SCHEMA_NEWER).
 */
import { mkdir, readdir, readFile, rename, rm } from "node:fs/promises";
import { join } from "node:path";
import { errnoOf, fsyncDir, ioCodeFor, ioError, replaceFile, systemCause } from "../fileio.ts";
import type { SlotName } from "../image/index.ts";
import { SEED_RANGE } from "../repo/index.ts";
import { errText, UpdaterError } from "./errors.ts";
import { isAlive } from "./lock.ts";

export const STATE_SCHEMA_VERSION = 1;
export const STATE_FILE_NAME = "state.json";

/** A download in progress; enough to resume it after a restart. */
export interface InstallProgress {
  slot: SlotName;
  version: string;
  /** URL or path of the bundle. */
  source: string;
  /** sha256 of the whole bundle when the channel index names it, else null. */
  bundleSha256: string | null;
  /** sha256 of the signed manifest bytes: the identity of what is being written. */
  manifestSha256: string;
  slotImageSha256: string;
  /** Byte offset of the slot image inside the bundle. */
  slotDataOffset: number;
  slotImageSize: number;
  chunkSize: number;
  chunksTotal: number;
  /** Chunks 0..verifiedChunks-1 were verified and written (a hint: re-checked on resume). */
  verifiedChunks: number;
  startedAt: string;
  updatedAt: string;
}

export interface PendingSlot {
  slot: SlotName;
  version: string;
  rootHash: string;
  installedAt: string;
}

/**
 * The idle slot an install emptied (README.md, "Empty slot"): marked
 * unbootable, its image cleared from the boot state, before its first byte
 * was overwritten. Kept until an install activates it, so status can say why
 * the host has no fallback.
 */
export interface EmptySlot {
  slot: SlotName;
  /** When an install first emptied it. */
  since: string;
  /** The version it held before ("" when it held none). */
  previousVersion: string;
  /** The version being written into it. */
  version: string;
  /** What stopped the install (null while one runs, or after a kill). */
  failure: { at: string; code: string; message: string } | null;
}

export interface RollbackRecord {
  version: string;
  slot: SlotName;
  reason: string;
  at: string;
}

/** A good slot that stopped booting, and GRUB booted the other good one (README.md, "After boot"). */
export interface FallbackRecord {
  /** The slot that broke. */
  slot: SlotName;
  version: string;
  rootHash: string;
  /** Why, as far as the agent can tell. */
  reason: string;
  /** The slot that runs instead. */
  booted: SlotName;
  at: string;
}

/**
 * What an installed update waits for before its reboot (README.md,
 * "Reboot"): the operator (`strategy: off`), the window, or a place in the
 * reboot lock. `until`: when the window opens or the lock is tried again.
 */
export interface RebootWait {
  slot: SlotName;
  version: string;
  for: "operator" | "window" | "lock";
  since: string;
  until: string | null;
  /** Tries of the same wait in a row (the lock's back-off). */
  attempts: number;
  /** In words, for `agent status`. */
  detail: string;
}

/** The place this host took in the reboot lock; given back once the host is up again. */
export interface RebootLockRecord {
  holder: string;
  group: string | null;
  version: string;
  takenAt: string;
}

/**
 * The channel's latest version waits for this host's wave (README.md,
 * "Waves"): recorded at the check that found it too early, for `agent status`.
 */
export interface RolloutWait {
  version: string;
  /** When this host takes it. */
  startsAt: string;
  /** 1-based wave of this host, of `waves`. */
  wave: number;
  waves: number;
  /** The wave's cumulative percent. */
  percent: number;
  /** The index's issuedAt the times count from. */
  issuedAt: string;
}

/** The fleet server holds the channel's latest version (README.md, "Holds"). */
export interface HeldRecord {
  channel: string;
  version: string;
  reason: string;
  by: string;
  /** When the agent last found it held. */
  at: string;
}

export interface AgentState {
  schemaVersion: number;
  /** Installed and activated; waits for its boot and health checks. */
  pending: PendingSlot | null;
  progress: InstallProgress | null;
  /** The idle slot an install emptied and has not activated yet. */
  emptySlot: EmptySlot | null;
  lastCheck: { at: string; outcome: string; version: string | null } | null;
  lastError: { at: string; code: string; message: string } | null;
  lastGood: { slot: SlotName; version: string; at: string } | null;
  rollbacks: RollbackRecord[];
  fallbacks: FallbackRecord[];
  /** Versions that failed to come up; never installed again. */
  badVersions: string[];
  /** Highest channel index serial seen, and the digest of that index (replay protection). */
  index: { serial: number; sha256: string } | null;
  /** This host's random identity for staged rollouts (rollout bucket); made once. */
  rolloutId: string | null;
  /** This host's place in staged waves, 0-2047 (crypto random), drawn once and reported. */
  seed: number | null;
  /** The latest version waits for this host's wave. */
  rolloutWait: RolloutWait | null;
  /** The latest version is held by the fleet server. */
  held: HeldRecord | null;
  rebootWait: RebootWait | null;
  rebootLock: RebootLockRecord | null;
}

export function initialAgentState(): AgentState {
  return {
    schemaVersion: STATE_SCHEMA_VERSION,
    pending: null,
    progress: null,
    emptySlot: null,
    lastCheck: null,
    lastError: null,
    lastGood: null,
    rollbacks: [],
    fallbacks: [],
    badVersions: [],
    index: null,
    rolloutId: null,
    seed: null,
    rolloutWait: null,
    held: null,
    rebootWait: null,
    rebootLock: null,
  };
}

export class StateStore {
  readonly dir: string;
  readonly path: string;

  constructor(dir: string) {
    this.dir = dir;
    this.path = join(dir, STATE_FILE_NAME);
  }

  /**
   * Read the state without changing anything on disk (`agent status`): no
   * file yet = the initial state; a corrupt file is reported as
   * `{ corrupt: problems }` and left where it is. A file of a newer schema
   * than this agent knows is refused (STATE_SCHEMA_NEWER): its fields may
   * mean what this agent cannot tell.
   */
  async read(): Promise<{ state: AgentState } | { corrupt: string[] }> {
    let text: string;
    try {
      text = await readFile(this.path, "utf8");
    } catch (cause) {
      if (errnoOf(cause) === "ENOENT") return { state: initialAgentState() };
      const sys = systemCause(cause);
      if (!sys) throw cause;
      throw this.#unavailable("read the state file", sys);
    }
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch (cause) {
      return { corrupt: [`not JSON (${errText(cause)})`] };
    }
    const schema = (parsed as { schemaVersion?: unknown } | null)?.schemaVersion;
    if (Number.isSafeInteger(schema) && (schema as number) > STATE_SCHEMA_VERSION)
      throw new UpdaterError(
        "STATE_SCHEMA_NEWER",
        `state file ${this.path} has schema ${schema}, newer than the ${STATE_SCHEMA_VERSION} this agent knows (written by a newer agent): left as it is; run the newer agent, or move the file away to start from an empty state`,
        { details: { path: this.path, schemaVersion: schema, known: STATE_SCHEMA_VERSION } },
      );
    const problems = validateState(parsed);
    if (problems.length > 0) return { corrupt: problems };
    return { state: normalize(parsed as AgentState) };
  }

  /**
   * Read the state for a command that writes it: as `read()`, but a corrupt
   * file is moved aside and STATE_CORRUPT is thrown (details.movedTo names
   * where it went).
   */
  async load(now: Date = new Date()): Promise<AgentState> {
    const r = await this.read();
    if ("state" in r) return r.state;
    const movedTo = `${this.path}.corrupt-${now.toISOString().replace(/[:.]/g, "-")}`;
    await this.#io("move the corrupt state file aside", async () => {
      await rename(this.path, movedTo);
      await fsyncDir(this.dir);
    });
    throw new UpdaterError(
      "STATE_CORRUPT",
      `state file ${this.path} is corrupt (${r.corrupt.join("; ")}); moved it to ${movedTo} and started from an empty state`,
      { details: { path: this.path, movedTo, problems: r.corrupt } },
    );
  }

  /**
   * Replace the state file atomically (temp, fsync, rename, fsync dir). No
   * space is DISK_FULL; a directory that cannot be written (read-only,
   * permission, I/O error, not a directory) is STATE_UNAVAILABLE.
   */
  async save(state: AgentState): Promise<void> {
    const bytes = `${JSON.stringify({ ...state, schemaVersion: STATE_SCHEMA_VERSION }, null, 2)}\n`;
    await this.#io("write the state file", async () => {
      await mkdir(this.dir, { recursive: true });
      await replaceFile(this.path, bytes, {
        mode: 0o600,
        tempName: `${STATE_FILE_NAME}.tmp-${process.pid}`,
      });
    });
  }

  /** Run a step on the state directory: system errors become DISK_FULL or STATE_UNAVAILABLE. */
  async #io<T>(what: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      const sys = systemCause(err);
      if (!sys) throw err;
      if (ioCodeFor(sys.code) === "DISK_FULL")
        throw ioError(`${what} in ${this.dir}`, sys, { path: this.path });
      throw this.#unavailable(what, sys);
    }
  }

  #unavailable(what: string, cause: NodeJS.ErrnoException): UpdaterError {
    return new UpdaterError(
      "STATE_UNAVAILABLE",
      `cannot ${what} (${this.path}): ${cause.message}; the agent needs ${this.dir} readable and writable`,
      { cause, details: { path: this.path, errno: cause.code } },
    );
  }

  /**
   * Temp files left by a crash between write and rename; removed at start.
   * A temp file of a live process (another agent command saving right now)
   * is left alone.
   */
  async removeStaleTemps(): Promise<string[]> {
    let names: string[];
    try {
      names = await readdir(this.dir);
    } catch (err) {
      if (errnoOf(err) === "ENOENT") return [];
      const sys = systemCause(err);
      if (!sys) throw err;
      throw this.#unavailable("list the state directory", sys);
    }
    const prefix = `${STATE_FILE_NAME}.tmp-`;
    const stale = names.filter(
      (n) => n.startsWith(prefix) && !isAlive(Number(n.slice(prefix.length))),
    );
    for (const n of stale)
      await this.#io(`remove the stale temp file ${n}`, () =>
        rm(join(this.dir, n), { force: true }),
      );
    return stale;
  }
}

function normalize(s: AgentState): AgentState {
  return { ...initialAgentState(), ...s };
}

const SLOT = (v: unknown) => v === "A" || v === "B";
const STR = (v: unknown) => typeof v === "string";
const INT = (v: unknown) => typeof v === "number" && Number.isSafeInteger(v) && v >= 0;
const HEX = (v: unknown) => typeof v === "string" && /^[0-9a-f]{64}$/.test(v);

/** Every problem of a parsed state file (empty = valid). Unknown fields are allowed (additive schema). */
export function validateState(v: unknown): string[] {
  const p: string[] = [];
  if (typeof v !== "object" || v === null || Array.isArray(v)) return ["not a JSON object"];
  const s = v as Record<string, unknown>;
  if (!INT(s.schemaVersion) || (s.schemaVersion as number) < 1)
    p.push("schemaVersion: not a positive integer");
  const obj = (name: string, fields: Record<string, (x: unknown) => boolean>) => {
    const o = s[name];
    if (o === null || o === undefined) return;
    if (typeof o !== "object" || Array.isArray(o)) {
      p.push(`${name}: not an object`);
      return;
    }
    for (const [k, ok] of Object.entries(fields))
      if (!ok((o as Record<string, unknown>)[k])) p.push(`${name}.${k}: invalid`);
  };
  obj("pending", { slot: SLOT, version: STR, rootHash: STR, installedAt: STR });
  obj("progress", {
    slot: SLOT,
    version: STR,
    source: STR,
    bundleSha256: (x) => x === null || HEX(x),
    manifestSha256: HEX,
    slotImageSha256: HEX,
    slotDataOffset: INT,
    slotImageSize: INT,
    chunkSize: (x) => INT(x) && (x as number) > 0,
    chunksTotal: INT,
    verifiedChunks: INT,
    startedAt: STR,
    updatedAt: STR,
  });
  obj("emptySlot", {
    slot: SLOT,
    since: STR,
    previousVersion: STR,
    version: STR,
    failure: (x) => {
      if (x === null) return true;
      const f = x as Record<string, unknown>;
      return (
        typeof x === "object" && !Array.isArray(x) && STR(f.at) && STR(f.code) && STR(f.message)
      );
    },
  });
  obj("lastCheck", { at: STR, outcome: STR, version: (x) => x === null || STR(x) });
  obj("lastError", { at: STR, code: STR, message: STR });
  obj("lastGood", { slot: SLOT, version: STR, at: STR });
  obj("index", { serial: INT, sha256: HEX });
  obj("rebootWait", {
    slot: SLOT,
    version: STR,
    for: (x) => x === "operator" || x === "window" || x === "lock",
    since: STR,
    until: (x) => x === null || STR(x),
    attempts: INT,
    detail: STR,
  });
  obj("rolloutWait", {
    version: STR,
    startsAt: STR,
    wave: INT,
    waves: INT,
    percent: INT,
    issuedAt: STR,
  });
  obj("held", { channel: STR, version: STR, reason: STR, by: STR, at: STR });
  obj("rebootLock", {
    holder: STR,
    group: (x) => x === null || STR(x),
    version: STR,
    takenAt: STR,
  });
  for (const name of ["rollbacks", "fallbacks", "badVersions"]) {
    if (s[name] !== undefined && !Array.isArray(s[name])) p.push(`${name}: not a list`);
  }
  if (s.rolloutId !== undefined && s.rolloutId !== null && !STR(s.rolloutId))
    p.push("rolloutId: not a string");
  if (s.seed !== undefined && s.seed !== null && !(INT(s.seed) && (s.seed as number) < SEED_RANGE))
    p.push(`seed: not an integer 0-${SEED_RANGE - 1}`);
  if (Array.isArray(s.badVersions) && !s.badVersions.every(STR))
    p.push("badVersions: not a list of strings");
  if (Array.isArray(s.rollbacks)) {
    s.rollbacks.forEach((r, i) => {
      const o = r as Record<string, unknown> | null;
      if (!o || !STR(o.version) || !SLOT(o.slot) || !STR(o.reason) || !STR(o.at))
        p.push(`rollbacks[${i}]: invalid`);
    });
  }
  if (Array.isArray(s.fallbacks)) {
    s.fallbacks.forEach((r, i) => {
      const o = r as Record<string, unknown> | null;
      if (
        !o ||
        !SLOT(o.slot) ||
        !STR(o.version) ||
        !STR(o.rootHash) ||
        !STR(o.reason) ||
        !SLOT(o.booted) ||
        !STR(o.at)
      )
        p.push(`fallbacks[${i}]: invalid`);
    });
  }
  return p;
}
