/**
 * The A/B boot state (README.md, "Boot state"): value types, their mapping to
 * and from the GRUB environment variables, GRUB's slot rule, and the pure
 * transitions the updater and the operator commands use. A transition works
 * in memory and returns a new state; the caller writes it once
 * (`BootDisk.writeState`). A transition that would leave no slot to fall back
 * to is refused (BOOT_REFUSED).
 */
import semver from "semver";
import {
  DEFAULT_GOOD_TRIES,
  formatSlotVerity,
  isSlotName,
  MAX_TRIES,
  otherSlot,
  parseSlotVerity,
  SLOT_NAMES,
  type SlotName,
  type SlotVerity,
} from "../image/index.ts";
import { BootloaderError } from "./errors.ts";

export type { SlotName, SlotVerity };
// The slot names, the tries' range and the `X_verity` text form are the image contract's.
export {
  DEFAULT_GOOD_TRIES,
  formatSlotVerity,
  isSlotName,
  MAX_TRIES,
  otherSlot,
  parseSlotVerity,
  SLOT_NAMES,
};

export interface SlotState {
  /** Tries left (0-9); GRUB takes one before each boot of a slot that is not good. */
  tries: number;
  /** The slot booted and passed its health checks; GRUB boots it without counting tries. */
  good: boolean;
  /**
   * Boots of this good slot in a row that the agent has not confirmed (0-9).
   * GRUB adds one before each boot of a good slot, the agent sets it back to
   * 0 once it is up; at `goodTries` GRUB falls back to the other good slot.
   */
  boots: number;
  /** dm-verity root hash (hex); "" when the slot is empty. */
  rootHash: string;
  /** `<dataBlocks>:<hashStartBlock>:<saltHex>`; "" when the slot is empty. */
  verity: string;
  /** semver of the image in the slot; "" when the slot is empty. */
  version: string;
}

export interface BootState {
  /** Slot order; GRUB tries the first one first. */
  order: [SlotName, SlotName];
  /** Unconfirmed boots of a good slot before GRUB falls back to the other good slot (1-9). */
  goodTries: number;
  slots: Record<SlotName, SlotState>;
}

/** What a slot holds: the facts an update writes. */
export interface SlotImage {
  rootHash: string;
  verity: string;
  version: string;
}

/** A slot is empty when it has no root hash (nothing was ever installed). */
export function isEmptySlot(s: SlotState): boolean {
  return s.rootHash === "";
}

/**
 * A good slot that GRUB booted `goodTries` times in a row without a
 * confirmation: GRUB passes it over while the other slot is good (README.md,
 * "Boot rule", step 2).
 */
export function isUnconfirmed(s: BootState, slot: SlotName): boolean {
  const x = s.slots[slot];
  return x.good && x.boots >= s.goodTries;
}

/** A semantic version as written, without a "v" prefix or surrounding spaces. */
function isStrictSemver(v: string): boolean {
  return /^[0-9]/.test(v) && semver.parse(v)?.raw === v;
}

interface Problem {
  variable: string;
  value: string | undefined;
  reason: string;
}

/**
 * The boot state held by these variables (README.md, "Variables"). Every
 * missing or malformed variable is collected and reported at once
 * (BOOT_STATE_INVALID, naming each variable). Other variables are ignored.
 */
