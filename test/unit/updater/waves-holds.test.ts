// The agent and the fleet (src/updater/README.md, "Seed", "Waves", "Holds"): the seed drawn once
// and kept (also for a state file older than it), no install before this host's wave on a fake
// clock, and the fleet server's hold delaying the named version; what `agent status` says.
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { openSqlite } from "../../../src/fleet/db.ts";
import { type FleetServer, startFleetServer } from "../../../src/fleet/server.ts";
import { FleetStore } from "../../../src/fleet/store.ts";
import type { ReportConfig } from "../../../src/image/index.ts";
import { logger } from "../../../src/log.ts";
import { parseWaves, publish, type RepoServer, serve, type Wave } from "../../../src/repo/index.ts";
import { formatStatus, StateStore } from "../../../src/updater/index.ts";
import { FakeClock } from "../../helpers/clock.ts";
import { makeUpdateWorld, type UpdateWorld } from "../../helpers/fixtures.ts";
import { tempDir } from "../../helpers/tmp.ts";
import { REBOOT_OFF, readBoot, testAgent } from "./harness.ts";

const ISSUED = new Date("2026-05-01T08:00:00.000Z");
const ENROLL = "enroll-0123456789abcdef0123456789";
const OPERATOR = "operator-0123456789abcdef01234567";
let w: UpdateWorld;
let repo: RepoServer;
let fleet: FleetServer;
beforeAll(async () => {
  w = await makeUpdateWorld(tempDir(), { versions: ["2.0.0"] });
  const repoDir = join(w.dir, "repo");
  const r = parseWaves("1h=10%,2h=100%") as { waves: Wave[] };
  await publish({
    repoDir,
    bundlePath: w.bundles["2.0.0"]!.path,
    channel: "stable",
    key: w.key.privateKey,
    waves: r.waves,
    now: ISSUED,
  });
  repo = await serve({ repoDir, host: "127.0.0.1", port: 0 });
  const store = await FleetStore.open(await openSqlite(join(tempDir(), "fleet.db")));
  fleet = await startFleetServer({
    store,
    operatorToken: OPERATOR,
    enrollToken: ENROLL,
    port: 0,
    log: logger().child({ test: "fleet" }),
  });
}, 60_000);
afterAll(async () => {
  await repo?.close();
  await fleet?.close();
  await fleet?.store.close();
});

const config = (report?: Partial<ReportConfig>) => ({
  repoUrl: repo.url,
  channel: "stable",
  compatible: w.compatible,
  trustedKeys: [w.key.publicKeyPath],
  reboot: REBOOT_OFF,
  machineId: "0123456789abcdef0123456789abcdef",
  ...(report
    ? {
        report: {
          url: fleet.url,
          token: ENROLL,
          tokenFile: null,
          onUnreachable: "go" as const,
          ...report,
        },
      }
    : {}),
});

async function agentAt(name: string, seed: number, at: Date, report?: Partial<ReportConfig>) {
  const d = await w.freshDisk(name);
  const clock = new FakeClock({ start: at });
  const t = await testAgent(d.path, {
    config: config(report),
    overrides: { clock, random: { fraction: () => 0.5, id: () => "test-host", int: () => seed } },
  });
  return { d, clock, ...t };
}

const operator = (method: string, path: string) =>
  fetch(new URL(path, fleet.url), {
    method,
    headers: { authorization: `Bearer ${OPERATOR}`, "content-type": "application/json" },
    ...(method === "PUT" ? { body: JSON.stringify({ reason: "canary looks wrong" }) } : {}),
  });

describe("the seed", () => {
  it("is drawn once and kept; a state file older than it gets one, saved", async () => {
    const d = await w.freshDisk("seed-old");
    const store = new StateStore(`${d.path}.abforge-state`);
    // a state file written before seeds existed
    await store.save({ ...(await store.load()), seed: undefined } as never);
    expect(JSON.parse(await readFile(store.path, "utf8")).seed).toBeUndefined();
    const draws: number[] = [];
    const random = {
      fraction: () => 0.5,
      id: () => "x",
      int: (n: number) => {
        draws.push(n);
        return 1234;
      },
    };
    await testAgent(d.path, { overrides: { random } });
    expect(draws).toEqual([2048]);
    expect((await store.load()).seed).toBe(1234);
    await testAgent(d.path, { overrides: { random } });
    expect(draws).toEqual([2048]); // kept, never drawn again
    const s = await (await testAgent(d.path, { readOnly: true })).agent.status();
    expect(s.seed).toBe(1234);
    expect(formatStatus(s)).toContain("seed       1234");
  });
});

