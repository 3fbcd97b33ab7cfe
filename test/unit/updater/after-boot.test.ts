// After boot (src/updater/README.md, "After boot", the decision table): health checks,
// mark good once, reboot without marking, rollback recorded and never reinstalled.
// GRUB's boot rule is played by src/bootloader grubBoot on the disk image's boot state.
import { open, readFile } from "node:fs/promises";
import { beforeAll, describe, expect, it } from "vitest";
import { grubBoot, markGood, withBootDisk } from "../../../src/bootloader/index.ts";
import {
  type AgentConfig,
  formatStatus,
  type HealthCheckConfig,
} from "../../../src/updater/index.ts";
import { FakeClock } from "../../helpers/clock.ts";
import { type BundleFixture, makeUpdateWorld, type UpdateWorld } from "../../helpers/fixtures.ts";
import { tempDir } from "../../helpers/tmp.ts";
import { REBOOT_OFF, readBoot, testAgent, writeBoot } from "./harness.ts";

let w: UpdateWorld;
beforeAll(async () => {
  w = await makeUpdateWorld(tempDir());
});

const ok: HealthCheckConfig = { name: "ok", command: ["/bin/sh", "-c", "exit 0"], timeoutMs: 5000 };
const broken: HealthCheckConfig = {
  name: "broken",
  command: ["/bin/sh", "-c", "echo broken >&2; exit 3"],
  timeoutMs: 5000,
};
const hangs: HealthCheckConfig = { name: "hangs", command: ["sleep", "30"], timeoutMs: 20_000 };
const bundle = (v: string) => (w.bundles[v] as BundleFixture).path;

/** GRUB at power-on: pick the slot, count the try, save the state. */
async function powerOn(disk: string) {
  const { slot, state } = grubBoot(await readBoot(disk));
  await writeBoot(disk, state);
  return slot;
}

async function installed(name: string, config: Partial<AgentConfig>) {
  const d = await w.freshDisk(name);
  const t = await testAgent(d.path, { config: { tries: 2, ...config } });
  await t.agent.install(bundle("2.0.0"));
  return d;
}

