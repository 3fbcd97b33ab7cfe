/** The CLI reference (docs/cli.md), generated from the commander program and the exit-code table. */
import type { Command } from "commander";
import { EXIT_CODES } from "./exit-codes.ts";
import { createProgram } from "./program.ts";

function walk(cmd: Command, path: string[], out: string[]): void {
  const name = [...path, cmd.name()].join(" ");
  // outputHelp, not helpInformation: the text a command adds after its help is part of it
  let help = "";
  cmd.configureOutput({
    getOutHelpWidth: () => 100,
    getErrHelpWidth: () => 100,
    writeOut: (text) => {
      help += text;
    },
  });
  cmd.outputHelp();
  out.push(`## ${name}`, "", "```", help.trimEnd(), "```", "");
  for (const sub of cmd.commands) walk(sub, [...path, cmd.name()], out);
}

export function cliReference(): string {
  const out = [
    "# abforge command reference",
    "",
    "Generated from the commander definitions by `node scripts/cli-docs.ts`; do not edit by hand.",
    "Program options (`--log-level`, `--log-format`, `--version`) go before the command.",
    "",
  ];
  walk(createProgram(), [], out);
  out.push(
    "## Exit codes",
    "",
    "0 success · 1 unexpected error (a bug) · 2 usage error. Every expected failure has its own code:",
    "",
    "| code | exit |",
    "| --- | --- |",
    ...Object.entries(EXIT_CODES)
      .sort((a, b) => a[1] - b[1])
      .map(([code, exit]) => `| \`${code}\` | ${exit} |`),
    "",
  );
  return out.join("\n");
}
