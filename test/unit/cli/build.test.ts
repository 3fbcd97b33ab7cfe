/**
 * `abforge build` as an operator runs it: the first steps of `abforge --help`
 * on a terminal (with mksquashfs's progress), and a build interrupted while
 * mksquashfs runs (README "What survives what": an interrupted build).
 */
import { spawn } from "node:child_process";
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { ABFORGE, abforge, runCaptured, startAbforge } from "../../helpers/cli.ts";
import { dirSnapshot, tempDir } from "../../helpers/tmp.ts";

const DEMO = fileURLToPath(new URL("../../../images/demo.yaml", import.meta.url));

function groupAlive(pgid: number): boolean {
  try {
    process.kill(-pgid, 0);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ESRCH") return false;
    throw err;
  }
}

/** Run a shell command line on a pseudo-terminal (util-linux script): what a person at a terminal sees. */
function onTerminal(command: string, env: NodeJS.ProcessEnv = {}) {
  return runCaptured("sh", ["-c", command], { env, terminal: true });
}

async function keys(dir: string): Promise<string> {
  const r = await abforge(["keygen", "--out", join(dir, "keys")]);
  expect(r.code, r.stderr).toBe(0);
  return join(dir, "keys", "signing.key");
}

const mksquashfsStarted = (l: Record<string, unknown>) =>
  l.module === "exec" && l.tool === "mksquashfs" && typeof l.pid === "number";

describe("an interrupted build", () => {
  it("SIGINT while mksquashfs runs: the tools' process group stopped, the temp dir gone, --out as it was; a killed build's temp dir removed by the next", async () => {
    const dir = tempDir("abforge-int-");
    const key = await keys(dir);
    const out = join(dir, "out");
    mkdirSync(out);
    writeFileSync(join(out, "disk.img"), "the previous build's disk");
    writeFileSync(join(out, "build.json"), "{}\n");
    const args = ["--log-level", "debug", "build", DEMO, "--key", key, "--out", out];

    // A build killed outright (SIGKILL: no cleanup) leaves its temp dir behind.
    const killed = startAbforge(args);
    const killedTool = await killed.logLine(mksquashfsStarted);
    killed.child.kill("SIGKILL");
    await killed.done;
    process.kill(-(killedTool.pid as number), "SIGKILL");
    const stale = readdirSync(out).filter((n) => n.startsWith(".build-"));
    expect(stale).toHaveLength(1);
    const before = dirSnapshot(out).filter((l) => !l.startsWith(".build-"));

    const b = startAbforge(args);
    const tool = await b.logLine(mksquashfsStarted);
    // On no terminal: no progress bar asked of mksquashfs.
    expect(tool.args).not.toContain("-info");
    expect(tool.ownGroup).toBe(true);
    const pgid = tool.pid as number;
    expect(groupAlive(pgid)).toBe(true);
    b.child.kill("SIGINT");
    const r = await b.done;
    expect(r.code, r.stderr).toBe(19);
    expect(r.stderr).toMatch(/abforge: build interrupted by SIGINT in the squashfs step/);
    expect(r.stderr).not.toMatch(/\n\s+at /);
    expect(groupAlive(pgid)).toBe(false);
    expect(dirSnapshot(out)).toEqual(before);
    const removed = JSON.stringify(join(out, stale[0]!));
    expect(r.stderr).toContain(`"dir":${removed}`);
  });

  it("SIGTERM while mksquashfs runs: an --out the build created is gone again", async () => {
    const dir = tempDir("abforge-int-");
    const key = await keys(dir);
    const out = join(dir, "new", "out");
    const b = startAbforge(["--log-level", "debug", "build", DEMO, "--key", key, "--out", out]);
    const tool = await b.logLine(mksquashfsStarted);
    b.child.kill("SIGTERM");
    const r = await b.done;
    expect(r.code, r.stderr).toBe(19);
    expect(r.stderr).toMatch(/build interrupted by SIGTERM/);
    expect(groupAlive(tool.pid as number)).toBe(false);
    expect(existsSync(join(dir, "new"))).toBe(false);
  });
});

