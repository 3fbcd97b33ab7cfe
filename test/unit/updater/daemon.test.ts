// The daemon loop (src/updater/README.md, "The daemon"): after-boot handling, a check at once,
// then every pollIntervalMs ± jitter; errors back off and never end the loop; abort stops it.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { RepoError, type RepoServer } from "../../../src/repo/index.ts";
import type { HttpClient } from "../../../src/updater/index.ts";
import { FakeClock } from "../../helpers/clock.ts";
import { servedUpdateWorld, type UpdateWorld } from "../../helpers/fixtures.ts";
import { tempDir } from "../../helpers/tmp.ts";
import { REBOOT_OFF, readBoot, testAgent } from "./harness.ts";

let w: UpdateWorld;
let repo: RepoServer;
beforeAll(async () => {
  ({ w, repo } = await servedUpdateWorld(tempDir()));
});
afterAll(async () => {
  await repo?.close();
});

describe("agent run", () => {
  it("checks at once, backs off after errors, polls with jitter, never crashes, stops on abort", async () => {
    const d = await w.freshDisk("daemon");
    const stop = new AbortController();
    const clock = new FakeClock({ autoAdvance: true });
    const delays = clock.sleeps;
    clock.onSleep = () => {
      if (delays.length === 4) stop.abort(new Error("SIGTERM"));
    };
    let fetches = 0;
    const t0 = await testAgent(d.path);
    const real = t0.options.http;
    const flaky: HttpClient = {
      fetch(url, o) {
        fetches += 1;
        if (fetches <= 2)
          return Promise.reject(
            new RepoError("REPO_DOWNLOAD_FAILED", `${url}: connection refused`),
          );
        return real.fetch(url, o);
      },
      openRange: (url, o) => real.openRange(url, o),
    };
    const t = await testAgent(d.path, {
      config: {
        repoUrl: repo.url,
        channel: "stable",
        pollIntervalMs: 80_000,
        pollJitterMs: 8_000,
        maxBackoffMs: 60_000,
      },
      overrides: {
        clock,
        http: flaky,
        random: { fraction: () => 0.75, id: () => "host", int: () => 7 },
      },
    });
    await t.agent.run(stop.signal);
    // two failures: interval/8 then doubled; then 80000 + (0.75*2-1)*8000 after each good check
    expect(delays).toEqual([10_000, 20_000, 84_000, 84_000]);
    expect(fetches).toBe(4);
    expect(t.agent.state.lastError).toMatchObject({ code: "REPO_DOWNLOAD_FAILED" });
    expect(t.agent.state.lastCheck).toMatchObject({ outcome: "up-to-date", version: "2.0.0" });
    expect((await readBoot(d.path)).slots.B).toMatchObject({ version: "2.0.0" });
    const msgs = t.lines.map((l) => l.msg);
    expect(msgs[0]).toBe("agent started");
    expect(msgs.filter((m) => m.startsWith("check failed"))).toHaveLength(2);
    expect(msgs).toContain("installed 2.0.0 into slot B; it boots next (3 tries)");
    expect(msgs.at(-1)).toBe("agent stopped");
  });

  it("an abort during the sleep between checks ends the loop at once", async () => {
    const d = await w.freshDisk("daemon-stop");
    const stop = new AbortController();
    const clock = new FakeClock();
    const sleeping = new Promise<void>((resolve) => {
      clock.onSleep = () => resolve();
    });
    const t = await testAgent(d.path, {
      config: {
        repoUrl: repo.url,
        channel: "stable",
        pollIntervalMs: 3_600_000,
        pollJitterMs: 0,
        reboot: REBOOT_OFF,
      },
      overrides: { clock },
    });
    const running = t.agent.run(stop.signal);
    await sleeping;
    // one agent at a time: a second one (an operator's `agent check`) is refused while it runs
    const other = await testAgent(d.path, { config: { repoUrl: repo.url, channel: "stable" } });
    await expect(other.agent.check()).rejects.toMatchObject({
      code: "UPDATE_REFUSED",
      message: expect.stringMatching(/another abforge agent \(pid \d+\) is working with/),
    });
    stop.abort(new Error("SIGTERM"));
    await running;
    // the hour's sleep was cut short: no virtual time passed
    expect(clock.sleeps).toEqual([3_600_000]);
    expect(clock.elapsedMs).toBe(0);
    expect(t.lines.at(-1)?.msg).toBe("agent stopped");
    // the lock is released: the next agent may work
    expect(await other.agent.check()).toMatchObject({ outcome: "up-to-date" });
  });

  it("a config that cannot work ends the loop with CONFIG_INVALID instead of retrying", async () => {
    const d = await w.freshDisk("daemon-no-repo");
    const clock = new FakeClock({ autoAdvance: true });
    const t = await testAgent(d.path, { config: { repoUrl: null }, overrides: { clock } });
    await expect(t.agent.run(new AbortController().signal)).rejects.toMatchObject({
      code: "CONFIG_INVALID",
      message: expect.stringMatching(/repoUrl is not set/),
    });
    expect(clock.sleeps).toEqual([]); // not one retry
    const msgs = t.lines.map((l) => l.msg);
    expect(msgs.filter((m) => m.startsWith("check failed"))).toEqual([]);
    expect(msgs).toContain(
      "stopping: the config cannot work (repoUrl is not set in the config: nowhere to check for updates); fix it, the agent is started again",
    );
    expect(t.lines.some((l) => "err" in l)).toBe(false); // no stack in the log
    expect(msgs.at(-1)).toBe("agent stopped");
  });

  it("a SIGTERM during a poll ends the loop and is not recorded as an error", async () => {
    const d = await w.freshDisk("daemon-term-poll");
    const stop = new AbortController();
    const t0 = await testAgent(d.path);
    const real = t0.options.http;
    const terminating: HttpClient = {
      fetch(url, o) {
        stop.abort(new Error("SIGTERM")); // arrives while the index is being fetched
        return real.fetch(url, o);
      },
      openRange: (url, o) => real.openRange(url, o),
    };
    const t = await testAgent(d.path, {
      config: { repoUrl: repo.url, channel: "stable", reboot: REBOOT_OFF },
      overrides: { http: terminating, clock: new FakeClock() },
    });
    await t.agent.run(stop.signal);
    expect(t.agent.state.lastError).toBeNull();
    expect(t.lines.map((l) => l.msg).filter((m) => m.startsWith("check failed"))).toEqual([]);
    expect(t.lines.at(-1)?.msg).toBe("agent stopped");
  });
});
