/**
 * The agent's decisions as pure functions (README.md, "Update policy" and
 * "After boot"): facts in, a decision out; no I/O, no clock. The agent
 * carries them out.
 */
import semver from "semver";
import type { SlotName } from "../image/index.ts";
import type { UpdaterErrorCode } from "./errors.ts";
import type { PendingSlot } from "./state-file.ts";

/** The parts of the boot state (src/bootloader BootState) the decisions read. */
export interface BootSlotFacts {
  tries: number;
  good: boolean;
  /** Boots of this good slot in a row that no agent confirmed. */
  boots: number;
  rootHash: string;
  version: string;
}
export interface BootFacts {
  order: readonly [SlotName, SlotName];
  /** Unconfirmed boots after which GRUB passes a good slot over. */
  goodTries: number;
  slots: Record<SlotName, BootSlotFacts>;
}

export function otherSlot(slot: SlotName): SlotName {
  return slot === "A" ? "B" : "A";
}

export interface Candidate {
  version: string;
  compatible: string;
  /** Oldest running version that may take this update ("0.0.0" or absent: any). */
  minUpdateFrom?: string;
}

export type UpdateDecision =
  | { action: "install"; version: string }
  | { action: "none"; reason: "up-to-date" | "bad-version" | "rollout"; message: string }
  | { action: "refuse"; code: UpdaterErrorCode; message: string };

/**
 * Whether to install `candidate` on a host running `bootedVersion`
 * (README.md, "Update policy", rules 1-5, in that order).
 */
export function decideUpdate(o: {
  bootedVersion: string;
  compatible: string;
  candidate: Candidate;
  badVersions: readonly string[];
}): UpdateDecision {
  const { candidate: c } = o;
  // 1. compatible string: equal, or the update is for other hardware.
  if (c.compatible !== o.compatible)
    return {
      action: "refuse",
      code: "UPDATE_INCOMPATIBLE",
      message: `update ${c.version} is for "${c.compatible}", this host is "${o.compatible}"`,
    };
  const next = semver.valid(c.version);
  const booted = semver.valid(o.bootedVersion);
  if (!next || !booted)
    return {
      action: "refuse",
      code: "UPDATE_REFUSED",
      message: `cannot compare versions: update "${c.version}", running "${o.bootedVersion}" (not semver)`,
    };
  // 2. a version that failed to come up before is never installed again.
  if (o.badVersions.includes(next))
    return {
      action: "none",
      reason: "bad-version",
      message: `update ${next} is recorded as bad (it rolled back before); skipping it`,
    };
  // 3. equal version: nothing to do.
  if (semver.eq(next, booted))
    return { action: "none", reason: "up-to-date", message: `running ${booted}, the latest` };
  // 4. never a downgrade.
  if (semver.lt(next, booted))
    return {
      action: "refuse",
      code: "UPDATE_DOWNGRADE",
      message: `update ${next} is older than the running ${booted}; abforge never downgrades`,
    };
  // 5. the update may require a minimum running version (a stepping stone).
  if (c.minUpdateFrom && semver.valid(c.minUpdateFrom) && semver.lt(booted, c.minUpdateFrom))
    return {
      action: "refuse",
      code: "UPDATE_REFUSED",
      message: `update ${next} requires running at least ${c.minUpdateFrom} first; this host runs ${booted}`,
    };
  return { action: "install", version: next };
}

/**
 * Whether the booted slot may be left without a fallback: installing writes
 * the other slot, so the booted one must be marked good first. Returns the
 * reason to refuse, or null.
 */
export function installBlocker(boot: BootFacts, booted: SlotName): string | null {
  if (!boot.slots[booted].good)
    return (
      `slot ${booted} (${boot.slots[booted].version || "no version"}) is booted but not yet marked good; ` +
      `slot ${otherSlot(booted)} is its fallback and is not overwritten until it is ` +
      "(the health checks pass and `abforge agent mark-good` runs)"
    );
  return null;
}

export type AfterBootDecision =
  | { action: "nothing"; reason: string; clearPending: boolean }
  | { action: "fallback"; slot: SlotName; version: string; reason: string; clearPending: boolean }
  | { action: "check-health"; slot: SlotName; version: string; reason: string }
  | { action: "rollback"; slot: SlotName; version: string; reason: string }
  | { action: "await-reboot"; slot: SlotName; version: string; reason: string };

/**
 * What to do after boot (README.md, "After boot", the decision table): the
 * booted slot, the boot state, and the slot the state file expects to come up.
 */
