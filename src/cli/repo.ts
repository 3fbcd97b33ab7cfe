import { type Command, InvalidArgumentError } from "commander";
import { loadPrivateKey } from "../bundle/index.ts";
import {
  DEFAULT_EXPIRES_IN_MS,
  formatWaves,
  parseWaves,
  publish,
  serve,
  type Wave,
} from "../repo/index.ts";
import { action, intOption, type JsonOption, output, portOption } from "./command.ts";

interface PublishCliOptions extends JsonOption {
  repo: string;
  channel: string;
  key: string;
  expiresIn: number;
  minUpdateFrom?: string;
  rolloutPercent: number;
  waves?: Wave[];
}

interface ServeCliOptions extends JsonOption {
  repo: string;
  port: number;
  host: string;
}

const UNITS: Record<string, number> = {
  ms: 1,
  s: 1000,
  m: 60_000,
  h: 3_600_000,
  d: 86_400_000,
  w: 604_800_000,
};

/** "30d", "12h", "90m", "45s", "500ms", "2w" → milliseconds. */
export function parseDuration(value: string): number {
  const m = /^(\d+)(ms|s|m|h|d|w)$/.exec(value.trim());
  const n = m ? Number(m[1]) * (UNITS[m[2] ?? ""] ?? 0) : 0;
  if (!m || n <= 0 || !Number.isSafeInteger(n))
    throw new InvalidArgumentError(
      `must be a positive duration like 30d, 12h, 90m, 45s or 500ms, got "${value}"`,
    );
  return n;
}

function wavesOption(value: string): Wave[] {
  const r = parseWaves(value);
  if ("problems" in r) throw new InvalidArgumentError(r.problems.join("; "));
  return r.waves;
}

export function register(program: Command): void {
  const repo = program
    .command("repo")
    .description("a static update repository: publish bundles to channels, serve it over HTTP");

  repo
    .command("publish")
    .description(
      "copy a signed bundle into the repository and write the channel's signed index (atomically)",
    )
    .argument("<bundle>", "the bundle file (signed with --key)")
    .requiredOption("--repo <dir>", "repository directory (created if missing)")
    .requiredOption("--channel <name>", "channel name, e.g. stable")
    .requiredOption("--key <file>", "private key that signed the bundle; it signs the index")
    .option(
      "--expires-in <duration>",
      "index lifetime (agents refuse it afterwards; re-publish to renew)",
      parseDuration,
      DEFAULT_EXPIRES_IN_MS,
    )
    .option("--min-update-from <semver>", "oldest running version that may install this bundle")
    .option(
      "--rollout-percent <n>",
      "share of hosts (0-100) that take this version",
      intOption("--rollout-percent"),
      100,
    )
    .option(
      "--waves <list>",
      'staged waves: TIME=PERCENT% after the index\'s issuedAt, cumulative, the last 100%, e.g. "1h=1%,6h=5%,1d=25%,3d=100%"',
      wavesOption,
    )
    .option("--json", "print the result as JSON")
    .addHelpText(
      "after",
      "\nExamples:\n  abforge repo publish demo-2.0.0.bundle --repo ./repo --channel stable --key signing.key\n  abforge repo publish demo-3.0.0.bundle --repo ./repo --channel stable --key signing.key --waves 1h=1%,6h=5%,1d=25%,3d=100%\n",
    )
    .action(
      action(async (bundle: string, opts: PublishCliOptions) => {
        const key = await loadPrivateKey(opts.key);
        const r = await publish({
          repoDir: opts.repo,
          bundlePath: bundle,
          channel: opts.channel,
          key,
          expiresInMs: opts.expiresIn,
          rolloutPercent: opts.rolloutPercent,
          ...(opts.waves ? { waves: opts.waves } : {}),
          now: new Date(),
          ...(opts.minUpdateFrom === undefined ? {} : { minUpdateFrom: opts.minUpdateFrom }),
        });
        output(
          opts,
          r,
          () =>
            `published ${r.name} ${r.version} to channel ${r.channel} (serial ${r.serial}, expires ${r.expiresAt})\n` +
            `  bundle ${r.bundlePath} (${r.size} bytes, sha256 ${r.sha256}${r.bundleCopied ? "" : ", already present"})\n` +
            `  index  ${r.indexPath} signed by ${r.keyId}${opts.waves ? `\n  waves  ${formatWaves(opts.waves)} after ${r.issuedAt}` : ""}`,
        );
      }),
    );

  repo
    .command("serve")
    .description(
      "serve the repository over HTTP (GET/HEAD, Range, ETag); prints the URL; runs until SIGINT/SIGTERM",
    )
    .requiredOption("--repo <dir>", "repository directory")
    .requiredOption(
      "--port <n>",
      "TCP port, 0-65535 (0: any free port)",
      portOption("--port", { anyPort: true }),
    )
    .option("--host <address>", "address to listen on", "127.0.0.1")
    .option("--json", "print the URL as JSON")
    .action(
      action(async (opts: ServeCliOptions) => {
        const server = await serve({ repoDir: opts.repo, host: opts.host, port: opts.port });
        output(opts, { url: server.url, repoDir: opts.repo }, () => server.url);
        const signal = await new Promise<NodeJS.Signals>((resolve) => {
          process.once("SIGINT", resolve);
          process.once("SIGTERM", resolve);
        });
        await server.close();
        process.stderr.write(`abforge: ${signal}: stopped serving ${opts.repo}\n`);
      }),
    );
}
