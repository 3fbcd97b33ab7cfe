/**
 * Helpers every command group uses: one place that runs an action, prints
 * data (text or `--json`), and turns an expected error into one clear line
 * and its exit code (never a stack trace).
 */
import { type Command, InvalidArgumentError } from "commander";
import { isBaseError } from "../errors.ts";
import { logger } from "../log.ts";
import { EXIT_UNEXPECTED, exitCodeFor } from "./exit-codes.ts";

export interface JsonOption {
  json?: boolean;
}

/** Print a command's data result: JSON when asked, otherwise the text. */
export function output(opts: JsonOption, data: unknown, text: () => string): void {
  if (opts.json) {
    process.stdout.write(`${JSON.stringify(data, bigintReplacer, 2)}\n`);
  } else {
    const t = text();
    if (t) process.stdout.write(t.endsWith("\n") ? t : `${t}\n`);
  }
}

export function bigintReplacer(_key: string, value: unknown): unknown {
  return typeof value === "bigint" ? value.toString() : value;
}

/** Print an error the way the CLI does and return the exit code. */
export function reportError(err: unknown, json: boolean): number {
  if (isBaseError(err)) {
    if (json) {
      process.stdout.write(`${JSON.stringify({ error: err.toJSON() }, bigintReplacer, 2)}\n`);
    }
    process.stderr.write(`abforge: ${err.message}\n`);
    logger().debug({ err }, "error detail");
    return exitCodeFor(err.code);
  }
  process.stderr.write(`abforge: unexpected error (a bug, please report it):\n`);
  process.stderr.write(`${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  return EXIT_UNEXPECTED;
}

/**
 * Wrap a commander action: runs it, maps errors to exit codes. The action's
 * last argument is the options object; when it has `json`, errors are also
 * printed as JSON on stdout.
 */
// biome-ignore lint/suspicious/noExplicitAny: commander passes untyped arguments
export function action<A extends any[]>(fn: (...args: A) => Promise<unknown>) {
  return async (...args: A): Promise<void> => {
    const cmd = args[args.length - 1] as Command | undefined;
    const opts = (
      cmd && typeof cmd.optsWithGlobals === "function" ? cmd.optsWithGlobals() : {}
    ) as JsonOption;
    try {
      const code = await fn(...args);
      process.exitCode = typeof code === "number" ? code : 0;
    } catch (err) {
      process.exitCode = reportError(err, Boolean(opts.json));
    }
  };
}

/** Parse an integer option, e.g. `--data-block-size 4096`. */
export function intOption(name: string) {
  return (value: string): number => {
    if (!/^\d+$/.test(value))
      throw new InvalidArgumentError(`${name} must be a non-negative integer, got "${value}"`);
    return Number(value);
  };
}

/** Parse a TCP port option: 1-65535, or 0 too (any free port) when `anyPort`. */
export function portOption(name: string, o: { anyPort: boolean }) {
  const min = o.anyPort ? 0 : 1;
  return (value: string): number => {
    const port = /^\d{1,5}$/.test(value) ? Number(value) : Number.NaN;
    if (!(port >= min && port <= 65535)) {
      throw new InvalidArgumentError(`${name} must be a TCP port, ${min}-65535, got "${value}"`);
    }
    return port;
  };
}
