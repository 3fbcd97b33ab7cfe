/**
 * bench/fleet: the fleet server under load, on SQLite and PostgreSQL, in one
 * run (bench/README.md, "Fleet"). Loopback only, bounded in time.
 *
 * 1. `abforge fleet init` and `abforge fleet serve` (a separate process, logs
 *    at warn) on a temporary SQLite file, then on a PostgreSQL started here.
 * 2. `--concurrency` simulated hosts' connections post reports (each host
 *    walks checked → download-started → download-finished → installed →
 *    rebooting → marked-good) for `--seconds`: reports/s, p50 and p99.
 * 3. The database is filled to `--summary-hosts` hosts (one SQL statement;
 *    a tenth with a rollback in their timeline, some silent) and
 *    `GET /v1/summary` is timed through the API, best and median of 5.
 *
 * Targets: ≥ 2,000 reports/s on SQLite; summary < 100 ms at 100,000 hosts.
 */
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { Agent, request } from "node:http";
import { cpus, loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { openSql, parseDbUrl, type Sql } from "../../src/fleet/db.ts";
import type { Report, ReportEvent } from "../../src/fleet/report.ts";
import { abforge, startAbforge } from "../../test/helpers/cli.ts";
import { startPostgres } from "../../test/helpers/postgres.ts";

const { values: args } = parseArgs({
  options: {
    seconds: { type: "string", default: "8" },
    concurrency: { type: "string", default: "32" },
    hosts: { type: "string", default: "5000" },
    "summary-hosts": { type: "string", default: "100000" },
  },
});
const SECONDS = Number(args.seconds);
const CONCURRENCY = Number(args.concurrency);
const HOSTS = Number(args.hosts);
const SUMMARY_HOSTS = Number(args["summary-hosts"]);

const STEPS: ReportEvent[] = [
  "checked",
  "download-started",
  "download-finished",
  "installed",
  "rebooting",
  "marked-good",
];

function reportOf(host: number, step: number): Report {
  const event = STEPS[step % STEPS.length] ?? "checked";
  const done = event === "marked-good";
  return {
    format: 1,
    machineId: host.toString(16).padStart(32, "0"),
    hostname: `bench-${host}`,
    channel: host % 10 === 0 ? "beta" : "stable",
    seed: host % 2048,
    running: { slot: done ? "B" : "A", version: done ? "3.0.0" : "2.0.0" },
    other: { slot: done ? "A" : "B", version: "", state: "empty" },
    event,
    ...(event === "checked" || done ? {} : { target: "3.0.0", progressPercent: 50 }),
    bootId: "0b8f1c2e-3d4a-4b5c-8d6e-7f8091a2b3c4",
    uptimeMs: 1000 * step,
    agentVersion: "0.1.0",
    pollIntervalMs: 60_000,
    time: new Date().toISOString(),
  };
}

function post(agent: Agent, url: URL, token: string, body: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = request(
      url,
      {
        method: "POST",
        agent,
        headers: {
          Authorization: `Bearer ${token}`,
          "Content-Type": "application/json",
          "Content-Length": Buffer.byteLength(body),
        },
      },
      (res) => {
        res.resume();
        res.on("end", () => resolve(res.statusCode ?? 0));
      },
    );
    req.on("error", reject);
    req.end(body);
  });
}

function quantile(sorted: number[], q: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? Number.NaN;
}

