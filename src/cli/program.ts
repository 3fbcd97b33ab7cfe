/**
 * The abforge command-line program (its definition; main.ts runs it). Each command group lives in its own file
 * and only parses arguments; the work happens in the modules under src/.
 */
import { Command, type CommanderError, Option } from "commander";
import { configureLogger, type LogFormat } from "../log.ts";
import { register as registerAgent } from "./agent.ts";
import { register as registerBootloader } from "./bootloader.ts";
import { register as registerBuild } from "./build.ts";
import { register as registerBundle } from "./bundle.ts";
import { register as registerDisk } from "./disk.ts";
import { EXIT_USAGE } from "./exit-codes.ts";
import { register as registerFleet } from "./fleet.ts";
import { register as registerLock } from "./lock.ts";
import { register as registerQemu } from "./qemu.ts";
import { register as registerRepo } from "./repo.ts";
import { register as registerSlots } from "./slots.ts";
import { register as registerVerity } from "./verity.ts";

export function createProgram(): Command {
  const program = new Command();
  program
    .name("abforge")
    .description("Build immutable dm-verity A/B images and keep hosts on them with atomic updates")
    .version("0.1.0")
    // Program options (--version, --log-level, ...) go before the command, so
    // a command's own options may reuse their names (`build --version 2.0.0`).
    .enablePositionalOptions()
    .addOption(
      new Option("--log-level <level>", "log level")
        .choices(["trace", "debug", "info", "warn", "error", "fatal", "silent"])
        .env("ABFORGE_LOG_LEVEL")
        .default("info"),
    )
    .addOption(
      new Option(
        "--log-format <format>",
        "log format (default: pretty on a terminal, JSON otherwise)",
      )
        .choices(["pretty", "json"])
        .env("ABFORGE_LOG_FORMAT"),
    )
    .hook("preAction", (thisCommand) => {
      const opts = thisCommand.opts<{ logLevel: string; logFormat?: LogFormat }>();
      configureLogger({ level: opts.logLevel, format: opts.logFormat });
    });
  for (const registerGroup of [
    registerBuild,
    registerBundle,
    registerVerity,
    registerDisk,
    registerBootloader,
    registerSlots,
    registerQemu,
    registerRepo,
    registerAgent,
    registerLock,
    registerFleet,
  ]) {
    registerGroup(program);
  }
  program.addHelpText("after", FIRST_STEPS);
  forEachCommand(program, [], usageErrors);
  return program;
}

/** `abforge --help`'s epilogue: the first steps, as a new user takes them. */
const FIRST_STEPS = `
First steps:
  abforge keygen --out keys                   # signing.key and signing.pub
  abforge build images/demo.yaml --key keys/signing.key --out out
                                              # out/disk.img and out/demo-1.0.0.bundle
  abforge bundle verify out/demo-1.0.0.bundle --pubkey keys/signing.pub
  abforge qemu out/disk.img                   # boot it; Ctrl-C powers the VM off

Each command has its own help: abforge build --help. The image spec is
documented in src/build/README.md ("The spec"); every command and exit code
in docs/cli.md.`;

function forEachCommand(
  cmd: Command,
  path: string[],
  fn: (cmd: Command, path: string[]) => void,
): void {
  const here = [...path, cmd.name()];
  fn(cmd, here);
  for (const sub of cmd.commands) forEachCommand(sub, here, fn);
}

/**
 * A usage error (unknown command or option, missing or invalid argument)
 * prints one line and where the help is, not the whole help; with --json
 * anywhere on the command line it is also a JSON error on stdout, as the
 * command's own errors are. Exit status 2.
 */
function usageErrors(cmd: Command, path: string[]): void {
  cmd.configureOutput({ outputError: () => {} });
  cmd.exitOverride((err: CommanderError) => {
    if (err.exitCode === 0) process.exit(0);
    // Help shown for a group without its subcommand: that help is the message.
    if (err.code === "commander.help" || err.code === "commander.helpDisplayed") {
      process.exit(EXIT_USAGE);
    }
    const message = err.message.replace(/^error: /, "");
    if (process.argv.slice(2).includes("--json")) {
      const error = { code: "USAGE", message, details: { reason: err.code } };
      process.stdout.write(`${JSON.stringify({ error }, null, 2)}\n`);
    }
    process.stderr.write(`abforge: ${message}\n(see "${path.join(" ")} --help")\n`);
    process.exit(EXIT_USAGE);
  });
}
