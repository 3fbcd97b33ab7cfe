// The built-in no-failed-units check (src/updater/README.md, "Built-in checks"): what
// `systemctl is-system-running` and `systemctl --failed` say decides it; a failure names
// the failed units in the log and in the error `agent status` shows. A fake `systemctl`
// first on PATH plays systemd, answering from two files beside it.
import { chmodSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { grubBoot } from "../../../src/bootloader/index.ts";
import {
  formatStatus,
  ProcessHealthRunner,
  runConfiguredChecks,
} from "../../../src/updater/index.ts";
import { type BundleFixture, makeUpdateWorld, type UpdateWorld } from "../../helpers/fixtures.ts";
import { tempDir } from "../../helpers/tmp.ts";
import { readBoot, testAgent, writeBoot } from "./harness.ts";

const bin = tempDir("abforge-fake-systemctl-");
const FAKE = `#!/bin/sh
dir=$(dirname "$0")
case "$*" in
is-system-running) cat "$dir/state"; [ "$(cat "$dir/state")" = running ] ;;
"--failed --no-legend --plain") cat "$dir/failed" ;;
*) echo "fake systemctl: unexpected arguments: $*" >&2; exit 2 ;;
esac
`;
function systemd(state: string, failed: string[] = []) {
  writeFileSync(join(bin, "state"), `${state}\n`);
  writeFileSync(
    join(bin, "failed"),
    failed.map((u) => `${u} loaded failed failed ${u}\n`).join(""),
  );
}

const PATH = process.env.PATH;
let w: UpdateWorld;
beforeAll(async () => {
  writeFileSync(join(bin, "systemctl"), FAKE);
  chmodSync(join(bin, "systemctl"), 0o755);
  process.env.PATH = `${bin}:${PATH}`;
  w = await makeUpdateWorld(tempDir());
});
afterAll(() => {
  process.env.PATH = PATH;
});

const run = () =>
  runConfiguredChecks(
    { healthChecks: [], builtinChecks: ["no-failed-units"] },
    new ProcessHealthRunner(),
  );

describe("no-failed-units", () => {
  it.each([
    ["running", [], true, undefined],
    // the state of a boot still running: mark-good itself is one of its jobs
    ["starting", [], true, undefined],
    // while the boot runs systemd says starting even when a unit failed: the list decides
    ["starting", ["a.service", "b.mount"], false, "failed units: a.service, b.mount"],
    ["degraded", ["a.service"], false, "system state degraded; failed units: a.service"],
    ["maintenance", [], false, "system state maintenance"],
    // an update check that could not reach the repository says nothing of the slot
    ["degraded", ["abforge-update.service"], true, undefined],
    [
      "degraded",
      ["abforge-update.service", "web.service"],
      false,
      "system state degraded; failed units: web.service",
    ],
  ])("system %s, failed %j: ok %s", async (state, failed, ok, error) => {
    systemd(state, failed);
    const [r] = await run();
    expect(r).toMatchObject({ name: "no-failed-units", ok, builtin: true });
    expect(r?.error).toBe(error);
    expect(r?.output.split("\n")).toEqual([
      `system state ${state}`,
      ...failed.map((u) => `${u} loaded failed failed ${u}`),
    ]);
  });

  it("after boot: a failed unit keeps the new slot from being marked good, and says which", async () => {
    const d = await w.freshDisk("failed-units");
    const config = { builtinChecks: ["no-failed-units" as const] };
    await (await testAgent(d.path, { config })).agent.install(
      (w.bundles["2.0.0"] as BundleFixture).path,
    );
    const { slot, state } = grubBoot(await readBoot(d.path));
    await writeBoot(d.path, state);
    expect(slot).toBe("B");

    systemd("starting", ["podman.service"]);
    const t = await testAgent(d.path, { config });
    expect(await t.agent.afterBoot()).toMatchObject({ action: "unhealthy", booted: "B" });
    expect(t.reboots).toHaveLength(1);
    expect(t.lines.map((l) => l.msg)).toContain(
      "health check no-failed-units failed (failed units: podman.service)",
    );
    expect(t.agent.state.lastError?.message).toBe(
      "slot B (2.0.0): health check(s) no-failed-units (failed units: podman.service) failed; not marking it good",
    );
    const status = formatStatus(await t.agent.status());
    expect(status).toContain("no-failed-units (failed units: podman.service)");

    // the next boot of B comes up clean: marked good
    await writeBoot(d.path, grubBoot(await readBoot(d.path)).state);
    systemd("starting");
    const again = await testAgent(d.path, { config });
    expect(await again.agent.afterBoot()).toMatchObject({ action: "marked-good", booted: "B" });
  });
});
