/**
 * The container host (images/host.yaml) under QEMU, one machine through its
 * life: first boot from the qcow2 disk, grown to 4 GiB, provisioned by
 * cloud-init from a NoCloud seed; SSH with the provisioned key; a container
 * from an OCI archive the test made, run as a systemd unit with its data on
 * a volume under /var; the update to 2.0.0 through the repository and the
 * timer, cut once by a power loss in the middle of the slot write; after it
 * the same container, the same data, no second provisioning and the /etc
 * policy; then 3.0.0, whose health check fails, rolled back to 2.0.0 and
 * never retried, the container running on.
 */
import { execFileSync } from "node:child_process";
import { copyFileSync, existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { publishBundle, type ServedRepo, serveRepo } from "../../qemu/fleet.ts";
import { HTTPD_PORT, hostUserData } from "../../qemu/host.ts";
import { Vm } from "../../qemu/vm.ts";
import { BootDisk, nextBootSlot } from "../../src/bootloader/index.ts";
import { STATE_DIR } from "../../src/image/index.ts";
import { STATE_FILE_NAME } from "../../src/updater/state-file.ts";
import { freePort } from "../helpers/net.ts";
import { ociArchive } from "../helpers/oci.ts";
import { copyTo, type SshResult, ssh, sshKeyPair, waitForSsh } from "../helpers/ssh.ts";
import { tempDir } from "../helpers/tmp.ts";
import { image, SIGNING_KEY, waitForImage } from "./fixtures.ts";
import { banner, bootState } from "./scenarios.ts";

const BOOT_MS = 600_000;
const WEB_PORT = HTTPD_PORT;
const RESULTS = fileURLToPath(new URL("../../test-results/", import.meta.url));
const dir = tempDir("abforge-host-test-");
const disk = join(dir, "disk.qcow2");
const repoDir = join(dir, "repo");

let vm: Vm | undefined;
let server: ServedRepo | undefined;
let key: string;
let sshPort: number;
let webPort: number;

/** A command on the guest as the provisioned user; fails the test when it fails. */
async function on(command: string, timeoutMs = 120_000): Promise<string> {
  const r: SshResult = await ssh(sshPort, key, "ops", command, { timeoutMs });
  expect(r.code, `${command}\n${r.stdout}${r.stderr}`).toBe(0);
  return r.stdout;
}

/** Wait (up to `polls` times 2 s) until abforge-mark-good.service is active: the boot is confirmed. */
async function markedGood(polls: number, timeoutMs: number): Promise<void> {
  await on(
    `for i in $(seq 1 ${polls}); do systemctl is-active -q abforge-mark-good.service && exit 0; sleep 2; done; exit 1`,
    timeoutMs,
  );
}

async function sshUp(): Promise<void> {
  await waitForSsh(sshPort, key, "ops", { attempts: 120, totalMs: BOOT_MS, intervalMs: 3000 });
}

/** The page the container serves, through the forwarded port. */
async function web(): Promise<string> {
  for (let i = 0; ; i++) {
    try {
      const res = await fetch(`http://127.0.0.1:${webPort}/`, {
        signal: AbortSignal.timeout(5000),
      });
      if (res.ok) return await res.text();
    } catch (err) {
      if (i >= 60) throw err;
    }
    await new Promise((r) => setTimeout(r, 2000));
  }
}

/** The agent's status (`agent status --json`), from the host itself. */
async function agentStatus(): Promise<{
  booted: { slot: string; version: string; good: boolean };
  other: { slot: string; version: string; good: boolean };
  rollbacks: { version?: string }[];
  badVersions: string[];
}> {
  return JSON.parse(await on("sudo /usr/lib/abforge/bin/abforge agent status --json"));
}

beforeAll(async () => {
  // built in the background while the other suites booted (build-images.ts)
  for (const name of ["hostV1", "hostV2", "hostV3"] as const) await waitForImage(name);
  execFileSync("cp", ["--sparse=always", join(image("hostV1").dir, "disk.qcow2"), disk]);
  // a host's disk is rarely the image's size: the state partition grows into the rest
  execFileSync("qemu-img", ["resize", "-q", disk, "4G"]);
  const pair = await sshKeyPair(dir);
  key = pair.privateKey;
  sshPort = await freePort();
  webPort = await freePort();
  const userData = join(dir, "user-data");
  writeFileSync(
    userData,
    hostUserData({
      hostname: "edge-1",
      publicKey: pair.publicKey,
      motd: "edge-1, managed by ops",
      runcmd: ["echo provisioned >> /var/lib/provision-runs"],
    }),
  );
  mkdirSync(repoDir);
  server = await serveRepo(repoDir);
  vm = await Vm.start({
    disk,
    userData,
    sshPort,
    hostForwards: [{ hostPort: webPort, guestPort: WEB_PORT }],
    serialLog: join(dir, "serial.log"),
    forward: { guestAddress: "10.0.2.100", guestPort: 80, hostPort: server.port },
  });
}, BOOT_MS);

afterAll(async () => {
  await vm?.kill();
  server?.stop();
  // the guest's console outlives the temporary directory: what a failed run leaves to read
  const log = join(dir, "serial.log");
  if (existsSync(log)) {
    mkdirSync(RESULTS, { recursive: true });
    copyFileSync(log, join(RESULTS, "host-serial.log"));
    // and its end, in the output a CI run keeps
    if (failed)
      process.stderr.write(
        `host: the guest's console, last lines:\n${readFileSync(log, "utf8").split("\n").slice(-150).join("\n")}\n`,
      );
  }
});

let failed = false;
afterEach((ctx) => {
  if (ctx.task.result?.state === "fail") failed = true;
});

describe("the container host", () => {
  it("the image holds nothing host-specific: no SSH host keys, an empty machine id, no apt lists, caches or logs", async () => {
    const raw = join(image("hostV1").dir, "disk.img");
    const d = await BootDisk.open(raw);
    const { offset } = d.slotRange("A");
    await d.close();
    const listing = execFileSync("unsquashfs", ["-o", String(offset), "-lls", "-d", "", raw], {
      encoding: "utf8",
      maxBuffer: 256 * 1024 * 1024,
    });
    const entries = listing
      .split("\n")
      .map((l) => /^(\S+)\s+\S+\s+(\d+)\s+\S+\s+\S+\s+(\/\S*)/.exec(l))
      .filter((m) => m !== null)
      .map((m) => ({ mode: m[1]!, size: Number(m[2]), path: m[3]! }));
    expect(entries.length).toBeGreaterThan(10_000);
    const paths = entries.map((e) => e.path);
    expect(paths.filter((p) => /^\/etc\/ssh\/ssh_host_/.test(p))).toEqual([]);
    expect(entries.find((e) => e.path === "/etc/machine-id")).toMatchObject({ size: 0 });
    expect(
      paths.filter((p) => p.startsWith("/var/lib/apt/lists/") && !/\/(lock|partial)$/.test(p)),
    ).toEqual([]);
    expect(paths.filter((p) => /^\/var\/cache\/apt\/.*\.(bin|deb)$/.test(p))).toEqual([]);
    expect(
      entries.filter((e) => e.path.startsWith("/var/log/") && e.mode.startsWith("-") && e.size > 0),
    ).toEqual([]);
    // systemd is init, and abforge's units are enabled from /usr, not /etc
    expect(paths).toContain("/usr/lib/systemd/system/abforge-mark-good.service");
    expect(paths).toContain("/usr/lib/systemd/system/timers.target.wants/abforge-update.timer");
    expect(paths).not.toContain("/etc/inittab");
  });

  it("first boot from qcow2: provisioned once by cloud-init, reachable by SSH, its state grown to the disk", async () => {
    const v = vm!;
    expect(await banner(v, BOOT_MS)).toMatchObject({ slot: "A", version: "1.0.0" });
    await sshUp();
    // SSH answers before cloud-init's last stage (runcmd) has run
    expect(await on("cloud-init status --wait >/dev/null; cloud-init status", 400_000)).toMatch(
      /status: done/,
    );
    expect((await on("hostname")).trim()).toBe("edge-1");
    expect(await on("id -un; sudo -n true && echo sudo-ok")).toBe("ops\nsudo-ok\n");
    expect(await on("cat /etc/motd")).toBe("edge-1, managed by ops\n");
    expect(await on("cat /var/lib/provision-runs")).toBe("provisioned\n");
    // first-boot identity made here, not shipped: a machine id and host keys
    expect((await on("cat /etc/machine-id")).trim()).toMatch(/^[0-9a-f]{32}$/);
    expect(await on("ls /etc/ssh/ | grep -c '^ssh_host_.*_key$'")).not.toBe("0\n");
    // the state partition filled the 4 GiB disk (ESP 64 MiB + 2 x 768 MiB slots)
    const stateBytes = Number((await on("df -B1 --output=size /run/state | tail -1")).trim());
    expect(stateBytes).toBeGreaterThan(2.2 * 1024 ** 3);
    // the boot is confirmed, and nothing but an unreachable-repository check may fail
    await markedGood(120, 300_000);
    const failed = (await on("systemctl --failed --no-legend --plain")).trim();
    expect(failed.split("\n").filter((l) => l && !l.startsWith("abforge-update.service"))).toEqual(
      [],
    );
    // timer mode: no agent process lives between checks
    expect(await on("systemctl is-active abforge-update.timer")).toBe("active\n");
  });

  it("runs a container from an OCI archive as a unit, its data on a volume under /var", async () => {
    const archive = await ociArchive(join(dir, "httpd.tar"), {
      name: "localhost/httpd",
      tag: "1",
      cmd: ["/bin/httpd", "-f", "-p", String(WEB_PORT), "-h", "/www"],
    });
    await copyTo(sshPort, key, "ops", archive.path, "/tmp/httpd.tar");
    await on("sudo podman load -i /tmp/httpd.tar && rm /tmp/httpd.tar", 300_000);
    await on(
      "sudo mkdir -p /var/lib/web && echo 'pages from the volume' | sudo tee /var/lib/web/index.html >/dev/null",
    );
    await on("sudo systemctl daemon-reload && sudo systemctl enable --now web.service", 300_000);
    expect(await web()).toBe("pages from the volume\n");
  });

  it("updates to 2.0.0 through the repository and the timer, across a power cut in the slot write", async () => {
    const v = vm!;
    await publishBundle(repoDir, image("hostV2").bundle, SIGNING_KEY);
    // Cut the power once the guest's state file holds a durable progress
    // record (test/faults/vm-powerloss.test.ts says why two records).
    const chunksIn = `sudo grep -oE '"verifiedChunks": [0-9]+' ${STATE_DIR}/${STATE_FILE_NAME} 2>/dev/null`;
    const record = await on(
      `until first=$(${chunksIn}) && [ "$first" != '"verifiedChunks": 0' ]; do sleep 0.2; done; ` +
        `until now=$(${chunksIn}) && [ "$now" != "$first" ]; do sleep 0.1; done; echo "durable $first"`,
      BOOT_MS,
    );
    await v.reset();
    expect(Number(/durable "verifiedChunks": (\d+)/.exec(record)?.[1])).toBeGreaterThan(0);
    expect(await banner(v, BOOT_MS)).toMatchObject({ slot: "A", version: "1.0.0" });
    expect(nextBootSlot(await bootStateOfQcow())).toBe("A");

    // the next check of the timer resumes it; the reboot goes to 2.0.0
    await v.waitFor(/resuming 2\.0\.0 at chunk \d+/, { timeoutMs: BOOT_MS });
    expect(await banner(v, BOOT_MS)).toMatchObject({ slot: "B", version: "2.0.0" });
    await sshUp();
    await markedGood(150, 400_000);
    const status = await agentStatus();
    expect(status.booted).toMatchObject({ slot: "B", version: "2.0.0", good: true });
  });

  it("after the update: not provisioned again, the container and its volume as they were, /etc by the policy", async () => {
    expect(await on("cat /var/lib/provision-runs")).toBe("provisioned\n");
    expect((await on("hostname")).trim()).toBe("edge-1");
    expect(await web()).toBe("pages from the volume\n");
    // a file the host changed keeps the host's content; files it never
    // changed, and the image's new ones, come from 2.0.0
    expect(await on("cat /etc/motd")).toBe("edge-1, managed by ops\n");
    expect(await on("cat /etc/abforge-test/image-note")).toBe("from the 2.0.0 image\n");
    expect(JSON.parse(await on("cat /etc/abforge/release.json")).version).toBe("2.0.0");
    // the host's user and the new package's system user, both
    expect(await on("getent passwd ops | cut -d: -f1; getent passwd tcpdump | cut -d: -f1")).toBe(
      "ops\ntcpdump\n",
    );
    expect(await on("getent group tcpdump | cut -d: -f1")).toBe("tcpdump\n");
  });

  it("3.0.0 fails its health check: rolled back to 2.0.0, recorded, never retried; the container runs on", async () => {
    const v = vm!;
    await publishBundle(repoDir, image("hostV3").bundle, SIGNING_KEY);
    expect(await banner(v, BOOT_MS)).toMatchObject({ slot: "A", version: "3.0.0" });
    // tries: 2, then GRUB goes back to the good 2.0.0
    for (;;) {
      const b = await banner(v, BOOT_MS);
      if (b.slot === "B") {
        expect(b.version).toBe("2.0.0");
        break;
      }
      expect(b).toMatchObject({ slot: "A", version: "3.0.0" });
    }
    await sshUp();
    await markedGood(150, 400_000);
    const status = await agentStatus();
    expect(status.booted).toMatchObject({ slot: "B", version: "2.0.0", good: true });
    expect(status.badVersions).toContain("3.0.0");
    expect(JSON.stringify(status.rollbacks)).toContain("3.0.0");
    expect(await web()).toBe("pages from the volume\n");
    // the next checks see 3.0.0 and leave it alone
    await on(
      "sudo systemctl start abforge-update.service; sudo journalctl -u abforge-update.service -o cat | tail -20",
      400_000,
    );
    const s = await bootStateOfQcow();
    expect(nextBootSlot(s)).toBe("B");
    expect(s.order[0]).toBe("B");
    expect(s.slots.B).toMatchObject({ good: true, version: "2.0.0" });
    expect(s.slots.A).toMatchObject({ good: false, tries: 0, version: "3.0.0" });
  });
});

/** The boot state read from the qcow2 through a raw copy of its ESP (qemu-img convert). */
async function bootStateOfQcow() {
  const raw = join(dir, "peek.img");
  execFileSync("qemu-img", ["convert", "-U", "-O", "raw", disk, raw]);
  try {
    return await bootState(raw);
  } finally {
    execFileSync("rm", ["-f", raw]);
  }
}
