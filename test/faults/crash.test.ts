/**
 * Crashes: the real `abforge agent install FILE|URL` and `abforge agent check`
 * (child processes, `--disk IMAGE`) killed with SIGKILL at more than 30
 * points spread over the whole install — the download of the bundle's head,
 * the slot write, the verification, the state-file writes and the flip of
 * the boot state. After each kill every guarantee is checked
 * (helpers.ts `checkGuarantees`); then the same command runs again and must
 * finish the update: the boot state names the new slot first with its tries,
 * and the slot's bytes verify.
 *
 * Kill points are chosen by what the agent shows, never by a hook inside it:
 * - its JSON log lines on stderr (`step N/9: NAME`; the logger writes
 *   synchronously, so a line seen means the step has begun), optionally
 *   plus a few milliseconds;
 * - the state directory (inotify): the state file's `verifiedChunks`
 *   reaching k, or the n-th creation of `state.json.tmp-<pid>` (a kill inside
 *   the atomic replace);
 * - the disk image (inotify): the first write that makes the boot state
 *   mark slot B unbootable, or activate it (the flip);
 * - the byte stream: a proxy in front of the real repository server
 *   forwards the bundle up to an exact byte and holds the connection, so
 *   the agent is waiting at that byte when it is killed.
 * Where a kill lands is classified afterwards from what the process logged
 * and left (temp file, boot state), and printed.
 */
import { closeSync, openSync, readFileSync, readSync, watch } from "node:fs";
import { mkdir, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BootDisk, decodeEnv } from "../../src/bootloader/index.ts";
import type { Manifest } from "../../src/bundle/index.ts";
import { publish, type RepoServer, serve } from "../../src/repo/index.ts";
import { type DiskFixture, makeUpdateWorld, type UpdateWorld } from "../helpers/fixtures.ts";
import { tempDir } from "../helpers/tmp.ts";
import {
  AgentProcess,
  type BundleParts,
  bundleParts,
  checkGuarantees,
  recordFigure,
  runAbforge,
  StallProxy,
  secondUpdateDisk,
  sha256Range,
  sleep,
  slotVerifies,
  stateTemps,
} from "./helpers.ts";

const MiB = 1024 * 1024;
/** Removed when the file ends (tempDir registers the cleanup at collection time). */
const DIR = tempDir("abforge-crash-");
const quiet = pino({ level: "silent" });
const TRIES = 3; // the agent's default `tries`
const NEW = "2.0.0";

let w: UpdateWorld;
let manifest: Manifest;
let parts: BundleParts;
let repo: RepoServer;
let proxy: StallProxy;
let proxyUrl: string;
let configPath: string;
/** Byte offset of /GRUBENV in the disk image (same layout on every copy). */
let envOffset: number;

beforeAll(async () => {
  // Slot images of ~16 MiB (17 chunks of 1 MiB) in 24 MiB slots.
  w = await makeUpdateWorld(DIR, {
    versions: ["0.9.0", NEW],
    payloadBytes: 16 * MiB,
    slotBytes: 24 * MiB,
  });
  const b = w.bundles[NEW];
  if (!b) throw new Error("no bundle");
  manifest = b.manifest;
  parts = await bundleParts(b.path);
  const repoDir = join(w.dir, "repo");
  await publish({ repoDir, bundlePath: b.path, channel: "stable", key: w.key.privateKey });
  repo = await serve({ repoDir, host: "127.0.0.1", port: 0, log: quiet });
  proxy = new StallProxy(repo.url);
  proxyUrl = await proxy.listen();
  configPath = join(w.dir, "agent.yaml");
  await writeFile(
    configPath,
    `repoUrl: ${proxyUrl}\nchannel: stable\ntrustedKeys: [${w.key.publicKeyPath}]\n`,
  );
  const disk = await BootDisk.open(w.disk.path, { readOnly: true });
  envOffset = disk.env.offset;
  await disk.close();
}, 300_000);

