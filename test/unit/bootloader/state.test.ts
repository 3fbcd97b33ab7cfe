// Boot state against src/bootloader/README.md, "Boot state" (variables, boot
// rule, transitions).
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  activateSlot,
  type BootState,
  bootStateFromEnv,
  bootStateToEnv,
  confirmBoot,
  decodeEnv,
  encodeEnv,
  envContentLength,
  grubBoot,
  initialBootState,
  markGood,
  markUnbootable,
  nextBootSlot,
  type SlotName,
  type SlotState,
  setNext,
} from "../../../src/bootloader/index.ts";
import { codeOf } from "../../helpers/errors.ts";
import { HASH_A, imageA, imageB, VERITY } from "./images.ts";

function slot(over: Partial<SlotState> = {}): SlotState {
  return { tries: 0, good: false, boots: 0, ...imageA, ...over };
}

function state(
  order: [SlotName, SlotName],
  a: Partial<SlotState>,
  b: Partial<SlotState>,
): BootState {
  return { order, goodTries: 3, slots: { A: slot(a), B: slot({ ...imageB, ...b }) } };
}

describe("variables", () => {
  it("initialBootState: A good and first, B empty, in the documented variable order", () => {
    const vars = bootStateToEnv(initialBootState(imageA));
    expect([...vars]).toEqual([
      ["order", "A B"],
      ["good_tries", "3"],
      ["A_tries", "0"],
      ["A_good", "1"],
      ["A_boots", "0"],
      ["A_roothash", HASH_A],
      ["A_verity", VERITY],
      ["A_version", "1.0.0"],
      ["B_tries", "0"],
      ["B_good", "0"],
      ["B_boots", "0"],
      ["B_roothash", ""],
      ["B_verity", ""],
      ["B_version", ""],
    ]);
  });

  it("round-trips through the env block, and two full slots fit in the first 512 bytes", () => {
    const s = {
      ...state(
        ["B", "A"],
        { good: true, boots: 9 },
        { tries: 3, version: "10.20.30-rc.1+build.7" },
      ),
      goodTries: 9,
    };
    const block = encodeEnv(bootStateToEnv(s));
    expect(bootStateFromEnv(decodeEnv(block))).toEqual(s);
    const lines = [...bootStateToEnv(s)].map(([name, value]) => ({
      kind: "var" as const,
      name,
      value,
    }));
    expect(envContentLength(lines)).toBeLessThanOrEqual(512);
  });

  it("reads a block written before good_tries and X_boots as goodTries 3 and no unconfirmed boots", () => {
    const vars = bootStateToEnv(initialBootState(imageA, 5));
    for (const v of ["good_tries", "A_boots", "B_boots"]) vars.delete(v);
    const s = bootStateFromEnv(vars);
    expect(s.goodTries).toBe(3);
    expect([s.slots.A.boots, s.slots.B.boots]).toEqual([0, 0]);
  });

  it("keeps the counters one digit: good_tries 1-9, X_boots 0-9", () => {
    const base = bootStateToEnv(initialBootState(imageA));
    for (const [name, value] of [
      ["good_tries", "0"],
      ["good_tries", "10"],
      ["A_boots", "10"],
      ["B_boots", "-1"],
    ] as const) {
      const vars = new Map(base).set(name, value);
      expect(
        codeOf(() => bootStateFromEnv(vars)),
        `${name}=${value}`,
      ).toBe("BOOT_STATE_INVALID");
    }
    expect(codeOf(() => initialBootState(imageA, 10))).toBe("BOOT_STATE_INVALID");
  });

  it("ignores other variables", () => {
    const vars = bootStateToEnv(initialBootState(imageA));
    vars.set("saved_entry", "x");
    expect(bootStateFromEnv(vars)).toEqual(initialBootState(imageA));
  });

  it("reports every bad variable at once, by name (BOOT_STATE_INVALID)", () => {
    const vars = bootStateToEnv(initialBootState(imageA));
    vars.set("order", "A A");
    vars.set("A_tries", "10");
    vars.set("A_good", "yes");
    vars.set("A_roothash", "XYZ");
    vars.set("A_verity", "1:2");
    vars.set("A_version", "v1");
    vars.delete("B_good");
    try {
      bootStateFromEnv(vars);
      expect.unreachable();
    } catch (err) {
      const e = err as {
        code: string;
        message: string;
        details: { problems: { variable: string }[] };
      };
      expect(e.code).toBe("BOOT_STATE_INVALID");
      expect(e.details.problems.map((p) => p.variable)).toEqual([
        "order",
        "A_tries",
        "A_good",
        "A_roothash",
        "A_verity",
        "A_version",
        "B_good",
      ]);
      expect(e.message).toMatch(/A_tries="10" must be one digit 0-9/);
      expect(e.message).toMatch(/B_good is missing/);
    }
  });

  it("an empty slot has no verity, no version and is not good; a full one has all three", () => {
    const base = bootStateToEnv(initialBootState(imageA));
    const bad = (change: Record<string, string>) => {
      const vars = new Map(base);
      for (const [k, v] of Object.entries(change)) vars.set(k, v);
      return codeOf(() => bootStateFromEnv(vars));
    };
    expect(bad({ B_good: "1" })).toBe("BOOT_STATE_INVALID");
    expect(bad({ B_version: "1.0.0" })).toBe("BOOT_STATE_INVALID");
    expect(bad({ A_verity: "" })).toBe("BOOT_STATE_INVALID");
    expect(bad({ A_version: "" })).toBe("BOOT_STATE_INVALID");
    // tries on an empty slot are spent by GRUB, which then falls through
    expect(bad({ B_tries: "2" })).toBeUndefined();
  });

  it("bootStateToEnv refuses a state it could not read back", () => {
    const s = initialBootState(imageA);
    expect(
      codeOf(() => bootStateToEnv({ ...s, slots: { ...s.slots, A: slot({ tries: 12 }) } })),
    ).toBe("BOOT_STATE_INVALID");
  });
});

