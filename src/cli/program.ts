/**
 * The abforge command-line program (its definition; main.ts runs it). Each command group lives in its own file
 * and only parses arguments; the work happens in the modules under src/.
 */
import { Command, Option } from "commander";
import { configureLogger, type LogFormat } from "../log.ts";
import { register as registerAgent } from "./agent.ts";
import { register as registerBootloader } from "./bootloader.ts";
import { register as registerBuild } from "./build.ts";
import { register as registerBundle } from "./bundle.ts";
import { register as registerDisk } from "./disk.ts";
import { EXIT_USAGE } from "./exit-codes.ts";
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
    .showHelpAfterError()
    .exitOverride((err) => {
      process.exit(err.exitCode === 0 ? 0 : EXIT_USAGE);
    })
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
  ]) {
    registerGroup(program);
  }
  return program;
}
