/**
 * The container host, end to end: build images/host.yaml 1.0.0 (raw and
 * qcow2), 2.0.0 and an unhealthy 3.0.0 (images/host-unhealthy.yaml); boot
 * the qcow2, grown to 4 GiB, under QEMU with a cloud-config user-data (user
 * ops with an SSH key and sudo); over SSH load a busybox httpd OCI image and
 * run it as a systemd unit with its page on a volume under /var; publish
 * 2.0.0 and let the host's update timer install it and reboot; the container
 * answers on the forwarded port after the update; then 3.0.0, whose health
 * check fails, is rolled back to 2.0.0 with the container running on. Run by
 * `scripts/demo.sh host` after setup.
 *
 *   scripts/demo.sh host [--rebuild] [--out DIR]
 *
 * The guest's serial console is shown line by line as in scripts/demo.ts;
 * lines starting with `demo:` say what just happened, `$` lines are the
 * commands run on this machine or (`ops@host $`) on the host over SSH.
 */
import { execFileSync } from "node:child_process";
import { mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { basename, join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { ConsoleView } from "../qemu/console-view.ts";
import { buildReleases, say, signingKey } from "../qemu/demo-steps.ts";
import { BANNER, publishBundle, serveRepo } from "../qemu/fleet.ts";
import { HostShell, HTTPD_PORT, hostUserData, webPage } from "../qemu/host.ts";
import { freePort } from "../qemu/net.ts";
import { sshKeyPair } from "../qemu/ssh.ts";
import { Vm } from "../qemu/vm.ts";

const ROOT = resolve(import.meta.dirname, "..");
const { values } = parseArgs({
  options: {
    rebuild: { type: "boolean", default: false },
    out: { type: "string", default: join(ROOT, "out", "host") },
  },
});
const OUT = resolve(values.out);
// Debian with systemd and cloud-init under TCG: a boot takes minutes.
const BOOT_MS = 600_000;
const PAGE = "hello from busybox httpd in a podman container; this page lives on /var/lib/web";

const key = await signingKey(OUT);

const releases = [
  { name: "v1", spec: "images/host.yaml", version: "1.0.0", formats: "raw,qcow2" },
  { name: "v2", spec: "images/host.yaml", version: "2.0.0" },
  { name: "v3", spec: "images/host-unhealthy.yaml", version: "3.0.0" },
];
await buildReleases({ root: ROOT, out: OUT, key, rebuild: values.rebuild }, releases, (n) =>
  n === 0
    ? "on a machine's first build debootstrap runs, 4-5 minutes; its result is cached"
    : "debootstrap's cached result is reused: about two minutes",
);
/** A release's bundle, as its build.json names it. */
const bundleOf = (name: string): string => {
  const report = JSON.parse(readFileSync(join(OUT, name, "build.json"), "utf8")) as {
    bundle: { file: string };
  };
  return join(OUT, name, basename(report.bundle.file));
};

const vmDir = join(OUT, "vm");
rmSync(vmDir, { recursive: true, force: true });
mkdirSync(vmDir, { recursive: true });
const disk = join(vmDir, "disk.qcow2");
execFileSync("cp", ["--sparse=always", join(OUT, "v1", "disk.qcow2"), disk]);
execFileSync("qemu-img", ["resize", "-q", disk, "4G"]);
say("copied the 1.0.0 qcow2 disk and grew it to 4 GiB: the state partition fills it at first boot");

const pair = await sshKeyPair(vmDir, "abforge-demo");
const userData = join(vmDir, "user-data");
writeFileSync(userData, hostUserData({ hostname: "demo-host", publicKey: pair.publicKey }));
say(
  `cloud-config user-data in ${userData}: hostname demo-host, user ops with the key ${pair.publicKeyPath} and sudo, a web.service unit`,
);

const repoDir = join(vmDir, "repo");
mkdirSync(repoDir);
const repo = await serveRepo(repoDir);
const sshPort = await freePort();
const webPort = await freePort();
say(
  `repository (empty for now) served at ${repo.url}; the host reaches it as http://10.0.2.100/ through QEMU's guestfwd`,
);

const view = new ConsoleView((text) => process.stdout.write(text));
say(
  `booting the 1.0.0 qcow2 under QEMU (OVMF → GRUB → kernel → dm-verity root → systemd → cloud-init); SSH on 127.0.0.1:${sshPort}, the web port ${HTTPD_PORT} on 127.0.0.1:${webPort}`,
);
const vm = await Vm.start({
  disk,
  userData,
  sshPort,
  hostForwards: [{ hostPort: webPort, guestPort: HTTPD_PORT }],
  serialLog: join(vmDir, "serial.log"),
  forward: { guestAddress: "10.0.2.100", guestPort: 80, hostPort: repo.port },
  onConsole: (text) => view.feed(text),
});
const host = new HostShell(sshPort, pair.privateKey);
const banner = async () => {
  const m = await vm.waitFor(BANNER, { timeoutMs: BOOT_MS });
  return `${m[1]} ${m[2]}`;
};
/** Show a command run on the host over SSH, and its output. */
const onHost = async (command: string, timeoutMs?: number): Promise<string> => {
  const out = await host.on(command, timeoutMs);
  process.stdout.write(`\x1b[1mops@demo-host $ ${command}\x1b[0m\n${out}`);
  return out;
};
/** `curl` the container's page through the forwarded port, shown as typed. */
const curl = async (): Promise<void> => {
  await webPage(webPort);
  const url = `http://127.0.0.1:${webPort}/`;
  process.stdout.write(
    `\x1b[1m$ curl ${url}\x1b[0m\n${execFileSync("curl", ["-sS", url], { encoding: "utf8" })}`,
  );
};
/** While the demo talks to the host over SSH, the console's chatter is held back. */
const quietly = async <T>(fn: () => Promise<T>): Promise<T> => {
  view.muted = true;
  try {
    return await fn();
  } finally {
    view.skip();
    view.muted = false;
  }
};
try {
  say(`booted slot ${await banner()}`);
  await host.up(BOOT_MS);
  say("SSH answers with the key cloud-init installed; waiting for the boot to be marked good");
  await host.markedGood(BOOT_MS);
  await quietly(async () => {
    await onHost("hostname; id; cat /etc/abforge/release.json");
    await onHost("df -h /run/state | tail -1; systemctl is-active abforge-update.timer");
  });

  say("making a busybox httpd OCI image here, loading it with podman and starting web.service");
  await quietly(async () => {
    await host.runHttpd(vmDir, PAGE);
    await onHost("sudo podman ps --format '{{.Names}} {{.Image}} {{.Status}}'");
    await curl();
  });

  say("publishing 2.0.0 to channel stable; the host's update timer checks every minute");
  await publishBundle(repoDir, bundleOf("v2"), key);
  say(`the timer's check installed 2.0.0 into slot B and rebooted: now slot ${await banner()}`);
  await host.up(BOOT_MS);
  await host.markedGood(BOOT_MS);
  say("2.0.0 passed its health checks and is marked good; the container came back with the host");
  await quietly(async () => {
    await onHost("cat /etc/abforge/release.json; sudo podman ps --format '{{.Names}} {{.Status}}'");
    await curl();
  });

  say("publishing 3.0.0, a release whose health check fails");
  await publishBundle(repoDir, bundleOf("v3"), key);
  let booted = await banner();
  say(`the timer's check installed 3.0.0 into slot A and rebooted: slot ${booted}`);
  while (booted.startsWith("A")) {
    booted = await banner();
    say(`booted slot ${booted}`);
  }
  await host.up(BOOT_MS);
  await host.markedGood(BOOT_MS);
  say(
    "3.0.0 never passed its health check; its tries ran out and GRUB went back to 2.0.0. The agent's status (3.0.0 is recorded as bad and will not be installed again):",
  );
  await quietly(async () => {
    await onHost("sudo /usr/lib/abforge/bin/abforge agent status 2>/dev/null");
    await curl();
  });
  say("done; the container answered after the update and after the rollback. Powering the VM off");
} finally {
  await vm.powerOff();
  repo.stop();
}