describe("nextBootSlot (GRUB's rule)", () => {
  // [order, A good, A tries, B good, B tries] -> slot
  const table: [[SlotName, SlotName], boolean, number, boolean, number, SlotName | null][] = [
    [["A", "B"], true, 0, true, 0, "A"],
    [["B", "A"], true, 0, true, 0, "B"],
    [["B", "A"], true, 0, false, 3, "B"],
    [["B", "A"], true, 0, false, 1, "B"],
    [["B", "A"], true, 0, false, 0, "A"],
    [["A", "B"], false, 0, true, 0, "B"],
    [["A", "B"], false, 2, false, 0, "A"],
    [["A", "B"], false, 0, false, 5, "B"],
    [["A", "B"], false, 0, false, 0, null],
    [["B", "A"], false, 0, false, 0, null],
    [["A", "B"], true, 5, false, 5, "A"],
  ];
  it.each(table)(
    "order %j, A good=%s tries=%i, B good=%s tries=%i -> %s",
    (order, ag, at, bg, bt, want) => {
      expect(nextBootSlot(state(order, { good: ag, tries: at }, { good: bg, tries: bt }))).toBe(
        want,
      );
    },
  );

  // [order, A good, A boots, B good, B boots, B tries] -> slot (goodTries 3)
  const unconfirmed: [[SlotName, SlotName], boolean, number, boolean, number, number, SlotName][] =
    [
      [["B", "A"], true, 0, true, 2, 0, "B"],
      [["B", "A"], true, 0, true, 3, 0, "A"],
      [["B", "A"], true, 3, true, 3, 0, "B"],
      [["B", "A"], false, 0, true, 3, 0, "B"],
      [["A", "B"], true, 3, false, 0, 2, "B"],
      [["A", "B"], true, 9, true, 0, 0, "B"],
    ];
  it.each(unconfirmed)(
    "order %j, A good=%s boots=%i, B good=%s boots=%i tries=%i -> %s",
    (order, ag, ab, bg, bb, bt, want) => {
      expect(
        nextBootSlot(state(order, { good: ag, boots: ab }, { good: bg, boots: bb, tries: bt })),
      ).toBe(want);
    },
  );

  it("grubBoot counts a try only for a slot that is not good", () => {
    const trial = state(["B", "A"], { good: true }, { tries: 2 });
    const first = grubBoot(trial);
    expect(first.slot).toBe("B");
    expect(first.state.slots.B.tries).toBe(1);
    const second = grubBoot(first.state);
    expect(second.state.slots.B.tries).toBe(0);
    const third = grubBoot(second.state);
    expect(third.slot).toBe("A");
    expect(third.state.slots.A.boots).toBe(1);
    expect(third.state.slots.B).toEqual(second.state.slots.B);
  });

  it("a good slot never confirmed is booted goodTries times, then the other good slot; the count stops there", () => {
    let s = state(["B", "A"], { good: true }, { good: true });
    for (let n = 1; n <= 3; n++) {
      const r = grubBoot(s);
      expect(r.slot).toBe("B");
      expect(r.state.slots.B.boots).toBe(n);
      s = r.state;
    }
    const fallback = grubBoot(s);
    expect(fallback.slot).toBe("A");
    expect(fallback.state.slots.B.boots).toBe(3);
    // A confirmed; then A breaks too: both passed over, the first good one boots uncounted
    s = {
      ...fallback.state,
      slots: { ...fallback.state.slots, A: slot({ good: true, boots: 3 }) },
    };
    expect(grubBoot(s)).toEqual({ slot: "B", state: s });
  });
});

