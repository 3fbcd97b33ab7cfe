/**
 * vitest global setup for the QEMU suites: builds the fixture images once
 * (see fixtures.ts) with the real CLI. SOURCE_DATE_EPOCH keeps them
 * reproducible; a rebuild happens whenever the fixtures are missing.
 *
 * The fixtures marked `later` (the container host: minutes of debootstrap
 * and xz) are built by a child process started here, while the suites that
 * do not need them boot; the suites that do wait for them and run last
 * (sequencer.ts). Run directly (`node build-images.ts NAME...`) this file is
 * that child: it builds NAME... one after another and leaves `.failed` with
 * the error beside a fixture it could not build.
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { existsSync, mkdirSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { abforge } from "../helpers/cli.ts";
import {
  FAILED_MARK,
  FIXTURES,
  IMAGES,
  type ImageName,
  KEY_DIR,
  ROOT,
  SIGNING_KEY,
  SNAKEOIL_KEY,
  SNAKEOIL_KEY_PACKAGED,
} from "./fixtures.ts";

/** A background build that outlives this bound is stopped (its suites then fail with it). */
const LATER_TIMEOUT_MS = 40 * 60_000;

/**
 * Build fixture `name` unless it is built: the key pair and the Secure Boot
 * test key first. For a suite run on its own, without this global setup.
 */
export async function buildFixture(name: ImageName): Promise<void> {
  await ensureKeys();
  await build(name);
}

async function ensureKeys(): Promise<void> {
  mkdirSync(FIXTURES, { recursive: true });
  if (!existsSync(SIGNING_KEY)) {
    const r = await abforge(["keygen", "--out", KEY_DIR]);
    if (r.code !== 0) throw new Error(`keygen failed: ${r.stderr}`);
  }
  if (!existsSync(SNAKEOIL_KEY)) {
    mkdirSync(dirname(SNAKEOIL_KEY), { recursive: true });
    execFileSync("openssl", [
      "pkey",
      "-in",
      SNAKEOIL_KEY_PACKAGED,
      "-passin",
      "pass:snakeoil",
      "-out",
      SNAKEOIL_KEY,
    ]);
  }
}

async function build(name: ImageName): Promise<void> {
  const { spec, version, formats } = IMAGES[name];
  const out = join(FIXTURES, name);
  if (existsSync(join(out, "build.json"))) return;
  rmSync(join(out, FAILED_MARK), { force: true });
  const started = Date.now();
  process.stderr.write(`qemu fixtures: building ${spec} ${version} ...\n`);
  const r = await abforge(
    [
      "build",
      join(ROOT, spec),
      "--out",
      out,
      "--version",
      version,
      "--key",
      SIGNING_KEY,
      ...(formats ? ["--format", formats] : []),
    ],
    { env: { SOURCE_DATE_EPOCH: "1700000000" } },
  );
  if (r.code !== 0)
    throw new Error(
      `build of ${spec} ${version} failed (exit ${r.code}):\n${r.stderr.slice(-4000)}`,
    );
  process.stderr.write(
    `qemu fixtures: ${name} built in ${((Date.now() - started) / 1000).toFixed(1)} s\n`,
  );
}

let later: ChildProcess | undefined;

export default async function setup(): Promise<() => void> {
  // The test files compute the same directory from the sources; pin the one
  // built here, so an edit during the run cannot send them elsewhere.
  process.env.ABFORGE_QEMU_FIXTURES = FIXTURES;
  mkdirSync(FIXTURES, { recursive: true });
  // Fixtures of other source states (each ~400 MB) are never booted again.
  const all = dirname(FIXTURES);
  if (all === join(ROOT, ".cache", "qemu-fixtures"))
    for (const old of readdirSync(all))
      if (old !== basename(FIXTURES)) rmSync(join(all, old), { recursive: true, force: true });
  await ensureKeys();
  const names = Object.keys(IMAGES) as ImageName[];
  for (const name of names.filter((n) => !IMAGES[n].later)) await build(name);
  const rest = names.filter((n) => IMAGES[n].later && !existsSync(join(FIXTURES, n, "build.json")));
  if (rest.length > 0) {
    later = spawn(process.execPath, [fileURLToPath(import.meta.url), ...rest], {
      env: process.env,
      stdio: ["ignore", "inherit", "inherit"],
    });
    const timer = setTimeout(() => later?.kill("SIGTERM"), LATER_TIMEOUT_MS);
    timer.unref();
    later.on("exit", (code, signal) => {
      clearTimeout(timer);
      // stopped before it could say so itself: the waiting suites fail with this
      for (const n of rest) {
        const dir = join(FIXTURES, n);
        if (existsSync(join(dir, "build.json")) || existsSync(join(dir, FAILED_MARK))) continue;
        mkdirSync(dir, { recursive: true });
        writeFileSync(
          join(dir, FAILED_MARK),
          `the background build stopped (${signal ?? `exit ${code}`})`,
        );
      }
    });
  }
  return () => {
    if (later && later.exitCode === null) later.kill("SIGTERM");
  };
}

// The background child: build each named fixture, record a failure beside it.
if (process.argv[1] === fileURLToPath(import.meta.url)) {
  for (const name of process.argv.slice(2) as ImageName[]) {
    try {
      await build(name);
    } catch (err) {
      mkdirSync(join(FIXTURES, name), { recursive: true });
      writeFileSync(join(FIXTURES, name, FAILED_MARK), String((err as Error).message));
    }
  }
}