export function bootStateFromEnv(vars: ReadonlyMap<string, string>): BootState {
  const problems: Problem[] = [];
  const get = (variable: string): string | undefined => {
    const value = vars.get(variable);
    if (value === undefined) problems.push({ variable, value, reason: "is missing" });
    return value;
  };
  const check = (variable: string, value: string | undefined, ok: boolean, reason: string) => {
    if (value !== undefined && !ok) problems.push({ variable, value, reason });
  };

  const orderValue = get("order");
  check(
    "order",
    orderValue,
    orderValue === "A B" || orderValue === "B A",
    'must be "A B" or "B A"',
  );
  const order: [SlotName, SlotName] = orderValue === "B A" ? ["B", "A"] : ["A", "B"];
  // good_tries and X_boots came later: a block without them (an older disk)
  // reads as the defaults GRUB's script assumes too.
  const goodTriesValue = vars.get("good_tries");
  check(
    "good_tries",
    goodTriesValue,
    /^[1-9]$/.test(goodTriesValue ?? ""),
    "must be one digit 1-9",
  );

  const slots = {} as Record<SlotName, SlotState>;
  for (const x of SLOT_NAMES) {
    const tries = get(`${x}_tries`);
    check(`${x}_tries`, tries, /^[0-9]$/.test(tries ?? ""), "must be one digit 0-9");
    const good = get(`${x}_good`);
    check(`${x}_good`, good, good === "0" || good === "1", "must be 0 or 1");
    const boots = vars.get(`${x}_boots`);
    check(`${x}_boots`, boots, /^[0-9]$/.test(boots ?? ""), "must be one digit 0-9");
    const rootHash = get(`${x}_roothash`);
    check(
      `${x}_roothash`,
      rootHash,
      /^(?:[0-9a-f]{2})*$/.test(rootHash ?? ""),
      "must be lowercase hex (empty for an empty slot)",
    );
    const verity = get(`${x}_verity`);
    check(
      `${x}_verity`,
      verity,
      verity === "" || parseSlotVerity(verity ?? "") !== undefined,
      "must be <dataBlocks>:<hashStartBlock>:<saltHex> (empty for an empty slot)",
    );
    const version = get(`${x}_version`);
    check(
      `${x}_version`,
      version,
      version === "" || isStrictSemver(version ?? ""),
      "must be a semantic version (empty for an empty slot)",
    );
    const slot: SlotState = {
      tries: Number(tries ?? 0),
      good: good === "1",
      boots: Number(boots ?? 0),
      rootHash: rootHash ?? "",
      verity: verity ?? "",
      version: version ?? "",
    };
    // An empty slot has nothing to boot, so it is not good (tries on it are
    // harmless: GRUB spends one, finds no kernel and goes on); a full slot
    // has all three facts.
    if (rootHash === "") {
      check(`${x}_good`, good, good !== "1", "must be 0 for an empty slot");
      check(`${x}_verity`, verity, verity === "", "must be empty for an empty slot");
      check(`${x}_version`, version, version === "", "must be empty for an empty slot");
    } else if (rootHash !== undefined) {
      check(`${x}_verity`, verity, verity !== "", "must be set when the slot has a root hash");
      check(`${x}_version`, version, version !== "", "must be set when the slot has a root hash");
    }
    slots[x] = slot;
  }

  if (problems.length > 0) {
    const list = problems
      .map(
        (p) =>
          `${p.variable}${p.value === undefined ? "" : `=${JSON.stringify(p.value)}`} ${p.reason}`,
      )
      .join("; ");
    throw new BootloaderError("BOOT_STATE_INVALID", `boot state: ${list}`, {
      details: { problems },
    });
  }
  return { order, goodTries: Number(goodTriesValue ?? DEFAULT_GOOD_TRIES), slots };
}

/**
 * The variables for a state, in a fixed order: `order`, `good_tries`, then
 * per slot tries, good, boots, roothash, verity, version. Throws BOOT_STATE_INVALID for a
 * state that `bootStateFromEnv` would not read back.
 */
export function bootStateToEnv(s: BootState): Map<string, string> {
  const vars = new Map<string, string>([
    ["order", s.order.join(" ")],
    ["good_tries", String(s.goodTries)],
  ]);
  for (const x of SLOT_NAMES) {
    const slot = s.slots[x];
    vars.set(`${x}_tries`, String(slot.tries));
    vars.set(`${x}_good`, slot.good ? "1" : "0");
    vars.set(`${x}_boots`, String(slot.boots));
    vars.set(`${x}_roothash`, slot.rootHash);
    vars.set(`${x}_verity`, slot.verity);
    vars.set(`${x}_version`, slot.version);
  }
  bootStateFromEnv(vars);
  return vars;
}

