/**
 * Catching what a call throws, for tests that assert the error: its code, or
 * the error itself. A call that does not throw gives undefined (sync) or
 * fails the test (`rejection`).
 */

/** What `fn` throws, or undefined when it returns. */
export function caught(fn: () => unknown): unknown {
  try {
    fn();
  } catch (err) {
    return err;
  }
  return undefined;
}

/** The `code` of what `fn` throws, or undefined when it returns or the error has none. */
export function codeOf(fn: () => unknown): string | undefined {
  return (caught(fn) as { code?: string } | undefined)?.code;
}

/** What `p` rejects with; a promise that resolves fails the test. */
export async function rejection(
  p: Promise<unknown>,
): Promise<{ code?: string; message: string; details?: Record<string, unknown> }> {
  try {
    await p;
  } catch (err) {
    return err as { code?: string; message: string; details?: Record<string, unknown> };
  }
  throw new Error("expected a rejection");
}
