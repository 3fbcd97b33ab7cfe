/**
 * The agent's HTTP client for a repository (README.md, "Downloading"): a
 * bounded index fetch, and a byte stream from an offset that resumes after
 * failures, never trusts a server that ignores Range, and never delivers more
 * than it was told to accept.
 */
import { Readable } from "node:stream";
import got, { type Request } from "got";
import { type Clock, systemClock, type Timer } from "../clock.ts";
import { isBug } from "../errors.ts";
import { type Logger, logger } from "../log.ts";
import { RepoError } from "./errors.ts";

export interface OpenRangeOptions {
  /** First byte wanted; default 0. */
  offset?: number;
  /** Hard limit on the bytes this stream delivers (from `offset`). */
  maxBytes: number;
  /** Connect and response-header timeout per attempt; default 30 s. */
  timeoutMs?: number;
  /** Abort an attempt when no byte arrives for this long; default 60 s. */
  stallTimeoutMs?: number;
  /** Further attempts after a failure without progress; default 5. */
  retries?: number;
  /** First backoff; doubles per consecutive failure; default 1 s. */
  backoffMs?: number;
  /** Backoff ceiling; default 60 s. */
  maxBackoffMs?: number;
  signal?: AbortSignal;
  /** The stall timer and the backoff between attempts (src/clock.ts); default the system clock. */
  clock?: Clock;
  log?: Logger;
}

export interface FetchIndexOptions {
  timeoutMs?: number;
  /** Hard limit on the index size; default 1 MiB. */
  maxBytes?: number;
  stallTimeoutMs?: number;
  retries?: number;
  backoffMs?: number;
  signal?: AbortSignal;
  clock?: Clock;
  log?: Logger;
}

/** Download a whole (small) file, e.g. a channel index, with a hard size limit. */
export async function fetchIndex(
  url: string | URL,
  o: FetchIndexOptions = {},
): Promise<Uint8Array> {
  const stream = openRange(url, {
    offset: 0,
    maxBytes: o.maxBytes ?? 1 << 20,
    timeoutMs: o.timeoutMs ?? 30_000,
    stallTimeoutMs: o.stallTimeoutMs ?? o.timeoutMs ?? 30_000,
    retries: o.retries ?? 2,
    backoffMs: o.backoffMs ?? 1_000,
    ...(o.signal ? { signal: o.signal } : {}),
    ...(o.clock ? { clock: o.clock } : {}),
    ...(o.log ? { log: o.log } : {}),
  });
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return new Uint8Array(Buffer.concat(chunks));
}

/** Contract name for openRange. */
export const downloadRange = openRange;

/** An attempt failed; `retryable` says whether trying again can help (the range client's too). */
export class AttemptFailed extends Error {
  readonly error: RepoError;
  readonly retryable: boolean;
  constructor(error: RepoError, retryable: boolean) {
    super(error.message);
    this.error = error;
    this.retryable = retryable;
  }
}

interface Identity {
  total: number | undefined;
  etag: string | undefined;
}

/**
 * A Readable of the bytes of `url` from `offset` on (README.md,
 * "Downloading", steps 1-7). Errors are RepoErrors: REPO_TOO_LARGE,
 * REPO_STALLED (stalled on every attempt), REPO_DOWNLOAD_FAILED.
 */