/**
 * The slot GRUB boots now (README.md, "Boot rule", steps 1-6), without
 * counting: the first slot in `order` that is good and confirmed (fewer than
 * `goodTries` unconfirmed boots) or has tries left; else the first good slot
 * whatever its count; null when there is none.
 */
export function nextBootSlot(s: BootState): SlotName | null {
  for (const x of s.order) {
    const slot = s.slots[x];
    if ((slot.good && !isUnconfirmed(s, x)) || (!slot.good && slot.tries > 0)) return x;
  }
  return s.order.find((x) => s.slots[x].good) ?? null;
}

/**
 * What GRUB does at boot (README.md, "Boot rule"): picks `nextBootSlot` and
 * counts the boot — a try taken from a slot that is not good, an unconfirmed
 * boot added to a good one (not past `goodTries`). For tests and
 * simulations; GRUB's script is the real thing.
 */
export function grubBoot(s: BootState): { slot: SlotName | null; state: BootState } {
  const slot = nextBootSlot(s);
  if (slot === null) return { slot, state: s };
  const x = s.slots[slot];
  if (x.good)
    return isUnconfirmed(s, slot)
      ? { slot, state: s }
      : { slot, state: withSlot(s, slot, { boots: x.boots + 1 }) };
  return { slot, state: withSlot(s, slot, { tries: x.tries - 1 }) };
}

/** A: good, booted by default; B: empty. The state of a freshly built disk. */
export function initialBootState(a: SlotImage, goodTries = DEFAULT_GOOD_TRIES): BootState {
  const s: BootState = {
    order: ["A", "B"],
    goodTries,
    slots: {
      A: { tries: 0, good: true, boots: 0, ...pickImage(a) },
      B: emptySlot(),
    },
  };
  bootStateToEnv(s);
  return s;
}

/**
 * Marks `slot` as one GRUB will not boot (not good, no tries) and puts the
 * other slot first, before anything is written into `slot`. Refused when the
 * other slot is not good: no slot would be left to boot.
 */
export function markUnbootable(s: BootState, slot: SlotName): BootState {
  const other = otherSlot(slot);
  requireGoodFallback(s, other, `mark slot ${slot} unbootable`);
  return withSlot(s, slot, { good: false, tries: 0, boots: 0 }, [other, slot]);
}

/**
 * Makes `slot` (just written with `image`) the one to boot next, on trial:
 * first in order, `tries` tries, not good. Refused when the other slot is not
 * good, so a failed trial always falls back to a good slot.
 */
export function activateSlot(
  s: BootState,
  slot: SlotName,
  o: SlotImage & { tries: number },
): BootState {
  const other = otherSlot(slot);
  checkTries(o.tries, `activate slot ${slot}`);
  requireGoodFallback(s, other, `activate slot ${slot}`);
  const next = withSlot(s, slot, { tries: o.tries, good: false, boots: 0, ...pickImage(o) }, [
    slot,
    other,
  ]);
  if (isEmptySlot(next.slots[slot])) {
    throw new BootloaderError("BOOT_REFUSED", `cannot activate slot ${slot}: no root hash given`, {
      details: { slot },
    });
  }
  bootStateToEnv(next);
  return next;
}

/** Marks `slot` good (it booted and passed its checks); refused for an empty slot. */
export function markGood(s: BootState, slot: SlotName): BootState {
  if (isEmptySlot(s.slots[slot])) {
    throw new BootloaderError("BOOT_REFUSED", `cannot mark slot ${slot} good: the slot is empty`, {
      details: { slot },
    });
  }
  return withSlot(s, slot, { good: true, tries: 0, boots: 0 });
}

/**
 * The agent's confirmation that good `slot` came up (README.md, "Boot
 * rule"): its unconfirmed boots back to 0. With `first`, the slot also goes
 * first in the order — after a rollback or a fallback, the running good slot
 * is the one to boot. Refused for a slot that is not good.
 */
