/**
 * Reading byte ranges of one file, for a delta install (README.md, "Range
 * reads"): the planned ranges in as few requests as the server allows
 * (several ranges per request as multipart/byteranges where it answers so,
 * one per request where it does not), every response checked against what
 * was asked before a byte is handed on, and the bytes handed on in file
 * order. What the bytes are is the caller's to check (each chunk's sha256);
 * this checks where they are.
 */
import got, { type Request } from "got";
import { isBug } from "../errors.ts";
import { type Logger, logger } from "../log.ts";
import { AttemptFailed } from "./client.ts";
import { RepoError } from "./errors.ts";
import { multipartBoundary, parseContentRange, rangeHeader, type Span } from "./ranges.ts";

export interface FetchRangesOptions {
  /** The file's size (bytes): every Content-Range must name it. */
  fileSize: number;
  /** Ranges per request while the server answers several as multipart; default 64. */
  rangesPerRequest?: number;
  /** Start with one range per request (a server known not to do multipart). */
  singleRanges?: boolean;
  /** Connect, response-header and socket-idle timeout per request; default 30 s. */
  timeoutMs?: number;
  /** Further attempts of a request after a network failure; default 3 (hostile answers: none). */
  retries?: number;
  signal?: AbortSignal;
  log?: Logger;
}

/** What the fetch cost: requests made, bytes received (bodies, framing included). */
export interface RangeStats {
  requests: number;
  bytes: number;
  /** Whether the server answered several ranges as multipart/byteranges (undefined: never asked). */
  multipart: boolean | undefined;
}

/** Bytes of the file at `offset`, handed on in file order. */
export interface RangePiece {
  offset: number;
  data: Buffer;
}

/** Longest part header line and most header lines read in a multipart body. */
const MAX_LINE = 1024;
const MAX_PART_HEADERS = 16;
/** Bytes of preamble or epilogue read around the parts. */
const MAX_FRAMING = 4096;

/**
 * The bytes of `spans` (ascending, disjoint: planRanges' output) from `url`.
 * Errors are RepoErrors: REPO_DOWNLOAD_FAILED, with `details.rangeIgnored`
 * when the server answers a single range with the whole file (200) — the
 * caller falls back to a full download — and `details.hostile` when an
 * answer is not what was asked (other offsets, lengths, parts, framing).
 */
export async function* fetchRanges(
  url: string | URL,
  spans: readonly Span[],
  o: FetchRangesOptions,
  stats: RangeStats = { requests: 0, bytes: 0, multipart: undefined },
): AsyncGenerator<RangePiece> {
  checkSpans(spans, o.fileSize);
  const where = String(url);
  const log = (o.log ?? logger()).child({ module: "repo-ranges" });
  const perRequest = o.rangesPerRequest ?? 64;
  let single = o.singleRanges === true;
  /** What is left to fetch: trimmed as bytes are handed on. */
  const queue = spans.map((s) => ({ ...s }));
  let failures = 0;
  while (queue.length > 0) {
    const group = queue.slice(0, single ? 1 : perRequest).map((s) => ({ ...s }));
    let fellBack = false;
    try {
      for await (const piece of request(where, group, o, stats, single)) {
        if (piece === "single") {
          // a multi-range request answered with the first range only, or with the
          // whole file: this server does one range per request
          fellBack = true;
          single = true;
          stats.multipart = false;
          log.info({ url: where }, `${where}: no multipart/byteranges; one range per request`);
          continue;
        }
        yield piece;
        failures = 0;
        const end = piece.offset + piece.data.length;
        while (queue[0] && queue[0].end <= end) queue.shift();
        if (queue[0] && queue[0].start < end) queue[0].start = end;
      }
      if (group.length > 1 && !fellBack) stats.multipart = true;
    } catch (err) {
      if (isBug(err) || !(err instanceof AttemptFailed)) throw err;
      if (!err.retryable || o.signal?.aborted || ++failures > (o.retries ?? 3)) throw err.error;
      log.warn({ url: where, attempt: failures, err: err.error }, `${err.message}; retrying`);
    }
  }
}

function checkSpans(spans: readonly Span[], size: number): void {
  let last = 0;
  for (const s of spans) {
    if (
      !Number.isSafeInteger(s.start) ||
      !Number.isSafeInteger(s.end) ||
      s.start < last ||
      s.end <= s.start ||
      s.end > size
    )
      throw new RangeError(
        `fetchRanges: spans must be ascending, disjoint, non-empty, within ${size} bytes`,
      );
    last = s.end;
  }
}

