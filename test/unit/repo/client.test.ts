/**
 * src/repo/README.md: "Downloading" — against real local servers that
 * misbehave on purpose.
 */
import { writeFile } from "node:fs/promises";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { Writable } from "node:stream";
import { setTimeout as sleep } from "node:timers/promises";
import { pino } from "pino";
import { afterAll, afterEach, describe, expect, it } from "vitest";
import { createLogger } from "../../../src/log.ts";
import { fetchIndex, openRange, RepoError, serve } from "../../../src/repo/index.ts";
import { FakeClock } from "../../helpers/clock.ts";
import { tempDir } from "../../helpers/tmp.ts";

const data = Buffer.from(Array.from({ length: 200_000 }, (_, i) => (i * 31 + (i >> 8)) & 0xff));
const silent = createLogger({ level: "silent" });
const closers: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of closers.splice(0)) await c();
});

interface Served {
  url: string;
  requests: { range: string | undefined }[];
}

/** A real HTTP server on 127.0.0.1 whose handler gets the request number (0-based). */
async function misbehaving(
  handler: (req: IncomingMessage, res: ServerResponse, n: number) => void,
): Promise<Served> {
  const requests: { range: string | undefined }[] = [];
  const server = createServer((req, res) => {
    requests.push({ range: req.headers.range });
    handler(req, res, requests.length - 1);
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  closers.push(
    () =>
      new Promise<void>((r) => {
        server.close(() => r());
        server.closeAllConnections();
      }),
  );
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/f.bin`, requests };
}

/** A correct single-range response for `data`. */
function serveRange(
  req: IncomingMessage,
  res: ServerResponse,
  opts: { etag?: string; cutAt?: number } = {},
) {
  const m = /^bytes=(\d+)-$/.exec(req.headers.range ?? "");
  const start = m ? Number(m[1]) : 0;
  const headers: Record<string, string> = { ETag: opts.etag ?? '"v1"' };
  if (m) {
    res.writeHead(206, {
      ...headers,
      "Content-Range": `bytes ${start}-${data.length - 1}/${data.length}`,
      "Content-Length": String(data.length - start),
    });
  } else res.writeHead(200, { ...headers, "Content-Length": String(data.length) });
  if (opts.cutAt === undefined) return void res.end(data.subarray(start));
  res.write(data.subarray(start, opts.cutAt));
  // a proxy dying mid-body: the socket goes away without the rest
  setTimeout(() => res.socket?.destroy(), 20);
}

/** Poll until `check` holds (at most 3 s), for effects that happen on another socket. */
async function eventually(check: () => boolean): Promise<void> {
  for (let i = 0; i < 300 && !check(); i++) await sleep(10);
  expect(check()).toBe(true);
}

/** Backoffs pass at once; the stall timer fires only when a test advances the clock. */
const fakeClock = () => new FakeClock({ autoAdvance: true });

async function collect(stream: NodeJS.ReadableStream): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of stream) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

async function failure(stream: NodeJS.ReadableStream): Promise<RepoError> {
  try {
    await collect(stream);
  } catch (err) {
    if (err instanceof RepoError) return err;
    throw err;
  }
  throw new Error("the download did not fail");
}

function captureLog() {
  const lines: { msg: string; discard?: number }[] = [];
  const log = pino(
    { level: "warn" },
    new Writable({
      write(chunk, _enc, cb) {
        lines.push(JSON.parse(String(chunk)));
        cb();
      },
    }),
  );
  return { log, lines };
}

const base = {
  maxBytes: 1 << 20,
  timeoutMs: 2_000,
  stallTimeoutMs: 300,
  retries: 3,
  backoffMs: 100,
  log: silent,
};

describe("openRange", () => {
  it("streams from an offset with Range and checks the 206", async () => {
    const s = await misbehaving((req, res) => serveRange(req, res));
    const got = await collect(openRange(s.url, { ...base, offset: 150_000 }));
    expect(got.equals(data.subarray(150_000))).toBe(true);
    expect(s.requests).toEqual([{ range: "bytes=150000-" }]);
  });

  it("cuts off a server that sends endless bytes", async () => {
    const s = await misbehaving((_req, res) => {
      res.writeHead(200); // chunked, no length
      const chunk = Buffer.alloc(65536, 1);
      const pump = () => {
        while (res.write(chunk));
        res.once("drain", pump);
      };
      pump();
    });
    const e = await failure(openRange(s.url, { ...base, maxBytes: 500_000, clock: fakeClock() }));
    expect(e.code).toBe("REPO_TOO_LARGE");
    expect(s.requests).toHaveLength(1); // not retried
  });

  it("refuses before the body when the announced size is over the limit", async () => {
    const s = await misbehaving((req, res) => serveRange(req, res));
    const e = await failure(
      openRange(s.url, { ...base, offset: 1000, maxBytes: data.length - 1001 }),
    );
    expect(e.code).toBe("REPO_TOO_LARGE");
    expect(e.message).toMatch(/holds 199000 bytes from offset 1000 .* limit of 198999/);
    expect(
      await collect(openRange(s.url, { ...base, offset: 1000, maxBytes: data.length - 1000 })),
    ).toHaveLength(199_000);
  });

  it("aborts a stalled transfer and resumes it after a backoff", async () => {
    const s = await misbehaving((req, res, n) => {
      if (n === 0) {
        res.writeHead(200, { "Content-Length": String(data.length), ETag: '"v1"' });
        res.write(data.subarray(0, 70_000)); // then nothing, connection left open
        return;
      }
      serveRange(req, res);
    });
    const clock = fakeClock();
    const chunks: Buffer[] = [];
    let received = 0;
    for await (const c of openRange(s.url, { ...base, clock })) {
      chunks.push(c as Buffer);
      received += (c as Buffer).length;
      if (received !== 70_000) continue;
      // all the server sent: only the stall timer waits, and it fires at stallTimeoutMs
      clock.advance(base.stallTimeoutMs - 1);
      expect(clock.pending).toBe(1);
      expect(s.requests).toHaveLength(1);
      clock.advance(1);
      expect(clock.pending).toBe(0);
    }
    expect(Buffer.concat(chunks).equals(data)).toBe(true);
    expect(s.requests.map((r) => r.range)).toEqual([undefined, "bytes=70000-"]);
    expect(clock.sleeps).toEqual([100]);
    expect(clock.elapsedMs).toBe(base.stallTimeoutMs + 100);
  });

  it("gives up with REPO_STALLED after exponential backoff when the server always stalls", async () => {
    let sent = 0;
    const s = await misbehaving((_req, res) => {
      res.writeHead(200, { "Content-Length": String(data.length) });
      // same 10 bytes each time: no progress past them
      res.write(data.subarray(0, 10), () => {
        sent += 1;
      });
    });
    const clock = fakeClock();
    let settled = false;
    const failed = failure(openRange(s.url, { ...base, stallTimeoutMs: 100, clock })).finally(
      () => {
        settled = true;
      },
    );
    // each attempt: once its bytes are out and only its stall timer waits, let that time pass
    let stalls = 0;
    while (!settled) {
      await new Promise((r) => setImmediate(r));
      if (sent > stalls && clock.pending === 1) {
        stalls += 1;
        clock.advance(100);
      }
    }
    const e = await failed;
    expect(e.code).toBe("REPO_STALLED");
    expect(stalls).toBe(4);
    expect(clock.sleeps).toEqual([100, 200, 400]);
    expect(s.requests).toHaveLength(4);
    expect(e.details.attempts).toBe(4);
  });

  it("copes with a server that ignores Range: discards the first offset bytes itself and logs it", async () => {
    const s = await misbehaving((_req, res) => {
      res.writeHead(200, { "Content-Length": String(data.length) });
      res.end(data);
    });
    const { log, lines } = captureLog();
    const got = await collect(openRange(s.url, { ...base, offset: 123_457, log }));
    expect(got.equals(data.subarray(123_457))).toBe(true);
    expect(s.requests[0]?.range).toBe("bytes=123457-");
    expect(lines.some((l) => l.discard === 123_457 && /ignored Range/.test(l.msg))).toBe(true);
  });

  it("resumes a body truncated mid-way from where it stopped", async () => {
    const s = await misbehaving((req, res, n) =>
      serveRange(req, res, n === 0 ? { cutAt: 120_000 } : {}),
    );
    const clock = fakeClock();
    const got = await collect(openRange(s.url, { ...base, offset: 5, clock }));
    expect(got.equals(data.subarray(5))).toBe(true);
    expect(s.requests.map((r) => r.range)).toEqual(["bytes=5-", "bytes=120000-"]);
    expect(clock.sleeps).toEqual([100]);
  });

  it("resumes after a truncation even when the server also ignores Range", async () => {
    const s = await misbehaving((_req, res, n) => {
      res.writeHead(200, { "Content-Length": String(data.length), ETag: '"v1"' });
      if (n === 0) {
        res.write(data.subarray(0, 50_000));
        setTimeout(() => res.socket?.destroy(), 20);
      } else res.end(data);
    });
    const got = await collect(openRange(s.url, { ...base, clock: fakeClock() }));
    expect(got.equals(data)).toBe(true);
  });

  it("fails when the file changes between attempts (ETag), without mixing two files", async () => {
    const s = await misbehaving((req, res, n) =>
      serveRange(req, res, n === 0 ? { cutAt: 60_000, etag: '"v1"' } : { etag: '"v2"' }),
    );
    const e = await failure(openRange(s.url, { ...base, clock: fakeClock() }));
    expect(e.code).toBe("REPO_DOWNLOAD_FAILED");
    expect(e.message).toMatch(/changed during the download/);
    expect(s.requests).toHaveLength(2);
  });

  it("refuses a 206 that starts somewhere else", async () => {
    const s = await misbehaving((_req, res) => {
      res.writeHead(206, { "Content-Range": `bytes 0-9/${data.length}`, "Content-Length": "10" });
      res.end(data.subarray(0, 10));
    });
    const e = await failure(openRange(s.url, { ...base, offset: 100 }));
    expect(e.message).toMatch(/asked for bytes from 100, the server sent from 0/);
    expect(s.requests).toHaveLength(1);
  });

  it("retries 503 with backoff and does not retry 404", async () => {
    const flaky = await misbehaving((req, res, n) => {
      if (n < 2) return void res.writeHead(503).end();
      serveRange(req, res);
    });
    const clock = fakeClock();
    expect((await collect(openRange(flaky.url, { ...base, clock }))).equals(data)).toBe(true);
    expect(clock.sleeps).toEqual([100, 200]);

    const missing = await misbehaving((_req, res) => void res.writeHead(404).end());
    const e = await failure(openRange(missing.url, { ...base, clock: fakeClock() }));
    expect(e.code).toBe("REPO_DOWNLOAD_FAILED");
    expect(e.details.status).toBe(404);
    expect(missing.requests).toHaveLength(1);
  });

  it("fails with REPO_DOWNLOAD_FAILED when nothing listens", async () => {
    const s = await misbehaving(() => {});
    await closers.pop()?.();
    const clock = fakeClock();
    const e = await failure(openRange(s.url, { ...base, retries: 1, clock }));
    expect(e.code).toBe("REPO_DOWNLOAD_FAILED");
    expect(clock.sleeps).toEqual([100]);
  });

  it("stops when the signal aborts, and closes the connection", async () => {
    let closed = false;
    const s = await misbehaving((_req, res) => {
      res.writeHead(200, { "Content-Length": String(data.length) });
      res.write(data.subarray(0, 1000));
      res.on("close", () => {
        closed = true;
      });
    });
    const ac = new AbortController();
    const clock = fakeClock();
    const stream = openRange(s.url, { ...base, stallTimeoutMs: 10_000, signal: ac.signal, clock });
    stream.once("readable", () => ac.abort(new Error("shutting down")));
    const e = await failure(stream);
    expect(e.details.aborted).toBe(true);
    expect(clock.elapsedMs).toBe(0); // the abort ended it, not the stall timer
    await eventually(() => closed);
  });

  it("closes the connection when the consumer destroys the stream early", async () => {
    let closed = false;
    const big = Buffer.alloc(8 << 20, 3);
    const s = await misbehaving((_req, res) => {
      res.writeHead(200, { "Content-Length": String(big.length) });
      res.end(big);
      res.on("close", () => {
        closed = true;
      });
    });
    const stream = openRange(s.url, { ...base, maxBytes: big.length });
    await new Promise((resolve) => stream.once("data", resolve));
    stream.pause();
    await sleep(50); // let the buffers fill, then stop like a reader that has what it needs
    stream.destroy();
    await eventually(() => closed);
    expect(s.requests).toHaveLength(1);
  });

  it("keeps the stall clock stopped while the consumer is not reading", async () => {
    const big = Buffer.alloc(4 << 20, 7);
    const s = await misbehaving((_req, res) => {
      res.writeHead(200, { "Content-Length": String(big.length) });
      res.end(big);
    });
    const clock = fakeClock();
    const stream = openRange(s.url, {
      ...base,
      maxBytes: big.length,
      stallTimeoutMs: 100,
      retries: 0,
      clock,
    });
    const chunks: Buffer[] = [];
    let paused = false;
    for await (const c of stream) {
      chunks.push(c as Buffer);
      if (!paused) {
        paused = true;
        // a slow disk on the consumer side: the client's queue fills, then a long wait
        while (stream.readableLength < stream.readableHighWaterMark)
          await new Promise((r) => setImmediate(r));
        expect(clock.pending).toBe(0);
        clock.advance(10_000);
      }
    }
    expect(Buffer.concat(chunks).length).toBe(big.length);
    expect(s.requests).toHaveLength(1);
  });
});

describe("against repo serve", () => {
  const dir = tempDir("abforge-repo-client-");

  it("fetches an index with a size limit and reads to the exact end", async () => {
    await writeFile(join(dir, "index.json"), '{"a":1}\n');
    await writeFile(join(dir, "f.bin"), data);
    const server = await serve({ repoDir: dir, port: 0, log: silent });
    closers.push(() => server.close());
    expect(
      Buffer.from(await fetchIndex(`${server.url}index.json`, { maxBytes: 100 })).toString(),
    ).toBe('{"a":1}\n');
    const e = await fetchIndex(`${server.url}f.bin`, { maxBytes: 1000 }).catch((err) => err);
    expect((e as RepoError).code).toBe("REPO_TOO_LARGE");
    const at = await collect(openRange(`${server.url}f.bin`, { ...base, offset: data.length - 1 }));
    expect([...at]).toEqual([data[data.length - 1]]);
    expect(
      await collect(openRange(`${server.url}f.bin`, { ...base, offset: data.length })),
    ).toHaveLength(0);
    const beyond = await failure(
      openRange(`${server.url}f.bin`, { ...base, offset: data.length + 1 }),
    );
    expect(beyond.message).toMatch(/beyond the end/);
  });
});

afterAll(async () => {
  for (const c of closers.splice(0)) await c();
});