async function load(base: string, token: string) {
  const agent = new Agent({ keepAlive: true, maxSockets: CONCURRENCY });
  const url = new URL("/v1/reports", base);
  const latencies: number[] = [];
  const statuses = new Map<number, number>();
  const end = performance.now() + SECONDS * 1000;
  let next = 0;
  const step = new Map<number, number>();
  const worker = async () => {
    while (performance.now() < end) {
      const host = next++ % HOSTS;
      const s = step.get(host) ?? 0;
      step.set(host, s + 1);
      const body = JSON.stringify(reportOf(host, s));
      const t = performance.now();
      const status = await post(agent, url, token, body);
      latencies.push(performance.now() - t);
      statuses.set(status, (statuses.get(status) ?? 0) + 1);
    }
  };
  const started = performance.now();
  await Promise.all(Array.from({ length: CONCURRENCY }, worker));
  const elapsed = (performance.now() - started) / 1000;
  agent.destroy();
  latencies.sort((a, b) => a - b);
  return {
    accepted: statuses.get(202) ?? 0,
    statuses: Object.fromEntries(statuses),
    perSecond: (statuses.get(202) ?? 0) / elapsed,
    p50: quantile(latencies, 0.5),
    p99: quantile(latencies, 0.99),
  };
}

/** Fill the database to `n` hosts in one statement per table (the bench's own SQL). */
async function populate(sql: Sql, n: number): Promise<void> {
  const now = Date.now();
  const series =
    sql.dialect === "postgres"
      ? `SELECT g AS i FROM generate_series(1, ${n}) AS g`
      : `WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < ${n}) SELECT i FROM s`;
  const hex =
    sql.dialect === "postgres"
      ? "lpad(to_hex(1000000 + i), 32, '0')"
      : "printf('%032x', 1000000 + i)";
  const text = sql.dialect === "postgres" ? "CAST(i AS TEXT)" : "CAST(i AS TEXT)";
  await sql.run(
    `INSERT INTO hosts (machine_id, hostname, channel, seed, running_slot, version, other_version, other_state,
       event, target, progress_percent, reason, error_code, error_message, boot_id, uptime_ms, agent_version,
       poll_interval_ms, reported_at, received_at, state_since, first_seen, silent_at, slow_at, event_count)
     SELECT ${hex}, 'pop-' || ${text}, CASE WHEN i % 10 = 0 THEN 'beta' ELSE 'stable' END, i % 2048, 'A',
       CASE WHEN i % 3 = 0 THEN '3.0.0' ELSE '2.0.0' END, '', 'empty',
       CASE WHEN i % 10 = 1 THEN 'rollback' ELSE 'checked' END, NULL, NULL, NULL,
       CASE WHEN i % 50 = 0 THEN 'REPO_STALLED' ELSE NULL END, CASE WHEN i % 50 = 0 THEN 'no byte for 60 s' ELSE NULL END,
       '0b8f1c2e-3d4a-4b5c-8d6e-7f8091a2b3c4', 1000, '0.1.0', 60000, '2026-01-01T00:00:00Z',
       CASE WHEN i % 100 = 0 THEN ${now - 86_400_000} ELSE ${now} END, ${now}, ${now},
       CASE WHEN i % 100 = 0 THEN ${now - 86_400_000 + 180_000} ELSE ${now + 180_000} END, NULL, 1
     FROM (${series}) AS s`,
  );
  await sql.run(
    `INSERT INTO events (machine_id, received_at, reported_at, event, version, target, reason)
     SELECT ${hex}, ${now}, '2026-01-01T00:00:00Z', CASE WHEN i % 10 = 1 THEN 'rollback' ELSE 'checked' END,
       '2.0.0', '3.0.0', 'health check failed' FROM (${series}) AS s`,
  );
  await sql.run(
    `INSERT INTO version_changes (channel, version, at, delta)
     SELECT CASE WHEN i % 10 = 0 THEN 'beta' ELSE 'stable' END, CASE WHEN i % 3 = 0 THEN '3.0.0' ELSE '2.0.0' END,
       ${now} - i * 10, 1 FROM (${series}) AS s`,
  );
  if (sql.dialect === "postgres") await sql.run("ANALYZE");
  else await sql.run("ANALYZE");
}