/**
 * One request for `spans`; yields their bytes in order, or "single" once when
 * the server showed it does one range per request (then only what it sent of
 * the first span has been yielded).
 */
async function* request(
  where: string,
  spans: readonly Span[],
  o: FetchRangesOptions,
  stats: RangeStats,
  single: boolean,
): AsyncGenerator<RangePiece | "single"> {
  const timeoutMs = o.timeoutMs ?? 30_000;
  const ask = rangeHeader(spans);
  const hostile = (message: string, extra: Record<string, unknown> = {}) =>
    new AttemptFailed(
      new RepoError("REPO_DOWNLOAD_FAILED", `${where}: ${message} (asked ${ask})`, {
        details: { url: where, range: ask, hostile: true, ...extra },
      }),
      false,
    );
  stats.requests += 1;
  const req: Request = got.stream(where, {
    headers: { "accept-encoding": "identity", range: ask },
    decompress: false,
    throwHttpErrors: false,
    retry: { limit: 0 },
    timeout: {
      lookup: timeoutMs,
      connect: timeoutMs,
      send: timeoutMs,
      response: timeoutMs,
      socket: timeoutMs,
    },
    ...(o.signal ? { signal: o.signal } : {}),
  });
  try {
    const response = await new Promise<{ statusCode: number; headers: Record<string, unknown> }>(
      (resolve, reject) => {
        req.once("response", resolve);
        req.once("error", reject);
      },
    );
    const h = (n: string) => {
      const v = response.headers[n];
      return typeof v === "string" ? v : undefined;
    };
    const status = response.statusCode;
    if (status === 200) {
      if (spans.length > 1 && !single) {
        yield "single";
        return;
      }
      throw new AttemptFailed(
        new RepoError(
          "REPO_DOWNLOAD_FAILED",
          `${where}: the server ignores Range (200, the whole file, for ${ask}); a delta install needs ranges`,
          { details: { url: where, range: ask, status, rangeIgnored: true } },
        ),
        false,
      );
    }
    if (status === 408 || status === 429 || status >= 500)
      throw new AttemptFailed(
        new RepoError("REPO_DOWNLOAD_FAILED", `${where}: HTTP ${status} for ${ask}`, {
          details: { url: where, status },
        }),
        true,
      );
    if (status !== 206) throw hostile(`HTTP ${status}, not 206`, { status });

    const body = new BodyReader(req, stats);
    const boundary = multipartBoundary(h("content-type"));
    if (boundary === undefined) {
      // one part: exactly the one span asked, or (a server that does one range) the first of several
      const cr = parseContentRange(h("content-range"));
      if (!cr) throw hostile(`206 with a bad Content-Range "${h("content-range")}"`);
      const first = spans[0] as Span;
      if (cr.total !== o.fileSize)
        throw hostile(`Content-Range names a file of ${cr.total} bytes, not ${o.fileSize}`);
      if (cr.span.start !== first.start || cr.span.end !== first.end)
        throw hostile(`206 for bytes ${cr.span.start}-${cr.span.end - 1}`);
      const len = h("content-length");
      if (len !== undefined && Number(len) !== first.end - first.start)
        throw hostile(`Content-Length ${len} for a range of ${first.end - first.start} bytes`);
      yield* body.exact(first, () => hostile("the body ends before the range does"));
      if (!(await body.atEnd(0))) throw hostile("the body runs past the range");
      if (spans.length > 1) yield "single";
      return;
    }
    if (spans.length === 1) throw hostile("a multipart body for one range");
    // multipart/byteranges: the parts in the order asked, each exactly one span
    await body.skipPreamble(`--${boundary}`, () => hostile("no multipart boundary"));
    for (const [n, s] of spans.entries()) {
      const headers = await body.partHeaders(() => hostile(`part ${n}: bad header block`));
      const cr = parseContentRange(headers.get("content-range"));
      if (!cr) throw hostile(`part ${n}: bad Content-Range "${headers.get("content-range")}"`);
      if (cr.total !== o.fileSize)
        throw hostile(
          `part ${n}: Content-Range names a file of ${cr.total} bytes, not ${o.fileSize}`,
        );
      if (cr.span.start !== s.start || cr.span.end !== s.end)
        throw hostile(
          `part ${n} is bytes ${cr.span.start}-${cr.span.end - 1}, asked for ${s.start}-${s.end - 1} (parts must come as asked: in order, not overlapping, not merged)`,
          { part: n },
        );
      yield* body.exact(s, () => hostile(`part ${n}: the body ends inside it`));
      const delim = await body.take(`\r\n--${boundary}`.length + 2, () =>
        hostile(`part ${n}: no delimiter after it`),
      );
      const last = n === spans.length - 1;
      if (delim.toString("latin1") !== `\r\n--${boundary}${last ? "--" : "\r\n"}`)
        throw hostile(
          last
            ? "more parts than asked, or no closing delimiter"
            : `part ${n}: fewer parts than asked`,
        );
    }
    if (!(await body.atEnd(MAX_FRAMING)))
      throw hostile("more than an epilogue after the closing delimiter");
  } catch (err) {
    if (err instanceof AttemptFailed || isBug(err)) throw err;
    throw new AttemptFailed(
      new RepoError("REPO_DOWNLOAD_FAILED", `${where}: ${(err as Error).message} (${ask})`, {
        cause: err,
        details: { url: where, range: ask, code: (err as { code?: string }).code },
      }),
      !o.signal?.aborted,
    );
  } finally {
    req.destroy();
  }
}

