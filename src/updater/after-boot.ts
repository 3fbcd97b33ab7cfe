/**
 * After boot (README.md, "After boot"): carry out `decideAfterBoot` — mark a
 * new slot good when its health checks pass (or reboot when they fail),
 * record a rollback or a fallback, and confirm the boot of a good slot so
 * GRUB does not give up on it (src/bootloader `X_boots`). The agent calls
 * this holding its lock, with the boot disk open.
 */
import {
  type BootState,
  confirmBoot,
  markGood,
  parseSlotVerity,
  type SlotState,
} from "../bootloader/index.ts";
import type { Clock } from "../clock.ts";
import { isBaseError } from "../errors.ts";
import type { AgentConfig, SlotName } from "../image/index.ts";
import type { Logger } from "../log.ts";
import { VerityError, verifyVerity } from "../verity/index.ts";
import { errText, UpdaterError } from "./errors.ts";
import { checkCount, type HealthResult, type HealthRunner, runConfiguredChecks } from "./health.ts";
import type { BootStore, StateHandle } from "./installer.ts";
import type { ByteRange, Rebooter } from "./machine.ts";
import { decideAfterBoot } from "./policy.ts";

export type AfterBootResult =
  | { action: "nothing"; booted: SlotName; reason: string; confirmed: boolean }
  | { action: "marked-good"; booted: SlotName; version: string; checks: HealthResult[] }
  | {
      action: "unhealthy";
      booted: SlotName;
      version: string;
      checks: HealthResult[];
      rebooting: boolean;
    }
  | {
      action: "rollback";
      booted: SlotName;
      failedSlot: SlotName;
      version: string;
      reason: string;
      confirmed: boolean;
    }
  | {
      action: "fallback";
      booted: SlotName;
      failedSlot: SlotName;
      version: string;
      reason: string;
      confirmed: boolean;
    }
  | {
      action: "await-reboot";
      booted: SlotName;
      slot: SlotName;
      version: string;
      reason: string;
      confirmed: boolean;
    };

export interface AfterBootDeps {
  config: AgentConfig;
  log: Logger;
  clock: Clock;
  health: HealthRunner;
  rebooter: Rebooter;
  state: StateHandle;
  recordError(err: unknown): Promise<void>;
}

export interface AfterBootContext {
  disk: BootStore;
  boot: BootState;
  booted: SlotName;
  /** The boot disk (file or device) and where each slot lies on it. */
  diskPath: string;
  slots: Record<SlotName, ByteRange>;
}

type Unhealthy = Extract<AfterBootResult, { action: "unhealthy" }>;