async function summaryTimes(
  base: string,
  token: string,
): Promise<{ best: number; median: number; hosts: number }> {
  const times: number[] = [];
  let hosts = 0;
  for (let k = 0; k < 6; k++) {
    const t = performance.now();
    const res = await fetch(new URL("/v1/summary", base), {
      headers: { Authorization: `Bearer ${token}` },
    });
    const body = (await res.json()) as { hosts: number };
    if (k > 0) times.push(performance.now() - t); // the first warms the caches
    hosts = body.hosts;
  }
  times.sort((a, b) => a - b);
  return { best: times[0] ?? Number.NaN, median: quantile(times, 0.5), hosts };
}

async function run(name: string, db: string, dir: string) {
  const server = startAbforge(
    ["fleet", "serve", "--dir", dir, "--db", db, "--port", "0", "--json"],
    {
      env: { ABFORGE_LOG_LEVEL: "warn" },
    },
  );
  let out = "";
  server.child.stdout?.on("data", (d) => {
    out += d;
  });
  for (let k = 0; k < 200 && !out.includes("}"); k++) await new Promise((r) => setTimeout(r, 50));
  const base = (JSON.parse(out) as { url: string }).url;
  const enroll = readFileSync(join(dir, "enroll.token"), "utf8").trim();
  const operator = readFileSync(join(dir, "operator.token"), "utf8").trim();
  try {
    const l = await load(base, enroll);
    const sql = await openSql(parseDbUrl(db));
    const t = performance.now();
    await populate(sql, SUMMARY_HOSTS);
    const populateS = (performance.now() - t) / 1000;
    await sql.close();
    const s = await summaryTimes(base, operator);
    return { name, ...l, populateS, summary: s };
  } finally {
    server.child.kill("SIGTERM");
    await server.done;
  }
}

const root = mkdtempSync(join(tmpdir(), "abforge-bench-fleet-"));
const pg = await startPostgres();
try {
  console.log(
    `fleet bench: ${cpus().length} CPUs, load average ${loadavg()
      .map((x) => x.toFixed(2))
      .join(" ")}`,
  );
  console.log(
    `${CONCURRENCY} connections, ${HOSTS} simulated hosts, ${SECONDS} s each; summary at ${SUMMARY_HOSTS} hosts`,
  );
  const results = [];
  for (const [name, db] of [
    ["sqlite", `sqlite:${join(root, "sqlite", "fleet.db")}`],
    ["postgres", pg.url],
  ] as const) {
    const dir = join(root, name);
    const init = await abforge(["fleet", "init", "--dir", dir]);
    if (init.code !== 0) throw new Error(init.stderr);
    const r = await run(name, db, dir);
    results.push(r);
    console.log(
      `${name.padEnd(9)} ${r.perSecond.toFixed(0).padStart(6)} reports/s  p50 ${r.p50.toFixed(1)} ms  p99 ${r.p99.toFixed(1)} ms  statuses ${JSON.stringify(r.statuses)}`,
    );
    console.log(
      `${"".padEnd(9)} summary at ${r.summary.hosts} hosts: best ${r.summary.best.toFixed(1)} ms, median ${r.summary.median.toFixed(1)} ms (filled in ${r.populateS.toFixed(1)} s)`,
    );
  }
  console.log(
    `load average after: ${loadavg()
      .map((x) => x.toFixed(2))
      .join(" ")}`,
  );
  const sqlite = results[0];
  const misses = [
    ...(sqlite && sqlite.perSecond < 2000
      ? [`SQLite ${sqlite.perSecond.toFixed(0)} reports/s < 2000`]
      : []),
    ...results
      .filter((r) => r.summary.median >= 100)
      .map((r) => `${r.name} summary ${r.summary.median.toFixed(0)} ms ≥ 100`),
  ];
  if (misses.length > 0) {
    console.log(`target missed: ${misses.join("; ")}`);
    process.exitCode = 1;
  } else console.log("targets met");
} finally {
  await pg.stop();
  rmSync(root, { recursive: true, force: true });
}
