/**
 * src/repo/README.md, "Range reads": fetchRanges against `abforge repo serve`
 * and against hostile servers on 127.0.0.1 that answer with other offsets,
 * lengths, parts or framing, or ignore Range.
 */
import { mkdir, writeFile } from "node:fs/promises";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createLogger } from "../../../src/log.ts";
import {
  fetchRanges,
  parseRanges,
  planRanges,
  type RangeStats,
  RepoError,
  type RepoServer,
  type Span,
  serve,
} from "../../../src/repo/index.ts";
import { closeDelimiter, partHead } from "../../../src/repo/ranges.ts";
import { tempDir } from "../../helpers/tmp.ts";

const dir = tempDir("abforge-ranges-");
const data = Buffer.from(Array.from({ length: 300_000 }, (_, i) => (i * 31 + (i >> 9)) & 0xff));
const log = createLogger({ level: "silent" });
let repo: RepoServer;
let hostile: Server;
let hostileUrl: string;
let handler: (req: IncomingMessage, res: ServerResponse) => void = () => {};
const seen: (string | undefined)[] = [];

beforeAll(async () => {
  await mkdir(join(dir, "bundles"), { recursive: true });
  await writeFile(join(dir, "bundles", "x.bundle"), data);
  repo = await serve({ repoDir: dir, port: 0, log });
  hostile = createServer((req, res) => {
    seen.push(req.headers.range);
    handler(req, res);
  });
  await new Promise<void>((r) => hostile.listen(0, "127.0.0.1", r));
  hostileUrl = `http://127.0.0.1:${(hostile.address() as AddressInfo).port}/x.bundle`;
});
afterAll(async () => {
  await repo.close();
  hostile.closeAllConnections();
  await new Promise((r) => hostile.close(r));
});

async function collect(
  url: string,
  spans: Span[],
  o: Partial<Parameters<typeof fetchRanges>[2]> = {},
) {
  const stats: RangeStats = { requests: 0, bytes: 0, multipart: undefined };
  const got: Buffer[] = [];
  let at = -1;
  for await (const p of fetchRanges(
    url,
    spans,
    { fileSize: data.length, log, retries: 0, ...o },
    stats,
  )) {
    expect(p.offset).toBeGreaterThan(at); // in file order
    at = p.offset;
    got.push(Buffer.from(p.data));
    expect(p.data.equals(data.subarray(p.offset, p.offset + p.data.length))).toBe(true);
  }
  return { bytes: Buffer.concat(got), stats };
}

const expectedBytes = (spans: Span[]) =>
  Buffer.concat(spans.map((s) => data.subarray(s.start, s.end)));

async function failure(p: Promise<unknown>): Promise<RepoError> {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(RepoError);
    return e as RepoError;
  }
  throw new Error("expected a failure");
}

/** A correct multipart answer for the Range asked, which `mutate` can spoil. */
function multipart(
  req: IncomingMessage,
  res: ServerResponse,
  mutate: (spans: Span[]) => Span[] = (s) => s,
  tail = closeDelimiter("b"),
) {
  const asked = parseRanges(req.headers.range, data.length) as Span[];
  const spans = mutate(asked);
  res.writeHead(206, { "Content-Type": "multipart/byteranges; boundary=b" });
  spans.forEach((s, i) => {
    res.write(partHead("b", "application/octet-stream", s, data.length, i === 0));
    res.write(data.subarray(s.start, s.end));
  });
  res.end(tail);
}

function single(
  res: ServerResponse,
  s: Span,
  total = data.length,
  body = data.subarray(s.start, s.end),
) {
  res.writeHead(206, {
    "Content-Range": `bytes ${s.start}-${s.end - 1}/${total}`,
    "Content-Length": String(body.length),
  });
  res.end(body);
}

const spans: Span[] = planRanges(
  Array.from({ length: 40 }, (_, i) => ({
    start: i * 7000 + 100,
    end: i * 7000 + 100 + 1000 + i * 13,
  })),
  { maxGapBytes: 0, maxRanges: 64 },
);