export function openRange(url: string | URL, o: OpenRangeOptions): Readable {
  const offset = o.offset ?? 0;
  const timeoutMs = o.timeoutMs ?? 30_000;
  const stallTimeoutMs = o.stallTimeoutMs ?? 60_000;
  const retries = o.retries ?? 5;
  const backoffMs = o.backoffMs ?? 1_000;
  const maxBackoffMs = o.maxBackoffMs ?? 60_000;
  const clock = o.clock ?? systemClock;
  const log = (o.log ?? logger()).child({ module: "repo-client" });
  const where = String(url);
  if (!Number.isSafeInteger(offset) || offset < 0)
    throw new TypeError(`openRange: offset must be a non-negative integer, got ${offset}`);
  if (!Number.isSafeInteger(o.maxBytes) || o.maxBytes < 0)
    throw new TypeError(`openRange: maxBytes must be a non-negative integer, got ${o.maxBytes}`);

  const inner = new AbortController();
  let current: Request | undefined;
  let wantMore: (() => void) | undefined;
  let position = offset;
  const identity: Identity = { total: undefined, etag: undefined };

  // Each received buffer is handed on as it is (object mode: a reader gets the
  // buffers one by one instead of a copy of everything queued); up to 16 of
  // them (the socket's reads are at most 64 KiB: about 1 MiB) wait here.
  const out = new Readable({
    objectMode: true,
    highWaterMark: 16,
    read() {
      const w = wantMore;
      wantMore = undefined;
      w?.();
    },
    destroy(err, cb) {
      inner.abort(err ?? new Error("download stream closed"));
      current?.destroy();
      cb(err);
    },
  });

  inner.signal.addEventListener(
    "abort",
    () => {
      current?.destroy();
      wantMore?.();
    },
    { once: true },
  );
  const onOuterAbort = () => inner.abort(o.signal?.reason);
  if (o.signal?.aborted) inner.abort(o.signal.reason);
  o.signal?.addEventListener("abort", onOuterAbort, { once: true });

  const abortedError = () =>
    new RepoError("REPO_DOWNLOAD_FAILED", `download of ${where} aborted`, {
      cause: inner.signal.reason,
      details: { url: where, aborted: true, position },
    });

  /** Push to the consumer; wait while it is not reading (the stall clock stops meanwhile). */
  const deliver = async (chunk: Buffer, pause: () => void, resume: () => void) => {
    if (inner.signal.aborted || out.push(chunk)) return;
    pause();
    await new Promise<void>((resolve) => {
      wantMore = resolve;
    });
    resume();
  };

  const attempt = async (): Promise<void> => {
    const headers: Record<string, string> = { "accept-encoding": "identity" };
    // 1. ask for the rest from where we are
    if (position > 0) headers.range = `bytes=${position}-`;
    const req = got.stream(url, {
      headers,
      decompress: false,
      throwHttpErrors: false,
      retry: { limit: 0 },
      timeout: {
        lookup: timeoutMs,
        connect: timeoutMs,
        secureConnect: timeoutMs,
        send: timeoutMs,
        response: timeoutMs,
      },
    });
    current = req;
    let stalled = false;
    let tooLarge: RepoError | undefined;
    let stallTimer: Timer | undefined;
    const stopStall = () => {
      stallTimer?.cancel();
      stallTimer = undefined;
    };
    // Re-armed at every received buffer: refresh() the running timer rather
    // than make a new one (thousands per image).
    const armStall = () => {
      if (stallTimer) stallTimer.refresh();
      else
        stallTimer = clock.timer(stallTimeoutMs, () => {
          stalled = true;
          req.destroy();
        });
    };
    try {
      armStall();
      const response = await new Promise<{ statusCode: number; headers: Record<string, unknown> }>(
        (resolve, reject) => {
          req.once("response", resolve);
          req.once("error", reject);
          req.once("close", () => reject(new Error("connection closed before the response")));
        },
      );
      // 2. status and Content-Range
      let skip = checkResponse(response.statusCode, response.headers, position, where, identity);
      if (skip === "done") {
        req.destroy();
        return;
      }
      // 3. the size limit, before a body byte is read
      const limit = offset + o.maxBytes;
      if (identity.total !== undefined && identity.total > limit)
        throw new AttemptFailed(tooLargeError(where, offset, o.maxBytes, identity.total), false);
      if (skip > 0)
        log.warn(
          { url: where, discard: skip },
          `server ignored Range for ${where}: discarding the first ${skip} bytes of the whole file`,
        );
      // 4. the body: skip what we already have, cut off at the limit, watch for stalls
      for await (const raw of req) {
        armStall();
        let chunk = raw as Buffer;
        if (skip > 0) {
          const n = Math.min(skip, chunk.length);
          skip -= n;
          chunk = chunk.subarray(n);
          if (chunk.length === 0) continue;
        }
        if (position + chunk.length > limit) {
          tooLarge = tooLargeError(where, offset, o.maxBytes, undefined);
          req.destroy();
          throw new AttemptFailed(tooLarge, false);
        }
        position += chunk.length;
        await deliver(chunk, stopStall, armStall);
        if (inner.signal.aborted) throw new AttemptFailed(abortedError(), false);
      }
      // 5. a body that ends early is resumed
      if (skip > 0 || (identity.total !== undefined && position < identity.total))
        throw new AttemptFailed(
          new RepoError(
            "REPO_DOWNLOAD_FAILED",
            `${where}: connection ended at byte ${position} of ${identity.total ?? "?"}`,
            { details: { url: where, position, total: identity.total } },
          ),
          true,
        );
    } catch (err) {
      if (err instanceof AttemptFailed) throw err;
      if (inner.signal.aborted) throw new AttemptFailed(abortedError(), false);
      if (tooLarge) throw new AttemptFailed(tooLarge, false);
      if (stalled)
        throw new AttemptFailed(
          new RepoError(
            "REPO_STALLED",
            `${where}: no data for ${stallTimeoutMs} ms at byte ${position}`,
            { cause: err, details: { url: where, position, stallTimeoutMs } },
          ),
          true,
        );
      throw new AttemptFailed(
        new RepoError(
          "REPO_DOWNLOAD_FAILED",
          `${where}: ${(err as Error).message} at byte ${position}`,
          { cause: err, details: { url: where, position, code: (err as { code?: string }).code } },
        ),
        true,
      );
    } finally {
      stopStall();
      // An attempt that failed before or without reading its body (a refused status,
      // an announced size over the limit) must not leave its connection open.
      req.destroy();
      current = undefined;
    }
  };

  const drive = async () => {
    let failures = 0;
    for (;;) {
      const before = position;
      try {
        await attempt();
        out.push(null);
        return;
      } catch (err) {
        // a bug in an attempt is not a network failure: no retry, no recoding
        if (isBug(err)) return void out.destroy(err as Error);
        const f =
          err instanceof AttemptFailed
            ? err
            : new AttemptFailed(
                new RepoError("REPO_DOWNLOAD_FAILED", `${where}: ${(err as Error).message}`, {
                  cause: err,
                }),
                false,
              );
        if (inner.signal.aborted) return void out.destroy(abortedError());
        if (!f.retryable) return void out.destroy(f.error);
        // 6. retry with exponential backoff; progress resets the count
        if (position > before) failures = 0;
        failures += 1;
        if (failures > retries) {
          const last = f.error;
          return void out.destroy(
            new RepoError(
              last.code,
              `${last.message} (gave up after ${failures} attempt(s) without progress)`,
              { cause: last, details: { ...last.details, attempts: failures } },
            ),
          );
        }
        const delay = Math.min(backoffMs * 2 ** (failures - 1), maxBackoffMs);
        log.warn(
          { url: where, position, attempt: failures, delayMs: delay, code: f.error.code },
          `${f.error.message}; retrying in ${delay} ms`,
        );
        try {
          await clock.sleep(delay, inner.signal);
        } catch {
          return void out.destroy(abortedError());
        }
      }
    }
  };

  drive()
    .catch((err) => out.destroy(err as Error))
    .finally(() => o.signal?.removeEventListener("abort", onOuterAbort));
  return out;
}

