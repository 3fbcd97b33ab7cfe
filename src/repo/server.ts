/**
 * A static file server for a repository directory (README.md, "Serving").
 * GET and HEAD, byte ranges (one, or several as multipart/byteranges),
 * strong ETags, If-None-Match / If-Range, no
 * directory listing, nothing outside the root, no hidden (temporary) files.
 */
import { randomBytes } from "node:crypto";
import { createReadStream } from "node:fs";
import { realpath, stat } from "node:fs/promises";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { join, sep } from "node:path";
import { pipeline } from "node:stream/promises";
import { type Logger, logger } from "../log.ts";
import { RepoError } from "./errors.ts";
import { closeDelimiter, multipartLength, parseRanges, partHead, type Span } from "./ranges.ts";

export interface ServeOptions {
  repoDir: string;
  host?: string;
  /** 0 picks a free port; the returned url carries the real one. */
  port: number;
  log?: Logger;
}

export interface RepoServer {
  url: string;
  close(): Promise<void>;
}

const SEGMENT = /^[A-Za-z0-9_+~-][A-Za-z0-9._+~-]*$/;

export type ByteRange = { start: number; end: number } | "unsatisfiable" | undefined;

/**
 * One `Range: bytes=...` header against a file of `size` bytes (RFC 9110
 * 14.1.2), as one range: parseRanges' answer when it is exactly one range.
 * undefined: absent, malformed, not bytes, or several ranges; "unsatisfiable": 416.
 */
export function parseRange(header: string | undefined, size: number): ByteRange {
  const r = parseRanges(header, size);
  if (r === undefined || r === "unsatisfiable") return r;
  const [only] = r;
  return r.length === 1 && only ? { start: only.start, end: only.end - 1 } : undefined;
}

/** Strong ETag from size, mtime (ns) and inode: changes whenever the file is replaced. */
export function etagFor(size: number, mtimeNs: bigint, ino: bigint): string {
  return `"${size.toString(16)}-${mtimeNs.toString(16)}-${ino.toString(16)}"`;
}

