/**
 * The API (README.md, "API"): auth, refusals of bad input (nothing stored),
 * the rate per host, halting through reports, holds, hosts and timelines.
 * A real server on 127.0.0.1, node:sqlite, a fake clock.
 */
import { join } from "node:path";
import { Writable } from "node:stream";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { openSqlite } from "../../../src/fleet/db.ts";
import { type FleetServer, startFleetServer } from "../../../src/fleet/server.ts";
import { FleetStore } from "../../../src/fleet/store.ts";
import { FakeClock } from "../../helpers/clock.ts";
import { tempDir } from "../../helpers/tmp.ts";
import { machineId, report, rolledBack, updated } from "./fixtures.ts";

const OPERATOR = "operator-token-0123456789abcdef";
const ENROLL = "enroll-token-0123456789abcdef";
const logLines: string[] = [];
const log = pino(
  { level: "debug" },
  new Writable({
    write(chunk, _e, done) {
      logLines.push(String(chunk));
      done();
    },
  }),
);

async function start(o: { halt?: { hosts: number } | { percent: number }; burst?: number } = {}) {
  const clock = new FakeClock({ start: new Date("2026-03-01T12:00:00Z") });
  const store = await FleetStore.open(
    await openSqlite(join(tempDir("abforge-fleet-"), "fleet.db")),
    {
      ...(o.halt ? { halt: o.halt } : {}),
    },
  );
  const server = await startFleetServer({
    store,
    operatorToken: OPERATOR,
    enrollToken: ENROLL,
    port: 0,
    clock,
    log,
    rate: { burst: o.burst ?? 100, perSecond: 1 },
  });
  servers.push(server);
  return { server, clock, store };
}
const servers: FleetServer[] = [];
afterAll(async () => {
  for (const s of servers) {
    await s.close();
    await s.store.close();
  }
});

function call(
  s: FleetServer,
  method: string,
  path: string,
  o: {
    token?: string;
    body?: string | object;
    type?: string;
    headers?: Record<string, string>;
  } = {},
) {
  const body =
    o.body === undefined ? undefined : typeof o.body === "string" ? o.body : JSON.stringify(o.body);
  return fetch(new URL(path, s.url), {
    method,
    headers: {
      ...(o.token ? { Authorization: `Bearer ${o.token}` } : {}),
      ...(body === undefined ? {} : { "Content-Type": o.type ?? "application/json" }),
      ...o.headers,
    },
    ...(body === undefined ? {} : { body }),
  });
}
const post = (s: FleetServer, r: object, token = ENROLL) =>
  call(s, "POST", "/v1/reports", { token, body: r });
// biome-ignore lint/suspicious/noExplicitAny: the tests read the JSON they assert on
type Json = Record<string, any>;
async function json(res: Response | Promise<Response>) {
  const r = await res;
  return { status: r.status, body: (await r.json()) as Json, headers: r.headers };
}

