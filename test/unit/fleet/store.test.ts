/**
 * The store on both databases (README.md, "Storage", "Halting", "Stuck
 * hosts"): the same tests against node:sqlite and a PostgreSQL server
 * started here.
 */
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { openPostgres, openSqlite, type Sql } from "../../../src/fleet/db.ts";
import { FleetError } from "../../../src/fleet/errors.ts";
import { MIGRATIONS } from "../../../src/fleet/migrations.ts";
import { EVENTS_PER_HOST, FleetStore, type StoreOptions } from "../../../src/fleet/store.ts";
import { type Postgres, startPostgres } from "../../helpers/postgres.ts";
import { tempDir } from "../../helpers/tmp.ts";
import { machineId, report, rolledBack, updated } from "./fixtures.ts";

let pg: Postgres;
beforeAll(async () => {
  pg = await startPostgres();
});
afterAll(async () => {
  await pg?.stop();
});

let n = 0;
const T0 = Date.parse("2026-01-01T00:00:00Z");

const databases: [string, () => Promise<Sql>][] = [
  ["sqlite", () => openSqlite(join(tempDir("abforge-fleet-"), "fleet.db"))],
  ["postgres", async () => openPostgres(await pg.createDatabase(`t${++n}`))],
];

describe.each(databases)("fleet store on %s", (_name, open) => {
  const stores: FleetStore[] = [];
  afterAll(async () => {
    for (const s of stores) await s.close();
  });
  const fresh = async (o: StoreOptions = {}) => {
    const s = await FleetStore.open(await open(), o);
    stores.push(s);
    return s;
  };

  it("applies the migrations once and refuses a database of a newer schema", async () => {
    const sql = await open();
    const s = await FleetStore.open(sql);
    const rows = await sql.query("SELECT version FROM schema_migrations ORDER BY version");
    expect(rows.map((r) => Number(r.version))).toEqual(MIGRATIONS.map((m) => m.version));
    // a second start applies nothing and keeps the data
    await s.record(report(1), T0);
    const again = await FleetStore.open(sql);
    expect((await again.hosts({}, T0)).map((h) => h.hostname)).toEqual(["host-01"]);
    await sql.run(
      "INSERT INTO schema_migrations (version, name, applied_at) VALUES (99, 'x', 'y')",
    );
    const err = await FleetStore.open(sql).catch((e) => e);
    expect(err).toBeInstanceOf(FleetError);
    expect(err.code).toBe("FLEET_DB_NEWER");
    await sql.close();
  });

  it("keeps each host's latest state and a bounded timeline", async () => {
    const s = await fresh();
    for (let k = 0; k < EVENTS_PER_HOST + 40; k++)
      await s.record(
        report(1, {
          event: k % 2 ? "download-started" : "download-finished",
          target: "3.0.0",
          progressPercent: k % 101,
        }),
        T0 + k,
      );
    for (let k = 0; k < 5; k++) await s.record(report(1, { event: "checked" }), T0 + 1000 + k);
    const h = await s.host(machineId(1), T0 + 2000);
    expect(h?.host.event).toBe("checked");
    expect(h?.host.receivedAt).toBe(new Date(T0 + 1004).toISOString());
    // repeated checks are one entry; old events are trimmed
    expect(h?.events.filter((e) => e.event === "checked")).toHaveLength(1);
    const [count] = await s.sql.query("SELECT COUNT(*) AS n FROM events WHERE machine_id = ?", [
      machineId(1),
    ]);
    expect(Number(count?.n)).toBeLessThanOrEqual(EVENTS_PER_HOST + 17);
    expect(Number(count?.n)).toBeGreaterThanOrEqual(EVENTS_PER_HOST);
    expect(await s.host(machineId(2), T0)).toBeUndefined();
  });

  it("halts a version after N hosts rolled back, with their reasons, once", async () => {
    const s = await fresh({ halt: { hosts: 3 } });
    for (const i of [1, 2]) for (const r of updated(i, "3.0.0")) await s.record(r, T0);
    const halts = [];
    for (const i of [3, 4, 5])
      for (const r of rolledBack(i, "3.0.0", `health check nginx failed on ${i}`))
        halts.push((await s.record(r, T0 + i)).halted);
    expect(halts.filter(Boolean)).toHaveLength(1);
    expect(halts[halts.length - 1]?.reason).toBe(
      "halted: 3 of 5 hosts that tried 3.0.0 rolled back: host-03: health check nginx failed on 3; host-04: health check nginx failed on 4; host-05: health check nginx failed on 5",
    );
    expect((await s.holds("stable")).map((h) => [h.version, h.by])).toEqual([["3.0.0", "auto"]]);
    expect(await s.holds("beta")).toEqual([]);
  });

  it("halts by percent of the hosts that tried, counting failed installs", async () => {
    const s = await fresh({ halt: { percent: 50 } });
    for (const i of [1, 2, 3]) for (const r of updated(i, "3.0.0")) await s.record(r, T0);
    const fail = (i: number) =>
      s.record(
        report(i, {
          event: "error",
          target: "3.0.0",
          lastError: { code: "UPDATE_VERIFY_FAILED", message: "chunk 7 hash mismatch" },
        }),
        T0 + i,
      );
    await s.record(report(4, { event: "download-started", target: "3.0.0" }), T0);
    expect((await fail(4)).halted).toBeUndefined(); // 1 of 4
    await s.record(report(5, { event: "download-started", target: "3.0.0" }), T0);
    expect((await fail(5)).halted).toBeUndefined(); // 2 of 5
    await s.record(report(6, { event: "download-started", target: "3.0.0" }), T0);
    const h = (await fail(6)).halted; // 3 of 6 = 50%
    expect(h?.reason).toMatch(
      /^halted: 3 of 6 hosts that tried 3\.0\.0 failed to install: host-04: UPDATE_VERIFY_FAILED: chunk 7 hash mismatch; /,
    );
  });

  it("lets an operator resume a halt for good, and pause again", async () => {
    const s = await fresh({ halt: { hosts: 1 } });
    for (const r of rolledBack(1, "3.0.0", "kernel panic")) await s.record(r, T0);
    expect(await s.resume("stable", "3.0.0", T0 + 1)).toBe(true);
    expect(await s.resume("stable", "3.0.0", T0 + 2)).toBe(false);
    for (const r of rolledBack(2, "3.0.0", "kernel panic"))
      expect((await s.record(r, T0 + 3)).halted).toBeUndefined();
    expect(await s.holds("stable")).toEqual([]);
    expect((await s.holds("stable", true))[0]?.resumedAt).toBe(new Date(T0 + 1).toISOString());
    expect(await s.pause("stable", "3.0.0", "until the driver is fixed", T0 + 4)).toBe(true);
    expect(await s.pause("stable", "3.0.0", "again", T0 + 5)).toBe(false);
    expect(await s.holds("stable")).toEqual([
      {
        channel: "stable",
        version: "3.0.0",
        reason: "until the driver is fixed",
        by: "operator",
        at: new Date(T0 + 4).toISOString(),
      },
    ]);
  });

  it("finds stuck hosts: silent for three polls, or too long in one state, with the last error", async () => {
    const s = await fresh();
    // host 2 reports the same stalled download twice, three hours apart
    const stalled = report(2, {
      event: "download-started",
      target: "3.0.0",
      pollIntervalMs: 3_600_000,
      lastError: { code: "REPO_STALLED", message: "no byte for 60 s from the repository" },
    });
    await s.record(report(1, { pollIntervalMs: 60_000 }), T0);
    await s.record(stalled, T0);
    await s.record(report(3, { pollIntervalMs: 3_600_000 }), T0);
    const later = T0 + 3 * 3_600_000 - 1;
    await s.record(report(3, { pollIntervalMs: 3_600_000 }), later);
    await s.record(stalled, later);
    const sum = await s.summary(later);
    expect(sum.stuck).toBe(2);
    const why = Object.fromEntries(sum.stuckHosts.map((h) => [h.hostname, h.stuck?.why]));
    expect(why["host-01"]).toBe(
      "no report for 3 h (3 poll intervals are 3 min); last event checked",
    );
    expect(why["host-02"]).toBe(
      "download-started for 3 h (expected under 2 h); last error REPO_STALLED: no byte for 60 s from the repository",
    );
    expect((await s.hosts({ state: "stuck" }, later)).map((h) => h.hostname)).toEqual([
      "host-01",
      "host-02",
    ]);
    expect((await s.hosts({ state: "checked" }, later)).map((h) => h.hostname)).toEqual([
      "host-01",
      "host-03",
    ]);
  });

  it("filters hosts by channel, version and search (any case, % taken literally)", async () => {
    const s = await fresh();
    await s.record(report(1), T0);
    await s.record(report(2, { channel: "beta", hostname: "Web-Frontend" }), T0);
    for (const r of updated(3, "3.0.0")) await s.record(r, T0);
    expect((await s.hosts({ channel: "beta" }, T0)).map((h) => h.hostname)).toEqual([
      "Web-Frontend",
    ]);
    expect((await s.hosts({ version: "3.0.0" }, T0)).map((h) => h.hostname)).toEqual(["host-03"]);
    expect((await s.hosts({ search: "web-FRONT" }, T0)).map((h) => h.hostname)).toEqual([
      "Web-Frontend",
    ]);
    expect((await s.hosts({ search: machineId(3).slice(20) }, T0)).map((h) => h.hostname)).toEqual([
      "host-03",
    ]);
    expect(await s.hosts({ search: "%" }, T0)).toEqual([]);
    const sum = await s.summary(T0);
    expect(sum.versions).toEqual([
      { channel: "beta", version: "2.0.0", hosts: 1 },
      { channel: "stable", version: "2.0.0", hosts: 1 },
      { channel: "stable", version: "3.0.0", hosts: 1 },
    ]);
  });

  it("gives the rollout over time: hosts per version", async () => {
    const s = await fresh();
    for (const i of [1, 2, 3]) await s.record(report(i), T0);
    for (const r of updated(1, "3.0.0")) await s.record(r, T0 + 60_000);
    for (const r of updated(2, "3.0.0")) await s.record(r, T0 + 120_000);
    const r = await s.rollout("stable", T0 + 180_000, 3);
    expect(r.series).toEqual([
      { version: "2.0.0", hosts: [2, 1, 1] },
      { version: "3.0.0", hosts: [1, 2, 2] },
    ]);
    // each point is the count at the end of its step
    expect(r.times).toEqual(
      [60_000, 120_001, 180_002].map((ms) => new Date(T0 + ms).toISOString()),
    );
    expect((await s.rollout("beta", T0)).series).toEqual([]);
  });
});