const outcomes: {
  name: string;
  killed: boolean;
  landed: string;
  bricked: boolean;
  recovered: boolean;
  resumedAt: number | null;
}[] = [];

afterAll(async () => {
  await proxy?.close();
  await repo?.close();
  const kills = outcomes.filter((o) => o.killed);
  const recovered = kills.filter((o) => o.recovered).length;
  const bricked = outcomes.filter((o) => o.bricked).length;
  const landed = new Map<string, number>();
  for (const o of kills) landed.set(o.landed, (landed.get(o.landed) ?? 0) + 1);
  const resumed = kills.filter((o) => o.resumedAt !== null && o.resumedAt > 0).length;
  const summary = `crash points: ${kills.length}, recovered: ${recovered}, bricked: ${bricked}`;
  const where = `kills landed in: ${[...landed].map(([k, n]) => `${k} ${n}`).join(", ")}`;
  const extra = `resumed from a verified chunk: ${resumed}; finished before the kill point: ${outcomes.length - kills.length}`;
  const table = outcomes.map(
    (o) =>
      `  ${o.killed ? "killed" : "ended "} ${o.recovered ? "recovered" : "NOT RECOVERED"}  ${o.name}  → ${o.killed ? o.landed : "-"}${o.resumedAt ? `, resumed at chunk ${o.resumedAt}` : ""}`,
  );
  process.stdout.write(`\n${table.join("\n")}\n${summary}\n${where}\n${extra}\n`);
  recordFigure("crash", summary);
  recordFigure("crash-landed", where);
}, 60_000);

// ---------------------------------------------------------------- kill points

type Form = "file" | "url" | "check";
type DiskKind = "fresh" | "second"; // first update (B empty) or second (B holds an older good image)

interface Ctx {
  p: AgentProcess;
  disk: DiskFixture;
  stateDir: string;
}

interface KillPoint {
  name: string;
  form: Form;
  disk: DiskKind;
  /** The proxy forwards the bundle only up to this byte (URL and check forms). */
  stallAt?: number;
  /** Waits for the moment, then kills (or returns when the process ended first). */
  kill(c: Ctx): Promise<void>;
}

/** Kill when a log line matches, `delayMs` later. */
const atLine =
  (re: RegExp, delayMs = 0) =>
  async (c: Ctx) => {
    await c.p.waitLine(re);
    if (delayMs) await sleep(delayMs);
    c.p.kill();
  };

/** Kill at an event of an inotify watch on `path` for which `test` holds. */
function onWatch(c: Ctx, path: string, test: (filename: string | null) => boolean): Promise<void> {
  return new Promise((resolve) => {
    const watcher = watch(path, (_event, filename) => {
      if (!c.p.alive || test(filename)) {
        c.p.kill();
        watcher.close();
        resolve();
      }
    });
    void c.p.exited.then(() => {
      watcher.close();
      resolve();
    });
  });
}

/** Kill once the state file records at least `k` verified chunks. */
const atChunks = (k: number) => (c: Ctx) =>
  onWatch(c, c.stateDir, () => {
    try {
      const s = JSON.parse(readFileSyncSafe(join(c.stateDir, "state.json")));
      return s?.progress?.verifiedChunks >= k;
    } catch {
      return false;
    }
  });

/** Kill at the n-th creation of the state file's temp file after a log line matched (inside a state write). */
const atStateTemp =
  (n: number, after: RegExp = /./) =>
  async (c: Ctx) => {
    await c.p.waitLine(after);
    if (!c.p.alive) return;
    let events = 0;
    await onWatch(c, c.stateDir, (f) => {
      if (!f?.startsWith("state.json.tmp-")) return false;
      events += 1; // a save makes two events on its temp name: created, then renamed away
      return events === 2 * n - 1;
    });
  };

/** Kill at the first disk write after which the boot state satisfies `test` (the flip, the unbooting). */
const atBootWrite = (test: (vars: Map<string, string>) => boolean) => (c: Ctx) =>
  onWatch(c, c.disk.path, () => {
    try {
      return test(readEnvSync(c.disk.path));
    } catch {
      return false;
    }
  });

