/**
 * `abforge bootloader ...`: the GRUB environment block (`env show|set|unset`),
 * a drop-in for `grub-editenv FILE list|set|unset` on 1024-byte blocks.
 */
import type { Command } from "commander";
import {
  ENV_BLOCK_SIZE,
  type EnvLine,
  editEnvFile,
  envContentLength,
  envVars,
  parseAssignment,
  readEnvFile,
  setEnvVar,
  unsetEnvVar,
} from "../bootloader/index.ts";
import { action, type JsonOption, output } from "./command.ts";

function envReport(path: string, lines: readonly EnvLine[]) {
  const used = envContentLength(lines);
  return {
    path,
    variables: Object.fromEntries(envVars(lines)),
    usedBytes: used,
    freeBytes: ENV_BLOCK_SIZE - used,
  };
}

/** `name=value` per line, as `grub-editenv FILE list` prints them. */
function listText(lines: readonly EnvLine[]): string {
  return [...envVars(lines)].map(([k, v]) => `${k}=${v}\n`).join("");
}

export function register(program: Command): void {
  const bootloader = program
    .command("bootloader")
    .description("GRUB environment block and boot files");
  const env = bootloader
    .command("env")
    .description("read and edit a GRUB environment block file (1024 bytes, like grub-editenv)");

  env
    .command("show")
    .description("list the variables (the output of grub-editenv FILE list)")
    .argument("<file>", "environment block file")
    .option("--json", "print JSON")
    .action(
      action(async (file: string, opts: JsonOption) => {
        const lines = await readEnvFile(file);
        output(opts, envReport(file, lines), () => listText(lines));
      }),
    );

  env
    .command("set")
    .description("set variables; creates the file when it does not exist")
    .argument("<file>", "environment block file")
    .argument("<assignments...>", "NAME=VALUE (the value may contain = and spaces)")
    .option("--json", "print the resulting variables as JSON")
    .action(
      action(async (file: string, assignments: string[], opts: JsonOption) => {
        const pairs = assignments.map(parseAssignment);
        const lines = await editEnvFile(
          file,
          (l) => pairs.reduce((acc, [k, v]) => setEnvVar(acc, k, v), l),
          { create: true },
        );
        output(opts, envReport(file, lines), () => "");
      }),
    );

  env
    .command("unset")
    .description("remove variables (an absent variable is no error)")
    .argument("<file>", "environment block file")
    .argument("<names...>", "variable names")
    .option("--json", "print the resulting variables as JSON")
    .action(
      action(async (file: string, names: string[], opts: JsonOption) => {
        const lines = await editEnvFile(file, (l) =>
          names.reduce((acc, k) => unsetEnvVar(acc, k), l),
        );
        output(opts, envReport(file, lines), () => "");
      }),
    );
}
