/**
 * bin/abforge, the launcher: Node's compile cache, only ever in a private
 * directory, and the agent's V8 flags (the rules are in bin/abforge).
 */
import { chmodSync, mkdirSync, readdirSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { abforge } from "../../helpers/cli.ts";
import { tempDir } from "../../helpers/tmp.ts";

const CACHE = join("abforge", "node-compile-cache");

/** A fresh home inside a private temp dir. */
function home(): string {
  const root = tempDir("abforge-cc-");
  chmodSync(root, 0o700);
  const h = join(root, "home");
  mkdirSync(h, { mode: 0o700 });
  return h;
}

/** `abforge --version` with this environment (and no cache settings of the test's own). */
async function run(env: NodeJS.ProcessEnv) {
  const r = await abforge(["--version"], {
    env: {
      XDG_CACHE_HOME: undefined,
      NODE_COMPILE_CACHE: undefined,
      NODE_DISABLE_COMPILE_CACHE: undefined,
      ...env,
    },
  });
  expect(r.code, r.stderr).toBe(0);
}

/** Compiled modules stored in a cache directory (one subdirectory per Node version). */
function entries(dir: string): number {
  let n = 0;
  for (const v of readdirSync(dir)) n += readdirSync(join(dir, v)).length;
  return n;
}

describe("bin/abforge compile cache", () => {
  it("rule 2: fills $HOME/.cache/abforge/node-compile-cache, made mode 0700", async () => {
    const h = home();
    await run({ HOME: h });
    const dir = join(h, ".cache", CACHE);
    expect(statSync(dir).mode & 0o777).toBe(0o700);
    expect(statSync(join(h, ".cache", "abforge")).mode & 0o777).toBe(0o700);
    expect(readdirSync(dir)[0]).toMatch(/^v24\./);
    // main.ts, program.ts and what they import
    expect(entries(dir)).toBeGreaterThan(20);
  });

  it("rule 2: an absolute XDG_CACHE_HOME first, a relative one ignored", async () => {
    const h = home();
    await run({ HOME: h, XDG_CACHE_HOME: join(h, "xdg") });
    expect(entries(join(h, "xdg", CACHE))).toBeGreaterThan(20);
    await run({ HOME: h, XDG_CACHE_HOME: "xdg-relative" });
    expect(entries(join(h, ".cache", CACHE))).toBeGreaterThan(20);
  });

  it("rule 1: the caller's NODE_COMPILE_CACHE, or none with NODE_DISABLE_COMPILE_CACHE", async () => {
    const h = home();
    const own = join(h, "own");
    await run({ HOME: h, NODE_COMPILE_CACHE: own });
    expect(entries(own)).toBeGreaterThan(20);
    await run({ HOME: h, NODE_DISABLE_COMPILE_CACHE: "1" });
    expect(readdirSync(h)).toEqual(["own"]);
  });

  it("rule 3: not used when another user could write a directory on the way", async () => {
    for (const loose of [".cache", join(".cache", "abforge"), join(".cache", CACHE)]) {
      const h = home();
      mkdirSync(join(h, ".cache", CACHE), { recursive: true, mode: 0o700 });
      chmodSync(join(h, loose), 0o777);
      await run({ HOME: h });
      expect(entries(join(h, ".cache", CACHE)), `${loose} mode 0777`).toBe(0);
    }
    // the home (the base's parent) writable by others and not sticky
    const h = home();
    chmodSync(h, 0o777);
    await run({ HOME: h });
    expect(entries(join(h, ".cache", CACHE))).toBe(0);
  });

  it("rule 2: a sticky world-writable parent of the base (as /tmp) is fine", async () => {
    const h = home();
    chmodSync(h, 0o1777);
    await run({ HOME: h });
    expect(entries(join(h, ".cache", CACHE))).toBeGreaterThan(20);
  });

  it("rule 3: not used through a symlink", async () => {
    const h = home();
    const elsewhere = join(h, "elsewhere");
    mkdirSync(elsewhere, { mode: 0o700 });
    mkdirSync(join(h, ".cache"), { mode: 0o700 });
    symlinkSync(elsewhere, join(h, ".cache", "abforge"));
    await run({ HOME: h });
    expect(readdirSync(elsewhere).flatMap((d) => readdirSync(join(elsewhere, d)))).toEqual([]);
  });

  it("rule 3: no home, no cache (and the command still works)", async () => {
    await run({ HOME: undefined });
    await run({ HOME: "relative-home" });
  });
});

describe("bin/abforge V8 flags", () => {
  /** The arguments bin/abforge gives Node, seen by a stand-in for it. */
  async function nodeArgs(args: string[]): Promise<string[]> {
    const dir = tempDir("abforge-node-");
    const fake = join(dir, "node");
    writeFileSync(fake, '#!/bin/sh\nfor a in "$@"; do echo "$a"; done\n', { mode: 0o755 });
    const r = await abforge(args, { env: { ABFORGE_NODE: fake } });
    expect(r.code, r.stderr).toBe(0);
    return r.stdout.trim().split("\n");
  }
  const FLAGS = ["--max-semi-space-size=1", "--no-opt", "--no-maglev"];

  it("gives the agent a small young generation and no optimizing compilers", async () => {
    for (const args of [
      ["agent", "run"],
      ["--log-level", "warn", "agent", "install", "x.bundle"],
      ["--log-format=json", "agent", "status"],
    ]) {
      const seen = await nodeArgs(args);
      expect(seen.slice(0, FLAGS.length), args.join(" ")).toEqual(FLAGS);
      expect(seen.slice(-args.length)).toEqual(args);
    }
  });

  it("leaves every other command at Node's defaults", async () => {
    for (const args of [
      ["build", "spec.yaml", "--out", "agent"],
      ["--log-level", "agent", "repo", "serve"],
      ["--version"],
    ]) {
      const seen = await nodeArgs(args);
      for (const f of FLAGS) expect(seen, args.join(" ")).not.toContain(f);
    }
  });
});
