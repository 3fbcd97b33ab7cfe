// The agent's pure decisions (src/updater/README.md, "Update policy" and "After boot").
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  backoffMs,
  decideAfterBoot,
  decideUpdate,
  installBlocker,
  pollDelayMs,
} from "../../../src/updater/index.ts";
import type { BootFacts } from "../../../src/updater/policy.ts";

const host = { bootedVersion: "2.0.0", compatible: "demo-x86_64", badVersions: ["2.5.0"] };
const cand = (version: string, over = {}) => ({ version, compatible: "demo-x86_64", ...over });

describe("decideUpdate", () => {
  it.each([
    ["3.0.0", {}, { action: "install", version: "3.0.0" }],
    ["2.0.0", {}, { action: "none", reason: "up-to-date" }],
    ["2.5.0", {}, { action: "none", reason: "bad-version" }],
    ["1.9.9", {}, { action: "refuse", code: "UPDATE_DOWNGRADE" }],
    ["3.0.0", { compatible: "other" }, { action: "refuse", code: "UPDATE_INCOMPATIBLE" }],
    ["3.0.0", { minUpdateFrom: "2.1.0" }, { action: "refuse", code: "UPDATE_REFUSED" }],
    ["3.0.0", { minUpdateFrom: "2.0.0" }, { action: "install" }],
    ["not-semver", {}, { action: "refuse", code: "UPDATE_REFUSED" }],
  ])("%s %o → %o", (version, over, expected) => {
    expect(decideUpdate({ ...host, candidate: cand(version, over) })).toMatchObject(expected);
  });

  it("never installs a version that is not newer than the running one", () => {
    fc.assert(
      fc.property(
        fc.nat(5),
        fc.nat(5),
        fc.nat(5),
        fc.nat(5),
        fc.nat(5),
        fc.nat(5),
        (a, b, c, x, y, z) => {
          const d = decideUpdate({
            bootedVersion: `${a}.${b}.${c}`,
            compatible: "c",
            badVersions: [],
            candidate: { version: `${x}.${y}.${z}`, compatible: "c" },
          });
          const newer = x * 100 + y * 10 + z > a * 100 + b * 10 + c;
          expect(d.action === "install").toBe(newer);
        },
      ),
    );
  });
});

const slot = (tries: number, good: boolean, version: string, rootHash = `hash-${version}`) => ({
  tries,
  good,
  boots: 0,
  version,
  rootHash,
});
const boot = (
  a: BootFacts["slots"]["A"],
  b: BootFacts["slots"]["B"],
  order: ["A", "B"] | ["B", "A"] = ["B", "A"],
): BootFacts => ({
  order,
  goodTries: 3,
  slots: { A: a, B: b },
});
const pendingB = { slot: "B" as const, version: "2.0.0", rootHash: "hash-2.0.0", installedAt: "t" };

describe("decideAfterBoot: the decision table", () => {
  it("row 1: no pending, booted good → nothing", () => {
    expect(
      decideAfterBoot({
        booted: "A",
        boot: boot(slot(0, true, "1.0.0"), slot(0, false, "")),
        pending: null,
      }),
    ).toMatchObject({ action: "nothing" });
  });
  it("row 2: no pending, booted not good → health checks", () => {
    expect(
      decideAfterBoot({
        booted: "B",
        boot: boot(slot(0, true, "1.0.0"), slot(2, false, "2.0.0")),
        pending: null,
      }),
    ).toMatchObject({ action: "check-health", slot: "B" });
  });
  it("row 3: pending slot booted and already good → nothing, forget pending", () => {
    expect(
      decideAfterBoot({
        booted: "B",
        boot: boot(slot(0, true, "1.0.0"), slot(0, true, "2.0.0")),
        pending: pendingB,
      }),
    ).toMatchObject({ action: "nothing", clearPending: true });
  });
  it("row 4: pending slot booted, not good → health checks", () => {
    expect(
      decideAfterBoot({
        booted: "B",
        boot: boot(slot(0, true, "1.0.0"), slot(2, false, "2.0.0")),
        pending: pendingB,
      }),
    ).toMatchObject({ action: "check-health", slot: "B", version: "2.0.0" });
  });
  it("row 5: the other slot booted and the pending one is out of tries → rollback", () => {
    expect(
      decideAfterBoot({
        booted: "A",
        boot: boot(slot(0, true, "1.0.0"), slot(0, false, "2.0.0")),
        pending: pendingB,
      }),
    ).toMatchObject({ action: "rollback", slot: "B", version: "2.0.0" });
  });
  it("row 6: the other slot booted, pending one has tries left → not rebooted yet", () => {
    expect(
      decideAfterBoot({
        booted: "A",
        boot: boot(slot(0, true, "1.0.0"), slot(3, false, "2.0.0")),
        pending: pendingB,
      }),
    ).toMatchObject({ action: "await-reboot" });
  });
  it("row 7: the pending slot holds something else now → forget pending", () => {
    expect(
      decideAfterBoot({
        booted: "A",
        boot: boot(slot(0, true, "1.0.0"), slot(0, false, "2.0.0", "other")),
        pending: pendingB,
      }),
    ).toMatchObject({ action: "nothing", clearPending: true });
  });
});