function tooLargeError(
  where: string,
  offset: number,
  maxBytes: number,
  total: number | undefined,
): RepoError {
  const what =
    total === undefined
      ? `sends more than the limit of ${maxBytes} bytes`
      : `holds ${total - offset} bytes from offset ${offset} (more than the limit of ${maxBytes} bytes)`;
  return new RepoError("REPO_TOO_LARGE", `${where} ${what}`, {
    details: { url: where, offset, maxBytes, total },
  });
}

function header(headers: Record<string, unknown>, name: string): string | undefined {
  const v = headers[name];
  return typeof v === "string" ? v : undefined;
}

/**
 * Step 2: what a response means at `position`. Returns how many body bytes to
 * discard (a server that ignored Range sends the file from byte 0), or "done"
 * when nothing is left to read. Sets the file's identity (size, ETag) on the
 * first response and refuses a later response for a different file.
 */
function checkResponse(
  status: number,
  headers: Record<string, unknown>,
  position: number,
  where: string,
  identity: Identity,
): number | "done" {
  const fail = (message: string, retryable: boolean, extra: Record<string, unknown> = {}) =>
    new AttemptFailed(
      new RepoError("REPO_DOWNLOAD_FAILED", `${where}: ${message}`, {
        details: { url: where, status, position, ...extra },
      }),
      retryable,
    );
  const contentRange = header(headers, "content-range");
  let total: number | undefined;
  let skip = 0;
  if (status === 206) {
    const m = contentRange && /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(contentRange);
    if (!m) throw fail(`206 with a bad Content-Range "${contentRange}"`, false);
    const start = Number(m[1]);
    if (start !== position)
      throw fail(`asked for bytes from ${position}, the server sent from ${start}`, false, {
        contentRange,
      });
    total = m[3] === "*" ? undefined : Number(m[3]);
  } else if (status === 200) {
    const len = header(headers, "content-length");
    total = len === undefined ? undefined : Number(len);
    skip = position;
  } else if (status === 416) {
    const m = contentRange && /^bytes \*\/(\d+)$/.exec(contentRange);
    if (m && Number(m[1]) === position) return "done";
    throw fail(
      `offset ${position} is beyond the end of the file (${contentRange ?? "416"})`,
      false,
    );
  } else if (status === 408 || status === 429 || status >= 500) {
    throw fail(`HTTP ${status}`, true);
  } else {
    throw fail(`HTTP ${status}`, false);
  }
  // the same file on every attempt: a changed ETag or size means it was replaced mid-download
  const etag = header(headers, "etag");
  const strong = etag !== undefined && !etag.startsWith("W/") ? etag : undefined;
  if (identity.etag !== undefined && strong !== undefined && strong !== identity.etag)
    throw fail(`file changed during the download (ETag ${identity.etag} → ${strong})`, false);
  if (identity.total !== undefined && total !== undefined && total !== identity.total)
    throw fail(`file changed during the download (size ${identity.total} → ${total})`, false);
  identity.etag ??= strong;
  identity.total ??= total;
  if (total !== undefined && position > total)
    throw fail(`offset ${position} is beyond the end of the file (${total} bytes)`, false);
  return skip;
}
