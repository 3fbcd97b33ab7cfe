/**
 * What `abforge agent status` shows (README.md, "State file"): what is true
 * now, from the state file and the boot state, as a pure function of them. A
 * pending install whose slot the boot state shows as good (or as holding
 * another image) is done, not pending; the last error says whether a later
 * success (a check, an install, a mark-good) came after it.
 */
import type { BootState } from "../bootloader/index.ts";
import type { SlotName } from "../image/index.ts";
import { emptySlotNow } from "./empty-slot.ts";
import { otherSlot } from "./policy.ts";
import type { AgentState, InstallProgress } from "./state-file.ts";

export interface SlotStatus {
  slot: SlotName;
  version: string;
  good: boolean;
  tries: number;
  /** Boots of this good slot in a row not yet confirmed (the bootloader gives up at `boot.goodTries`). */
  boots: number;
  rootHash: string;
}

export interface AgentStatus {
  disk: string;
  stateFile: string;
  booted: SlotStatus;
  other: SlotStatus;
  boot: BootState;
  pending: AgentState["pending"];
  lastCheck: AgentState["lastCheck"];
  /** `old`: a later success (at `supersededAt`) came after it; it is history, not the present. */
  lastError:
    | (NonNullable<AgentState["lastError"]> & { old: boolean; supersededAt?: string })
    | null;
  lastGood: AgentState["lastGood"];
  progress: (InstallProgress & { percent: number }) | null;
  /**
   * The idle slot an install emptied and why (README.md, "Empty slot"); only
   * while the boot state still shows it empty and unbootable.
   */
  emptySlot: AgentState["emptySlot"];
  rollbacks: AgentState["rollbacks"];
  /** Good slots that stopped booting, and the bootloader booted the other one. */
  fallbacks: AgentState["fallbacks"];
  badVersions: string[];
  /** What the installed update waits for before its reboot; only while it is still pending. */
  rebootWait: AgentState["rebootWait"];
  /** The place this host holds in the reboot lock (given back once it is up again). */
  rebootLock: AgentState["rebootLock"];
  /** This host's rollout seed, 0-2047 (null until a command that writes drew it). */
  seed: number | null;
  /** When this host takes the channel's latest version, when its wave has not come yet (README.md, "Waves"). */
  rolloutWait: AgentState["rolloutWait"];
  /** The fleet server holds the latest version (README.md, "Holds"). */
  held: AgentState["held"];
}

export interface StatusInput {
  disk: string;
  stateFile: string;
  state: AgentState;
  /** The state file's problem when it could not be used (shown as the last error). */
  unreadable: AgentState["lastError"] | undefined;
  boot: BootState;
  booted: SlotName;
}

export function statusOf(o: StatusInput): AgentStatus {
  const slot = (x: SlotName): SlotStatus => ({ slot: x, ...o.boot.slots[x] });
  const st = o.state;
  const p = st.progress;
  const pending =
    st.pending &&
    !o.boot.slots[st.pending.slot].good &&
    o.boot.slots[st.pending.slot].rootHash === st.pending.rootHash
      ? st.pending
      : null;
  const error = o.unreadable ?? st.lastError;
  const successes = [
    st.lastCheck && !st.lastCheck.outcome.startsWith("refused") ? st.lastCheck.at : null,
    st.lastGood?.at ?? null,
    st.pending?.installedAt ?? null,
  ].filter((t): t is string => t !== null);
  const laterSuccess = error
    ? successes
        .filter((t) => Date.parse(t) > Date.parse(error.at))
        .sort()
        .at(-1)
    : undefined;
  return {
    disk: o.disk,
    stateFile: o.stateFile,
    booted: slot(o.booted),
    other: slot(otherSlot(o.booted)),
    boot: o.boot,
    pending,
    lastCheck: st.lastCheck,
    lastError: error
      ? {
          ...error,
          old: laterSuccess !== undefined,
          ...(laterSuccess ? { supersededAt: laterSuccess } : {}),
        }
      : null,
    lastGood: st.lastGood,
    progress: p
      ? { ...p, percent: Math.floor((p.verifiedChunks * 100) / Math.max(1, p.chunksTotal)) }
      : null,
    emptySlot: emptySlotNow(st.emptySlot, o.boot),
    rollbacks: st.rollbacks,
    fallbacks: st.fallbacks,
    badVersions: st.badVersions,
    rebootWait:
      pending && st.rebootWait && st.rebootWait.version === pending.version ? st.rebootWait : null,
    rebootLock: st.rebootLock,
    seed: st.seed,
    // history once the host runs that version
    rolloutWait:
      st.rolloutWait && st.rolloutWait.version !== o.boot.slots[o.booted].version
        ? st.rolloutWait
        : null,
    held: st.held && st.held.version !== o.boot.slots[o.booted].version ? st.held : null,
  };
}
