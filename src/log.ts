/**
 * Structured logs through pino. On a terminal they are pretty-printed on
 * stderr, one line per event, in colour unless NO_COLOR is set; otherwise
 * they are JSON lines on stderr, each key once (a child logger's binding
 * that repeats its parent's, or a field that repeats a binding, keeps the
 * last value). stdout is reserved for a command's data output (and `--json`).
 *
 * An expected error (a BaseError) is logged as its code, message, details
 * and causes, without a stack; anything else (a bug) keeps its stack.
 */
import { writeSync } from "node:fs";
import { createRequire } from "node:module";
import { Writable } from "node:stream";
import { type Logger, pino } from "pino";
import type Pretty from "pino-pretty";
import { isBaseError } from "./errors.ts";

export type { Logger };

export type LogFormat = "pretty" | "json";

export interface LogOptions {
  level?: string;
  format?: LogFormat;
}

let root: Logger | undefined;

/** NO_COLOR (no-color.org): present and not empty turns colour off. */
export function colorAllowed(env: NodeJS.ProcessEnv = process.env): boolean {
  return !env.NO_COLOR;
}

export function createLogger(options: LogOptions = {}): Logger {
  const level = options.level ?? process.env.ABFORGE_LOG_LEVEL ?? "info";
  const format = options.format ?? (process.stderr.isTTY ? "pretty" : "json");
  const serializers = { err: serializeError };
  if (format === "pretty") {
    // Loaded only for a terminal: JSON logs (services, scripts) do without it.
    const pretty = createRequire(import.meta.url)("pino-pretty") as typeof Pretty;
    return pino(
      { level, serializers },
      pretty({
        // the same never-throwing write as JSON lines
        destination: new Writable({
          write(chunk: Buffer, _encoding, done) {
            writeStderr(chunk);
            done();
          },
        }),
        colorize: Boolean(process.stderr.isTTY) && colorAllowed(),
        singleLine: true,
        ignore: "pid,hostname",
        translateTime: "HH:MM:ss",
      }),
    );
  }
  return pino({ level, base: undefined, serializers }, { write: writeJsonLine });
}

/**
 * One JSON line to stderr with each key once: pino writes a child's bindings
 * after its parent's and a call's fields after both, so a repeated key is
 * possible; JSON.parse keeps the last value, which is the most specific.
 */
function writeJsonLine(line: string): void {
  const text = `${JSON.stringify(JSON.parse(line))}\n`;
  writeStderr(Buffer.from(text));
}

const pause = new Int32Array(new SharedArrayBuffer(4));

/**
 * Write all of `bytes` to stderr, synchronously. Logging never fails the work
 * it reports: a pipe whose reader is gone (EPIPE: the service's `tee` was
 * stopped by a reboot) or any other write error drops the line instead of
 * throwing into the caller; a full non-blocking pipe (EAGAIN) is waited for,
 * a millisecond at a time, up to a second.
 */
export function writeStderr(bytes: Uint8Array, fd = 2): void {
  let off = 0;
  let waits = 0;
  while (off < bytes.length) {
    try {
      off += writeSync(fd, bytes, off);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EAGAIN" || ++waits > 1000) return;
      Atomics.wait(pause, 0, 0, 1);
    }
  }
}

interface SerializedError {
  type: string;
  message: string;
  code?: string;
  details?: Record<string, unknown>;
  cause?: SerializedError | string;
  stack?: string;
}

/** pino's `err` serializer: an expected error without its stack (see the module comment). */
export function serializeError(err: unknown): unknown {
  if (!isBaseError(err)) return pino.stdSerializers.err(err as Error);
  return expected(err, 0);
}

function expected(err: unknown, depth: number): SerializedError | string {
  if (!(err instanceof Error)) return String(err);
  const out: SerializedError = { type: err.name, message: err.message };
  const code = (err as { code?: unknown }).code;
  if (typeof code === "string") out.code = code;
  if (isBaseError(err) && Object.keys(err.details).length > 0) out.details = err.details;
  if (err.cause !== undefined && depth < 8) {
    // A bug underneath an expected error keeps its stack.
    out.cause =
      err.cause instanceof Error &&
      !isBaseError(err.cause) &&
      !(err.cause as { code?: unknown }).code
        ? (pino.stdSerializers.err(err.cause) as SerializedError)
        : expected(err.cause, depth + 1);
  }
  return out;
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