describe("fetchRanges against abforge repo serve", () => {
  it("fetches 40 ranges in 3 multipart requests of at most 16, bytes in file order", async () => {
    const { bytes, stats } = await collect(`${repo.url}bundles/x.bundle`, spans, {
      rangesPerRequest: 16,
    });
    expect(bytes.equals(expectedBytes(spans))).toBe(true);
    expect(stats.requests).toBe(3);
    expect(stats.multipart).toBe(true);
    expect(stats.bytes).toBeGreaterThan(bytes.length);
    expect(stats.bytes).toBeLessThan(bytes.length + 40 * 200);
  });

  it("fetches one range per request when told to", async () => {
    const { bytes, stats } = await collect(`${repo.url}bundles/x.bundle`, spans.slice(0, 5), {
      singleRanges: true,
    });
    expect(bytes.equals(expectedBytes(spans.slice(0, 5)))).toBe(true);
    expect(stats).toEqual({ requests: 5, bytes: bytes.length, multipart: undefined });
  });

  it("refuses a file of another size", async () => {
    const e = await failure(
      collect(`${repo.url}bundles/x.bundle`, spans.slice(0, 2), { fileSize: data.length + 1 }),
    );
    expect(e.message).toMatch(/names a file of 300000 bytes, not 300001/);
    expect(e.details.hostile).toBe(true);
  });
});

