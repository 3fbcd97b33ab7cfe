/**
 * vitest global setup for the QEMU suites: builds the fixture images once
 * (see fixtures.ts) with the real CLI. SOURCE_DATE_EPOCH keeps them
 * reproducible; a rebuild happens whenever the fixtures are missing.
 */
import { existsSync, mkdirSync, readdirSync, rmSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import { abforge } from "../helpers/cli.ts";
import { FIXTURES, IMAGES, KEY_DIR, ROOT, SIGNING_KEY } from "./fixtures.ts";

export default async function setup(): Promise<void> {
  // The test files compute the same directory from the sources; pin the one
  // built here, so an edit during the run cannot send them elsewhere.
  process.env.ABFORGE_QEMU_FIXTURES = FIXTURES;
  mkdirSync(FIXTURES, { recursive: true });
  // Fixtures of other source states (each ~400 MB) are never booted again.
  const all = dirname(FIXTURES);
  if (all === join(ROOT, ".cache", "qemu-fixtures"))
    for (const old of readdirSync(all))
      if (old !== basename(FIXTURES)) rmSync(join(all, old), { recursive: true, force: true });
  if (!existsSync(SIGNING_KEY)) {
    const r = await abforge(["keygen", "--out", KEY_DIR]);
    if (r.code !== 0) throw new Error(`keygen failed: ${r.stderr}`);
  }
  for (const [name, { spec, version, formats }] of Object.entries(IMAGES)) {
    const out = join(FIXTURES, name);
    if (existsSync(join(out, "build.json"))) continue;
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
}