/** Reads a response body by exact lengths and lines, with bounded lookahead. */
class BodyReader {
  readonly #it: AsyncIterator<Buffer>;
  readonly #stats: RangeStats;
  #buf: Buffer = Buffer.alloc(0);
  #ended = false;

  constructor(req: Request, stats: RangeStats) {
    this.#it = (req as AsyncIterable<Buffer>)[Symbol.asyncIterator]();
    this.#stats = stats;
  }

  async #more(): Promise<boolean> {
    if (this.#ended) return false;
    const r = await this.#it.next();
    if (r.done) {
      this.#ended = true;
      return false;
    }
    this.#stats.bytes += r.value.length;
    this.#buf = this.#buf.length === 0 ? r.value : Buffer.concat([this.#buf, r.value]);
    return true;
  }

  /** The span's bytes, as they come. */
  async *exact(s: Span, short: () => Error): AsyncGenerator<RangePiece> {
    let at = s.start;
    while (at < s.end) {
      if (this.#buf.length === 0 && !(await this.#more())) throw short();
      const n = Math.min(this.#buf.length, s.end - at);
      const data = this.#buf.subarray(0, n);
      this.#buf = this.#buf.subarray(n);
      yield { offset: at, data };
      at += n;
    }
  }

  async take(n: number, short: () => Error): Promise<Buffer> {
    while (this.#buf.length < n) if (!(await this.#more())) throw short();
    const out = this.#buf.subarray(0, n);
    this.#buf = this.#buf.subarray(n);
    return out;
  }

  async #line(bad: () => Error): Promise<string> {
    for (;;) {
      const i = this.#buf.indexOf("\r\n");
      if (i >= 0) {
        if (i > MAX_LINE) throw bad();
        const line = this.#buf.subarray(0, i).toString("latin1");
        this.#buf = this.#buf.subarray(i + 2);
        return line;
      }
      if (this.#buf.length > MAX_LINE || !(await this.#more())) throw bad();
    }
  }

  /** Lines up to the first `--boundary` line: a preamble of at most MAX_FRAMING bytes. */
  async skipPreamble(delimiter: string, bad: () => Error): Promise<void> {
    let read = 0;
    for (;;) {
      const line = await this.#line(bad);
      if (line === delimiter) return;
      read += line.length + 2;
      if (read > MAX_FRAMING) throw bad();
    }
  }

  async partHeaders(bad: () => Error): Promise<Map<string, string>> {
    const out = new Map<string, string>();
    for (let n = 0; n <= MAX_PART_HEADERS; n++) {
      const line = await this.#line(bad);
      if (line === "") return out;
      const c = line.indexOf(":");
      if (c <= 0) throw bad();
      const name = line.slice(0, c).trim().toLowerCase();
      if (out.has(name)) throw bad();
      out.set(name, line.slice(c + 1).trim());
    }
    throw bad();
  }

  /** True when at most `slack` more bytes follow before the end. */
  async atEnd(slack: number): Promise<boolean> {
    while (this.#buf.length <= slack) if (!(await this.#more())) return true;
    return false;
  }
}