export async function afterBoot(d: AfterBootDeps, c: AfterBootContext): Promise<AfterBootResult> {
  const state = d.state.current;
  const dec = decideAfterBoot({
    booted: c.booted,
    boot: c.boot,
    pending: state.pending,
    badVersions: state.badVersions,
  });
  const now = () => d.clock.now().toISOString();
  const booted = c.booted;
  switch (dec.action) {
    case "nothing": {
      if (dec.clearPending) await d.state.update((s) => ({ ...s, pending: null }));
      d.log.info({ slot: booted }, dec.reason);
      const confirmed = await confirm(d, c, false);
      if (typeof confirmed !== "boolean") return confirmed;
      return { action: "nothing", booted, reason: dec.reason, confirmed };
    }
    case "await-reboot": {
      d.log.info({ slot: dec.slot, version: dec.version }, dec.reason);
      // Not first: the installed slot stays first for the reboot it waits for.
      const confirmed = await confirm(d, c, false);
      if (typeof confirmed !== "boolean") return confirmed;
      return {
        action: "await-reboot",
        booted,
        slot: dec.slot,
        version: dec.version,
        reason: dec.reason,
        confirmed,
      };
    }
    case "rollback": {
      const record = { version: dec.version, slot: dec.slot, reason: dec.reason, at: now() };
      await d.state.update((s) => ({
        ...s,
        pending: null,
        rollbacks: [...s.rollbacks, record],
        badVersions: s.badVersions.includes(dec.version)
          ? s.badVersions
          : [...s.badVersions, dec.version],
      }));
      d.log.warn(
        { version: dec.version, slot: dec.slot, booted },
        `rollback: ${dec.reason}; ${dec.version} is recorded as bad and never installed again`,
      );
      const confirmed = await confirm(d, c, true);
      if (typeof confirmed !== "boolean") return confirmed;
      return {
        action: "rollback",
        booted,
        failedSlot: dec.slot,
        version: dec.version,
        reason: dec.reason,
        confirmed,
      };
    }
    case "fallback": {
      const finding = await verityFinding(c.diskPath, c.slots[dec.slot], c.boot.slots[dec.slot]);
      const reason = `${dec.reason}; ${finding}`;
      const record = {
        slot: dec.slot,
        version: dec.version,
        rootHash: c.boot.slots[dec.slot].rootHash,
        reason,
        booted,
        at: now(),
      };
      await d.state.update((s) => ({
        ...s,
        ...(dec.clearPending ? { pending: null } : {}),
        fallbacks: [...s.fallbacks, record],
      }));
      d.log.warn(
        { event: "fallback", slot: dec.slot, version: dec.version, booted },
        `fallback: ${reason}`,
      );
      // The running slot goes first, which also closes the event: the next
      // boot sees the order GRUB follows, not a slot it passed over.
      const confirmed = await confirm(d, c, true);
      if (typeof confirmed !== "boolean") return confirmed;
      return {
        action: "fallback",
        booted,
        failedSlot: dec.slot,
        version: dec.version,
        reason,
        confirmed,
      };
    }
    case "check-health": {
      d.log.info(
        { slot: dec.slot, version: dec.version },
        `${dec.reason}; running ${checkCount(d.config)} health check(s)`,
      );
      const checks = await healthChecks(d);
      const failed = checks.filter((r) => !r.ok);
      if (failed.length > 0)
        return unhealthy(d, booted, dec.version, checks, "not marking it good");
      // Read again right before the one write: the state the transition applies to.
      const boot = await c.disk.readState();
      await c.disk.writeState(markGood(boot, dec.slot));
      await d.state.update((s) => ({
        ...s,
        pending: null,
        lastGood: { slot: dec.slot, version: dec.version, at: now() },
      }));
      d.log.info(
        { slot: dec.slot, version: dec.version },
        `marked good: slot ${dec.slot} (${dec.version})`,
      );
      return { action: "marked-good", booted, version: dec.version, checks };
    }
  }
}

/**
 * Confirm the boot of the booted good slot (README.md, "After boot",
 * "Confirming a good slot"): with `confirm: healthy` only once its health
 * checks pass. `first`: the slot also goes first in the order. One write, none
 * when nothing changes. Returns whether the boot state shows it confirmed, or
 * the unhealthy result when a check failed.
 */
async function confirm(
  d: AfterBootDeps,
  c: AfterBootContext,
  first: boolean,
): Promise<boolean | Unhealthy> {
  const slot = c.booted;
  const x = c.boot.slots[slot];
  if (!x.good) return false;
  // No boot to confirm: this one was confirmed already (an agent restarted
  // without a reboot); the health checks do not run again for it.
  if (x.boots === 0 && (!first || c.boot.order[0] === slot)) return true;
  if (d.config.confirm === "healthy") {
    d.log.info(
      { slot, version: x.version },
      `confirming slot ${slot} (${x.version}) once ${checkCount(d.config)} health check(s) pass`,
    );
    const checks = await healthChecks(d);
    if (checks.some((r) => !r.ok))
      return unhealthy(d, slot, x.version, checks, "not confirming its boot");
  }
  // Read again right before the one write: the state the transition applies to.
  const boot = await c.disk.readState();
  const next = confirmBoot(boot, slot, { first });
  if (next.slots[slot].boots === boot.slots[slot].boots && next.order[0] === boot.order[0])
    return true;
  await c.disk.writeState(next);
  d.log.info(
    {
      slot,
      version: x.version,
      unconfirmedBoots: boot.slots[slot].boots,
      order: next.order.join(" "),
    },
    `confirmed: slot ${slot} (${x.version}) is up${first ? `; it boots first (order ${next.order.join(" ")})` : ""}`,
  );
  return true;
}

