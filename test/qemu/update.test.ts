/**
 * End to end (the update-daemon issue): a host on demo 1.0.0 follows channel
 * `stable` of a repository served by `abforge repo serve` on 127.0.0.1,
 * reached from the guest only through QEMU's restricted user network and one
 * guestfwd. It installs 2.0.0 into B, boots it and marks it good; then 3.0.0,
 * whose health check fails, is installed into A, boots until its tries are
 * spent, the bootloader returns to 2.0.0, and the agent records the rollback
 * and never installs 3.0.0 again. Every assertion reads the serial console or
 * the disk's boot state.
 */
import { afterAll, describe, expect, it } from "vitest";
import { PROMPT, publishBundle, type ServedRepo } from "../../qemu/fleet.ts";
import type { Vm } from "../../qemu/vm.ts";
import { freshDisk, image, SIGNING_KEY } from "./fixtures.ts";
import { banner as bannerOf, bootState, bootWithRepo } from "./scenarios.ts";

// A poll (30 s), a download and a boot under TCG on a busy 2-core host: be generous.
const BOOT_MS = 600_000;

let vm: Vm | undefined;
let server: ServedRepo | undefined;

afterAll(async () => {
  await vm?.kill();
  server?.stop();
});

async function banner(v: Vm): Promise<{ slot: string; version: string }> {
  const { slot, version } = await bannerOf(v, BOOT_MS);
  return { slot, version };
}

describe("updates end to end", () => {
  it("installs 2.0.0, marks it good, rolls back an unhealthy 3.0.0 and never retries it", {
    timeout: 2_400_000,
  }, async () => {
    const disk = freshDisk("v1");
    const run = await bootWithRepo(disk, [image("v2").bundle]);
    vm = run.vm;
    server = run.server;
    const { repoDir } = run;

    // 1.0.0 boots from A; the agent checks at once and installs 2.0.0 into B.
    expect(await banner(vm)).toEqual({ slot: "A", version: "1.0.0" });
    const booted = vm.mark();
    // The daemon writes Node's compile cache only when it exits, which on this
    // first boot it has not done yet: the cache that is there when it starts
    // comes from the short `agent status` the service runs first
    // (S50abforge-agent), so even this first daemon runs warm.
    await vm.waitFor(PROMPT, { timeoutMs: BOOT_MS, from: booted });
    await vm.waitFor(/agent started/, { timeoutMs: BOOT_MS, from: booted });
    const cache = await vm.run(
      "echo CACHED=$(find /var/cache/abforge/node-compile-cache -type f | wc -l)",
      { timeoutMs: 300_000 },
    );
    const cached = /^CACHED=(\d+)$/m.exec(cache.output);
    expect(cached, cache.output).not.toBeNull();
    expect(Number(cached![1])).toBeGreaterThan(50);
    // (from the boot on: the install may have logged while the command ran)
    await vm.waitFor(/"msg":"installed"[^\n]*"version":"2\.0\.0"|installed[^\n]*2\.0\.0/, {
      timeoutMs: BOOT_MS,
      from: booted,
    });
    expect(await banner(vm)).toEqual({ slot: "B", version: "2.0.0" });
    await vm.waitFor(/marked good/, { timeoutMs: BOOT_MS });
    let s = await bootState(disk);
    expect(s.order[0]).toBe("B");
    expect(s.slots.B).toMatchObject({ good: true, version: "2.0.0" });
    expect(s.slots.A).toMatchObject({ good: true, version: "1.0.0" });

    // 3.0.0 is published; the next poll installs it into A, and it boots.
    await publishBundle(repoDir, image("v3").bundle, SIGNING_KEY);
    expect(await banner(vm)).toEqual({ slot: "A", version: "3.0.0" });
    // Its health check fails: no mark, reboot, until the tries are spent.
    await vm.waitFor(/health check[^\n]*fail/i, { timeoutMs: BOOT_MS });
    let b = await banner(vm);
    while (b.slot === "A") {
      expect(b.version).toBe("3.0.0");
      b = await banner(vm);
    }
    expect(b).toEqual({ slot: "B", version: "2.0.0" });
    await vm.waitFor(/rollback/i, { timeoutMs: BOOT_MS });
    await vm.waitFor(/confirmed: slot B \(2\.0\.0\) is up; it boots first/, { timeoutMs: BOOT_MS });
    s = await bootState(disk);
    // the running good slot is first again: `slots show` says `order: B A`
    expect(s.order).toEqual(["B", "A"]);
    expect(s.slots.A).toMatchObject({ good: false, tries: 0, version: "3.0.0" });
    expect(s.slots.B).toMatchObject({ good: true, version: "2.0.0" });

    // The root shell on ttyS0 came up with 2.0.0's banner, before the rollback line.
    // The agent logs to the same console, so the answer is one marked line.
    const status = await vm.run(
      "echo STATUS=$(/usr/lib/abforge/bin/abforge agent status --json 2>/dev/null | tr -d '\\n')",
      { timeoutMs: 300_000 },
    );
    const line = /^STATUS=(\{.*\})$/m.exec(status.output);
    expect(line, status.output).not.toBeNull();
    const parsed = JSON.parse(line![1]!) as {
      rollbacks: { version: string }[];
      badVersions: string[];
    };
    expect(parsed.rollbacks.map((r) => r.version)).toContain("3.0.0");
    expect(parsed.badVersions).toContain("3.0.0");

    // Two more polls (30 s apart) see 3.0.0 and skip it.
    const from = vm.mark();
    await vm.waitFor(/skip[^\n]*3\.0\.0|3\.0\.0[^\n]*skip/i, { timeoutMs: 120_000, from });
    expect(vm.console.slice(from)).not.toMatch(/downloading[^\n]*3\.0\.0/i);
    expect((await bootState(disk)).slots.A).toMatchObject({ good: false, tries: 0 });
  });
});
