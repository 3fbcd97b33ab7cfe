/**
 * The container host (images/host.yaml), measured in one run and printed as
 * a table: `node bench/host/run.ts [--mem-mb 1024] [--keep]` (as root: the
 * build runs debootstrap; about 10 minutes on 2 busy CPUs).
 *
 * 1. Build host 1.0.0 (`--format raw,qcow2 --json`) with ABFORGE_CACHE an
 *    empty directory: cold, debootstrap and the kernel download included;
 *    then again with the same cache: cached. Wall time of the CLI and the
 *    report's `totalMs` and rootfs step, both builds.
 * 2. Sizes from the cold build's report: squashfs, slot image (verity tree
 *    included), bundle, disk.img and disk.qcow2 (apparent and allocated).
 * 3. Publish that 1.0.0 on channel stable and serve the repository on
 *    127.0.0.1, so the host's timer checks find it up to date. Boot the
 *    qcow2, grown to 4 GiB, with a cloud-config (user ops, an SSH key, a
 *    web.service unit, qemu/host.ts) and time, from QEMU's start: the boot
 *    banner on the console, SSH answering (tries every second), the slot
 *    marked good (`systemctl is-active abforge-mark-good.service`, polled
 *    every second). The guest's own view, `systemd-analyze` and mark-good's
 *    ActiveEnterTimestampMonotonic, is printed beside.
 * 4. Memory in use, MemTotal − MemAvailable from /proc/meminfo (median of 3
 *    samples 5 s apart, after `systemctl is-system-running --wait` and
 *    `cloud-init status --wait`): with no container, then with the busybox
 *    httpd container (qemu/oci.ts) running as web.service and answering on
 *    the forwarded port. CoreOS Container Linux's figure, 114 MB of base
 *    RAM, is printed beside as a comparison, not a target: this host runs
 *    systemd, journald, udev, dbus, resolved, networkd, sshd and cloud-init's
 *    once-per-boot services.
 * 5. The agent between checks (update.mode: timer): with
 *    abforge-update.service inactive before and after, the processes whose
 *    command line contains /usr/lib/abforge and the sum of their RSS (0: no
 *    agent lives between checks), with the timer's last result and next run.
 *
 * The load average (`uptime`) is printed at the start and the end. Exit 0
 * when it ran: this bench reports, it has no threshold.
 */