/** For a stalled download: kill once the agent took every byte it was given and went quiet. */
const whenStalled = (x: number) => async (c: Ctx) => {
  const slotBytes = x - parts.slotOffset;
  const expected =
    slotBytes <= 0
      ? null
      : slotBytes >= manifest.slotImage.size
        ? manifest.slotImage.chunks.length
        : Math.floor(slotBytes / MiB);
  const deadline = Date.now() + 60_000;
  for (;;) {
    if (!c.p.alive || Date.now() > deadline) break;
    const reached = proxy.bundleResponses > 0 && proxy.forwardedTo >= x;
    let chunksOk = expected === null || expected === 0;
    if (!chunksOk) {
      try {
        const s = JSON.parse(readFileSyncSafe(join(c.stateDir, "state.json")));
        chunksOk = s?.progress?.verifiedChunks === expected;
      } catch {}
    }
    const quiet = Date.now() - c.p.lastLineAt > 300;
    if (reached && chunksOk && quiet) break;
    await sleep(20);
  }
  c.p.kill();
};

function readFileSyncSafe(path: string): string {
  return readFileSync(path, "utf8");
}

function readEnvSync(diskPath: string): Map<string, string> {
  const fd = openSync(diskPath, "r");
  try {
    const b = Buffer.alloc(1024);
    readSync(fd, b, 0, 1024, envOffset);
    return decodeEnv(b);
  } finally {
    closeSync(fd);
  }
}

const flipped = (v: Map<string, string>) => v.get("B_tries") !== "0" && v.get("order") === "B A";
const bUnbootable = (v: Map<string, string>) => v.get("B_good") === "0";

