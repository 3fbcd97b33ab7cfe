// The etcd reboot lock, end to end (src/updater/README.md, "Reboot"; src/lock/README.md):
// real agent processes on image files standing for disks, a real etcd (Debian's, started
// here on 127.0.0.1), the reboot replaced by a command that leaves a mark and stops the
// agent — the host going down; the test starts it again — the host coming back.
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { RebootLock } from "../../../src/lock/index.ts";
import { logger } from "../../../src/log.ts";
import type { RepoServer } from "../../../src/repo/index.ts";
import { abforge, type RunningCli, startAbforge } from "../../helpers/cli.ts";
import { type EtcdCluster, startEtcd, startEtcdCluster } from "../../helpers/etcd.ts";
import { servedUpdateWorld, type UpdateWorld } from "../../helpers/fixtures.ts";
import { tempDir } from "../../helpers/tmp.ts";

let w: UpdateWorld;
let repo: RepoServer;
const clusters: EtcdCluster[] = [];
beforeAll(async () => {
  ({ w, repo } = await servedUpdateWorld(tempDir()));
}, 60_000);
afterAll(async () => {
  await repo?.close();
  for (const c of clusters) await c.stop();
});

type Line = Record<string, unknown>;
const msg = (l: Line) => String(l.msg);

/** Within `ms`, or a failure that says what was awaited (no test waits forever). */
function within<T>(ms: number, what: string, p: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`not within ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}

/** A host: an agent process on its own image file, with its own machine id. */
class Host {
  readonly id: string;
  readonly disk: string;
  readonly config: string;
  readonly marker: string;
  readonly #args: string[];
  run: RunningCli | undefined;
  /** Every run's log lines, in order. */
  readonly lines: Line[] = [];
  rebootedAt: number | null = null;
  releasedAt: number | null = null;

  constructor(id: string, disk: string, config: string, dir: string) {
    this.id = id;
    this.disk = disk;
    this.config = config;
    this.marker = join(dir, `rebooted-${id}`);
    // The reboot: a mark, then SIGTERM to the agent (the shell's parent): the host is down.
    const reboot = `date +%s%N > ${this.marker}; kill -TERM $PPID`;
    this.#args = ["agent", "run", "--disk", disk, "--config", config, "--reboot-command", reboot];
  }

  start(): RunningCli {
    const run = startAbforge(this.#args);
    run.child.stderr!.on("data", () => undefined);
    this.run = run;
    const watch = (l: Line) => {
      this.lines.push(l);
      if (msg(l).startsWith("rebooting into slot")) this.rebootedAt ??= Date.now();
      if (msg(l).startsWith("released the reboot lock")) this.releasedAt = Date.now();
      return false;
    };
    // never matches: it only watches, and ends (rejected) when the run does
    run.logLine(watch).catch(() => undefined);
    return run;
  }

  async stop(): Promise<void> {
    if (!this.run) return;
    this.run.child.kill("SIGTERM");
    await this.run.done;
  }

  said(text: string): boolean {
    return this.lines.some((l) => msg(l).includes(text));
  }

  count(text: string): number {
    return this.lines.filter((l) => msg(l).includes(text)).length;
  }
}

async function makeHosts(
  prefix: string,
  n: number,
  endpoints: string[],
  o: { lockTTL?: string } = {},
): Promise<Host[]> {
  const dir = tempDir();
  const hosts: Host[] = [];
  for (let i = 1; i <= n; i++) {
    const id = `${prefix}-${i}`;
    const disk = await w.freshDisk(id);
    const config = join(dir, `${id}.yaml`);
    writeFileSync(
      config,
      [
        `repoUrl: ${repo.url}`,
        "channel: stable",
        "pollIntervalMs: 800",
        "pollJitterMs: 100",
        "maxBackoffMs: 1600",
        `trustedKeys: [${w.key.publicKeyPath}]`,
        `compatible: ${w.compatible}`,
        `machineId: ${id}`,
        "reboot:",
        "  strategy: etcd-lock",
        "  etcd:",
        `    endpoints: [${endpoints.join(", ")}]`,
        `    lockTTL: ${o.lockTTL ?? "5m"}`,
      ].join("\n"),
    );
    hosts.push(new Host(id, disk.path, config, dir));
  }
  return hosts;
}

/** Polls `ok` every 50 ms for up to `ms`. */
async function until(ms: number, what: string, ok: () => boolean | Promise<boolean>) {
  const end = Date.now() + ms;
  while (!(await ok())) {
    if (Date.now() > end) throw new Error(`not within ${ms} ms: ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const lockFor = (endpoints: string[]) =>
  new RebootLock({
    endpoints,
    group: null,
    lockTTLMs: 300_000,
    timeoutMs: 2000,
    log: logger().child({ test: "lock" }),
  });

describe("agents and the etcd reboot lock", () => {
  it("five agents, max 2, a three-member cluster losing a member: never more than two hosts down, each gives its place back once marked good", async () => {
    const etcd = await startEtcdCluster(3);
    clusters.push(etcd);
    const set = await abforge(["lock", "set-max", "2", "--etcd", etcd.endpoints.join(",")]);
    expect(set.code, set.stderr).toBe(0);
    const hosts = await makeHosts("five", 5, etcd.endpoints);
    const lock = lockFor(etcd.endpoints);
    let maxHolders = 0;
    let maxDown = 0;
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        const s = await lock.status().catch(() => undefined);
        if (s) maxHolders = Math.max(maxHolders, s.semaphore.holders.length);
        const down = hosts.filter((h) => h.rebootedAt !== null && h.releasedAt === null).length;
        maxDown = Math.max(maxDown, down);
        await new Promise((r) => setTimeout(r, 25));
      }
    })();
    for (const h of hosts) h.start();
    // each host: goes down (its reboot command stops it), stays down a moment, comes back,
    // marks the new slot good and gives its place back
    let killedMember = false;
    await within(
      90_000,
      "every host rebooted and released",
      Promise.all(
        hosts.map(async (h) => {
          await h.run!.done;
          expect(existsSync(h.marker)).toBe(true);
          if (!killedMember) {
            killedMember = true;
            // the first endpoint of every agent's list goes away mid-run
            await etcd.members[0]!.kill();
          }
          await new Promise((r) => setTimeout(r, 700));
          h.start();
          await until(30_000, `${h.id} released the lock`, () => h.releasedAt !== null);
          await h.stop();
        }),
      ),
    );
    sampling = false;
    await sampler;
    expect(maxHolders).toBe(2);
    expect(maxDown).toBeLessThanOrEqual(2);
    for (const h of hosts) {
      expect(h.count("rebooting into slot B (2.0.0)")).toBe(1);
      expect(h.said("marked good") || h.said("marked slot B")).toBe(true);
    }
    // the three that waited said why
    expect(hosts.filter((h) => h.said("place(s) held")).length).toBeGreaterThanOrEqual(1);
    const after = await lock.status();
    expect(after.semaphore).toEqual({ semaphore: 2, max: 2, holders: [] });
  }, 150_000);

  it("a holder killed with kill -9 keeps its place until lockTTL, then another host removes it and reboots", async () => {
    const etcd = await startEtcd();
    clusters.push(etcd);
    const [a, b] = await makeHosts("stale", 2, etcd.endpoints, { lockTTL: "3s" });
    // a takes the place; its "reboot" is a hang, and it dies with kill -9 there
    const hang = startAbforge([
      ...["agent", "run", "--disk", a!.disk, "--config", a!.config],
      "--reboot-command",
      `sleep 120 & echo $! > ${a!.marker}; wait`,
    ]);
    await until(30_000, "stale-1 took the lock", () => existsSync(a!.marker));
    hang.child.kill("SIGKILL");
    await hang.done;
    // the hanging "reboot" goes too (bounded anyway)
    await until(5000, "the pid of the hang", () => readFileSync(a!.marker, "utf8").trim() !== "");
    process.kill(Number(readFileSync(a!.marker, "utf8")), "SIGKILL");
    const lock = lockFor(etcd.endpoints);
    expect((await lock.status()).semaphore.holders).toEqual(["stale-1"]);
    b!.start();
    await within(30_000, "stale-2 rebooted", b!.run!.done);
    expect(b!.said("removed stale holder stale-1")).toBe(true);
    b!.start();
    await until(30_000, "stale-2 released", () => b!.releasedAt !== null);
    await b!.stop();
    expect((await lock.status()).semaphore.holders).toEqual([]);
  }, 90_000);

  it("etcd stopped mid-run: nobody reboots without the lock, a release waits; etcd back: all goes on", async () => {
    const etcd = await startEtcd();
    clusters.push(etcd);
    const [first, second] = await makeHosts("down", 2, etcd.endpoints);
    first!.start();
    await within(30_000, "down-1 rebooted", first!.run!.done);
    await etcd.members[0]!.stop();
    first!.start(); // back up, cannot give its place back
    second!.start(); // installs, cannot take a place
    await until(
      40_000,
      "both said why they wait",
      () =>
        first!.said("cannot release the reboot lock yet") &&
        second!.count("never rebooting without it") >= 2,
    );
    expect(existsSync(second!.marker)).toBe(false);
    expect(second!.rebootedAt).toBeNull();
    const status = await abforge(["agent", "status", "--json", ...statusArgs(second!)]);
    expect(JSON.parse(status.stdout).rebootWait).toMatchObject({ for: "lock" });
    await etcd.members[0]!.start();
    await until(30_000, "down-1 released", () => first!.releasedAt !== null);
    await within(30_000, "down-2 rebooted", second!.run!.done);
    await first!.stop();
    second!.start();
    await until(30_000, "down-2 released", () => second!.releasedAt !== null);
    await second!.stop();
    expect((await lockFor(etcd.endpoints).status()).semaphore.holders).toEqual([]);
  }, 150_000);
});

/** `agent status` of a host's image, with its config. */
function statusArgs(h: Host): string[] {
  return ["--disk", h.disk, "--config", h.config];
}
