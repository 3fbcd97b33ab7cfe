/**
 * What the demo scripts (scripts/demo.ts, scripts/demo-host.ts) share: the
 * headline printer, running one abforge step, the signing key and the
 * release builds that a second run reuses.
 */
import { existsSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import { abforgeCommand } from "./fleet.ts";

export function say(text: string): void {
  process.stdout.write(`\n\x1b[1mdemo: ${text}\x1b[0m\n`);
}

/** Runs `abforge ARGS` with readable logs; its stdout, or an error naming `what`. */
export async function step(args: string[], what: string): Promise<string> {
  const r = await abforgeCommand(args, { ABFORGE_LOG_FORMAT: "pretty" });
  if (r.code !== 0) {
    process.stderr.write(r.stderr);
    throw new Error(`${what} failed (exit ${r.code})`);
  }
  return r.stdout;
}

/** `OUT/keys/signing.key`, made on the first run. */
export async function signingKey(out: string): Promise<string> {
  const keys = join(out, "keys");
  const key = join(keys, "signing.key");
  mkdirSync(out, { recursive: true });
  if (!existsSync(key)) {
    say("making a signing key");
    process.stdout.write(await step(["keygen", "--out", keys], "keygen"));
  }
  return key;
}

export interface Release {
  /** Its folder under OUT. */
  name: string;
  spec: string;
  version: string;
  /** `--format`, when not the default. */
  formats?: string;
}

/**
 * Builds each release into OUT/NAME, reusing a finished build (its
 * build.json) unless `rebuild`; `howLong(n)` says what the n-th build
 * (0-based, counting builds that run) will cost.
 */
export async function buildReleases(
  o: { root: string; out: string; key: string; rebuild: boolean },
  releases: readonly Release[],
  howLong: (n: number) => string,
): Promise<void> {
  let built = 0;
  for (const r of releases) {
    const dir = join(o.out, r.name);
    if (!o.rebuild && existsSync(join(dir, "build.json"))) {
      say(`reusing ${r.spec} ${r.version} from ${dir} (--rebuild to build again)`);
      continue;
    }
    say(`building ${r.spec} version ${r.version} (${howLong(built++)})`);
    const format = r.formats ? ["--format", r.formats] : [];
    const args = ["build", join(o.root, r.spec), "--out", dir, "--version", r.version];
    process.stdout.write(await step([...args, "--key", o.key, ...format], "build"));
  }
}