describe("after boot", () => {
  it("the new slot passes its checks: marked good once, recorded", async () => {
    const d = await installed("healthy", { healthChecks: [ok] });
    expect(await powerOn(d.path)).toBe("B");
    const t = await testAgent(d.path, { config: { healthChecks: [ok] } });
    const r = await t.agent.afterBoot();
    expect(r).toMatchObject({ action: "marked-good", booted: "B", version: "2.0.0" });
    const boot = await readBoot(d.path);
    expect(boot.slots.B).toMatchObject({ good: true, version: "2.0.0" });
    expect(boot.slots.A).toMatchObject({ good: true, version: "1.0.0" });
    expect(t.agent.state).toMatchObject({
      pending: null,
      lastGood: { slot: "B", version: "2.0.0" },
    });
    expect(t.lines.map((l) => l.msg)).toContain("marked good: slot B (2.0.0)");
    // once: a second run changes nothing on the disk
    const env = await readFile(d.path);
    expect(await t.agent.afterBoot()).toMatchObject({ action: "nothing" });
    expect((await readFile(d.path)).equals(env)).toBe(true);
  });

  it.each([
    ["fails", broken, false],
    ["times out", hangs, true],
  ])(
    "a check that %s: not marked, reboot so GRUB counts the try",
    async (_what, check, timedOut) => {
      const d = await installed(`unhealthy-${check.name}`, {});
      await powerOn(d.path);
      const clock = new FakeClock();
      const t = await testAgent(d.path, {
        config: { healthChecks: [ok, check] },
        overrides: { clock },
      });
      const running = t.agent.afterBoot();
      if (timedOut) {
        // the second check runs: its timeout is the only timer; it is killed exactly then
        while (clock.dueAt.join() !== String(hangs.timeoutMs))
          await new Promise((r) => setImmediate(r));
        clock.advance(hangs.timeoutMs - 1);
        expect(clock.pending).toBe(1);
        clock.advance(1);
      }
      const r = await running;
      expect(r).toMatchObject({ action: "unhealthy", booted: "B", rebooting: true });
      if (r.action !== "unhealthy") throw new Error("unreachable");
      if (timedOut) expect(r.checks[1]?.durationMs).toBe(hangs.timeoutMs);
      expect(r.checks.map((c) => [c.name, c.ok, c.timedOut])).toEqual([
        ["ok", true, false],
        [check.name, false, timedOut],
      ]);
      expect((await readBoot(d.path)).slots.B).toMatchObject({ good: false, tries: 1 });
      expect(t.reboots).toHaveLength(1);
      expect(t.agent.state.lastError).toMatchObject({ code: "HEALTH_CHECK_FAILED" });
      expect(t.lines.some((l) => /^health check [a-z]+ failed/.test(l.msg))).toBe(true);
    },
  );

  it("reboot policy manual: a failing check only logs", async () => {
    const d = await installed("unhealthy-manual", {});
    await powerOn(d.path);
    const t = await testAgent(d.path, { config: { healthChecks: [broken], reboot: REBOOT_OFF } });
    expect(await t.agent.afterBoot()).toMatchObject({ action: "unhealthy", rebooting: false });
    expect(t.reboots).toHaveLength(0);
  });

  it("tries run out, GRUB falls back: the rollback is recorded and the version never installed again", async () => {
    const d = await installed("rollback", {});
    const boots: string[] = [];
    for (;;) {
      const slot = (await powerOn(d.path)) as string;
      boots.push(slot);
      // the host knows the slot GRUB booted (abforge.slot= on the kernel command line)
      const cmdline = { bootedSlot: async () => slot as "A" | "B" };
      const t = await testAgent(d.path, {
        config: { healthChecks: [broken] },
        overrides: { bootedSlot: cmdline },
      });
      const r = await t.agent.afterBoot();
      if (slot === "A") {
        expect(r).toMatchObject({
          action: "rollback",
          booted: "A",
          failedSlot: "B",
          version: "2.0.0",
        });
        expect(t.lines.some((l) => /^rollback: /.test(l.msg) && l.level === 40)).toBe(true);
        break;
      }
      expect(r).toMatchObject({ action: "unhealthy" });
    }
    expect(boots).toEqual(["B", "B", "A"]);
    // the running good slot is first again: the order follows the truth
    expect((await readBoot(d.path)).order).toEqual(["A", "B"]);

    const t = await testAgent(d.path);
    expect(t.agent.state.badVersions).toEqual(["2.0.0"]);
    const status = await t.agent.status();
    expect(status).toMatchObject({
      booted: { slot: "A", version: "1.0.0", good: true },
      other: { slot: "B", version: "2.0.0", good: false, tries: 0 },
      badVersions: ["2.0.0"],
      pending: null,
    });
    expect(status.rollbacks).toEqual([
      expect.objectContaining({
        version: "2.0.0",
        slot: "B",
        reason: expect.stringMatching(/used up its boot tries/),
      }),
    ]);
    // a rollback is recorded once
    expect(await t.agent.afterBoot()).toMatchObject({ action: "nothing" });
    expect(t.agent.state.rollbacks).toHaveLength(1);
    // never again, but a newer version is fine
    await expect(t.agent.install(bundle("2.0.0"))).rejects.toMatchObject({
      code: "UPDATE_BAD_VERSION",
    });
    expect(await t.agent.install(bundle("3.0.0"))).toMatchObject({
      outcome: "installed",
      slot: "B",
    });
  });

  it("installed but not rebooted yet: nothing to decide", async () => {
    const d = await installed("not-rebooted", {});
    const stillA = { bootedSlot: async () => "A" as const };
    const t = await testAgent(d.path, { overrides: { bootedSlot: stillA } });
    expect(await t.agent.afterBoot()).toMatchObject({
      action: "await-reboot",
      slot: "B",
      version: "2.0.0",
    });
  });

  /** Demo 2.0.0 in B, marked good and first; A keeps 1.0.0 (good). */
  async function goodB(name: string) {
    const d = await installed(name, {});
    const b = await readBoot(d.path);
    await writeBoot(d.path, markGood(b, "B"));
    return d;
  }

  it("every boot of a good slot is confirmed once the agent runs (confirm: started)", async () => {
    const d = await goodB("confirm-started");
    expect(await powerOn(d.path)).toBe("B");
    expect((await readBoot(d.path)).slots.B).toMatchObject({ good: true, boots: 1 });
    const t = await testAgent(d.path, { config: { healthChecks: [broken] } });
    expect(await t.agent.afterBoot()).toMatchObject({ action: "nothing", confirmed: true });
    const s = await readBoot(d.path);
    expect(s.slots.B).toMatchObject({ good: true, boots: 0 });
    expect(s.order).toEqual(["B", "A"]);
    expect(t.lines.map((l) => l.msg)).toContain("confirmed: slot B (2.0.0) is up");
    expect(t.reboots).toHaveLength(0);
  });

  it("confirm: healthy confirms a good slot only once its checks pass, and reboots without confirming when one fails", async () => {
    const d = await goodB("confirm-healthy");
    await powerOn(d.path);
    const sick = await testAgent(d.path, {
      config: { confirm: "healthy", healthChecks: [broken] },
    });
    expect(await sick.agent.afterBoot()).toMatchObject({
      action: "unhealthy",
      booted: "B",
      rebooting: true,
    });
    expect((await readBoot(d.path)).slots.B).toMatchObject({ good: true, boots: 1 });
    expect(sick.reboots).toHaveLength(1);
    expect(sick.agent.state.lastError).toMatchObject({
      code: "HEALTH_CHECK_FAILED",
      message: expect.stringMatching(/not confirming its boot/),
    });
    await powerOn(d.path);
    const well = await testAgent(d.path, { config: { confirm: "healthy", healthChecks: [ok] } });
    expect(await well.agent.afterBoot()).toMatchObject({ action: "nothing", confirmed: true });
    expect((await readBoot(d.path)).slots.B).toMatchObject({ good: true, boots: 0 });
    // an agent restarted without a reboot: that boot is confirmed, no checks run again
    const restarted = await testAgent(d.path, {
      config: { confirm: "healthy", healthChecks: [broken] },
    });
    expect(await restarted.agent.afterBoot()).toMatchObject({ action: "nothing", confirmed: true });
    expect(restarted.reboots).toHaveLength(0);
    expect(restarted.lines.some((l) => /^health check/.test(l.msg))).toBe(false);
  });

  it("a good slot that stops coming up: after goodTries unconfirmed boots GRUB boots the other good slot; the fallback is recorded once and the running slot goes first", async () => {
    const d = await goodB("fallback");
    const boots: string[] = [];
    // B breaks at rest: it boots, but nothing in it ever confirms
    for (let n = 0; n < 3; n++) boots.push((await powerOn(d.path)) as string);
    expect((await readBoot(d.path)).slots.B).toMatchObject({ good: true, boots: 3 });
    boots.push((await powerOn(d.path)) as string);
    expect(boots).toEqual(["B", "B", "B", "A"]);
    const cmdline = { bootedSlot: async () => "A" as const };
    const t = await testAgent(d.path, { overrides: { bootedSlot: cmdline } });
    const r = await t.agent.afterBoot();
    expect(r).toMatchObject({
      action: "fallback",
      booted: "A",
      failedSlot: "B",
      version: "2.0.0",
      confirmed: true,
      reason: expect.stringMatching(/booted 3 times in a row without a confirmation/),
    });
    // its bytes are intact: it broke elsewhere
    expect(r).toMatchObject({
      reason: expect.stringMatching(/its image verifies against its root hash \(dm-verity\)/),
    });
    expect(t.lines.some((l) => /^fallback: slot B \(2\.0\.0\)/.test(l.msg) && l.level === 40)).toBe(
      true,
    );
    const s = await readBoot(d.path);
    expect(s.order).toEqual(["A", "B"]);
    expect(s.slots.A).toMatchObject({ good: true, boots: 0 });
    // GRUB's evidence stays: B is passed over until it is rewritten or set next
    expect(s.slots.B).toMatchObject({ good: true, boots: 3 });
    const status = await t.agent.status();
    expect(status.fallbacks).toEqual([
      {
        slot: "B",
        version: "2.0.0",
        rootHash: s.slots.B.rootHash,
        booted: "A",
        reason: expect.stringMatching(/fell back to slot A \(1\.0\.0\)/),
        at: expect.any(String),
      },
    ]);
    expect(status.other).toMatchObject({ slot: "B", good: true, boots: 3 });
    const text = formatStatus(status);
    expect(text).toMatch(
      /^fallback {3}\S+ slot B \(2\.0\.0\) to slot A: slot B \(2\.0\.0\) was booted 3 times/m,
    );
    expect(text).toMatch(/^other {6}slot B {2}2\.0\.0 {2}good, 3 of 3 boots unconfirmed$/m);
    expect(text).toMatch(/^order {6}A B$/m);
    // the next boot is A's, confirmed; the fallback is not recorded again
    expect(await powerOn(d.path)).toBe("A");
    const again = await testAgent(d.path, { overrides: { bootedSlot: cmdline } });
    expect(await again.agent.afterBoot()).toMatchObject({ action: "nothing", confirmed: true });
    expect(again.agent.state.fallbacks).toHaveLength(1);
    // not a bad version: the same release may be written into B again
    expect(again.agent.state.badVersions).toEqual([]);
  });

  it("a fallback from a slot corrupted at rest says so: dm-verity finds the block", async () => {
    const d = await goodB("fallback-corrupt");
    const { offset } = await withBootDisk(d.path, async (b) => b.slotRange("B"));
    const fh = await open(d.path, "r+");
    const byte = Buffer.alloc(1);
    await fh.read(byte, 0, 1, offset + 8192);
    byte[0] = byte[0]! ^ 0xff;
    await fh.write(byte, 0, 1, offset + 8192);
    await fh.close();
    for (let n = 0; n < 4; n++) await powerOn(d.path);
    const t = await testAgent(d.path, {
      overrides: { bootedSlot: { bootedSlot: async () => "A" } },
    });
    const r = await t.agent.afterBoot();
    expect(r).toMatchObject({
      action: "fallback",
      failedSlot: "B",
      reason: expect.stringMatching(
        /dm-verity: its image does not match its root hash, it is corrupted at rest \(.*block 2\b/,
      ),
    });
    expect(t.agent.state.fallbacks[0]?.reason).toBe((r as { reason: string }).reason);
  });
});