describe("transitions", () => {
  const initial = initialBootState(imageA);

  it("an update: mark B unbootable, activate it, boot it, mark it good", () => {
    const prepared = markUnbootable(initial, "B");
    expect(prepared.order).toEqual(["A", "B"]);
    expect(nextBootSlot(prepared)).toBe("A");
    const active = activateSlot(prepared, "B", { ...imageB, tries: 3 });
    expect(active).toEqual({
      order: ["B", "A"],
      goodTries: 3,
      slots: { A: initial.slots.A, B: { tries: 3, good: false, boots: 0, ...imageB } },
    });
    expect(nextBootSlot(active)).toBe("B");
    const booted = grubBoot(active).state;
    const good = markGood(booted, "B");
    expect(good.slots.B).toEqual({ tries: 0, good: true, boots: 0, ...imageB });
    expect(good.slots.A).toEqual(initial.slots.A);
    expect(nextBootSlot(good)).toBe("B");
    // the input states are never changed
    expect(initial).toEqual(initialBootState(imageA));
  });

  it("refuses to activate or unboot a slot when the other is not good (BOOT_REFUSED)", () => {
    const trial = activateSlot(initial, "B", { ...imageB, tries: 3 });
    expect(codeOf(() => activateSlot(trial, "A", { ...imageA, tries: 3 }))).toBe("BOOT_REFUSED");
    expect(codeOf(() => markUnbootable(trial, "A"))).toBe("BOOT_REFUSED");
    // aborting the trial is fine: A is good
    expect(nextBootSlot(markUnbootable(trial, "B"))).toBe("A");
    expect(markUnbootable(trial, "B").order).toEqual(["A", "B"]);
  });

  it("refuses bad tries and an activation without a root hash", () => {
    for (const tries of [0, 10, 1.5, -1]) {
      expect(codeOf(() => activateSlot(initial, "B", { ...imageB, tries }))).toBe("BOOT_REFUSED");
    }
    expect(codeOf(() => activateSlot(initial, "B", { ...imageB, rootHash: "", tries: 1 }))).toBe(
      "BOOT_REFUSED",
    );
    expect(codeOf(() => activateSlot(initial, "B", { ...imageB, version: "nope", tries: 1 }))).toBe(
      "BOOT_STATE_INVALID",
    );
  });

  it("markGood refuses an empty slot", () => {
    expect(codeOf(() => markGood(initial, "B"))).toBe("BOOT_REFUSED");
  });

  it("confirmBoot sets a good slot's unconfirmed boots back to 0, and with first puts it first", () => {
    const s = state(["B", "A"], { good: true, boots: 1 }, { good: true, boots: 3 });
    expect(confirmBoot(s, "A")).toEqual({ ...s, slots: { ...s.slots, A: slot({ good: true }) } });
    expect(confirmBoot(s, "A", { first: true }).order).toEqual(["A", "B"]);
    expect(confirmBoot(s, "A", { first: true }).slots.B).toEqual(s.slots.B);
    expect(codeOf(() => confirmBoot(initial, "B"))).toBe("BOOT_REFUSED");
  });

  it("a new image, an unbooted slot and the operator's set-next start a fresh count", () => {
    const broken = state(["A", "B"], { good: true }, { good: true, boots: 3 });
    expect(markUnbootable(broken, "B").slots.B.boots).toBe(0);
    expect(activateSlot(broken, "B", { ...imageB, tries: 2 }).slots.B.boots).toBe(0);
    expect(setNext(broken, "B").slots.B).toMatchObject({ good: true, boots: 0 });
    expect(
      markGood({ ...broken, slots: { ...broken.slots, A: slot({ boots: 2 }) } }, "A").slots.A.boots,
    ).toBe(0);
  });

  it("setNext reorders a bootable slot, or puts it on trial with tries", () => {
    const both = markGood(activateSlot(initial, "B", { ...imageB, tries: 1 }), "B");
    expect(setNext(both, "A").order).toEqual(["A", "B"]);
    expect(setNext(both, "A").slots).toEqual(both.slots);
    const rolledBack = grubBoot(
      grubBoot(activateSlot(initial, "B", { ...imageB, tries: 1 })).state,
    ).state;
    expect(rolledBack.slots.B).toMatchObject({ tries: 0, good: false });
    expect(codeOf(() => setNext(rolledBack, "B"))).toBe("BOOT_REFUSED");
    const retry = setNext(rolledBack, "B", 2);
    expect(retry.order).toEqual(["B", "A"]);
    expect(retry.slots.B).toMatchObject({ tries: 2, good: false });
    // on trial needs a good fallback; an empty slot is never next
    expect(codeOf(() => setNext(retry, "A", 2))).toBe("BOOT_REFUSED");
    expect(codeOf(() => setNext(initial, "B"))).toBe("BOOT_REFUSED");
  });

  it("no sequence of allowed transitions leaves the disk without a good slot (property)", () => {
    const op = fc.oneof(
      fc.record({
        k: fc.constant("unbootable" as const),
        slot: fc.constantFrom<SlotName>("A", "B"),
      }),
      fc.record({
        k: fc.constant("activate" as const),
        slot: fc.constantFrom<SlotName>("A", "B"),
        tries: fc.integer({ min: 1, max: 9 }),
      }),
      fc.record({ k: fc.constant("good" as const), slot: fc.constantFrom<SlotName>("A", "B") }),
      fc.record({
        k: fc.constant("next" as const),
        slot: fc.constantFrom<SlotName>("A", "B"),
        tries: fc.option(fc.integer({ min: 1, max: 9 }), { nil: undefined }),
      }),
      fc.record({ k: fc.constant("boot" as const) }),
      fc.record({
        k: fc.constant("confirm" as const),
        slot: fc.constantFrom<SlotName>("A", "B"),
        first: fc.boolean(),
      }),
    );
    fc.assert(
      fc.property(fc.array(op, { maxLength: 30 }), (ops) => {
        let s = initial;
        for (const o of ops) {
          try {
            if (o.k === "unbootable") s = markUnbootable(s, o.slot);
            else if (o.k === "activate") s = activateSlot(s, o.slot, { ...imageB, tries: o.tries });
            else if (o.k === "good") s = markGood(s, o.slot);
            else if (o.k === "next") s = setNext(s, o.slot, o.tries);
            else if (o.k === "confirm") s = confirmBoot(s, o.slot, { first: o.first });
            else s = grubBoot(s).state;
          } catch (err) {
            expect((err as { code: string }).code).toBe("BOOT_REFUSED");
          }
          // a good slot remains, and GRUB always has something to boot
          expect(s.slots.A.good || s.slots.B.good).toBe(true);
          expect(nextBootSlot(s)).not.toBeNull();
          // bootStateToEnv refuses a counter of two digits
          expect(bootStateFromEnv(bootStateToEnv(s))).toEqual(s);
        }
      }),
      { numRuns: 500 },
    );
  });
});
