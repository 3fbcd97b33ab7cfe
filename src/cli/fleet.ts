import { type Command, InvalidArgumentError, Option } from "commander";
import {
  fleetHosts,
  fleetPause,
  fleetResume,
  fleetSummary,
  type HaltPolicy,
  type Host,
  initTokens,
  parseHaltAfter,
  REPORT_EVENTS,
  readToken,
  type Summary,
  serveFleet,
} from "../fleet/index.ts";
import { action, type JsonOption, output, portOption } from "./command.ts";

interface ClientCliOptions extends JsonOption {
  server: string;
  tokenFile: string;
}

function haltOption(value: string): HaltPolicy {
  try {
    return parseHaltAfter(value);
  } catch (err) {
    throw new InvalidArgumentError((err as Error).message.replace(/^--halt-after /, ""));
  }
}

function clientOptions(cmd: Command): Command {
  return cmd
    .requiredOption("--server <url>", "the fleet server, e.g. http://fleet.example:8470/")
    .requiredOption(
      "--token-file <file>",
      "the operator token (DIR/operator.token from fleet init)",
    )
    .option("--json", "print the result as JSON");
}

async function client(opts: ClientCliOptions) {
  return { server: opts.server, token: await readToken(opts.tokenFile) };
}

function formatSummary(s: Summary): string {
  const lines = [`${s.hosts} hosts, ${s.stuck} stuck (at ${s.now})`];
  for (const v of s.versions)
    lines.push(`  ${v.channel.padEnd(12)} ${v.version.padEnd(16)} ${v.hosts}`);
  const holding = s.holds.filter((h) => h.resumedAt === undefined);
  lines.push(`holds: ${holding.length === 0 ? "none" : ""}`);
  for (const h of holding)
    lines.push(`  ${h.channel} ${h.version} (${h.by}, ${h.at}): ${h.reason}`);
  if (s.stuckHosts.length > 0) lines.push("stuck:");
  for (const h of s.stuckHosts) lines.push(`  ${h.hostname} ${h.version}: ${h.stuck?.why}`);
  if (s.failures.length > 0) lines.push("recent failures:");
  for (const f of s.failures.slice(0, 10))
    lines.push(
      `  ${f.receivedAt} ${f.hostname} ${f.event} ${f.target ?? f.version}: ${f.reason ?? (f.error ? `${f.error.code}: ${f.error.message}` : "")}`,
    );
  return lines.join("\n");
}

function formatHosts(hosts: Host[]): string {
  if (hosts.length === 0) return "no hosts match";
  return hosts
    .map(
      (h) =>
        `${h.hostname.padEnd(24)} ${h.machineId} ${h.channel.padEnd(10)} ${h.version.padEnd(12)} ${h.event.padEnd(18)} ${h.receivedAt}${h.stuck ? `  STUCK: ${h.stuck.why}` : h.lastError ? `  last error ${h.lastError.code}: ${h.lastError.message}` : ""}`,
    )
    .join("\n");
}

