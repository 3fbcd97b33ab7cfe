// `agent status` (src/updater/README.md, "State file" and "Status"): it shows what is true
// now, from the state file and the boot state, and changes neither.
import { mkdir, readdir, readFile, writeFile } from "node:fs/promises";
import { beforeAll, describe, expect, it } from "vitest";
import { markGood } from "../../../src/bootloader/index.ts";
import {
  type EmptySlot,
  initialAgentState,
  readEmptySlot,
  StateStore,
} from "../../../src/updater/index.ts";
import { type BundleFixture, makeUpdateWorld, type UpdateWorld } from "../../helpers/fixtures.ts";
import { tempDir } from "../../helpers/tmp.ts";
import { REBOOT_OFF, readBoot, testAgent, writeBoot } from "./harness.ts";

let w: UpdateWorld;
beforeAll(async () => {
  w = await makeUpdateWorld(tempDir(), { versions: ["2.0.0"] });
});

const status = async (disk: string) => (await testAgent(disk, { readOnly: true })).agent.status();

describe("agent status", () => {
  it("a pending install is shown until its slot is good, then not", async () => {
    const d = await w.freshDisk("status-pending");
    const t = await testAgent(d.path, { config: { reboot: REBOOT_OFF } });
    await t.agent.install((w.bundles["2.0.0"] as BundleFixture).path);
    expect((await status(d.path)).pending).toMatchObject({ slot: "B", version: "2.0.0" });
    // marked good by another hand (an operator's `slots mark-good`): the state file still
    // says pending, the boot state says it is done
    await writeBoot(d.path, markGood(await readBoot(d.path), "B"));
    const stateFile = `${d.path}.abforge-state/state.json`;
    const before = await readFile(stateFile, "utf8");
    expect(JSON.parse(before).pending).toMatchObject({ slot: "B" });
    expect((await status(d.path)).pending).toBeNull();
    expect(await readFile(stateFile, "utf8")).toBe(before); // status did not write
  });

  it("the last error is marked old once a later success came after it", async () => {
    const d = await w.freshDisk("status-error");
    const store = new StateStore(`${d.path}.abforge-state`);
    const lastError = {
      at: "2026-01-01T10:00:00.000Z",
      code: "REPO_DOWNLOAD_FAILED",
      message: "download of http://repo/channels/stable.json failed",
    };
    await store.save({
      ...initialAgentState(),
      lastError,
      lastCheck: { at: "2026-01-01T09:00:00.000Z", outcome: "up-to-date", version: "1.0.0" },
    });
    expect((await status(d.path)).lastError).toEqual({ ...lastError, old: false });
    await store.save({
      ...initialAgentState(),
      lastError,
      lastCheck: {
        at: "2026-01-01T11:00:00.000Z",
        outcome: "refused: UPDATE_DOWNGRADE",
        version: "0.9.0",
      },
    });
    expect((await status(d.path)).lastError).toEqual({ ...lastError, old: false }); // a refusal is no success
    await store.save({
      ...initialAgentState(),
      lastError,
      lastCheck: { at: "2026-01-01T11:00:00.000Z", outcome: "up-to-date", version: "1.0.0" },
    });
    expect((await status(d.path)).lastError).toEqual({
      ...lastError,
      old: true,
      supersededAt: "2026-01-01T11:00:00.000Z",
    });
    expect(await readdir(store.dir)).toEqual(["state.json"]);
  });

  it("the empty-slot record shows only while the boot state agrees; slots show reads it without failing", async () => {
    const d = await w.freshDisk("status-empty");
    const dir = `${d.path}.abforge-state`;
    const emptySlot: EmptySlot = {
      slot: "B",
      since: "2026-01-01T10:00:00.000Z",
      previousVersion: "0.9.0",
      version: "2.0.0",
      failure: { at: "2026-01-01T10:01:00.000Z", code: "UPDATE_VERIFY_FAILED", message: "bad" },
    };
    await new StateStore(dir).save({ ...initialAgentState(), emptySlot });
    const boot = await readBoot(d.path); // B: empty, not good, 0 tries
    expect(await readEmptySlot(dir, boot)).toEqual(emptySlot);
    expect((await status(d.path)).emptySlot).toEqual(emptySlot);
    // filled by another hand since (the boot state names an image for B): no record
    const filled = { ...boot, slots: { ...boot.slots, B: { ...boot.slots.A, good: false } } };
    expect(await readEmptySlot(dir, filled)).toBeNull();
    // no state file, a corrupt one, one of a newer schema: no reason, no failure
    expect(await readEmptySlot(`${dir}-none`, boot)).toBeNull();
    await mkdir(`${dir}-bad`, { recursive: true });
    await writeFile(`${dir}-bad/state.json`, "{ not json");
    expect(await readEmptySlot(`${dir}-bad`, boot)).toBeNull();
    await mkdir(`${dir}-newer`, { recursive: true });
    await writeFile(`${dir}-newer/state.json`, JSON.stringify({ schemaVersion: 99 }));
    expect(await readEmptySlot(`${dir}-newer`, boot)).toBeNull();
  });
});