function killPoints(): KillPoint[] {
  const M = parts.M;
  const s = parts.slotOffset;
  const size = manifest.slotImage.size;
  const chunks = manifest.slotImage.chunks.length;
  const points: KillPoint[] = [];
  // 1. URL form, first update: the download stopped at an exact byte of the bundle.
  const stalls: [string, number][] = [
    ["no body byte yet", 0],
    ["inside the first tar header", 100],
    ["inside manifest.json", 512 + Math.floor(M / 2)],
    ["inside the manifest.sig header", 512 + M + 256],
    ["inside the signature", 1024 + M + 32],
    ["inside the slot.img header", 1536 + M + 100],
    ["head complete, no slot byte", s],
    ["one slot byte", s + 1],
    ["one byte short of chunk 1", s + MiB - 1],
    ["chunk 1 complete", s + MiB],
    ["chunk 4, mid-way", s + 3 * MiB + 12_345],
    ["chunk 8 complete", s + 8 * MiB],
    ["chunk 13, one byte in", s + 12 * MiB + 1],
    ["one byte short of the slot image", s + size - 1],
    ["slot image complete, no end-of-archive", s + size],
    ["one byte short of the end", parts.bytes.length - 1],
  ];
  for (const [what, x] of stalls)
    points.push({
      name: `url: download stopped at byte ${x} (${what})`,
      form: "url",
      disk: "fresh",
      stallAt: x,
      kill: whenStalled(x),
    });
  // 2. file form, second update (B holds an older good image that must be unbooted first).
  const file = (name: string, kill: KillPoint["kill"]): KillPoint => ({
    name: `file: ${name}`,
    form: "file",
    disk: "second",
    kill,
  });
  points.push(
    file("step 1 begins (open-bundle)", atLine(/^step 1\/9/)),
    file("step 2 begins (check-update)", atLine(/^step 2\/9/)),
    file("step 4 begins (mark-unbootable)", atLine(/^step 4\/9/)),
    file("the boot-state write that unboots slot B", atBootWrite(bUnbootable)),
    file("step 5 begins (write-slot)", atLine(/^step 5\/9/)),
    file("progress recorded, 0 chunks", atChunks(0)),
    file("inside the first progress write", atStateTemp(1, /^step 5\/9/)),
    // progress is logged at every 10 %; the state file records it at most once a second
    file("10 % written", atLine(/^downloading 2\.0\.0: 10%/)),
    file("30 % written", atLine(/^downloading 2\.0\.0: 30%/)),
    file("50 % written", atLine(/^downloading 2\.0\.0: 50%/)),
    file("70 % written", atLine(/^downloading 2\.0\.0: 70%/)),
    file("90 % written", atLine(/^downloading 2\.0\.0: 90%/)),
    file("the last chunk's progress recorded", atChunks(chunks)),
    file(
      "inside the progress write of the last chunk",
      atStateTemp(1, /^downloading 2\.0\.0: 90%/),
    ),
    file("step 6 begins (check-sha256)", atLine(/^step 6\/9/)),
    file("step 7 begins (sync)", atLine(/^step 7\/9/)),
    file("step 8 begins (verify-verity)", atLine(/^step 8\/9/)),
    file("step 8 + 10 ms", atLine(/^step 8\/9/, 10)),
    file("step 8 + 40 ms", atLine(/^step 8\/9/, 40)),
    file("step 9 begins (activate)", atLine(/^step 9\/9/)),
    file("the flip written, state file not yet", atBootWrite(flipped)),
    file("inside the state write after the flip", atStateTemp(1, /^step 9\/9/)),
    file("installed, before exit", atLine(/^installed /)),
  );
  // 3. check form (index through the proxy), first update.
  const check = (name: string, kill: KillPoint["kill"], stallAt?: number): KillPoint => ({
    name: `check: ${name}`,
    form: "check",
    disk: "fresh",
    kill,
    ...(stallAt !== undefined ? { stallAt } : {}),
  });
  points.push(
    check("fetching the index", atLine(/^checking /)),
    check("inside the state write of the index serial", atStateTemp(1, /^checking /)),
    check(
      `download stopped at byte ${s + 2 * MiB + 7}`,
      whenStalled(s + 2 * MiB + 7),
      s + 2 * MiB + 7,
    ),
    check(`download stopped at byte ${s + size}`, whenStalled(s + size), s + size),
    check("step 8 + 5 ms", atLine(/^step 8\/9/, 5)),
    check("the flip written, state file not yet", atBootWrite(flipped)),
  );
  return points;
}

// ---------------------------------------------------------------- running one

function argsFor(form: Form, d: DiskFixture, stateDir: string): string[] {
  const common = ["--disk", d.path, "--state-dir", stateDir, "--json"];
  switch (form) {
    case "file":
      return ["agent", "install", (w.bundles[NEW] as { path: string }).path, ...common];
    case "url":
      return ["agent", "install", `${proxyUrl}bundles/demo-${NEW}.bundle`, ...common];
    case "check":
      return ["agent", "check", "--config", configPath, ...common];
  }
}

function landing(p: AgentProcess, temps: string[], flippedNow: boolean): string {
  if (flippedNow) return "after the flip";
  if (temps.length > 0) return "a state write";
  const step = p.steps().at(-1);
  switch (step) {
    case undefined:
    case "open-bundle":
    case "check-update":
    case "check-first-chunk":
    case "mark-unbootable":
      return "the download (before the first slot byte)";
    case "write-slot":
      return "the slot write";
    case "check-sha256":
    case "sync":
    case "verify-verity":
      return "the verification";
    default:
      return "the flip (before the boot-state write)";
  }
}

