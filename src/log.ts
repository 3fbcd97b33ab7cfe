/**
 * Structured logs through pino. On a terminal they are pretty-printed on
 * stderr; otherwise they are JSON lines on stderr. stdout is reserved for a
 * command's data output (and `--json`).
 */
import { createRequire } from "node:module";
import { type Logger, pino } from "pino";
import type Pretty from "pino-pretty";

export type { Logger };

export type LogFormat = "pretty" | "json";

export interface LogOptions {
  level?: string;
  format?: LogFormat;
}

let root: Logger | undefined;

export function createLogger(options: LogOptions = {}): Logger {
  const level = options.level ?? process.env.ABFORGE_LOG_LEVEL ?? "info";
  const format = options.format ?? (process.stderr.isTTY ? "pretty" : "json");
  if (format === "pretty") {
    // Loaded only for a terminal: JSON logs (services, scripts) do without it.
    const pretty = createRequire(import.meta.url)("pino-pretty") as typeof Pretty;
    return pino(
      { level },
      pretty({
        destination: 2,
        sync: true,
        colorize: true,
        ignore: "pid,hostname",
        translateTime: "HH:MM:ss",
      }),
    );
  }
  return pino({ level, base: undefined }, pino.destination({ dest: 2, sync: true }));
}

export function configureLogger(options: LogOptions): Logger {
  root = createLogger(options);
  return root;
}

/** The process-wide logger; modules take a child: `logger().child({ module: "verity" })`. */
export function logger(): Logger {
  root ??= createLogger();
  return root;
}
