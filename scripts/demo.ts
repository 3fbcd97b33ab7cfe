/**
 * The main job, end to end: build the demo image (1.0.0, 2.0.0 and an
 * unhealthy 3.0.0), boot 1.0.0 under QEMU, let its agent update it to 2.0.0
 * from a repository served on 127.0.0.1, then publish 3.0.0 and watch the
 * bootloader roll it back. Run by scripts/demo.sh after setup.
 *
 *   scripts/demo.sh [--rebuild] [--out DIR]
 *
 * The guest's serial console is shown line by line as it comes (without the
 * terminal queries and screen clears the firmware and the shell send, and
 * without the commands the demo types into the guest); lines starting with
 * `demo:` say what just happened.
 */
import { execFileSync } from "node:child_process";
import { mkdirSync, rmSync } from "node:fs";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { ConsoleView } from "../qemu/console-view.ts";
import { buildReleases, say, signingKey } from "../qemu/demo-steps.ts";
import { ABFORGE_BIN, BANNER, publishBundle, serveRepo } from "../qemu/fleet.ts";
import { Vm } from "../qemu/vm.ts";

const ROOT = resolve(import.meta.dirname, "..");
const { values } = parseArgs({
  options: {
    rebuild: { type: "boolean", default: false },
    out: { type: "string", default: join(ROOT, "out", "demo") },
  },
});
const OUT = resolve(values.out);
const BOOT_MS = 300_000;

const key = await signingKey(OUT);

const releases = [
  { name: "v1", spec: "images/demo.yaml", version: "1.0.0" },
  { name: "v2", spec: "images/demo.yaml", version: "2.0.0" },
  { name: "v3", spec: "images/demo-unhealthy.yaml", version: "3.0.0" },
];
await buildReleases(
  { root: ROOT, out: OUT, key, rebuild: values.rebuild },
  releases,
  () => "a minute or two: most of it is mksquashfs compressing the Node runtime",
);

const repoDir = join(OUT, "repo");
rmSync(repoDir, { recursive: true, force: true });
say("publishing 2.0.0 to channel stable");
await publishBundle(repoDir, join(OUT, "v2", "demo-2.0.0.bundle"), key);
const repo = await serveRepo(repoDir);
say(
  `repository served at ${repo.url}; the guest reaches it as http://10.0.2.100/ through QEMU's guestfwd`,
);

const hostDir = join(OUT, "host");
rmSync(hostDir, { recursive: true, force: true });
mkdirSync(hostDir, { recursive: true });
const disk = join(hostDir, "disk.img");
execFileSync("cp", ["--sparse=always", join(OUT, "v1", "disk.img"), disk]);

const view = new ConsoleView((text) => process.stdout.write(text));
say("booting the 1.0.0 disk under QEMU (OVMF → GRUB → kernel → dm-verity root)");
const vm = await Vm.start({
  disk,
  serialLog: join(hostDir, "serial.log"),
  forward: { guestAddress: "10.0.2.100", guestPort: 80, hostPort: repo.port },
  onConsole: (text) => view.feed(text),
});
const slots = () =>
  execFileSync(ABFORGE_BIN, ["slots", "show", "--disk", disk], { encoding: "utf8" });
try {
  const banner = async () => {
    const m = await vm.waitFor(BANNER, { timeoutMs: BOOT_MS });
    return `${m[1]} ${m[2]}`;
  };
  say(`booted slot ${await banner()}; the agent checks the channel right away`);
  say(`after installing 2.0.0 into slot B the agent reboots: now slot ${await banner()}`);
  await vm.waitFor(/marked good/, { timeoutMs: BOOT_MS });
  say("2.0.0 passed its health checks and is marked good. Boot state:");
  process.stdout.write(slots());

  say("publishing 3.0.0, a release whose health check fails");
  await publishBundle(repoDir, join(OUT, "v3", "demo-3.0.0.bundle"), key);
  let booted = await banner();
  say(`the agent installed 3.0.0 into slot A and rebooted: slot ${booted}`);
  while (booted.startsWith("A")) {
    booted = await banner();
    say(`booted slot ${booted}`);
  }
  await vm.waitFor(/rollback/i, { timeoutMs: BOOT_MS });
  // The agent then confirms 2.0.0's boot and puts slot B first (order B A).
  await vm.waitFor(/confirmed: slot B \(2\.0\.0\) is up; it boots first/, { timeoutMs: BOOT_MS });
  say(
    "3.0.0 never passed its health check; its tries ran out and GRUB went back to 2.0.0. Boot state:",
  );
  process.stdout.write(slots());
  // The root shell came up with 2.0.0's banner, before the rollback line.
  view.muted = true;
  const status = await vm.run("/usr/lib/abforge/bin/abforge agent status 2>/dev/null", {
    timeoutMs: 120_000,
  });
  view.skip();
  say("the agent's status on the host (3.0.0 is recorded as bad and will not be installed again):");
  // (without the agent's log lines that reached the console while it ran)
  process.stdout.write(
    status.output
      .split("\n")
      .filter((l) => !l.startsWith('{"level":'))
      .join("\n"),
  );
  say("done; powering the VM off");
} finally {
  await vm.powerOff();
  repo.stop();
}
