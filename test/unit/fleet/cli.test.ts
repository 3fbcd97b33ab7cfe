/**
 * The commands as an operator runs them: `fleet init`, and two `fleet serve`
 * processes on one PostgreSQL (README.md, "Storage"): a report to either
 * shows in both, a pause through one holds in the other; `status`, `hosts`,
 * `pause`, `resume` with --json.
 */
import { readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { abforge, type RunningCli, startAbforge } from "../../helpers/cli.ts";
import { type Postgres, startPostgres } from "../../helpers/postgres.ts";
import { tempDir } from "../../helpers/tmp.ts";
import { machineId, report, rolledBack } from "./fixtures.ts";

describe("fleet init", () => {
  it("writes two random tokens of mode 0600 and refuses to overwrite them", async () => {
    const dir = join(tempDir("abforge-fleet-"), "fleet");
    const r = await abforge(["fleet", "init", "--dir", dir, "--json"]);
    expect(r.code).toBe(0);
    const files = ["operator.token", "enroll.token"].map((f) => join(dir, f));
    expect(JSON.parse(r.stdout)).toEqual({
      dir,
      operatorTokenFile: files[0],
      enrollTokenFile: files[1],
    });
    const tokens = files.map((f) => readFileSync(f, "utf8").trim());
    for (const f of files) expect(statSync(f).mode & 0o777).toBe(0o600);
    expect(tokens[0]).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect(tokens[0]).not.toBe(tokens[1]);
    const again = await abforge(["fleet", "init", "--dir", dir, "--json"]);
    expect(again.code).toBe(101);
    expect(JSON.parse(again.stdout).error.code).toBe("FLEET_TOKEN_EXISTS");
    expect(files.map((f) => readFileSync(f, "utf8").trim())).toEqual(tokens);
  });
});

describe("two fleet servers on one PostgreSQL", () => {
  let pg: Postgres;
  let dir: string;
  const servers: RunningCli[] = [];
  const urls: string[] = [];
  let enroll: string;
  beforeAll(async () => {
    pg = await startPostgres();
    dir = join(tempDir("abforge-fleet-"), "fleet");
    expect((await abforge(["fleet", "init", "--dir", dir])).code).toBe(0);
    enroll = readFileSync(join(dir, "enroll.token"), "utf8").trim();
    for (let k = 0; k < 2; k++) {
      const s = startAbforge([
        "fleet",
        "serve",
        "--dir",
        dir,
        "--db",
        pg.url,
        "--port",
        "0",
        "--halt-after",
        "2",
      ]);
      servers.push(s);
    }
    for (const s of servers) {
      const line = await s.logLine((l) => typeof l.url === "string" && l.module === "fleet");
      urls.push(String(line.url));
    }
  });
  afterAll(async () => {
    for (const s of servers) {
      s.child.kill("SIGTERM");
      await s.done;
    }
    await pg?.stop();
  });

  const op = (args: string[], server: string) =>
    abforge([
      "fleet",
      ...args,
      "--server",
      server,
      "--token-file",
      join(dir, "operator.token"),
      "--json",
    ]);
  const post = (url: string, body: object) =>
    fetch(new URL("/v1/reports", url), {
      method: "POST",
      headers: { Authorization: `Bearer ${enroll}`, "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });

  it("a report to either server shows in both", async () => {
    const [a = "", b = ""] = urls;
    expect(a).not.toBe(b);
    expect((await post(a, report(1, { hostname: "left" }))).status).toBe(202);
    expect(
      (await post(b, report(2, { hostname: "right", running: { slot: "A", version: "2.1.0" } })))
        .status,
    ).toBe(202);
    for (const url of urls) {
      const r = await op(["hosts"], url);
      expect(r.code).toBe(0);
      expect(JSON.parse(r.stdout).hosts.map((h: { hostname: string }) => h.hostname)).toEqual([
        "left",
        "right",
      ]);
    }
    const v = await op(["hosts", "--version", "2.1.0"], a);
    expect(JSON.parse(v.stdout).hosts.map((h: { machineId: string }) => h.machineId)).toEqual([
      machineId(2),
    ]);
  });

  it("halts across both (failures counted in the shared database) and resumes through the other", async () => {
    const [a = "", b = ""] = urls;
    const [r3 = [], r4 = []] = [
      rolledBack(3, "3.0.0", "health check nginx failed"),
      rolledBack(4, "3.0.0", "kernel panic"),
    ];
    for (const r of r3) await post(a, r);
    for (const r of r4) await post(b, r);
    const s = await op(["status"], a);
    const summary = JSON.parse(s.stdout);
    expect(
      summary.holds.map((h: { version: string; reason: string }) => [h.version, h.reason]),
    ).toEqual([
      [
        "3.0.0",
        "halted: 2 of 2 hosts that tried 3.0.0 rolled back: host-03: health check nginx failed; host-04: kernel panic",
      ],
    ]);
    const text = await abforge([
      "fleet",
      "status",
      "--server",
      b,
      "--token-file",
      join(dir, "operator.token"),
    ]);
    expect(text.stdout).toContain("stable 3.0.0 (auto");
    expect((await op(["resume", "stable", "3.0.0"], b)).code).toBe(0);
    expect((await op(["resume", "stable", "3.0.0"], a)).code).toBe(109);
    const p = await op(["pause", "stable", "3.0.1", "--reason", "wait for 3.0.2"], b);
    expect(JSON.parse(p.stdout).hold.reason).toBe("wait for 3.0.2");
    const holds = await fetch(new URL("/v1/holds/stable", a), {
      headers: { Authorization: `Bearer ${enroll}` },
    });
    expect(
      ((await holds.json()) as { holds: { version: string }[] }).holds.map((h) => h.version),
    ).toEqual(["3.0.1"]);
  });

  it("says what is wrong with a bad token or server", async () => {
    const bad = await abforge([
      "fleet",
      "status",
      "--server",
      urls[0] ?? "",
      "--token-file",
      join(dir, "enroll.token"),
      "--json",
    ]);
    expect(bad.code).toBe(108);
    expect(JSON.parse(bad.stdout).error.code).toBe("FLEET_UNAUTHORIZED");
    const down = await abforge([
      "fleet",
      "status",
      "--server",
      "http://127.0.0.1:1/",
      "--token-file",
      join(dir, "operator.token"),
    ]);
    expect(down.code).toBe(107);
    expect(down.stderr).toMatch(/^abforge: GET http:\/\/127\.0\.0\.1:1\/v1\/summary: /);
  });
});
