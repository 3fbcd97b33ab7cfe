/**
 * The idle slot an install emptied (README.md, "Empty slot"): the state
 * file's record, shown by `agent status` and `slots show` while the boot
 * state still shows that slot empty and unbootable.
 */
import type { BootState } from "../bootloader/index.ts";
import { UpdaterError } from "./errors.ts";
import { type EmptySlot, StateStore } from "./state-file.ts";

/** The record, if the boot state still agrees (nobody activated or refilled the slot since). */
export function emptySlotNow(e: EmptySlot | null, boot: BootState): EmptySlot | null {
  if (!e) return null;
  const s = boot.slots[e.slot];
  return s.rootHash === "" && !s.good && s.tries === 0 ? e : null;
}

/**
 * The record from the agent's state directory, read without writing (as
 * `agent status` does). For `slots show`, which works without the agent: a
 * state file that is missing, corrupt or of a newer schema gives no record
 * (`agent status` reports those), and the slot is shown empty without a reason.
 */
export async function readEmptySlot(stateDir: string, boot: BootState): Promise<EmptySlot | null> {
  let r: Awaited<ReturnType<StateStore["read"]>>;
  try {
    r = await new StateStore(stateDir).read();
  } catch (err) {
    if (
      err instanceof UpdaterError &&
      (err.code === "STATE_CORRUPT" || err.code === "STATE_SCHEMA_NEWER")
    )
      return null;
    throw err;
  }
  return "state" in r ? emptySlotNow(r.state.emptySlot, boot) : null;
}

/** One line: since when, what it held, why it is still empty. */
export function formatEmptySlot(e: EmptySlot): string {
  const was = e.previousVersion ? `held ${e.previousVersion}; ` : "";
  const why = e.failure
    ? `the install of ${e.version} stopped at ${e.failure.at}: ${e.failure.code}: ${e.failure.message}`
    : `the install of ${e.version} has not finished (running, or killed)`;
  return `slot ${e.slot} since ${e.since} (${was}not bootable): ${why}`;
}
