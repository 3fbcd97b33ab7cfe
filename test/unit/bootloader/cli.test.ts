// `abforge slots ...` and `abforge bootloader env ...` as an operator runs them:
// exit codes and --json (src/bootloader/README.md, "Commands").
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import {
  activateSlot,
  bootStateToEnv,
  encodeEnv,
  initialBootState,
  markGood,
  withBootDisk,
} from "../../../src/bootloader/index.ts";
import { EXIT_CODES } from "../../../src/cli/exit-codes.ts";
import { abforge } from "../../helpers/cli.ts";
import { tempDir } from "../../helpers/tmp.ts";
import { HASH_A, HASH_B, imageA, imageB, makeBootDiskImage, VERITY } from "./images.ts";

const dir = tempDir();

async function disk(name: string): Promise<string> {
  const path = join(dir, name);
  await makeBootDiskImage(path, { env: encodeEnv(bootStateToEnv(initialBootState(imageA))) });
  return path;
}

interface SlotsJson {
  disk: string;
  order: string[];
  next: string | null;
  booted: string | null;
  slots: Record<
    string,
    { version: string; rootHash: string; good: boolean; triesLeft: number; empty: boolean }
  >;
  goodTries: number;
  fallback: {
    slot: string;
    version: string;
    unconfirmedBoots: number;
    bootsInstead: string;
  } | null;
}

async function show(path: string): Promise<SlotsJson> {
  const r = await abforge(["slots", "show", "--disk", path, "--json"]);
  expect(r.code, r.stderr).toBe(0);
  return JSON.parse(r.stdout) as SlotsJson;
}

describe("abforge slots", () => {
  it("show: per slot version, root hash, good, tries left, and the next slot", async () => {
    const path = await disk("show.img");
    const j = await show(path);
    expect(j).toEqual({
      disk: path,
      order: ["A", "B"],
      next: "A",
      booted: null,
      goodTries: 3,
      fallback: null,
      slots: {
        A: {
          version: "1.0.0",
          rootHash: HASH_A,
          verity: VERITY,
          good: true,
          triesLeft: 0,
          unconfirmedBoots: 0,
          empty: false,
        },
        B: {
          version: "",
          rootHash: "",
          verity: "",
          good: false,
          triesLeft: 0,
          unconfirmedBoots: 0,
          empty: true,
        },
      },
      // B was never filled: no install emptied it (the agent's state has no record)
      emptySlot: null,
    });
    const t = await abforge(["slots", "show", "--disk", path]);
    expect(t.code).toBe(0);
    expect(t.stdout).toMatch(/^next boot: A$/m);
    expect(t.stdout).not.toMatch(/^fallback:/m);
    expect(t.stdout).toMatch(new RegExp(`^A\\s+1\\.0\\.0\\s+yes\\s+0\\s+0/3\\s+${HASH_A}$`, "m"));
    expect(t.stdout).toMatch(/^B\s+\(empty\)/m);
  });

  it("show: a good slot GRUB passes over (goodTries unconfirmed boots) is named as the fallback", async () => {
    const path = await disk("fallback.img");
    await withBootDisk(path, async (d) => {
      const both = markGood(activateSlot(await d.readState(), "B", { ...imageB, tries: 1 }), "B");
      await d.writeState({ ...both, slots: { ...both.slots, B: { ...both.slots.B, boots: 3 } } });
    });
    const j = await show(path);
    expect(j).toMatchObject({
      order: ["B", "A"],
      next: "A",
      goodTries: 3,
      fallback: { slot: "B", version: "2.0.0", unconfirmedBoots: 3, bootsInstead: "A" },
    });
    const t = await abforge(["slots", "show", "--disk", path]);
    expect(t.stdout).toMatch(
      /^fallback: slot B \(2\.0\.0\) was booted 3 times in a row without a confirmation; the bootloader boots slot A while that one is good$/m,
    );
    expect(t.stdout).toMatch(new RegExp(`^B\\s+2\\.0\\.0\\s+yes\\s+0\\s+3/3\\s+${HASH_B}$`, "m"));
  });

  it("set-next refuses an empty slot and a trial without a good fallback (BOOT_REFUSED)", async () => {
    const path = await disk("refuse.img");
    const r = await abforge(["slots", "set-next", "B", "--disk", path, "--json"]);
    expect(r.code).toBe(EXIT_CODES.BOOT_REFUSED);
    expect(JSON.parse(r.stdout).error.code).toBe("BOOT_REFUSED");
    expect(r.stderr).toMatch(/cannot boot slot B next: the slot is empty/);

    await withBootDisk(path, async (d) =>
      d.writeState(activateSlot(await d.readState(), "B", { ...imageB, tries: 3 })),
    );
    const trial = await abforge(["slots", "set-next", "A", "--tries", "2", "--disk", path]);
    expect(trial.code).toBe(EXIT_CODES.BOOT_REFUSED);
    expect(trial.stderr).toMatch(/slot B is not good/);
    expect((await show(path)).next).toBe("B");
  });

  it("set-next and mark-good steer the boot state, and print it", async () => {
    const path = await disk("steer.img");
    await withBootDisk(path, async (d) =>
      d.writeState(markGood(activateSlot(await d.readState(), "B", { ...imageB, tries: 3 }), "B")),
    );
    const toA = await abforge(["slots", "set-next", "A", "--disk", path, "--json"]);
    expect(toA.code, toA.stderr).toBe(0);
    expect(JSON.parse(toA.stdout)).toMatchObject({ order: ["A", "B"], next: "A" });

    const trialB = await abforge([
      "slots",
      "set-next",
      "b",
      "--tries",
      "2",
      "--disk",
      path,
      "--json",
    ]);
    expect(trialB.code, trialB.stderr).toBe(0);
    expect(JSON.parse(trialB.stdout)).toMatchObject({
      order: ["B", "A"],
      next: "B",
      slots: { B: { good: false, triesLeft: 2 } },
    });

    // with --disk and no slot, mark-good marks the slot that boots next
    const good = await abforge(["slots", "mark-good", "--disk", path]);
    expect(good.code, good.stderr).toBe(0);
    expect(good.stdout).toMatch(/^B\s+2\.0\.0\s+yes\s+0\s/m);
    expect((await show(path)).slots.B).toMatchObject({ good: true, triesLeft: 0 });

    const namedA = await abforge(["slots", "mark-good", "A", "--disk", path, "--json"]);
    expect(namedA.code).toBe(0);
    expect(JSON.parse(namedA.stdout).slots.A.good).toBe(true);
  });

  it("usage errors exit 2; bad tries, a bad ESP, a bad state and a missing disk have their own codes", async () => {
    const path = await disk("usage.img");
    const noEnv = join(dir, "noenv.img");
    await makeBootDiskImage(noEnv, {});
    const invalid = join(dir, "invalid.img");
    const vars = bootStateToEnv(initialBootState(imageA));
    vars.set("order", "B");
    await makeBootDiskImage(invalid, { env: encodeEnv(vars) });

    // independent runs, in parallel
    const [slotC, triesX, tries10, bad, inv, missing] = await Promise.all([
      abforge(["slots", "set-next", "C", "--disk", path]),
      abforge(["slots", "set-next", "A", "--tries", "x", "--disk", path]),
      abforge(["slots", "set-next", "A", "--tries", "10", "--disk", path]),
      abforge(["slots", "show", "--disk", noEnv, "--json"]),
      abforge(["slots", "show", "--disk", invalid, "--json"]),
      abforge(["slots", "show", "--disk", join(dir, "nope.img")]),
    ]);
    expect(slotC.code).toBe(2);
    expect(slotC.stderr).toMatch(/slot must be A or B, got "C"/);
    expect(triesX.code).toBe(2);
    expect(tries10.code).toBe(EXIT_CODES.BOOT_REFUSED);
    expect(tries10.stderr).toMatch(/tries must be 1-9, got 10/);
    expect(bad.code).toBe(EXIT_CODES.ESP_BAD);
    expect(JSON.parse(bad.stdout).error).toMatchObject({ code: "ESP_BAD" });
    expect(inv.code).toBe(EXIT_CODES.BOOT_STATE_INVALID);
    expect(JSON.parse(inv.stdout).error.details.problems).toEqual([
      { variable: "order", value: "B", reason: 'must be "A B" or "B A"' },
    ]);
    expect(missing.code).toBe(EXIT_CODES.IO_ERROR);
    expect(missing.stderr).toMatch(/nope\.img/);
  });
});