function etagMatches(header: string, etag: string, weak: boolean): boolean {
  if (header.trim() === "*") return true;
  return header.split(",").some((t) => {
    const tag = t.trim();
    return tag === etag || (weak && tag.replace(/^W\//, "") === etag);
  });
}

function contentType(path: string): string {
  if (path.endsWith(".json")) return "application/json";
  return "application/octet-stream";
}

function cacheControl(path: string): string {
  // bundles never change once published; indexes must be revalidated each poll
  return path.startsWith("bundles/") ? "public, max-age=31536000, immutable" : "no-cache";
}

/** The repository-relative path a URL path names, or undefined when it must not be served. */
export function safeRelativePath(urlPath: string): string | undefined {
  let decoded: string;
  try {
    decoded = decodeURIComponent(urlPath);
  } catch {
    return undefined;
  }
  if (!decoded.startsWith("/")) return undefined;
  const segments = decoded.slice(1).split("/");
  if (segments.length === 0 || !segments.every((s) => SEGMENT.test(s))) return undefined;
  return segments.join("/");
}

export async function serve(o: ServeOptions): Promise<RepoServer> {
  const log = (o.log ?? logger()).child({ module: "repo-serve" });
  const host = o.host ?? "127.0.0.1";
  let root: string;
  try {
    root = await realpath(o.repoDir);
    if (!(await stat(root)).isDirectory()) throw new Error("not a directory");
  } catch (cause) {
    throw new RepoError(
      "REPO_SERVE_FAILED",
      `repository ${o.repoDir} is not a readable directory: ${(cause as Error).message}`,
      { cause, details: { repoDir: o.repoDir } },
    );
  }

  const server = createServer((req, res) => {
    const started = process.hrtime.bigint();
    let sent = 0;
    res.on("close", () => {
      log.info(
        {
          method: req.method,
          path: req.url,
          range: req.headers.range,
          status: res.statusCode,
          bytes: sent,
          ms: Number((process.hrtime.bigint() - started) / 1_000_000n),
          remote: req.socket.remoteAddress,
          complete: res.writableFinished,
        },
        `${req.method} ${req.url} ${res.statusCode}`,
      );
    });
    handle(root, req, res, (n) => {
      sent += n;
    }).catch((err) => {
      log.error({ err, path: req.url }, "request failed");
      if (!res.headersSent) {
        res.statusCode = 500;
        res.end();
      } else res.destroy();
    });
  });
  server.keepAliveTimeout = 5_000;

  await new Promise<void>((resolve, reject) => {
    server.once("error", (cause) =>
      reject(
        new RepoError(
          "REPO_SERVE_FAILED",
          `cannot listen on ${host}:${o.port}: ${(cause as Error).message}`,
          { cause, details: { host, port: o.port } },
        ),
      ),
    );
    server.listen(o.port, host, () => resolve());
  });
  const addr = server.address() as AddressInfo;
  const shownHost = addr.family === "IPv6" ? `[${addr.address}]` : addr.address;
  const url = `http://${shownHost}:${addr.port}/`;
  log.info({ url, repoDir: root }, `serving ${root} on ${url}`);
  return {
    url,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

function finish(res: ServerResponse, status: number, headers: Record<string, string> = {}): void {
  res.writeHead(status, { "Content-Length": "0", ...headers });
  res.end();
}

async function handle(
  root: string,
  req: IncomingMessage,
  res: ServerResponse,
  count: (n: number) => void,
): Promise<void> {
  if (req.method !== "GET" && req.method !== "HEAD")
    return finish(res, 405, { Allow: "GET, HEAD" });
  const urlPath = (req.url ?? "/").split("?")[0] ?? "/";
  const rel = safeRelativePath(urlPath);
  if (rel === undefined) return finish(res, 404);
  const full = join(root, rel);
  let real: string;
  let st: Awaited<ReturnType<typeof stat>>;
  try {
    real = await realpath(full);
    st = await stat(real, { bigint: true });
  } catch {
    return finish(res, 404);
  }
  // symlinks may not lead out of the root; directories are never listed
  const prefix = root.endsWith(sep) ? root : `${root}${sep}`;
  if (!real.startsWith(prefix) || !st.isFile()) return finish(res, 404);

  const size = Number(st.size);
  const etag = etagFor(size, st.mtimeNs, st.ino);
  const headers: Record<string, string> = {
    ETag: etag,
    "Last-Modified": new Date(Number(st.mtimeMs)).toUTCString(),
    "Accept-Ranges": "bytes",
    "Cache-Control": cacheControl(rel),
    "Content-Type": contentType(rel),
  };
  const inm = req.headers["if-none-match"];
  if (inm !== undefined && etagMatches(inm, etag, true)) {
    res.writeHead(304, headers);
    res.end();
    return;
  }

  let ranges = parseRanges(req.headers.range, size);
  const ifRange = req.headers["if-range"];
  if (ranges !== undefined && typeof ifRange === "string" && !etagMatches(ifRange, etag, false))
    ranges = undefined; // the client's copy is stale: send the whole new file
  if (ranges === "unsatisfiable")
    return finish(res, 416, { ...headers, "Content-Range": `bytes */${size}` });
  if (ranges !== undefined && ranges.length > 1)
    return sendMultipart(real, req, res, headers, ranges, size, count);
  const range = ranges?.[0] && { start: ranges[0].start, end: ranges[0].end - 1 };

  let start = 0;
  let end = size - 1;
  if (range !== undefined) {
    ({ start, end } = range);
    res.writeHead(206, {
      ...headers,
      "Content-Range": `bytes ${start}-${end}/${size}`,
      "Content-Length": String(end - start + 1),
    });
  } else {
    res.writeHead(200, { ...headers, "Content-Length": String(size) });
  }
  if (req.method === "HEAD" || size === 0) {
    res.end();
    return;
  }
  const body = createReadStream(real, { start, end, highWaterMark: 1 << 16 });
  body.on("data", (chunk) => count((chunk as Buffer).length));
  try {
    await pipeline(body, res);
  } catch (err) {
    // a client that goes away mid-body is normal (an agent cancelling); anything else is logged
    if ((err as NodeJS.ErrnoException).code !== "ERR_STREAM_PREMATURE_CLOSE") throw err;
  }
}

/**
 * Several ranges: a multipart/byteranges body (RFC 9110 14.6), the parts in
 * the order asked, each with its Content-Range; Content-Length exact.
 */
async function sendMultipart(
  real: string,
  req: IncomingMessage,
  res: ServerResponse,
  headers: Record<string, string>,
  ranges: Span[],
  size: number,
  count: (n: number) => void,
): Promise<void> {
  const boundary = randomBytes(12).toString("hex");
  const type = headers["Content-Type"] as string;
  res.writeHead(206, {
    ...headers,
    "Content-Type": `multipart/byteranges; boundary=${boundary}`,
    "Content-Length": String(multipartLength(boundary, type, ranges, size)),
  });
  if (req.method === "HEAD") {
    res.end();
    return;
  }
  const parts = async function* () {
    for (const [i, r] of ranges.entries()) {
      yield Buffer.from(partHead(boundary, type, r, size, i === 0));
      for await (const chunk of createReadStream(real, {
        start: r.start,
        end: r.end - 1,
        highWaterMark: 1 << 16,
      })) {
        count((chunk as Buffer).length);
        yield chunk as Buffer;
      }
    }
    yield Buffer.from(closeDelimiter(boundary));
  };
  try {
    await pipeline(parts, res);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ERR_STREAM_PREMATURE_CLOSE") throw err;
  }
}