describe("fetchRanges against servers that do less, or lie", () => {
  it("falls back to one range per request when several get the whole file (200)", async () => {
    seen.length = 0;
    handler = (req, res) => {
      const r = parseRanges(req.headers.range, data.length);
      if (Array.isArray(r) && r.length === 1) return single(res, r[0]!);
      res.writeHead(200, { "Content-Length": String(data.length) });
      res.end(data);
    };
    const { bytes, stats } = await collect(hostileUrl, spans.slice(0, 4));
    expect(bytes.equals(expectedBytes(spans.slice(0, 4)))).toBe(true);
    expect(stats.multipart).toBe(false);
    expect(stats.requests).toBe(5);
    expect(seen[0]).toBe(
      `bytes=${spans
        .slice(0, 4)
        .map((s) => `${s.start}-${s.end - 1}`)
        .join(",")}`,
    );
  });

  it("falls back when several get only the first range (one 206 part), keeping its bytes", async () => {
    handler = (req, res) =>
      single(res, (parseRanges(req.headers.range, data.length) as Span[])[0]!);
    const { bytes, stats } = await collect(hostileUrl, spans.slice(0, 4));
    expect(bytes.equals(expectedBytes(spans.slice(0, 4)))).toBe(true);
    expect(stats).toMatchObject({ requests: 4, multipart: false });
  });

  it("refuses a server that ignores Range even for one range, so the caller can download in full", async () => {
    handler = (_req, res) => {
      res.writeHead(200, { "Content-Length": String(data.length) });
      res.end(data);
    };
    const e = await failure(collect(hostileUrl, spans.slice(0, 1)));
    expect(e.details.rangeIgnored).toBe(true);
    expect(e.message).toMatch(/ignores Range/);
  });

  const cases: [string, (req: IncomingMessage, res: ServerResponse) => void, RegExp][] = [
    [
      "another offset",
      (req, res) => {
        const s = (parseRanges(req.headers.range, data.length) as Span[])[0]!;
        single(res, { start: s.start + 1, end: s.end + 1 });
      },
      /206 for bytes/,
    ],
    [
      "a shorter body than Content-Range",
      (req, res) => {
        const s = (parseRanges(req.headers.range, data.length) as Span[])[0]!;
        res.writeHead(206, { "Content-Range": `bytes ${s.start}-${s.end - 1}/${data.length}` });
        res.end(data.subarray(s.start, s.end - 10));
      },
      /ends before the range does/,
    ],
    [
      "a longer body than the range",
      (req, res) => {
        const s = (parseRanges(req.headers.range, data.length) as Span[])[0]!;
        res.writeHead(206, { "Content-Range": `bytes ${s.start}-${s.end - 1}/${data.length}` });
        res.end(data.subarray(s.start, s.end + 10));
      },
      /runs past the range/,
    ],
    [
      "a wrong Content-Length",
      (req, res) => {
        const s = (parseRanges(req.headers.range, data.length) as Span[])[0]!;
        res.writeHead(206, {
          "Content-Range": `bytes ${s.start}-${s.end - 1}/${data.length}`,
          "Content-Length": String(s.end - s.start + 1),
        });
        res.end(Buffer.concat([data.subarray(s.start, s.end), Buffer.from("x")]));
      },
      /Content-Length/,
    ],
    [
      "a status other than 206",
      (_req, res) => {
        res.writeHead(404);
        res.end();
      },
      /HTTP 404/,
    ],
  ];
  for (const [what, h, message] of cases)
    it(`refuses one range answered with ${what}`, async () => {
      handler = h;
      const e = await failure(collect(hostileUrl, spans.slice(0, 1)));
      expect(e.message).toMatch(message);
      expect(e.code).toBe("REPO_DOWNLOAD_FAILED");
    });

  const multi: [string, (req: IncomingMessage, res: ServerResponse) => void, RegExp][] = [
    [
      "parts out of order",
      (req, res) => multipart(req, res, (s) => [s[1]!, s[0]!, ...s.slice(2)]),
      /part 0 is bytes .* asked for/,
    ],
    [
      "overlapping parts",
      (req, res) =>
        multipart(req, res, (s) => [
          s[0]!,
          { start: s[1]!.start - 5, end: s[1]!.end },
          ...s.slice(2),
        ]),
      /part 1 is bytes/,
    ],
    [
      "a part of another length",
      (req, res) =>
        multipart(req, res, (s) => [{ start: s[0]!.start, end: s[0]!.end - 1 }, ...s.slice(1)]),
      /part 0 is bytes/,
    ],
    [
      "merged parts",
      (req, res) =>
        multipart(req, res, (s) => [{ start: s[0]!.start, end: s[1]!.end }, ...s.slice(2)]),
      /not merged/,
    ],
    [
      "a missing part",
      (req, res) => multipart(req, res, (s) => s.slice(0, -1)),
      /fewer parts than asked/,
    ],
    [
      "an extra part",
      (req, res) => multipart(req, res, (s) => [...s, { start: 0, end: 10 }]),
      /more parts than asked/,
    ],
    [
      "no closing delimiter",
      (req, res) => multipart(req, res, (s) => s, "\r\n"),
      /no delimiter|closing delimiter/,
    ],
    [
      "a bad boundary",
      (req, res) => multipart(req, res, (s) => s, "\r\n--c--\r\n"),
      /closing delimiter/,
    ],
    [
      "junk after the closing delimiter",
      (req, res) => multipart(req, res, (s) => s, `${closeDelimiter("b")}${"z".repeat(5000)}`),
      /epilogue/,
    ],
    [
      "a multipart body for other lengths",
      (_req, res) => {
        res.writeHead(206, { "Content-Type": "multipart/byteranges; boundary=b" });
        res.end("--b\r\nContent-Range: bytes 0-9/300000\r\n\r\n0123");
      },
      /part 0 is bytes 0-9/,
    ],
  ];
  for (const [what, h, message] of multi)
    it(`refuses several ranges answered with ${what}`, async () => {
      handler = h;
      const e = await failure(collect(hostileUrl, spans.slice(0, 3)));
      expect(e.message).toMatch(message);
      expect(e.details.hostile).toBe(true);
    });

  it("retries a connection that breaks, from the first byte not yet handed on", async () => {
    let n = 0;
    seen.length = 0;
    handler = (req, res) => {
      n += 1;
      if (n === 1) {
        // the first part, then half of the second, then the connection drops
        const s = parseRanges(req.headers.range, data.length) as Span[];
        res.writeHead(206, { "Content-Type": "multipart/byteranges; boundary=b" });
        res.write(partHead("b", "application/octet-stream", s[0]!, data.length, true));
        res.write(data.subarray(s[0]!.start, s[0]!.end));
        res.write(partHead("b", "application/octet-stream", s[1]!, data.length, false));
        res.write(data.subarray(s[1]!.start, s[1]!.start + 100));
        setTimeout(() => res.destroy(), 20);
        return;
      }
      multipart(req, res);
    };
    const { bytes, stats } = await collect(hostileUrl, spans.slice(0, 3), { retries: 1 });
    expect(bytes.equals(expectedBytes(spans.slice(0, 3)))).toBe(true);
    expect(stats.requests).toBe(2);
    expect(seen[1]).toBe(
      `bytes=${spans[1]!.start + 100}-${spans[1]!.end - 1},${spans[2]!.start}-${spans[2]!.end - 1}`,
    );
  });
});
