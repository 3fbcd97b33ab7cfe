// The agent's reports and holds (src/updater/README.md, "Reports" and "Holds"): the bounded
// queue against a real fleet server and against a real HTTP server that fails as a fleet
// server can (5xx, 429, slow, garbage); the back-off on a fake clock; the token never logged.
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { Writable } from "node:stream";
import { pino } from "pino";
import { afterAll, describe, expect, it } from "vitest";
import { openSqlite } from "../../../src/fleet/db.ts";
import { type FleetServer, startFleetServer } from "../../../src/fleet/server.ts";
import { FleetStore } from "../../../src/fleet/store.ts";
import { parseConfig, type ReportConfig } from "../../../src/image/index.ts";
import {
  FleetReporter,
  gotFleetHttp,
  HOLDS_MAX_BYTES,
  parseHolds,
} from "../../../src/updater/fleet.ts";
import { FakeClock } from "../../helpers/clock.ts";
import { tempDir } from "../../helpers/tmp.ts";
import { report } from "../fleet/fixtures.ts";

const ENROLL = "enroll-token-0123456789abcdef-secret";
const OPERATOR = "operator-token-0123456789abcdef";
const lines: string[] = [];
const log = pino(
  { level: "debug" },
  new Writable({
    write(chunk, _e, done) {
      lines.push(String(chunk));
      done();
    },
  }),
);

const closers: (() => Promise<void>)[] = [];
afterAll(async () => {
  for (const c of closers.reverse()) await c();
});

async function fleet(): Promise<FleetServer> {
  const store = await FleetStore.open(await openSqlite(join(tempDir("abforge-fleet-"), "f.db")));
  const server = await startFleetServer({
    store,
    operatorToken: OPERATOR,
    enrollToken: ENROLL,
    port: 0,
    log,
    rate: { burst: 100, perSecond: 10 },
  });
  closers.push(async () => {
    await server.close();
    await store.close();
  });
  return server;
}