describe("abforge bootloader env", () => {
  it("show/set/unset with --json, and the exit code of each failure", async () => {
    const file = join(dir, "cli.env");
    const set = await abforge(["bootloader", "env", "set", file, "a=1", "b=x = y #z", "--json"]);
    expect(set.code, set.stderr).toBe(0);
    expect(JSON.parse(set.stdout)).toMatchObject({ variables: { a: "1", b: "x = y #z" } });
    const unset = await abforge(["bootloader", "env", "unset", file, "a", "--json"]);
    expect(JSON.parse(unset.stdout).variables).toEqual({ b: "x = y #z" });
    const shown = await abforge(["bootloader", "env", "show", file, "--json"]);
    expect(JSON.parse(shown.stdout)).toMatchObject({
      path: file,
      variables: { b: "x = y #z" },
      usedBytes: 25 + 69 + 11, // header, notice line, "b=x = y #z\n"
      freeBytes: 1024 - 105,
    });

    const bad = join(dir, "bad.env");
    writeFileSync(bad, Buffer.alloc(1024, 0x23));
    const [noValue, hashName, none, r] = await Promise.all([
      abforge(["bootloader", "env", "set", file, "novalue"]),
      abforge(["bootloader", "env", "set", file, "#x=1"]),
      abforge(["bootloader", "env", "show", join(dir, "none.env")]),
      abforge(["bootloader", "env", "show", bad, "--json"]),
    ]);
    expect(noValue.code).toBe(EXIT_CODES.ENV_BAD_ENTRY);
    expect(hashName.code).toBe(EXIT_CODES.ENV_BAD_ENTRY);
    expect(none.code).toBe(EXIT_CODES.ENV_NOT_FOUND);
    expect(r.code).toBe(EXIT_CODES.ENV_BAD_BLOCK);
    expect(r.stderr).toMatch(/bad\.env: does not start with the header/);
    expect(JSON.parse(r.stdout).error.code).toBe("ENV_BAD_BLOCK");
  });
});