describe("mksquashfs's progress", () => {
  it("is not asked for with --json, even on a terminal", async () => {
    const dir = tempDir("abforge-json-");
    const key = await keys(dir);
    const child = spawn(
      "script",
      [
        "-qefc",
        `${ABFORGE} --log-level debug build ${DEMO} --key ${key} --out ${join(dir, "out")} --json`,
        "/dev/null",
      ],
      { env: { ...process.env, ABFORGE_LOG_FORMAT: "json" }, stdio: ["ignore", "pipe", "pipe"] },
    );
    let out = "";
    const started = await new Promise<Record<string, unknown>>((resolve, reject) => {
      child.stdout.on("data", (d) => {
        out += d;
        const line = out.split(/\r?\n/).find((l) => l.includes('"msg":"mksquashfs started"'));
        if (line) resolve(JSON.parse(line.slice(line.indexOf("{"))));
      });
      child.on("close", () => reject(new Error(`build ended before mksquashfs: ${out}`)));
    });
    expect(started.args).toContain("-quiet");
    expect(started.args).not.toContain("-info");
    // stop it the way a closing terminal does: SIGHUP to abforge (mksquashfs's parent)
    const stat = readFileSync(`/proc/${started.pid}/stat`, "utf8");
    const abforgePid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
    process.kill(abforgePid, "SIGHUP");
    await new Promise((r) => child.on("close", r));
    expect(out).toMatch(/build interrupted by SIGHUP/);
    expect(groupAlive(started.pid as number)).toBe(false);
    expect(existsSync(join(dir, "out"))).toBe(false);
  });
});

describe("the first steps, on a terminal", () => {
  it("abforge --help's keygen, build (mksquashfs's progress on one line, one log line per event), verify", async () => {
    const help = await abforge(["--help"]);
    const steps = help.stdout
      .split("First steps:\n")[1]!
      .split("\n\n")[0]!
      .split("\n")
      .filter((l) => l.startsWith("  abforge "))
      .map((l) =>
        l
          .replace(/#.*/, "")
          .trim()
          .replace(/^abforge /, ""),
      );
    expect(steps.map((l) => l.split(" ")[0])).toEqual(["keygen", "build", "bundle", "qemu"]);
    const [keygen, build, verify] = steps as [string, string, string];
    const dir = tempDir("abforge-first-");
    const run = (cmd: string) => onTerminal(`cd ${dir} && ${ABFORGE} ${cmd}`);
    expect((await run(keygen)).code).toBe(0);
    const b = await run(build.replace("images/demo.yaml", DEMO));
    expect(b.code, b.out).toBe(0);
    // the progress line, redrawn in place
    const shown = [...b.out.matchAll(/\rsquashfs +(\d+)% \([\d.]+ \w+ of [\d.]+ \w+\)/g)].map((m) =>
      Number(m[1]),
    );
    expect(new Set(shown).size).toBeGreaterThan(3);
    expect(shown).toEqual([...shown].sort((x, y) => x - y));
    expect(b.out).toMatch(/\rsquashfs 100% \(([\d.]+ \w+) of \1\)/);
    // one line per event: every log line starts with its time
    // what stays on screen of each line: the text after its last carriage return
    const lines = b.out.split(/\r?\n/).map((l) =>
      (
        l
          .split("\r")
          .filter((seg) => seg.trim())
          .at(-1) ?? ""
      ).trimEnd(),
    );
    const logLines = lines.filter((l) => /^\S*\[\d\d:\d\d:\d\d\]/.test(l));
    expect(logLines.length).toBeGreaterThan(10);
    const others = lines.filter(
      (l) => l && !/^\S*\[\d\d:\d\d:\d\d\]/.test(l) && !/^(built| {2}\w+ )/.test(l),
    );
    expect(others).toEqual([]);
    const v = await run(verify);
    expect(v.code, v.out).toBe(0);
  });
});