export function confirmBoot(s: BootState, slot: SlotName, o: { first?: boolean } = {}): BootState {
  if (!s.slots[slot].good) {
    throw new BootloaderError(
      "BOOT_REFUSED",
      `cannot confirm the boot of slot ${slot}: it is not good (mark it good instead)`,
      { details: { slot } },
    );
  }
  const order: [SlotName, SlotName] = o.first ? [slot, otherSlot(slot)] : s.order;
  return withSlot(s, slot, { boots: 0 }, order);
}

/**
 * The operator's `slots set-next`: puts `slot` first in order. Without
 * `tries`, the slot must already be bootable (good, or tries left): only the
 * preference changes. With `tries` (1-9) the slot is booted on trial (not
 * good, that many tries), which needs a good other slot to fall back to.
 */
export function setNext(s: BootState, slot: SlotName, tries?: number): BootState {
  const other = otherSlot(slot);
  const current = s.slots[slot];
  if (isEmptySlot(current)) {
    throw new BootloaderError("BOOT_REFUSED", `cannot boot slot ${slot} next: the slot is empty`, {
      details: { slot },
    });
  }
  if (tries === undefined) {
    if (!current.good && current.tries === 0) {
      throw new BootloaderError(
        "BOOT_REFUSED",
        `cannot boot slot ${slot} next: it is not good and has no tries left (give it tries to boot it on trial)`,
        { details: { slot } },
      );
    }
    // The operator asks for this slot again: a fresh count of unconfirmed boots.
    return withSlot(s, slot, { boots: 0 }, [slot, other]);
  }
  checkTries(tries, `boot slot ${slot} next`);
  requireGoodFallback(s, other, `boot slot ${slot} next on trial`);
  return withSlot(s, slot, { good: false, tries, boots: 0 }, [slot, other]);
}

function emptySlot(): SlotState {
  return { tries: 0, good: false, boots: 0, rootHash: "", verity: "", version: "" };
}

function pickImage(o: SlotImage): SlotImage {
  return { rootHash: o.rootHash, verity: o.verity, version: o.version };
}

function withSlot(
  s: BootState,
  slot: SlotName,
  change: Partial<SlotState>,
  order: [SlotName, SlotName] = s.order,
): BootState {
  return {
    order: [order[0], order[1]],
    goodTries: s.goodTries,
    slots: { ...s.slots, [slot]: { ...s.slots[slot], ...change } },
  };
}

function requireGoodFallback(s: BootState, other: SlotName, what: string): void {
  if (!s.slots[other].good) {
    throw new BootloaderError(
      "BOOT_REFUSED",
      `cannot ${what}: slot ${other} is not good, so there would be no good slot to fall back to`,
      { details: { fallback: other } },
    );
  }
}

function checkTries(tries: number, what: string): void {
  if (!Number.isInteger(tries) || tries < 1 || tries > MAX_TRIES) {
    throw new BootloaderError(
      "BOOT_REFUSED",
      `cannot ${what}: tries must be 1-${MAX_TRIES}, got ${tries}`,
      { details: { tries } },
    );
  }
}

/**
 * The boot state a kexec into `slot` leaves (README.md, "Booting by kexec"):
 * what GRUB's boot of it would (`grubBoot`: a try taken, or an unconfirmed
 * boot added). Refused (BOOT_REFUSED) when the slot is empty or GRUB would
 * boot another slot now, so a kexec never enters a slot the firmware path
 * would not.
 */
export function kexecBoot(s: BootState, slot: SlotName): BootState {
  if (isEmptySlot(s.slots[slot]))
    throw new BootloaderError("BOOT_REFUSED", `cannot boot slot ${slot} by kexec: it is empty`, {
      details: { slot },
    });
  const r = grubBoot(s);
  if (r.slot !== slot)
    throw new BootloaderError(
      "BOOT_REFUSED",
      `cannot boot slot ${slot} by kexec: GRUB would boot ${r.slot === null ? "no slot" : `slot ${r.slot}`} now`,
      { details: { slot, grubSlot: r.slot } },
    );
  return r.state;
}