describe("fleet API", () => {
  let s: FleetServer;
  let clock: FakeClock;
  beforeAll(async () => {
    ({ server: s, clock } = await start({ burst: 3 }));
  });

  it("refuses a report without the enroll token, with a JSON error, and stores nothing", async () => {
    for (const token of [undefined, "wrong-token-0123456789", OPERATOR]) {
      const r = await json(
        call(s, "POST", "/v1/reports", { ...(token ? { token } : {}), body: report(1) }),
      );
      expect(r.status).toBe(401);
      expect(r.body.error.code).toBe("UNAUTHORIZED");
      expect(r.headers.get("www-authenticate")).toMatch(/^Bearer/);
    }
    const sum = await json(call(s, "GET", "/v1/summary", { token: OPERATOR }));
    expect(sum.body.hosts).toBe(0);
    expect((await call(s, "GET", "/v1/summary", { token: ENROLL })).status).toBe(401);
    expect((await call(s, "GET", "/v1/summary")).status).toBe(401);
  });

  it("refuses bad bodies with a clear 4xx and stores none of them", async () => {
    const bad = await json(post(s, { ...report(1), seed: 5000, hostname: "" }));
    expect(bad.status).toBe(400);
    expect(bad.body.error.code).toBe("FLEET_BAD_REPORT");
    expect(bad.body.error.details.problems.map((p: { field: string }) => p.field)).toEqual([
      "hostname",
      "seed",
    ]);
    const notJson = await json(
      call(s, "POST", "/v1/reports", { token: ENROLL, body: "{not json" }),
    );
    expect([notJson.status, notJson.body.error.code]).toEqual([400, "FLEET_BAD_REPORT"]);
    const type = await json(
      call(s, "POST", "/v1/reports", { token: ENROLL, body: "x=1", type: "text/plain" }),
    );
    expect([type.status, type.body.error.code]).toEqual([415, "UNSUPPORTED_MEDIA_TYPE"]);
    const big = await json(post(s, { ...report(1), reason: "x".repeat(17_000) }));
    expect([big.status, big.body.error.code]).toEqual([413, "TOO_LARGE"]);
    // chunked, no Content-Length: cut off as it passes the limit
    const chunks = new ReadableStream({
      start(c) {
        for (let i = 0; i < 20; i++) c.enqueue(new TextEncoder().encode(" ".repeat(1024)));
        c.close();
      },
    });
    const chunked = await fetch(new URL("/v1/reports", s.url), {
      method: "POST",
      headers: { Authorization: `Bearer ${ENROLL}`, "Content-Type": "application/json" },
      body: chunks,
      duplex: "half",
    } as RequestInit);
    expect(chunked.status).toBe(413);
    expect((await call(s, "GET", "/v1/reports", { token: ENROLL })).status).toBe(405);
    expect((await call(s, "GET", "/v2/anything", { token: OPERATOR })).status).toBe(404);
    expect((await json(call(s, "GET", "/v1/summary", { token: OPERATOR }))).body.hosts).toBe(0);
  });

  it("limits the rate per host, and only that host", async () => {
    for (let k = 0; k < 3; k++) expect((await post(s, report(7))).status).toBe(202);
    const limited = await json(post(s, report(7)));
    expect(limited.status).toBe(429);
    expect(limited.body.error.code).toBe("RATE_LIMITED");
    expect(limited.headers.get("retry-after")).toBe("1");
    expect((await post(s, report(8))).status).toBe(202);
    clock.advance(1000);
    expect((await post(s, report(7))).status).toBe(202);
    expect((await post(s, report(7))).status).toBe(429);
  });

  it("serves hosts with filters, a host's timeline, and refuses bad queries", async () => {
    await post(s, report(9, { hostname: "db-primary", channel: "beta" }));
    const hosts = await json(call(s, "GET", "/v1/hosts?channel=beta", { token: OPERATOR }));
    expect(hosts.body.hosts.map((h: { hostname: string }) => h.hostname)).toEqual(["db-primary"]);
    const found = await json(call(s, "GET", "/v1/hosts?q=DB-PRI", { token: OPERATOR }));
    expect(found.body.hosts).toHaveLength(1);
    const one = await json(call(s, "GET", `/v1/hosts/${machineId(9)}`, { token: OPERATOR }));
    expect(one.body.host.channel).toBe("beta");
    expect(one.body.events.map((e: { event: string }) => e.event)).toEqual(["checked"]);
    expect((await call(s, "GET", `/v1/hosts/${machineId(99)}`, { token: OPERATOR })).status).toBe(
      404,
    );
    expect((await call(s, "GET", "/v1/hosts/..%2fetc", { token: OPERATOR })).status).toBe(400);
    for (const q of ["state=happy", "channel=Bad!", "version=1.x", "limit=0", "color=red"])
      expect((await json(call(s, "GET", `/v1/hosts?${q}`, { token: OPERATOR }))).status).toBe(400);
  });

  it("pauses and resumes a version; agents read the hold with the enroll token", async () => {
    const p = await json(
      call(s, "PUT", "/v1/holds/stable/3.1.0", {
        token: OPERATOR,
        body: { reason: "bad NIC driver" },
      }),
    );
    expect(p.status).toBe(201);
    expect(p.body.hold).toMatchObject({
      channel: "stable",
      version: "3.1.0",
      reason: "bad NIC driver",
      by: "operator",
    });
    expect((await call(s, "PUT", "/v1/holds/stable/3.1.0", { token: OPERATOR })).status).toBe(200);
    expect((await call(s, "PUT", "/v1/holds/stable/3.1.0", { token: ENROLL })).status).toBe(401);
    expect((await call(s, "PUT", "/v1/holds/stable/latest", { token: OPERATOR })).status).toBe(400);
    expect(
      (await call(s, "PUT", "/v1/holds/stable/3.2.0", { token: OPERATOR, body: { why: 1 } }))
        .status,
    ).toBe(400);
    const doc = await json(call(s, "GET", "/v1/holds/stable", { token: ENROLL }));
    expect(doc.body).toEqual({
      format: 1,
      channel: "stable",
      holds: [
        {
          version: "3.1.0",
          reason: "bad NIC driver",
          by: "operator",
          at: "2026-03-01T12:00:01.000Z",
        },
      ],
    });
    expect(doc.headers.get("cache-control")).toBe("no-store");
    expect((await call(s, "GET", "/v1/holds/stable")).status).toBe(401);
    expect((await call(s, "DELETE", "/v1/holds/stable/3.1.0", { token: OPERATOR })).status).toBe(
      200,
    );
    expect((await call(s, "DELETE", "/v1/holds/stable/3.1.0", { token: OPERATOR })).status).toBe(
      404,
    );
    expect((await json(call(s, "GET", "/v1/holds/stable", { token: ENROLL }))).body.holds).toEqual(
      [],
    );
  });

  it("serves the dashboard with a strict content security policy", async () => {
    const res = await fetch(s.url);
    expect(res.status).toBe(200);
    expect(res.headers.get("content-security-policy")).toContain("default-src 'none'");
    expect(await res.text()).toContain('<script src="/dashboard.js"');
    expect((await fetch(new URL("/dashboard.js", s.url))).headers.get("content-type")).toMatch(
      /javascript/,
    );
  });

  it("never writes a token into its logs", () => {
    const all = logLines.join("");
    expect(all).toContain("/v1/reports");
    expect(all).not.toContain(OPERATOR);
    expect(all).not.toContain(ENROLL);
  });
});

