// The reboot window (src/updater/README.md, "Reboot"): locksmith's `Thu 23:00` + length, in
// the host's time zone; where a time stands in it, as a pure function.
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { parseDuration, parseWindowStart, type RebootWindow } from "../../../src/image/index.ts";
import { decideReboot, windowAt } from "../../../src/updater/reboot.ts";

const window = (start: string, length: string): RebootWindow => ({
  ...parseWindowStart(start)!,
  lengthMs: parseDuration(length)!,
});
const at = (iso: string) => Date.parse(iso);
const iso = (ms: number) => new Date(ms).toISOString();

describe("windowAt", () => {
  // 2026-12-09 is a Wednesday.
  const thu = window("Thu 23:00", "1h30m");

  it("Wed 10:00 waits for Thu 23:00; Thu 23:30 is inside; Fri 00:40 waits a week", () => {
    expect(windowAt(thu, at("2026-12-09T10:00:00Z"), "UTC")).toEqual({
      open: false,
      start: at("2026-12-10T23:00:00Z"),
      end: at("2026-12-11T00:30:00Z"),
    });
    expect(windowAt(thu, at("2026-12-10T23:30:00Z"), "UTC")).toMatchObject({
      open: true,
      start: at("2026-12-10T23:00:00Z"),
    });
    const fri = windowAt(thu, at("2026-12-11T00:40:00Z"), "UTC");
    expect(fri.open).toBe(false);
    expect(iso(fri.start)).toBe("2026-12-17T23:00:00.000Z");
  });

  it("the edges: the start is inside, the end is not", () => {
    expect(windowAt(thu, at("2026-12-10T23:00:00Z"), "UTC").open).toBe(true);
    expect(windowAt(thu, at("2026-12-11T00:29:59.999Z"), "UTC").open).toBe(true);
    expect(windowAt(thu, at("2026-12-11T00:30:00Z"), "UTC").open).toBe(false);
  });

  it("is in the host's time zone, not UTC", () => {
    // 23:00 in Paris in December is 22:00 UTC; in Tokyo, 14:00 UTC.
    expect(iso(windowAt(thu, at("2026-12-09T10:00:00Z"), "Europe/Paris").start)).toBe(
      "2026-12-10T22:00:00.000Z",
    );
    expect(iso(windowAt(thu, at("2026-12-09T10:00:00Z"), "Asia/Tokyo").start)).toBe(
      "2026-12-10T14:00:00.000Z",
    );
  });

  it("a daily window opens every day; one that crosses midnight is open after it", () => {
    const nightly = window("22:00", "4h");
    expect(iso(windowAt(nightly, at("2026-12-09T10:00:00Z"), "UTC").start)).toBe(
      "2026-12-09T22:00:00.000Z",
    );
    expect(windowAt(nightly, at("2026-12-10T01:59:00Z"), "UTC")).toMatchObject({
      open: true,
      start: at("2026-12-09T22:00:00Z"),
    });
  });

  it("across a change of daylight saving time the wall time holds", () => {
    // Europe/Paris leaves summer time on 2026-10-25 at 03:00: Sunday noon is 10:00 UTC the
    // week before, 11:00 UTC on that day.
    const noon = window("Sun 12:00", "1h");
    expect(iso(windowAt(noon, at("2026-10-18T09:00:00Z"), "Europe/Paris").start)).toBe(
      "2026-10-18T10:00:00.000Z",
    );
    expect(iso(windowAt(noon, at("2026-10-19T12:00:00Z"), "Europe/Paris").start)).toBe(
      "2026-10-25T11:00:00.000Z",
    );
  });

  it("property: closed means the next opening is ahead and within a week; open means inside it", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 6 }),
        fc.integer({ min: 0, max: 1439 }),
        fc.integer({ min: 1, max: 7 * 24 * 60 }),
        fc.integer({ min: at("2026-01-01T00:00:00Z"), max: at("2028-01-01T00:00:00Z") }),
        fc.constantFrom("UTC", "Europe/Paris", "America/New_York", "Australia/Lord_Howe"),
        (weekday, startMinute, lengthMin, now, tz) => {
          const w: RebootWindow = { weekday, startMinute, lengthMs: lengthMin * 60_000 };
          const s = windowAt(w, now, tz);
          expect(s.end - s.start).toBe(w.lengthMs);
          if (s.open) expect(s.start <= now && now < s.end).toBe(true);
          else {
            expect(s.start).toBeGreaterThan(now);
            expect(s.start - now).toBeLessThanOrEqual(7 * 24 * 3_600_000 + 3_600_000);
          }
        },
      ),
      { numRuns: 300 },
    );
  });
});

describe("decideReboot", () => {
  const base = { strategy: "immediate", window: null, method: "reboot", etcd: null } as const;
  const etcd = {
    endpoints: ["http://127.0.0.1:2379"],
    group: null,
    lockTTLMs: 1_800_000,
    ca: null,
    cert: null,
    key: null,
  };
  const wed = at("2026-12-09T10:00:00Z");

  it("off waits for the operator; the operator's reboot goes past strategy and window, not past the lock", () => {
    expect(
      decideReboot({ reboot: { ...base, strategy: "off" }, nowMs: wed, operator: false }),
    ).toEqual({ action: "wait-operator" });
    const locked = {
      ...base,
      strategy: "etcd-lock" as const,
      etcd,
      window: window("Thu 23:00", "1h"),
    };
    expect(decideReboot({ reboot: locked, nowMs: wed, operator: false, timeZone: "UTC" })).toEqual({
      action: "wait-window",
      opensAt: at("2026-12-10T23:00:00Z"),
    });
    expect(decideReboot({ reboot: locked, nowMs: wed, operator: true, timeZone: "UTC" })).toEqual({
      action: "lock",
    });
    expect(decideReboot({ reboot: base, nowMs: wed, operator: false })).toEqual({
      action: "reboot",
    });
  });
});