describe("waves", () => {
  it("the host does not install before its start time; status says when it will", async () => {
    // seed 1024: position 50%, in the second wave (10%-100% between 1 h and 2 h): 1 h 26 min 40 s
    const a = await agentAt("wave-wait", 1024, new Date(ISSUED.getTime() + 60 * 60_000));
    const before = await readBoot(a.d.path);
    const r = await a.agent.check();
    expect(r).toMatchObject({ outcome: "skipped", version: "2.0.0" });
    expect((r as { reason: string }).reason).toBe(
      "waiting for wave 2 of 2 (100%): this host takes 2.0.0 at 2026-05-01T09:26:40.000Z",
    );
    expect(await readBoot(a.d.path)).toEqual(before);
    const s = await (await testAgent(a.d.path, { readOnly: true })).agent.status();
    expect(s.rolloutWait).toEqual({
      version: "2.0.0",
      startsAt: "2026-05-01T09:26:40.000Z",
      wave: 2,
      waves: 2,
      percent: 100,
      issuedAt: ISSUED.toISOString(),
    });
    expect(formatStatus(s)).toContain(
      "rollout    takes 2.0.0 at 2026-05-01T09:26:40.000Z: wave 2 of 2 (100%, after 2026-05-01T08:00:00.000Z)",
    );
    a.clock.advance(26 * 60_000 + 39_000); // one second early
    expect(await a.agent.check()).toMatchObject({ outcome: "skipped" });
    a.clock.advance(1000);
    expect(await a.agent.check()).toMatchObject({ outcome: "installed", version: "2.0.0" });
    expect(a.agent.state.rolloutWait).toBeNull();
  });

  it("a host of the first wave starts inside the first hour", async () => {
    // seed 100: 100/2048 = 4.88% of the fleet, half way through the first wave's 10%
    const a = await agentAt("wave-first", 100, new Date(ISSUED.getTime() + 30 * 60_000));
    expect(await a.agent.check()).toMatchObject({ outcome: "installed", version: "2.0.0" });
  });
});

describe("holds", () => {
  it("a held version is not installed and is checked again; status, the log and the report say so", async () => {
    expect((await operator("PUT", "/v1/holds/stable/2.0.0")).status).toBe(201);
    const a = await agentAt("held", 0, new Date(ISSUED.getTime() + 3 * 3600_000), {});
    const r = await a.agent.check();
    expect(r).toMatchObject({ outcome: "skipped", version: "2.0.0" });
    expect((r as { reason: string }).reason).toMatch(
      /^held by the fleet server \(operator, since .*\): canary looks wrong$/,
    );
    expect(a.lines.some((l) => l.msg.startsWith("skip 2.0.0: held by the fleet server"))).toBe(
      true,
    );
    const s = await (await testAgent(a.d.path, { readOnly: true })).agent.status();
    expect(s.held).toMatchObject({ channel: "stable", version: "2.0.0", by: "operator" });
    expect(formatStatus(s)).toMatch(/held {7}2\.0\.0 on stable by operator .*: canary looks wrong/);
    await a.agent.close();
    const host = (await (
      await operator("GET", "/v1/hosts/0123456789abcdef0123456789abcdef")
    ).json()) as { host: { event: string; reason: string; seed: number } };
    expect(host.host).toMatchObject({ event: "checked", seed: 0 });
    expect(host.host.reason).toMatch(/^skip 2\.0\.0: held by the fleet server/);
    // resumed: the next check installs
    expect((await operator("DELETE", "/v1/holds/stable/2.0.0")).status).toBe(200);
    const b = await testAgent(a.d.path, { config: config({}), overrides: { clock: a.clock } });
    expect(await b.agent.check()).toMatchObject({ outcome: "installed", version: "2.0.0" });
    expect(b.agent.state.held).toBeNull();
    await b.agent.close();
  });

  it("a hold document that cannot be read: onUnreachable wait installs nothing, go goes on", async () => {
    const at = new Date(ISSUED.getTime() + 3 * 3600_000);
    const down = "http://127.0.0.1:9/";
    const a = await agentAt("unreachable-wait", 0, at, { url: down, onUnreachable: "wait" });
    const r = await a.agent.check();
    expect(r).toMatchObject({ outcome: "skipped" });
    expect((r as { reason: string }).reason).toMatch(
      /the fleet server's holds cannot be read .*; report.onUnreachable is wait/,
    );
    // its reports wait in the queue: closing gives them 2 s (of the fake clock), then drops them
    const closing = a.agent.close();
    a.clock.advance(2000);
    await closing;
    expect(a.agent.reports).toMatchObject({ queued: 0, sent: 0 });
    const b = await agentAt("unreachable-go", 0, at, { url: down });
    expect(await b.agent.check()).toMatchObject({ outcome: "installed" });
    expect(b.lines.some((l) => l.msg.includes("going on (report.onUnreachable: go)"))).toBe(true);
    const closingB = b.agent.close();
    b.clock.advance(2000);
    await closingB;
  });
});