export function register(program: Command): void {
  const fleet = program
    .command("fleet")
    .description(
      "the fleet server: agents' reports, the dashboard, holds that pause a version (src/fleet/README.md)",
    );

  fleet
    .command("init")
    .description(
      "write DIR/operator.token and DIR/enroll.token (random, mode 0600); never replaces them",
    )
    .requiredOption("--dir <dir>", "the fleet server's directory (created if missing)")
    .option("--json", "print the result as JSON")
    .addHelpText(
      "after",
      `
Example:
  abforge fleet init --dir /var/lib/abforge-fleet
  # agents get enroll.token (update.report in their config); operators keep operator.token`,
    )
    .action(
      action(async (opts: JsonOption & { dir: string }) => {
        const r = initTokens(opts.dir);
        output(opts, r, () => `wrote ${r.operatorTokenFile} and ${r.enrollTokenFile} (mode 0600)`);
      }),
    );

  fleet
    .command("serve")
    .description(
      "serve the fleet API under /v1/ and the dashboard at /; prints the URL; runs until SIGINT/SIGTERM",
    )
    .requiredOption("--dir <dir>", "the directory fleet init wrote the tokens into")
    .option("--db <url>", "sqlite:PATH or postgres://user@host/db (default: sqlite:DIR/fleet.db)")
    .option("--host <address>", "address to listen on", "127.0.0.1")
    .option(
      "--port <n>",
      "TCP port, 0-65535 (0: any free port)",
      portOption("--port", { anyPort: true }),
      8470,
    )
    .addOption(
      new Option(
        "--halt-after <n|n%>",
        "hold a version automatically once N hosts (or N% of those that tried it) rolled back or failed to install it",
      ).argParser(haltOption),
    )
    .option("--json", "print the URL as JSON")
    .addHelpText(
      "after",
      `
Examples:
  abforge fleet serve --dir /var/lib/abforge-fleet --halt-after 3
  abforge fleet serve --dir /etc/abforge-fleet --db postgres://fleet@db.internal/fleet \\
      --host 0.0.0.0 --port 8470 --halt-after 10%
Several servers may share one PostgreSQL database behind a load balancer.
Open http://HOST:PORT/ for the dashboard; it asks for the operator token.`,
    )
    .action(
      action(
        async (
          opts: JsonOption & {
            dir: string;
            db?: string;
            host: string;
            port: number;
            haltAfter?: HaltPolicy;
          },
        ) => {
          const server = await serveFleet({
            dir: opts.dir,
            host: opts.host,
            port: opts.port,
            ...(opts.db === undefined ? {} : { db: opts.db }),
            ...(opts.haltAfter === undefined ? {} : { haltAfter: opts.haltAfter }),
          });
          output(opts, { url: server.url }, () => server.url);
          const signal = await new Promise<NodeJS.Signals>((resolve) => {
            process.once("SIGINT", resolve);
            process.once("SIGTERM", resolve);
          });
          await server.close();
          process.stderr.write(`abforge: ${signal}: fleet server stopped\n`);
        },
      ),
    );

  clientOptions(
    fleet
      .command("status")
      .description(
        "the fleet's summary: versions per channel, holds, stuck hosts, recent failures",
      ),
  )
    .addHelpText(
      "after",
      `
Example:
  abforge fleet status --server http://127.0.0.1:8470/ --token-file /var/lib/abforge-fleet/operator.token`,
    )
    .action(
      action(async (opts: ClientCliOptions) => {
        const s = await fleetSummary(await client(opts));
        output(opts, s, () => formatSummary(s));
      }),
    );

  clientOptions(
    fleet
      .command("hosts")
      .description("the hosts and their latest state, filtered")
      .option("--channel <c>", "only this channel")
      .option("--version <v>", "only hosts running this version")
      .addOption(
        new Option("--state <s>", "only hosts whose last event is this, or stuck ones").choices([
          ...REPORT_EVENTS,
          "stuck",
        ]),
      )
      .option("--search <text>", "part of a hostname or machine id"),
  )
    .addHelpText(
      "after",
      `
Examples:
  abforge fleet hosts --server http://127.0.0.1:8470/ --token-file operator.token --state stuck
  abforge fleet hosts --server http://127.0.0.1:8470/ --token-file operator.token --channel stable --version 3.0.0 --json`,
    )
    .action(
      action(
        async (
          opts: ClientCliOptions & {
            channel?: string;
            version?: string;
            state?: string;
            search?: string;
          },
        ) => {
          const hosts = await fleetHosts(await client(opts), {
            ...(opts.channel === undefined ? {} : { channel: opts.channel }),
            ...(opts.version === undefined ? {} : { version: opts.version }),
            ...(opts.state === undefined ? {} : { state: opts.state }),
            ...(opts.search === undefined ? {} : { search: opts.search }),
          });
          output(opts, { hosts }, () => formatHosts(hosts));
        },
      ),
    );

  clientOptions(
    fleet
      .command("pause")
      .description(
        "hold VERSION on CHANNEL: agents that read holds do not install it until resumed",
      )
      .argument("<channel>", "channel name")
      .argument("<version>", "the version to hold")
      .option("--reason <text>", "why, shown on the dashboard"),
  )
    .addHelpText(
      "after",
      `
Example:
  abforge fleet pause stable 3.0.0 --reason "bad NIC driver" --server http://127.0.0.1:8470/ --token-file operator.token
A hold only delays the named version; it never makes a host install another.`,
    )
    .action(
      action(
        async (channel: string, version: string, opts: ClientCliOptions & { reason?: string }) => {
          const r = await fleetPause(await client(opts), channel, version, opts.reason);
          output(opts, r, () =>
            r.created
              ? `paused ${channel} ${version}: ${r.hold.reason}`
              : `${channel} ${version} was already held: ${r.hold.reason}`,
          );
        },
      ),
    );

  clientOptions(
    fleet
      .command("resume")
      .description(
        "lift the hold of VERSION on CHANNEL (an automatic halt too; it does not return)",
      )
      .argument("<channel>", "channel name")
      .argument("<version>", "the held version"),
  )
    .addHelpText(
      "after",
      `
Example:
  abforge fleet resume stable 3.0.0 --server http://127.0.0.1:8470/ --token-file operator.token`,
    )
    .action(
      action(async (channel: string, version: string, opts: ClientCliOptions) => {
        await fleetResume(await client(opts), channel, version);
        output(opts, { resumed: true, channel, version }, () => `resumed ${channel} ${version}`);
      }),
    );
}
