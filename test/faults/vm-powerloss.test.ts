/**
 * Power loss in a VM (the faults issue): the guest's agent is installing
 * 2.0.0 from a repository on 127.0.0.1 when the machine is hard-reset through
 * QMP (`system_reset`, the reset button: what the guest wrote stays on the
 * disk, what it had not written is lost). The guest must come back on a good
 * slot, and the next run must finish the update so the new slot boots.
 * Assertions read the serial console and the disk's boot state.
 */
import { afterEach, describe, expect, it } from "vitest";
import { PROMPT, type ServedRepo } from "../../qemu/fleet.ts";
import type { Vm } from "../../qemu/vm.ts";
import { nextBootSlot } from "../../src/bootloader/index.ts";
import { STATE_DIR } from "../../src/image/index.ts";
import { STATE_FILE_NAME } from "../../src/updater/state-file.ts";
import { freshDisk, image } from "../qemu/fixtures.ts";
import { banner as bannerOf, bootState, bootWithRepo } from "../qemu/scenarios.ts";

const BOOT_MS = 600_000;
const STATE_FILE = `${STATE_DIR}/${STATE_FILE_NAME}`;

let vm: Vm | undefined;
let server: ServedRepo | undefined;

afterEach(async () => {
  await vm?.kill();
  vm = undefined;
  server?.stop();
  server = undefined;
});

async function banner(v: Vm): Promise<{ slot: string; version: string }> {
  const { slot, version } = await bannerOf(v, BOOT_MS);
  return { slot, version };
}

/** Boot 1.0.0 with 2.0.0 published; returns once the 1.0.0 banner is seen. */
async function bootWithUpdate(): Promise<{ v: Vm; disk: string }> {
  const disk = freshDisk("v1");
  const run = await bootWithRepo(disk, [image("v2").bundle]);
  vm = run.vm;
  server = run.server;
  expect(await banner(vm)).toEqual({ slot: "A", version: "1.0.0" });
  return { v: vm, disk };
}

describe("power loss in a VM", () => {
  it("resets while the agent writes the slot: back on 1.0.0, then the update resumes and 2.0.0 boots", async () => {
    const { v, disk } = await bootWithUpdate();
    // Reset once the guest's state file holds a durable progress record. A
    // record is saved once a second, and a download on an idle host passes 30%
    // within that first second, so a reset timed on the log alone can land
    // before the first save finished (the update then restarts at chunk 0,
    // correct, but no resume). Saves run one after another, each synced before
    // the next begins: once a second record appears, the first is on disk.
    await v.waitFor(PROMPT, { timeoutMs: BOOT_MS });
    const chunksIn = `grep -oE '"verifiedChunks": [0-9]+' ${STATE_FILE} 2>/dev/null`;
    const record = await v.run(
      `until first=$(${chunksIn}) && [ "$first" != '"verifiedChunks": 0' ]; do sleep 0.1; done; ` +
        `until now=$(${chunksIn}) && [ "$now" != "$first" ]; do sleep 0.05; done; echo "durable $first"`,
      { timeoutMs: BOOT_MS },
    );
    await v.reset();
    const saved = Number(/durable "verifiedChunks": (\d+)/.exec(record.output)?.[1]);
    expect(saved, record.output).toBeGreaterThan(0);

    expect(await banner(v)).toEqual({ slot: "A", version: "1.0.0" });
    const s = await bootState(disk);
    expect(nextBootSlot(s)).toBe("A");
    expect(s.slots.B).toMatchObject({ good: false, tries: 0 });

    // it resumes from that record or a later one, never from before it
    const resumed = await v.waitFor(/resuming 2\.0\.0 at chunk (\d+)/, { timeoutMs: BOOT_MS });
    expect(Number(resumed[1])).toBeGreaterThanOrEqual(saved);
    expect(await banner(v)).toEqual({ slot: "B", version: "2.0.0" });
    await v.waitFor(/marked good/, { timeoutMs: BOOT_MS });
    expect((await bootState(disk)).slots.B).toMatchObject({ good: true, version: "2.0.0" });
  });

  it("resets while the agent writes the boot state: a good slot boots, and 2.0.0 ends up booted and good", async () => {
    const { v, disk } = await bootWithUpdate();
    await v.waitFor(/step 9\/9: activate/, { timeoutMs: BOOT_MS });
    await v.reset();

    // The write of the boot state is one sector: it landed whole or not at all.
    const first = await banner(v);
    if (first.slot === "A") {
      expect(first.version).toBe("1.0.0");
      expect(await banner(v)).toEqual({ slot: "B", version: "2.0.0" });
    } else {
      expect(first).toEqual({ slot: "B", version: "2.0.0" });
    }
    await v.waitFor(/marked good/, { timeoutMs: BOOT_MS });
    const s = await bootState(disk);
    expect(s.order[0]).toBe("B");
    expect(s.slots.B).toMatchObject({ good: true, version: "2.0.0" });
    expect(s.slots.A).toMatchObject({ good: true, version: "1.0.0" });
  });
});