describe("decideAfterBoot: a good slot GRUB passed over (row 0)", () => {
  const goodB = (boots: number) => ({ ...slot(0, true, "2.0.0"), boots });
  it("the first slot good, the other booted: a fallback, with the reason the counter gives", () => {
    expect(
      decideAfterBoot({ booted: "A", boot: boot(slot(0, true, "1.0.0"), goodB(3)), pending: null }),
    ).toMatchObject({
      action: "fallback",
      slot: "B",
      version: "2.0.0",
      reason: expect.stringMatching(/booted 3 times in a row without a confirmation/),
    });
    expect(
      decideAfterBoot({ booted: "A", boot: boot(slot(0, true, "1.0.0"), goodB(1)), pending: null }),
    ).toMatchObject({
      action: "fallback",
      reason: expect.stringMatching(/could not load slot B's \(2\.0\.0\) kernel or initrd/),
    });
  });
  it("not a fallback: the booted slot is first, or the first one is not good", () => {
    expect(
      decideAfterBoot({ booted: "B", boot: boot(slot(0, true, "1.0.0"), goodB(1)), pending: null }),
    ).toMatchObject({ action: "nothing" });
    expect(
      decideAfterBoot({
        booted: "A",
        boot: boot(slot(0, true, "1.0.0"), goodB(3), ["A", "B"]),
        pending: null,
      }),
    ).toMatchObject({ action: "nothing" });
    expect(
      decideAfterBoot({
        booted: "A",
        boot: boot(slot(0, true, "1.0.0"), slot(0, false, "2.0.0")),
        pending: pendingB,
      }),
    ).toMatchObject({ action: "rollback" });
  });
});

describe("decideAfterBoot without a record (state file lost)", () => {
  const failedB = boot(slot(0, true, "2.0.0"), slot(0, false, "3.0.0"), ["A", "B"]);
  it("row 1b: a newer version out of tries in the other slot → rollback, once", () => {
    expect(decideAfterBoot({ booted: "A", boot: failedB, pending: null })).toMatchObject({
      action: "rollback",
      slot: "B",
      version: "3.0.0",
    });
    expect(
      decideAfterBoot({ booted: "A", boot: failedB, pending: null, badVersions: ["3.0.0"] }),
    ).toMatchObject({
      action: "nothing",
    });
  });
  it("an install interrupted after mark-unbootable (an older version left there) is not a rollback", () => {
    const interrupted = boot(slot(0, true, "2.0.0"), slot(0, false, "1.0.0"), ["A", "B"]);
    expect(decideAfterBoot({ booted: "A", boot: interrupted, pending: null })).toMatchObject({
      action: "nothing",
    });
  });
});

describe("installBlocker", () => {
  it("refuses while the booted slot is not good, and says why", () => {
    expect(installBlocker(boot(slot(0, true, "1.0.0"), slot(2, false, "2.0.0")), "B")).toMatch(
      /not yet marked good/,
    );
    expect(installBlocker(boot(slot(0, true, "1.0.0"), slot(2, false, "2.0.0")), "A")).toBeNull();
  });
});

describe("poll timing", () => {
  it("interval ± jitter, for every random fraction", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1000, max: 10_000_000 }),
        fc.double({ min: 0, max: 0.9999, noNaN: true }),
        (interval, f) => {
          const jitter = Math.floor(interval / 10);
          const d = pollDelayMs(interval, jitter, f);
          expect(d).toBeGreaterThanOrEqual(interval - jitter);
          expect(d).toBeLessThanOrEqual(interval + jitter);
        },
      ),
    );
  });
  it("backs off from interval/8, doubling, capped", () => {
    expect([1, 2, 3, 4, 5, 20].map((n) => backoffMs(80_000, n, 60_000))).toEqual([
      10_000, 20_000, 40_000, 60_000, 60_000, 60_000,
    ]);
  });
});
