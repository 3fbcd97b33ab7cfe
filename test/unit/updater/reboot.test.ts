// The reboot into an installed update (src/updater/README.md, "Reboot"): the window, with a
// fake clock; strategy off and `agent reboot`; what status says while the reboot waits.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseDuration, parseWindowStart } from "../../../src/image/index.ts";
import type { RepoServer } from "../../../src/repo/index.ts";
import { formatStatus, type Rebooter } from "../../../src/updater/index.ts";
import { FakeClock } from "../../helpers/clock.ts";
import { servedUpdateWorld, type UpdateWorld } from "../../helpers/fixtures.ts";
import { tempDir } from "../../helpers/tmp.ts";
import { readBoot, testAgent } from "./harness.ts";

// 2026-12-09 is a Wednesday; the index is issued before the first fake time used.
const ISSUED = new Date("2026-12-09T00:00:00Z");
let w: UpdateWorld;
let repo: RepoServer;
beforeAll(async () => {
  ({ w, repo } = await servedUpdateWorld(tempDir(), {
    now: ISSUED,
    expiresInMs: 60 * 24 * 3_600_000,
  }));
});
afterAll(async () => {
  await repo?.close();
});

const thursday = {
  strategy: "immediate" as const,
  window: { ...parseWindowStart("Thu 23:00")!, lengthMs: parseDuration("1h30m")! },
  method: "reboot" as const,
  etcd: null,
};

/** A host that has not rebooted yet runs slot A (an image file would count GRUB's next choice). */
const notRebooted = { bootedSlot: async () => "A" as const };

/** The daemon from `start` until its first reboot: when it came, and the sleeps before it. */
async function firstReboot(name: string, start: string) {
  const d = await w.freshDisk(name);
  const clock = new FakeClock({ start: new Date(start), autoAdvance: true });
  const stop = new AbortController();
  const reboots: string[] = [];
  const rebooter: Rebooter = {
    async reboot() {
      reboots.push(clock.now().toISOString());
      stop.abort(new Error("SIGTERM"));
    },
  };
  clock.onSleep = () => {
    // bounded: a daemon that never reboots ends the test instead of looping
    if (clock.sleeps.length > 200) stop.abort(new Error("too many sleeps"));
  };
  const t = await testAgent(d.path, {
    config: {
      repoUrl: repo.url,
      channel: "stable",
      // not a divisor of the wait: the daemon must wake for the window, not at a poll
      pollIntervalMs: 5_000_000,
      pollJitterMs: 0,
      reboot: thursday,
    },
    overrides: { clock, rebooter, timeZone: "UTC", bootedSlot: notRebooted },
  });
  await t.agent.run(stop.signal);
  return { reboots, t, clock };
}

describe("reboot window (Thu 23:00 for 1h30m, fake clock)", () => {
  it("an install on Wednesday 10:00 reboots on Thursday at 23:00, not before", async () => {
    const { reboots, t } = await firstReboot("win-wed", "2026-12-09T10:00:00Z");
    expect(reboots).toEqual(["2026-12-10T23:00:00.000Z"]);
    const msgs = t.lines.map((l) => l.msg);
    expect(msgs).toContain(
      "waiting for the reboot window (Thu 23:00 for 1h30m): reboots into slot B (2.0.0) at 2026-12-10T23:00:00.000Z",
    );
    expect(msgs).toContain("rebooting into slot B (2.0.0)");
    expect(t.agent.state.rebootWait).toBeNull();
  });

  it("an install on Thursday 23:30 reboots at once", async () => {
    const { reboots, clock } = await firstReboot("win-thu", "2026-12-10T23:30:00Z");
    expect(reboots).toEqual(["2026-12-10T23:30:00.000Z"]);
    expect(clock.elapsedMs).toBe(0);
  });

  it("an install on Friday 00:40 waits a week", async () => {
    const { reboots } = await firstReboot("win-fri", "2026-12-11T00:40:00Z");
    expect(reboots).toEqual(["2026-12-17T23:00:00.000Z"]);
  });

  it("status says what the reboot waits for and until when", async () => {
    const d = await w.freshDisk("win-status");
    const clock = new FakeClock({ start: new Date("2026-12-09T10:00:00Z") });
    const t = await testAgent(d.path, {
      config: { repoUrl: repo.url, channel: "stable", reboot: thursday },
      overrides: { clock, timeZone: "UTC", bootedSlot: notRebooted },
    });
    const r = await t.agent.check();
    expect(r).toMatchObject({
      outcome: "installed",
      rebooting: false,
      waiting: { for: "window", until: "2026-12-10T23:00:00.000Z" },
    });
    const s = await t.agent.status();
    expect(s.rebootWait).toMatchObject({ for: "window", version: "2.0.0", slot: "B" });
    expect(formatStatus(s)).toContain(
      "reboot     waiting for the window, until 2026-12-10T23:00:00.000Z (since 2026-12-09T10:00:00.000Z)",
    );
  });
});

describe("strategy off", () => {
  it("installs and waits; `agent reboot` reboots into the installed slot; without one it is refused", async () => {
    const d = await w.freshDisk("off");
    const reasons: string[] = [];
    const rebooter: Rebooter = {
      async reboot(reason) {
        reasons.push(reason);
      },
    };
    const config = {
      repoUrl: repo.url,
      channel: "stable",
      reboot: { ...thursday, strategy: "off" as const },
    };
    const clock = new FakeClock({ start: new Date("2026-12-09T10:00:00Z") });
    const t = await testAgent(d.path, {
      config,
      overrides: { clock, rebooter, bootedSlot: notRebooted },
    });
    expect(await t.agent.check()).toMatchObject({
      outcome: "installed",
      rebooting: false,
      waiting: { for: "operator" },
    });
    expect(reasons).toEqual([]);
    // a second check installs nothing and still waits
    expect(await t.agent.check()).toMatchObject({ outcome: "pending-reboot", rebooting: false });
    expect(formatStatus(await t.agent.status())).toContain(
      "reboot     waiting for the operator (abforge agent reboot)",
    );
    // the operator's word goes past the strategy and the window (Wednesday)
    expect(await t.agent.reboot()).toMatchObject({ rebooting: true, slot: "B", version: "2.0.0" });
    expect(reasons).toEqual(["update 2.0.0 installed in slot B"]);
    expect((await readBoot(d.path)).order).toEqual(["B", "A"]);

    const fresh = await w.freshDisk("off-nothing");
    const t2 = await testAgent(fresh.path, { config, overrides: { rebooter } });
    await expect(t2.agent.reboot()).rejects.toMatchObject({
      code: "UPDATE_REFUSED",
      message: expect.stringMatching(/no installed update waits for a reboot/),
    });
  });
});
