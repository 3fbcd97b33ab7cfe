import { describe, expect, it } from "vitest";
import { FleetError } from "../../../src/fleet/errors.ts";
import {
  decodeReport,
  REPORT_EVENTS,
  REPORT_MAX_BYTES,
  reportProblems,
  validateReport,
} from "../../../src/fleet/report.ts";
import { report } from "./fixtures.ts";

const fields = (v: unknown) => reportProblems(v).map((p) => p.field);

describe("report schema (README.md, 'The report')", () => {
  it("accepts a valid report of every event", () => {
    for (const event of REPORT_EVENTS) {
      const r = report(1, {
        event,
        target: "3.0.0",
        reason: "health check nginx failed",
        lastError: { code: "HEALTH_CHECK_FAILED", message: "nginx is not active" },
      });
      expect(validateReport(JSON.parse(JSON.stringify(r)))).toEqual(r);
    }
  });

  it("lists every invalid field, not only the first", () => {
    const bad = {
      ...report(1),
      machineId: "ABC",
      hostname: "-bad-",
      channel: "Stable",
      seed: 2048,
      running: { slot: "C", version: "2.0" },
      other: { slot: "D", version: "x", state: "odd" },
      event: "exploded",
      bootId: "nope",
      uptimeMs: -1,
      time: "yesterday",
      extra: true,
    };
    expect(fields(bad).sort()).toEqual(
      [
        "bootId",
        "channel",
        "event",
        "extra",
        "hostname",
        "machineId",
        "other.slot",
        "other.state",
        "other.version",
        "running.slot",
        "running.version",
        "seed",
        "time",
        "uptimeMs",
      ].sort(),
    );
    try {
      validateReport(bad);
      expect.unreachable();
    } catch (err) {
      expect(err).toBeInstanceOf(FleetError);
      expect((err as FleetError).code).toBe("FLEET_BAD_REPORT");
      expect((err as FleetError).details.problems).toHaveLength(14);
    }
  });

  it("holds the seed to 0-2047 and integers", () => {
    expect(fields(report(1, { seed: 0 }))).toEqual([]);
    expect(fields(report(1, { seed: 2047 }))).toEqual([]);
    expect(fields(report(1, { seed: -1 }))).toEqual(["seed"]);
    expect(fields(report(1, { seed: 1.5 }))).toEqual(["seed"]);
  });

  it("needs the target version for an event about one, and the reason of a rollback", () => {
    expect(fields(report(1, { event: "download-started" }))).toEqual(["target"]);
    expect(fields(report(1, { event: "rollback", target: "3.0.0" }))).toEqual(["reason"]);
    expect(fields(report(1, { event: "error", target: "3.0.0" }))).toEqual(["lastError"]);
    expect(fields(report(1, { event: "checked" }))).toEqual([]);
  });

  it("refuses the other slot equal to the running one and an empty slot with a version", () => {
    expect(fields(report(1, { other: { slot: "A", version: "", state: "empty" } }))).toEqual([
      "other.slot",
    ]);
    expect(fields(report(1, { other: { slot: "B", version: "1.0.0", state: "empty" } }))).toEqual([
      "other.version",
    ]);
  });

  it("refuses control characters and overlong text", () => {
    const r = report(1, { event: "rollback", target: "3.0.0", reason: "a\u0000b" });
    expect(fields(r)).toEqual(["reason"]);
    expect(fields({ ...r, reason: "x".repeat(2049) })).toEqual(["reason"]);
  });

  it("decodes bytes with the size limit and refuses what is not JSON", () => {
    const ok = new TextEncoder().encode(JSON.stringify(report(1)));
    expect(decodeReport(ok).machineId).toBe(report(1).machineId);
    const big = new Uint8Array(REPORT_MAX_BYTES + 1).fill(32);
    expect(() => decodeReport(big)).toThrow(/larger than 16384/);
    expect(() => decodeReport(new TextEncoder().encode("{nope"))).toThrow(/not JSON/);
    expect(() => decodeReport(new Uint8Array([0xff, 0xfe]))).toThrow(/not JSON/);
    expect(fields([])).toEqual([""]);
  });
});
