/**
 * Reboot by kexec against a reboot through the firmware, on the same image,
 * in one run: `node bench/kexec/run.ts [--rounds 1] [--images DIR]` (about
 * 4 minutes per round under TCG; as a user that can run QEMU).
 *
 * 1. Build demo-kexec (images/demo-kexec.yaml: the demo with
 *    `update.reboot.method: kexec`) 1.0.0 and 2.0.0 with a fresh signing
 *    key, into `--images DIR` (the QEMU fixtures' layout: `keys/`, `kexecV1/`,
 *    `kexecV2/`, each reused when there) or a temporary directory.
 * 2. Per round, one VM per method, alternating: a fresh sparse copy of the
 *    1.0.0 disk, booted with a repository on 127.0.0.1 that holds 1.0.0 on
 *    channel stable (the agent finds itself up to date). At the root prompt,
 *    for `reboot` only, `echo 1 > /proc/sys/kernel/kexec_load_disabled`:
 *    the same agent on the same image then logs `kexec unavailable (kexec is
 *    disabled …): rebooting through the firmware` and runs its reboot
 *    command. 2.0.0 is published; the agent's next poll installs it.
 * 3. Timed on the host, as each line arrives on the serial console: from the
 *    agent's reboot decision (`rebooting into slot B (2.0.0)`) to the new
 *    slot's banner (`abforge: booted slot B version 2.0.0`); for kexec also
 *    to its `kexec: jumping` line (mount, `kexec -l`, the boot-state write).
 * 4. Prints each time (median over rounds), the ratio kexec / reboot and
 *    the load average before and after. Exit 1 when kexec takes a third of
 *    the firmware reboot or more (the target of issue 13).
 */
