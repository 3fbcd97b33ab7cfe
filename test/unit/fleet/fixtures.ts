/** Reports of simulated hosts, valid unless a test changes them. */
import type { Report } from "../../../src/fleet/report.ts";

export function machineId(i: number): string {
  return i.toString(16).padStart(32, "0");
}

export function report(i: number, o: Partial<Report> = {}): Report {
  return {
    format: 1,
    machineId: machineId(i),
    hostname: `host-${String(i).padStart(2, "0")}`,
    channel: "stable",
    seed: (i * 97) % 2048,
    running: { slot: "A", version: "2.0.0" },
    other: { slot: "B", version: "", state: "empty" },
    event: "checked",
    bootId: "0b8f1c2e-3d4a-4b5c-8d6e-7f8091a2b3c4",
    uptimeMs: 60_000,
    agentVersion: "0.1.0",
    pollIntervalMs: 60_000,
    time: "2026-01-01T00:00:00Z",
    ...o,
  };
}

/** The events of one host downloading and installing `target` into slot B. */
function installed(i: number, target: string): Report[] {
  return [
    report(i, { event: "download-started", target }),
    report(i, {
      event: "installed",
      target,
      other: { slot: "B", version: target, state: "installed" },
    }),
  ];
}

/** The events of one host taking `target` and rolling back with `reason`. */
export function rolledBack(i: number, target: string, reason: string): Report[] {
  return [
    ...installed(i, target),
    report(i, {
      event: "rollback",
      target,
      reason,
      other: { slot: "B", version: target, state: "bad" },
    }),
  ];
}

/** The events of one host taking `target` and marking it good. */
export function updated(i: number, target: string): Report[] {
  return [
    ...installed(i, target),
    report(i, {
      event: "marked-good",
      running: { slot: "B", version: target },
      other: { slot: "A", version: "2.0.0", state: "good" },
    }),
  ];
}