import { execFile, execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from "node:fs";
import { cpus, tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs, promisify } from "node:util";
import { BANNER, publishBundle, serveRepo } from "../../qemu/fleet.ts";
import { HostShell, HTTPD_PORT, hostUserData, webPage } from "../../qemu/host.ts";
import { freePort } from "../../qemu/net.ts";
import { sshKeyPair } from "../../qemu/ssh.ts";
import { Vm } from "../../qemu/vm.ts";

interface Report {
  slotImage: { size: number };
  bundle: { file: string; size: number };
  disk: { file: string; size: number };
  outputs: { format: string; file: string; bytes: number }[];
  steps: { name: string; ms: number; bytes: number }[];
  totalMs: number;
}

const { values } = parseArgs({
  options: {
    "mem-mb": { type: "string", default: "1024" },
    keep: { type: "boolean", default: false },
  },
});
const ROOT = fileURLToPath(new URL("../..", import.meta.url));
const abforgeBin = join(ROOT, "bin/abforge");
const SPEC = join(ROOT, "images/host.yaml");
const BOOT_MS = 900_000;
const COREOS_BASE_MB = 114;
const MiB = 1024 * 1024;
const execFileP = promisify(execFile);
const say = (s: string) => process.stdout.write(`${s}\n`);
const uptime = () => execFileSync("uptime", { encoding: "utf8" }).trim();
const sec = (ms: number) => `${(ms / 1000).toFixed(1)} s`;
const mib = (b: number) => `${(b / MiB).toFixed(1)} MiB`;
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function abforge(args: string[], env: NodeJS.ProcessEnv = {}) {
  const t = performance.now();
  const { stdout } = await execFileP(abforgeBin, args, {
    env: { ...process.env, ABFORGE_LOG_FORMAT: "json", ABFORGE_LOG_LEVEL: "warn", ...env },
    maxBuffer: 64 * MiB,
  });
  return { stdout, wallMs: performance.now() - t };
}

async function buildHost(out: string, key: string, cache: string) {
  const { stdout, wallMs } = await abforge(
    [
      "build",
      SPEC,
      "--out",
      out,
      "--key",
      key,
      "--version",
      "1.0.0",
      "--format",
      "raw,qcow2",
      "--json",
    ],
    { ABFORGE_CACHE: cache },
  );
  return { report: JSON.parse(stdout) as Report, wallMs };
}

const allocated = (path: string) => statSync(path).blocks * 512;

/** MemTotal − MemAvailable on the host, in bytes: the median of 3 samples 5 s apart. */
async function memoryInUse(host: HostShell): Promise<{ used: number; total: number }> {
  const samples: { used: number; total: number }[] = [];
  for (let i = 0; i < 3; i++) {
    if (i > 0) await sleep(5000);
    const info = await host.on("cat /proc/meminfo");
    const kb = (f: string) => Number(new RegExp(`^${f}:\\s+(\\d+) kB`, "m").exec(info)?.[1]) * 1024;
    samples.push({ used: kb("MemTotal") - kb("MemAvailable"), total: kb("MemTotal") });
  }
  const used = median(samples.map((s) => s.used));
  return { used, total: samples[0]!.total };
}

/** Processes whose command line contains /usr/lib/abforge, while no update check runs. */
async function agentBetweenChecks(host: HostShell) {
  // a oneshot check is "activating" while it runs
  const inactive = async () =>
    ["inactive", "failed"].includes(
      (await host.on("systemctl is-active abforge-update.service || true")).trim(),
    );
  for (let i = 0; ; i++) {
    if (!(await inactive())) {
      if (i >= 60) throw new Error("abforge-update.service never went inactive in 5 minutes");
      await sleep(5000);
      continue;
    }
    const ps = await host.on("ps -eo pid=,rss=,args=");
    if (!(await inactive())) continue;
    const procs = ps
      .split("\n")
      .filter((l) => l.includes("/usr/lib/abforge"))
      .map((l) => {
        const [pid, rss, ...args] = l.trim().split(/\s+/);
        return { pid: Number(pid), rssKb: Number(rss), args: args.join(" ") };
      });
    return { procs, rssBytes: procs.reduce((a, p) => a + p.rssKb * 1024, 0) };
  }
}

const dir = mkdtempSync(join(tmpdir(), "abforge-bench-host-"));
let vm: Vm | undefined;
let server: Awaited<ReturnType<typeof serveRepo>> | undefined;
try {
  const startLoad = uptime();
  say(`host benchmark: ${cpus().length} CPUs (${cpus()[0]?.model ?? "?"}); at start: ${startLoad}`);
  const keyDir = join(dir, "keys");
  await abforge(["keygen", "--out", keyDir]);
  const key = join(keyDir, "signing.key");

  const cache = join(dir, "cache");
  mkdirSync(cache);
  say(
    `cold build of ${SPEC} (ABFORGE_CACHE=${cache}, empty: debootstrap and the kernel download run) ...`,
  );
  const cold = await buildHost(join(dir, "cold"), key, cache);
  say(`  ${sec(cold.wallMs)}; cached build with the same cache ...`);
  const warm = await buildHost(join(dir, "warm"), key, cache);
  say(`  ${sec(warm.wallMs)}`);
  rmSync(join(dir, "warm"), { recursive: true, force: true });
  const r = cold.report;
  const out = join(dir, "cold");
  const rootfsMs = (rep: Report) => rep.steps.find((s) => s.name === "rootfs")?.ms ?? 0;
  const squashfs = r.steps.find((s) => s.name === "squashfs")?.bytes ?? 0;
  const qcow2 = r.outputs.find((o) => o.format === "qcow2");
  if (!qcow2) throw new Error("the build made no qcow2");

  const repoDir = join(dir, "repo");
  mkdirSync(repoDir);
  await publishBundle(repoDir, join(out, r.bundle.file), key);
  server = await serveRepo(repoDir);

  const disk = join(dir, "disk.qcow2");
  execFileSync("cp", ["--sparse=always", join(out, qcow2.file), disk]);
  execFileSync("qemu-img", ["resize", "-q", disk, "4G"]);
  const pair = await sshKeyPair(dir, "abforge-bench");
  const userData = join(dir, "user-data");
  writeFileSync(userData, hostUserData({ hostname: "bench-host", publicKey: pair.publicKey }));
  const sshPort = await freePort();
  const webPort = await freePort();
  const memMb = Number(values["mem-mb"]);
  say(`booting the qcow2 (grown to 4 GiB) with ${memMb} MiB of RAM under TCG ...`);
  const t0 = performance.now();
  vm = await Vm.start({
    disk,
    userData,
    sshPort,
    memMb,
    hostForwards: [{ hostPort: webPort, guestPort: HTTPD_PORT }],
    serialLog: join(dir, "serial.log"),
    forward: { guestAddress: "10.0.2.100", guestPort: 80, hostPort: server.port },
  });
  await vm.waitFor(BANNER, { timeoutMs: BOOT_MS });
  const tBanner = performance.now() - t0;
  const host = new HostShell(sshPort, pair.privateKey);
  await host.up(BOOT_MS, 1000);
  const tSsh = performance.now() - t0;
  await host.markedGood(BOOT_MS, 1);
  const tGood = performance.now() - t0;
  say(`  banner ${sec(tBanner)}, SSH ${sec(tSsh)}, marked good ${sec(tGood)}`);
  const guestGoodUs = Number(
    /=(\d+)/.exec(
      await host.on("systemctl show -p ActiveEnterTimestampMonotonic abforge-mark-good.service"),
    )?.[1],
  );

  await host.on("timeout 300 systemctl is-system-running --wait >/dev/null || true", 330_000);
  await host.on("sudo timeout 300 cloud-init status --wait >/dev/null || true", 330_000);
  const analyze = (await host.on("systemd-analyze 2>&1 | head -1 || true")).trim();
  const state = (await host.on("systemctl is-system-running || true")).trim();
  const memBase = await memoryInUse(host);
  const agent = await agentBetweenChecks(host);
  const lastCheck = (
    await host.on(
      "systemctl show -p Result -p ExecMainStatus -p ExecMainExitTimestamp abforge-update.service",
    )
  )
    .trim()
    .replace(/\n/g, ", ");
  const nextCheck = (
    await host.on("systemctl list-timers abforge-update.timer --no-legend --no-pager")
  ).trim();

  await host.runHttpd(dir, "bench page");
  const page = await webPage(webPort);
  if (page !== "bench page\n") throw new Error(`the container answered ${JSON.stringify(page)}`);
  await sleep(10_000);
  const memWeb = await memoryInUse(host);
  const podman = (
    await host.on("sudo podman ps --format '{{.Names}} {{.Image}} {{.Status}}'")
  ).trim();

  const mb = (b: number) => `${(b / 1e6).toFixed(0)} MB (${mib(b)})`;
  const rows: [string, string][] = [
    ["load average at start", startLoad.replace(/.*load average: /, "")],
    [
      "build, cold (empty cache: debootstrap, kernel download)",
      `${sec(cold.wallMs)} (totalMs ${sec(r.totalMs)}, rootfs step ${sec(rootfsMs(r))})`,
    ],
    [
      "build, cached (same cache)",
      `${sec(warm.wallMs)} (totalMs ${sec(warm.report.totalMs)}, rootfs step ${sec(rootfsMs(warm.report))})`,
    ],
    ["squashfs (gzip)", mib(squashfs)],
    ["slot image (squashfs + verity tree)", mib(r.slotImage.size)],
    ["bundle", mib(r.bundle.size)],
    [
      "disk.img (raw)",
      `${mib(r.disk.size)} apparent, ${mib(allocated(join(out, r.disk.file)))} allocated`,
    ],
    [
      "disk.qcow2",
      `${mib(qcow2.bytes)} file, ${mib(allocated(join(out, qcow2.file)))} allocated; booted grown to 4 GiB`,
    ],
    ["boot: QEMU start → banner (slot, version) on the console", sec(tBanner)],
    ["boot: QEMU start → SSH answers (user ops, cloud-init's key)", sec(tSsh)],
    ["boot: QEMU start → slot marked good (abforge-mark-good active)", sec(tGood)],
    [
      "boot, the guest's view",
      `${analyze}; mark-good active ${(guestGoodUs / 1e6).toFixed(1)} s after the kernel started`,
    ],
    [
      `memory in use (MemTotal − MemAvailable), no container; MemTotal ${mib(memBase.total)}`,
      `${mb(memBase.used)}; system ${state}`,
    ],
    ["  CoreOS Container Linux base RAM (comparison, not a target)", `${COREOS_BASE_MB} MB`],
    ["memory in use, busybox httpd container running (web.service)", mb(memWeb.used)],
    ["  the container's cost", mb(memWeb.used - memBase.used)],
    [
      "agent between checks: processes with /usr/lib/abforge in their command line",
      agent.procs.length === 0
        ? "none"
        : agent.procs.map((p) => `${p.pid} ${p.rssKb} kB ${p.args}`).join("; "),
    ],
    ["  their RSS, summed", `${(agent.rssBytes / 1024).toFixed(0)} kB`],
    ["  the last check (abforge-update.service)", lastCheck],
    ["  the next check (abforge-update.timer)", nextCheck.replace(/\s+/g, " ")],
    ["  the container", podman],
  ];
  const w = Math.max(...rows.map(([k]) => k.length));
  say("");
  say(`| ${"".padEnd(w)} | host 1.0.0 |`);
  say(`| ${"-".repeat(w)} | ---------- |`);
  for (const [k, v] of rows) say(`| ${k.padEnd(w)} | ${v} |`);
  say("");
  say(
    `memory: ${memBase.used / 1e6 < COREOS_BASE_MB ? "below" : "above"} CoreOS's ${COREOS_BASE_MB} MB base figure without a container (a comparison: this host runs systemd, udev, dbus, journald, resolved, networkd, sshd and cloud-init)`,
  );
  say(`at end: ${uptime()}`);
} finally {
  await vm?.powerOff();
  server?.stop();
  if (values.keep) say(`kept ${dir}`);
  else rmSync(dir, { recursive: true, force: true });
}