/** A real HTTP server on 127.0.0.1 answering with `answer` for each request, in turn. */
async function scripted(
  answer: (
    n: number,
    auth: string | undefined,
  ) => { status: number; body?: string; headers?: Record<string, string> } | "hang",
): Promise<{ url: string; requests: number }> {
  const state = { url: "", requests: 0 };
  const server: Server = createServer((req, res) => {
    req.resume();
    req.on("end", () => {
      const a = answer(state.requests++, req.headers.authorization);
      if (a === "hang") return;
      res.writeHead(a.status, { "content-type": "application/json", ...a.headers });
      res.end(a.body ?? "{}");
    });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  state.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/`;
  closers.push(
    () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  );
  return state;
}

const cfg = (url: string, o: Partial<ReportConfig> = {}): ReportConfig => ({
  url,
  token: ENROLL,
  tokenFile: null,
  onUnreachable: "go",
  ...o,
});

async function until(what: string, ok: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > end) throw new Error(`not within ${ms} ms: ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

describe("the agent config's report:", () => {
  it("reads url, token or tokenFile, onUnreachable; names the key of each mistake", () => {
    const c = parseConfig(
      "report:\n  url: http://10.0.0.5:8080/\n  tokenFile: /etc/abforge/fleet.token\n  onUnreachable: wait\n",
      "agent.yaml",
    );
    expect(c.report).toEqual({
      url: "http://10.0.0.5:8080/",
      token: null,
      tokenFile: "/etc/abforge/fleet.token",
      onUnreachable: "wait",
    });
    expect(parseConfig("report: {url: http://f/, token: abc}", "a").report?.onUnreachable).toBe(
      "go",
    );
    const err = (t: string) => {
      try {
        parseConfig(t, "agent.yaml");
      } catch (e) {
        return (e as Error).message;
      }
      return "";
    };
    expect(err("report: {url: http://f/}")).toMatch(
      /report\.token: is required: set token or tokenFile/,
    );
    expect(err("report: {url: http://f/, token: a, tokenFile: /t}")).toMatch(
      /report\.token: set one of token and tokenFile, not both/,
    );
    expect(err("report: {url: ftp://f/, token: a}")).toMatch(/report\.url/);
    expect(err("report: {url: http://f/, tokenFile: t}")).toMatch(
      /report\.tokenFile: "t" is not an absolute path/,
    );
    expect(err("report: {url: http://f/, token: a, onUnreachable: stop}")).toMatch(
      /report\.onUnreachable: "stop" is not "go" or "wait"/,
    );
    expect(err("report: {token: a}")).toMatch(/report\.url: is required/);
    expect(err("report: {url: http://f/, token: a, colour: red}")).toMatch(
      /report\.colour: unknown field/,
    );
  });
});

describe("reports", () => {
  it("reach a real fleet server; the token goes in the header and never into a log line", async () => {
    const server = await fleet();
    const r = new FleetReporter({
      config: cfg(server.url),
      http: gotFleetHttp,
      clock: new FakeClock(),
      log,
    });
    const t0 = Date.now();
    r.send(report(1, { event: "checked" }));
    r.send(report(1, { event: "download-started", target: "3.0.0", progressPercent: 0 }));
    expect(Date.now() - t0).toBeLessThan(50); // send never waits
    expect(await r.flush(5000)).toBe(true);
    expect(r.sent).toBe(2);
    const res = await fetch(new URL("/v1/hosts", server.url), {
      headers: { authorization: `Bearer ${OPERATOR}` },
    });
    const hosts = (await res.json()) as { hosts: { event: string; target: string }[] };
    expect(hosts.hosts).toHaveLength(1);
    expect(hosts.hosts[0]).toMatchObject({ event: "download-started", target: "3.0.0" });
    r.close();
    expect(lines.join("")).not.toContain(ENROLL);
  });

  it("an invalid report is dropped and logged before it is queued", () => {
    const r = new FleetReporter({
      config: cfg("http://127.0.0.1:9/"),
      http: gotFleetHttp,
      clock: new FakeClock(),
      log,
    });
    r.send(report(1, { event: "error" })); // error needs lastError and target
    expect(r.queued).toBe(0);
    expect(r.dropped).toBe(1);
    r.close();
  });

  it("a server answering 503, then 429, then 202: kept and retried with back-off on the clock; 400 is dropped", async () => {
    const clock = new FakeClock();
    const auths: (string | undefined)[] = [];
    const s = await scripted((n, auth) => {
      auths.push(auth);
      if (n < 2) return { status: 503 };
      if (n === 2) return { status: 429, headers: { "retry-after": "7" } };
      if (n === 3) return { status: 202, body: '{"accepted":true}' };
      return { status: 400, body: '{"error":{"code":"FLEET_BAD_REPORT"}}' };
    });
    const r = new FleetReporter({ config: cfg(s.url), http: gotFleetHttp, clock, log });
    r.send(report(2));
    await until("first failure sleeps", () => clock.sleeps.length === 1);
    expect(clock.sleeps).toEqual([1000]);
    clock.advance(1000);
    await until("second failure sleeps", () => clock.sleeps.length === 2);
    expect(clock.sleeps).toEqual([1000, 2000]);
    clock.advance(2000);
    await until("429 sleeps its Retry-After", () => clock.sleeps.length === 3);
    expect(clock.sleeps[2]).toBe(7000);
    expect(r.queued).toBe(1);
    clock.advance(7000);
    await until("accepted", () => r.sent === 1);
    expect(r.queued).toBe(0);
    r.send(report(2, { event: "marked-good" }));
    await until("400 dropped", () => r.dropped === 1);
    expect(r.queued).toBe(0);
    expect(s.requests).toBe(5);
    expect(new Set(auths)).toEqual(new Set([`Bearer ${ENROLL}`]));
    r.close();
    expect(lines.join("")).not.toContain(ENROLL);
  });

  it("a server that is down: a bounded queue, the oldest dropped and counted", async () => {
    const clock = new FakeClock();
    const s = await scripted(() => ({ status: 500 }));
    const r = new FleetReporter({
      config: cfg(s.url),
      http: gotFleetHttp,
      clock,
      log,
      capacity: 4,
    });
    for (let i = 0; i < 10; i++) r.send(report(3, { uptimeMs: i }));
    expect(r.queued).toBe(4);
    expect(r.dropped).toBe(6);
    // the back-off grows and stays bounded
    for (let i = 0; i < 9; i++) {
      await until(`failure ${i + 1}`, () => clock.sleeps.length === i + 1);
      clock.advance(clock.sleeps[i] as number);
    }
    expect(clock.sleeps).toEqual([1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000, 60000]);
    expect(r.queued).toBe(4);
    r.close();
    expect(r.dropped).toBe(10);
  });
});

describe("holds", () => {
  it("reads the fleet server's holds for the channel", async () => {
    const server = await fleet();
    const put = await fetch(new URL("/v1/holds/stable/3.0.0", server.url), {
      method: "PUT",
      headers: { authorization: `Bearer ${OPERATOR}`, "content-type": "application/json" },
      body: JSON.stringify({ reason: "breaks the NICs" }),
    });
    expect(put.status).toBe(201);
    const r = new FleetReporter({
      config: cfg(server.url),
      http: gotFleetHttp,
      clock: new FakeClock(),
      log,
    });
    const h = await r.holds("stable");
    expect(h).toMatchObject({
      ok: true,
      holds: [{ version: "3.0.0", reason: "breaks the NICs", by: "operator" }],
    });
    expect(await r.holds("beta")).toEqual({ ok: true, holds: [] });
    const wrong = new FleetReporter({
      config: cfg(server.url, { token: "wrong" }),
      http: gotFleetHttp,
      clock: new FakeClock(),
      log,
    });
    expect(await wrong.holds("stable")).toMatchObject({
      ok: false,
      why: expect.stringMatching(/answered 401/),
    });
    r.close();
    wrong.close();
  });

  it("an answer that is too large, invalid or for another channel says nothing", async () => {
    const big = await scripted(() => ({
      status: 200,
      body: `{"format":1,"channel":"stable","holds":[],"pad":"${"x".repeat(HOLDS_MAX_BYTES)}"}`,
    }));
    const r = new FleetReporter({
      config: cfg(big.url),
      http: gotFleetHttp,
      clock: new FakeClock(),
      log,
    });
    expect(await r.holds("stable")).toMatchObject({
      ok: false,
      why: expect.stringMatching(/larger than 65536 bytes/),
    });
    r.close();
    const enc = (o: unknown) => new TextEncoder().encode(JSON.stringify(o));
    expect(parseHolds(enc({ format: 1, channel: "beta", holds: [] }), "stable", "u")).toMatchObject(
      { ok: false },
    );
    expect(
      parseHolds(enc({ format: 2, channel: "stable", holds: [] }), "stable", "u"),
    ).toMatchObject({ ok: false });
    expect(
      parseHolds(
        enc({
          format: 1,
          channel: "stable",
          holds: [{ version: "latest", reason: "", by: "x", at: "t" }],
        }),
        "stable",
        "u",
      ),
    ).toMatchObject({ ok: false, why: "u: holds[0] is not {version (semver), reason, by, at}" });
    expect(parseHolds(new Uint8Array([0xff, 0xfe]), "stable", "u")).toMatchObject({ ok: false });
  });
});