describe("halting through reports", () => {
  it("halts after N hosts rolled back; the hold document says why", async () => {
    const { server } = await start({ halt: { hosts: 3 } });
    for (const i of [1, 2])
      for (const r of updated(i, "3.0.0")) expect((await post(server, r)).status).toBe(202);
    for (const i of [3, 4])
      for (const r of rolledBack(i, "3.0.0", "health check nginx failed")) await post(server, r);
    expect(
      (await json(call(server, "GET", "/v1/holds/stable", { token: ENROLL }))).body.holds,
    ).toEqual([]);
    for (const r of rolledBack(5, "3.0.0", "kernel panic: VFS")) await post(server, r);
    const doc = await json(call(server, "GET", "/v1/holds/stable", { token: ENROLL }));
    expect(doc.body.holds).toHaveLength(1);
    expect(doc.body.holds[0].reason).toBe(
      "halted: 3 of 5 hosts that tried 3.0.0 rolled back: host-03: health check nginx failed; host-04: health check nginx failed; host-05: kernel panic: VFS",
    );
    expect(doc.body.holds[0].by).toBe("auto");
  });

  it("halts after N% of the hosts that tried", async () => {
    const { server } = await start({ halt: { percent: 40 } });
    for (const i of [1, 2, 3, 4]) for (const r of updated(i, "3.0.0")) await post(server, r);
    for (const r of rolledBack(5, "3.0.0", "slow boot")) await post(server, r); // 1 of 5 = 20%
    expect(
      (await json(call(server, "GET", "/v1/holds/stable", { token: ENROLL }))).body.holds,
    ).toEqual([]);
    for (const r of rolledBack(6, "3.0.0", "slow boot")) await post(server, r); // 2 of 6 = 33%
    expect(
      (await json(call(server, "GET", "/v1/holds/stable", { token: ENROLL }))).body.holds,
    ).toEqual([]);
    for (const r of rolledBack(7, "3.0.0", "slow boot")) await post(server, r); // 3 of 7 = 43%
    const holds = (await json(call(server, "GET", "/v1/holds/stable", { token: ENROLL }))).body
      .holds;
    expect(holds.map((h: { reason: string }) => h.reason.split(":")[0])).toEqual(["halted"]);
    expect(holds[0].reason).toMatch(/^halted: 3 of 7 hosts that tried 3\.0\.0 rolled back: /);
  });
});