import { execFile, execFileSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { cpus, tmpdir } from "node:os";
import { basename, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs, promisify } from "node:util";
import { BANNER, PROMPT, publishBundle, serveRepo } from "../../qemu/fleet.ts";
import { Vm } from "../../qemu/vm.ts";

const { values } = parseArgs({
  options: {
    rounds: { type: "string", default: "1" },
    images: { type: "string" },
  },
});
const ROOT = fileURLToPath(new URL("../..", import.meta.url));
const abforgeBin = join(ROOT, "bin/abforge");
const SPEC = join(ROOT, "images/demo-kexec.yaml");
const BOOT_MS = 600_000;
const execFileP = promisify(execFile);
const say = (s: string) => process.stdout.write(`${s}\n`);
const uptime = () => execFileSync("uptime", { encoding: "utf8" }).trim();
const sec = (ms: number) => `${(ms / 1000).toFixed(1)} s`;
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

async function abforge(args: string[]): Promise<string> {
  const { stdout } = await execFileP(abforgeBin, args, {
    env: { ...process.env, ABFORGE_LOG_FORMAT: "json", ABFORGE_LOG_LEVEL: "warn" },
    maxBuffer: 64 * 1024 * 1024,
  });
  return stdout;
}

/** Build (or reuse) demo-kexec VERSION into DIR/NAME; its disk and bundle. */
async function image(dir: string, key: string, name: string, version: string) {
  const out = join(dir, name);
  if (!existsSync(join(out, "build.json")))
    await abforge(["build", SPEC, "--out", out, "--version", version, "--key", key]);
  const report = JSON.parse(readFileSync(join(out, "build.json"), "utf8")) as {
    bundle: { file: string };
  };
  return { disk: join(out, "disk.img"), bundle: join(out, basename(report.bundle.file)) };
}

interface Timing {
  /** Decision → banner. */
  totalMs: number;
  /** Decision → `kexec: jumping` (kexec only). */
  loadMs?: number;
}

async function once(
  method: "reboot" | "kexec",
  work: string,
  images: { v1: { disk: string; bundle: string }; v2: { bundle: string } },
  key: string,
): Promise<Timing> {
  const dir = mkdtempSync(join(work, `${method}-`));
  const disk = join(dir, "disk.img");
  execFileSync("cp", ["--sparse=always", images.v1.disk, disk]);
  const repoDir = join(dir, "repo");
  mkdirSync(repoDir);
  await publishBundle(repoDir, images.v1.bundle, key);
  const server = await serveRepo(repoDir);
  let vm: Vm | undefined;
  try {
    vm = await Vm.start({
      disk,
      serialLog: join(dir, "serial.log"),
      forward: { guestAddress: "10.0.2.100", guestPort: 80, hostPort: server.port },
    });
    await vm.waitFor(BANNER, { timeoutMs: BOOT_MS });
    await vm.waitFor(PROMPT, { timeoutMs: BOOT_MS });
    if (method === "reboot") {
      const r = await vm.run(
        "echo 1 > /proc/sys/kernel/kexec_load_disabled; cat /proc/sys/kernel/kexec_load_disabled",
      );
      if (!/^1$/m.test(r.output)) throw new Error(`kexec_load_disabled not set: ${r.output}`);
    }
    const from = vm.mark();
    await publishBundle(repoDir, images.v2.bundle, key);
    await vm.waitFor(/rebooting into slot B \(2\.0\.0\)/, { timeoutMs: BOOT_MS, from });
    const decided = performance.now();
    let loadMs: number | undefined;
    if (method === "kexec") {
      await vm.waitFor(/kexec: jumping into slot B/, { timeoutMs: BOOT_MS });
      loadMs = performance.now() - decided;
    } else {
      await vm.waitFor(/kexec unavailable \(kexec is disabled/, { timeoutMs: BOOT_MS });
    }
    const m = await vm.waitFor(BANNER, { timeoutMs: BOOT_MS });
    const totalMs = performance.now() - decided;
    if (m[1] !== "B" || m[2] !== "2.0.0") throw new Error(`booted ${m[1]} ${m[2]}, not B 2.0.0`);
    const through = /BdsDxe:|abforge: booting slot B/.test(vm.console.slice(from));
    if (through !== (method === "reboot"))
      throw new Error(`${method}: the firmware and GRUB ${through ? "ran" : "did not run"}`);
    return { totalMs, ...(loadMs !== undefined ? { loadMs } : {}) };
  } finally {
    await vm?.kill();
    server.stop();
  }
}

const rounds = Number(values.rounds);
const work = mkdtempSync(join(tmpdir(), "abforge-bench-kexec-"));
try {
  say(`== bench/kexec: ${cpus().length} CPUs; at the start: ${uptime()}`);
  // The QEMU fixtures' layout (test/qemu/fixtures.ts): `--images` may be their directory.
  const imagesDir = values.images ?? join(work, "images");
  const key = join(imagesDir, "keys", "signing.key");
  if (!existsSync(key)) await abforge(["keygen", "--out", join(imagesDir, "keys")]);
  const v1 = await image(imagesDir, key, "kexecV1", "1.0.0");
  const v2 = await image(imagesDir, key, "kexecV2", "2.0.0");
  const times: Record<"reboot" | "kexec", Timing[]> = { reboot: [], kexec: [] };
  for (let r = 0; r < rounds; r++) {
    for (const method of r % 2 === 0
      ? (["reboot", "kexec"] as const)
      : (["kexec", "reboot"] as const)) {
      const t = await once(method, work, { v1, v2 }, key);
      times[method].push(t);
      say(
        `round ${r + 1} ${method}: decision → banner ${sec(t.totalMs)}${t.loadMs !== undefined ? ` (decision → jump ${sec(t.loadMs)})` : ""}`,
      );
    }
  }
  const reboot = median(times.reboot.map((t) => t.totalMs));
  const kexec = median(times.kexec.map((t) => t.totalMs));
  const load = median(times.kexec.map((t) => t.loadMs ?? 0));
  const ratio = kexec / reboot;
  say("");
  say(`| method | agent's reboot decision → new slot's banner (median of ${rounds}) |`);
  say("| --- | --- |");
  say(`| reboot (firmware, GRUB) | ${sec(reboot)} |`);
  say(
    `| kexec | ${sec(kexec)} (of which ${sec(load)} to the jump: mount, kexec -l, the boot-state write) |`,
  );
  say(`kexec / reboot = ${ratio.toFixed(2)} (target: under 0.33)`);
  say(`at the end: ${uptime()}`);
  process.exitCode = ratio < 1 / 3 ? 0 : 1;
} finally {
  rmSync(work, { recursive: true, force: true });
}
