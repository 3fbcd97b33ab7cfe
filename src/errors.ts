/**
 * The one error base of the project (see STYLE.md, point 4).
 *
 * Every module declares its own code union and a subclass, e.g.
 * `export class VerityError extends BaseError<VerityErrorCode> {}`.
 * The CLI maps each code to an exit code in `src/cli/exit-codes.ts`.
 * An expected failure is a `BaseError`; anything else is a bug and
 * is printed with its stack.
 */
export interface ErrorOptions {
  cause?: unknown;
  /** Machine-readable facts (paths, offsets, block numbers) shown with `--json`. */
  details?: Record<string, unknown>;
}

export class BaseError<Code extends string = string> extends Error {
  readonly code: Code;
  readonly details: Record<string, unknown>;

  constructor(code: Code, message: string, options: ErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.code = code;
    this.details = options.details ?? {};
  }

  toJSON(): { code: Code; message: string; details: Record<string, unknown> } {
    return { code: this.code, message: this.message, details: this.details };
  }
}

export function isBaseError(err: unknown): err is BaseError {
  return err instanceof BaseError;
}

/**
 * A programming error (TypeError, ReferenceError, RangeError, SyntaxError):
 * never recoded as an expected failure such as a failed download, so it
 * surfaces as a bug with its stack.
 */
export function isBug(err: unknown): boolean {
  return (
    err instanceof TypeError ||
    err instanceof ReferenceError ||
    err instanceof RangeError ||
    err instanceof SyntaxError
  );
}

/** Errors of the shared plumbing: external tools and plain file I/O. */
export type ToolErrorCode = "TOOL_MISSING" | "TOOL_FAILED" | "IO_ERROR" | "DISK_FULL";
export class ToolError extends BaseError<ToolErrorCode> {}