export function decideAfterBoot(o: {
  booted: SlotName;
  boot: BootFacts;
  pending: PendingSlot | null;
  /** Versions already recorded as bad (row 1b records a rollback once). */
  badVersions?: readonly string[];
}): AfterBootDecision {
  const { booted, boot, pending } = o;
  const b = boot.slots[booted];
  // row 0: a good slot is first in the order, yet the other good one booted:
  // GRUB passed it over (too many unconfirmed boots) or could not load it.
  const first = boot.order[0];
  const f = boot.slots[first];
  if (first !== booted && b.good && f.good) {
    const unconfirmed = f.boots >= boot.goodTries;
    return {
      action: "fallback",
      slot: first,
      version: f.version,
      reason: unconfirmed
        ? `slot ${first} (${f.version}) was booted ${f.boots} times in a row without a confirmation ` +
          "(its kernel, its root file system (dm-verity) or its init failed, or the agent did not start); " +
          `the bootloader fell back to slot ${booted} (${b.version})`
        : `the bootloader could not load slot ${first}'s (${f.version}) kernel or initrd and fell back to slot ${booted} (${b.version})`,
      clearPending: pending !== null && pending.slot === first,
    };
  }
  if (pending === null) {
    // row 1b: no record (the state file was lost), yet the other slot holds a
    // newer version that was tried and failed: GRUB fell back from it.
    const other = otherSlot(booted);
    const o_ = boot.slots[other];
    if (
      b.good &&
      o_.rootHash !== "" &&
      !o_.good &&
      o_.tries === 0 &&
      semver.valid(o_.version) &&
      semver.valid(b.version) &&
      semver.gt(o_.version, b.version) &&
      !(o.badVersions ?? []).includes(o_.version)
    )
      return {
        action: "rollback",
        slot: other,
        version: o_.version,
        reason:
          `slot ${other} holds ${o_.version}, newer than the running ${b.version}, with no tries left and not good; ` +
          "the state file has no record of it (lost?): the bootloader fell back from it",
      };
    // rows 1-2
    if (b.good)
      return {
        action: "nothing",
        reason: `slot ${booted} is booted and good`,
        clearPending: false,
      };
    return {
      action: "check-health",
      slot: booted,
      version: b.version,
      reason: `slot ${booted} is booted and not yet marked good`,
    };
  }
  const p = boot.slots[pending.slot];
  if (pending.slot === booted) {
    // rows 3-4
    if (b.good)
      return {
        action: "nothing",
        reason: `slot ${booted} (${pending.version}) is already marked good`,
        clearPending: true,
      };
    return {
      action: "check-health",
      slot: booted,
      version: pending.version,
      reason: `slot ${booted} (${pending.version}) came up after the update`,
    };
  }
  // rows 5-7: the booted slot is not the one installed.
  if (p.rootHash !== pending.rootHash)
    return {
      action: "nothing",
      reason: `slot ${pending.slot} no longer holds ${pending.version}; forgetting it`,
      clearPending: true,
    };
  if (!p.good && p.tries === 0)
    return {
      action: "rollback",
      slot: pending.slot,
      version: pending.version,
      reason:
        `slot ${pending.slot} (${pending.version}) used up its boot tries without being marked good; ` +
        `the bootloader fell back to slot ${booted} (${b.version})`,
    };
  if (p.good)
    return {
      action: "nothing",
      reason: `slot ${pending.slot} (${pending.version}) is good but slot ${booted} booted (order ${boot.order.join(" ")})`,
      clearPending: false,
    };
  return {
    action: "await-reboot",
    slot: pending.slot,
    version: pending.version,
    reason: `slot ${pending.slot} (${pending.version}) is installed with ${p.tries} tries left; it boots at the next reboot`,
  };
}

/** The next poll delay: the interval ± jitter, `fraction` in [0, 1) from the injected randomness. */
export function pollDelayMs(intervalMs: number, jitterMs: number, fraction: number): number {
  return Math.max(0, Math.round(intervalMs + (fraction * 2 - 1) * jitterMs));
}

/** Back-off after `failures` failed polls in a row: interval/8 doubling, at most maxMs. */
export function backoffMs(intervalMs: number, failures: number, maxMs: number): number {
  const base = Math.max(1000, Math.floor(intervalMs / 8));
  return Math.min(maxMs, base * 2 ** Math.min(30, Math.max(0, failures - 1)));
}