async function crashAndRecover(kp: KillPoint, index: number): Promise<void> {
  const name = `crash-${index}`;
  const d = kp.disk === "fresh" ? await w.freshDisk(name) : await secondUpdateDisk(w, name);
  const stateDir = join(w.dir, `${name}.state`);
  await mkdir(stateDir, { recursive: true });
  const bootedSha256 = await sha256Range(d.path, d.slots.A);
  const args = argsFor(kp.form, d, stateDir);

  proxy.stallAt = kp.stallAt ?? null;
  proxy.bundleResponses = 0;
  const p = new AgentProcess(args);
  await kp.kill({ p, disk: d, stateDir });
  const exit = await p.exited;
  proxy.stallAt = null;
  const killed = exit.signal === "SIGKILL";
  if (!killed) expect(exit.code, p.stderr).toBe(0);

  // Every guarantee, right after the kill.
  const temps = await stateTemps(stateDir);
  const g = await checkGuarantees({ disk: d, booted: "A", bootedSha256, stateDir });
  const flippedNow =
    g.boot !== null &&
    g.boot.order[0] === "B" &&
    g.boot.slots.B.tries > 0 &&
    g.boot.slots.B.rootHash === manifest.verity.rootHash;
  const landed = landing(p, temps, flippedNow);
  const outcome = {
    name: kp.name,
    killed,
    landed,
    bricked: g.violations.length > 0,
    recovered: false,
    resumedAt: null as number | null,
  };
  outcomes.push(outcome);
  expect(g.violations, `${kp.name} (${landed})`).toEqual([]);
  // What GRUB boots now: the old slot (good), or the new one on trial with a verified image.
  expect(g.next === "A" || flippedNow, `${kp.name}: boots ${g.next}`).toBe(true);
  expect(g.boot?.slots.A.good).toBe(true);

  // The same command again finishes the job.
  const again = await runAbforge(args);
  expect(again.code, again.stderr).toBe(0);
  const result = JSON.parse(again.stdout) as { outcome: string; version: string };
  expect(["installed", "pending-reboot", "up-to-date"]).toContain(result.outcome);
  expect(result.version).toBe(NEW);
  const resumed = again.proc.lines.find((l) => /^resuming /.test(l.msg ?? ""));
  outcome.resumedAt = resumed ? Number(resumed.chunk) : 0;

  const after = await checkGuarantees({ disk: d, booted: "A", bootedSha256, stateDir });
  expect(after.violations).toEqual([]);
  const b = after.boot;
  expect(b?.order).toEqual(["B", "A"]);
  expect(b?.slots.B).toMatchObject({
    tries: TRIES,
    good: false,
    rootHash: manifest.verity.rootHash,
    version: NEW,
  });
  expect(b?.slots.A.good).toBe(true);
  expect(after.next).toBe("B");
  if (b) expect(await slotVerifies(d, b, "B")).toBeNull();
  expect(
    await sha256Range(d.path, { offset: d.slots.B.offset, size: manifest.slotImage.size }),
  ).toBe(manifest.slotImage.sha256);
  expect(await stateTemps(stateDir)).toEqual([]);
  outcome.recovered = true;
  // a passed case leaves nothing (a failed one keeps its disk for a look)
  await rm(d.path, { force: true });
  await rm(stateDir, { recursive: true, force: true });
}

describe("kill -9 of the agent at every phase of an install, then the same command again", () => {
  it("has at least 30 kill points over download, slot write, verification, state write and flip", () => {
    expect(killPoints().length).toBeGreaterThanOrEqual(30);
  });

  // Defined lazily: the kill points need the world's offsets, known after beforeAll.
  it("survives each of them (guarantees after the kill; the update completes on the next run)", async () => {
    const points = killPoints();
    const failures: string[] = [];
    for (const [i, kp] of points.entries()) {
      try {
        await crashAndRecover(kp, i);
      } catch (err) {
        failures.push(`${kp.name}: ${(err as Error).message}`);
      }
    }
    expect(failures).toEqual([]);
    const kills = outcomes.filter((o) => o.killed);
    expect(kills.length).toBeGreaterThanOrEqual(30);
    const phases = new Set(kills.map((o) => o.landed));
    for (const phase of [
      "the download (before the first slot byte)",
      "the slot write",
      "the verification",
      "a state write",
      "after the flip",
    ])
      expect(phases, phase).toContain(phase);
  });
});