/**
 * What the broken slot's bytes say: its dm-verity tree checked against the
 * root hash in the boot state, as the initramfs would (one read of the slot,
 * on this thread). A mismatch is corruption at rest; an image that verifies
 * broke elsewhere (kernel, init, the agent). Failures to check are reported,
 * not thrown, except a bug.
 */
async function verityFinding(diskPath: string, range: ByteRange, s: SlotState): Promise<string> {
  const v = parseSlotVerity(s.verity);
  if (!v) return "its verity parameters are not in the boot state, so its image was not checked";
  try {
    await verifyVerity({
      dataPath: diskPath,
      dataOffset: range.offset,
      dataBlocks: v.dataBlocks,
      hashPath: diskPath,
      // X_verity's hash start block is the one after the superblock (src/image).
      hashOffset: range.offset + (v.hashStartBlock - 1) * VERITY_BLOCK,
      dataBlockSize: VERITY_BLOCK,
      hashBlockSize: VERITY_BLOCK,
      salt: Buffer.from(v.salt, "hex"),
      rootHash: s.rootHash,
      threads: 1,
    });
    return "its image verifies against its root hash (dm-verity): it is not corrupted at rest, so its kernel, its init or the agent failed";
  } catch (err) {
    if (err instanceof VerityError && err.code === "VERITY_MISMATCH")
      return `dm-verity: its image does not match its root hash, it is corrupted at rest (${err.message})`;
    if (isBaseError(err)) return `its image could not be checked: ${errText(err)}`;
    throw err;
  }
}

/** The slot's dm-verity block size: 4096, data and hash (src/image, `X_verity`). */
const VERITY_BLOCK = 4096;

async function healthChecks(d: AfterBootDeps): Promise<HealthResult[]> {
  const checks = await runConfiguredChecks(d.config, d.health);
  for (const r of checks) {
    if (r.ok)
      d.log.info({ check: r.name, durationMs: r.durationMs }, `health check ${r.name} passed`);
    else
      d.log.error(
        { check: r.name, exitCode: r.exitCode, timedOut: r.timedOut, output: r.output },
        `health check ${r.name} failed (${r.timedOut ? "timed out" : (r.error ?? `exit ${r.exitCode}`)})`,
      );
  }
  return checks;
}

/** A built-in check's name with what it found (the failed units); a command's name alone. */
function failedName(r: HealthResult): string {
  return r.builtin && r.error !== undefined ? `${r.name} (${r.error})` : r.name;
}

/** A failed check: recorded, and unless the reboot strategy is `off` a reboot without a mark, so GRUB counts it. */
async function unhealthy(
  d: AfterBootDeps,
  slot: SlotName,
  version: string,
  checks: HealthResult[],
  consequence: string,
): Promise<Unhealthy> {
  const failed = checks.filter((r) => !r.ok);
  const err = new UpdaterError(
    "HEALTH_CHECK_FAILED",
    `slot ${slot} (${version}): health check(s) ${failed.map(failedName).join(", ")} failed; ${consequence}`,
    { details: { slot, version, failed: failed.map((f) => f.name) } },
  );
  await d.recordError(err);
  // A slot on trial reboots at once, whatever the window: the host is already
  // out of service (and holds the reboot lock, with etcd-lock) until it is up.
  const rebooting = d.config.reboot.strategy !== "off";
  if (rebooting) {
    d.log.warn({ slot }, `rebooting: ${err.message}; the bootloader counts the try`);
    await d.rebooter.reboot(err.message);
  } else
    d.log.warn(
      { slot },
      `${err.message}; reboot strategy is off: reboot to let the bootloader count the try`,
    );
  return { action: "unhealthy", booted: slot, version, checks, rebooting };
}
