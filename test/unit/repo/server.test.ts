/** src/repo/README.md: "Serving" — real HTTP on 127.0.0.1. */
import { mkdir, symlink, writeFile } from "node:fs/promises";
import { request } from "node:http";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createLogger } from "../../../src/log.ts";
import { type RepoServer, serve } from "../../../src/repo/index.ts";
import { parseRange, safeRelativePath } from "../../../src/repo/server.ts";
import { tempDir } from "../../helpers/tmp.ts";

const dir = tempDir("abforge-repo-serve-");
const repoDir = join(dir, "repo");
const data = Buffer.from(Array.from({ length: 100_000 }, (_, i) => (i * 7) & 0xff));
let server: RepoServer;

interface Reply {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Buffer;
}

function get(path: string, headers: Record<string, string> = {}, method = "GET"): Promise<Reply> {
  const url = new URL(server.url);
  return new Promise((resolve, reject) => {
    const req = request({ host: url.hostname, port: url.port, path, method, headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () =>
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }),
      );
      res.on("error", reject);
    });
    req.on("error", reject);
    req.end();
  });
}

beforeAll(async () => {
  await mkdir(join(repoDir, "bundles"), { recursive: true });
  await mkdir(join(repoDir, "channels"), { recursive: true });
  await writeFile(join(repoDir, "bundles/demo-1.0.0.bundle"), data);
  await writeFile(join(repoDir, "channels/stable.json"), '{"x":1}\n');
  await writeFile(join(repoDir, "channels/.stable.json.abc.tmp"), "half");
  await writeFile(join(repoDir, "empty.bin"), "");
  await writeFile(join(dir, "secret.txt"), "secret");
  await symlink(join(dir, "secret.txt"), join(repoDir, "escape.txt"));
  server = await serve({ repoDir, port: 0, log: createLogger({ level: "silent" }) });
});
afterAll(() => server.close());

describe("repo serve", () => {
  it("prints a URL with the real port", () => {
    expect(server.url).toMatch(/^http:\/\/127\.0\.0\.1:[1-9]\d*\/$/);
  });

  it("serves a whole file with an exact Content-Length, strong ETag, and cache headers", async () => {
    const r = await get("/bundles/demo-1.0.0.bundle");
    expect(r.status).toBe(200);
    expect(r.body.equals(data)).toBe(true);
    expect(r.headers["content-length"]).toBe(String(data.length));
    expect(r.headers.etag).toMatch(/^"[0-9a-f-]+"$/);
    expect(r.headers["accept-ranges"]).toBe("bytes");
    expect(r.headers["cache-control"]).toMatch(/immutable/);
    const idx = await get("/channels/stable.json");
    expect(idx.headers["cache-control"]).toBe("no-cache");
    expect(idx.headers["content-type"]).toBe("application/json");
  });

  it("answers one Range with 206 and Content-Range", async () => {
    const r = await get("/bundles/demo-1.0.0.bundle", { Range: "bytes=1000-1999" });
    expect(r.status).toBe(206);
    expect(r.headers["content-range"]).toBe(`bytes 1000-1999/${data.length}`);
    expect(r.headers["content-length"]).toBe("1000");
    expect(r.body.equals(data.subarray(1000, 2000))).toBe(true);
    const open = await get("/bundles/demo-1.0.0.bundle", { Range: "bytes=99990-" });
    expect(open.status).toBe(206);
    expect(open.body.equals(data.subarray(99990))).toBe(true);
    const suffix = await get("/bundles/demo-1.0.0.bundle", { Range: "bytes=-10" });
    expect(suffix.headers["content-range"]).toBe(`bytes 99990-99999/${data.length}`);
    const clipped = await get("/bundles/demo-1.0.0.bundle", { Range: "bytes=99999-200000" });
    expect(clipped.body.length).toBe(1);
  });

  it("answers an unsatisfiable Range with 416 and the size", async () => {
    const r = await get("/bundles/demo-1.0.0.bundle", { Range: `bytes=${data.length}-` });
    expect(r.status).toBe(416);
    expect(r.headers["content-range"]).toBe(`bytes */${data.length}`);
    expect(r.body.length).toBe(0);
    expect((await get("/empty.bin", { Range: "bytes=0-" })).status).toBe(416);
  });

  it("answers several ranges as multipart/byteranges, the parts in the order asked", async () => {
    const r = await get("/bundles/demo-1.0.0.bundle", { Range: "bytes=99990-,0-1,5-6" });
    expect(r.status).toBe(206);
    const m = /^multipart\/byteranges; boundary=([0-9a-f]{24})$/.exec(
      String(r.headers["content-type"]),
    );
    expect(m).not.toBeNull();
    const b = m![1]!;
    expect(Number(r.headers["content-length"])).toBe(r.body.length);
    const part = (range: string, bytes: Buffer, first: boolean) =>
      Buffer.concat([
        Buffer.from(
          `${first ? "" : "\r\n"}--${b}\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes ${range}/${data.length}\r\n\r\n`,
        ),
        bytes,
      ]);
    const expected = Buffer.concat([
      part("99990-99999", data.subarray(99990), true),
      part("0-1", data.subarray(0, 2), false),
      part("5-6", data.subarray(5, 7), false),
      Buffer.from(`\r\n--${b}--\r\n`),
    ]);
    expect(r.body.equals(expected)).toBe(true);
    const head = await get("/bundles/demo-1.0.0.bundle", { Range: "bytes=0-1,5-6" }, "HEAD");
    expect(head.status).toBe(206);
    expect(head.body.length).toBe(0);
  });

  it("ignores a malformed Range and sends the whole file", async () => {
    for (const range of ["bytes=0-1,x", "bytes=5-1", "items=0-1", "bytes=x-"]) {
      const r = await get("/bundles/demo-1.0.0.bundle", { Range: range });
      expect(r.status, range).toBe(200);
      expect(r.body.length).toBe(data.length);
    }
  });

  it("honours If-Range: a stale ETag gets the whole file", async () => {
    const { headers } = await get("/bundles/demo-1.0.0.bundle", {}, "HEAD");
    const etag = String(headers.etag);
    expect(
      (await get("/bundles/demo-1.0.0.bundle", { Range: "bytes=0-9", "If-Range": etag })).status,
    ).toBe(206);
    expect(
      (await get("/bundles/demo-1.0.0.bundle", { Range: "bytes=0-9", "If-Range": '"old"' })).status,
    ).toBe(200);
  });

  it("answers HEAD with the headers of GET and no body", async () => {
    const r = await get("/bundles/demo-1.0.0.bundle", {}, "HEAD");
    expect(r.status).toBe(200);
    expect(r.headers["content-length"]).toBe(String(data.length));
    expect(r.body.length).toBe(0);
    const ranged = await get("/bundles/demo-1.0.0.bundle", { Range: "bytes=10-19" }, "HEAD");
    expect(ranged.status).toBe(206);
    expect(ranged.headers["content-length"]).toBe("10");
  });

  it("answers a matching If-None-Match with 304 and no body", async () => {
    const first = await get("/channels/stable.json");
    const etag = String(first.headers.etag);
    const r = await get("/channels/stable.json", { "If-None-Match": etag });
    expect(r.status).toBe(304);
    expect(r.body.length).toBe(0);
    expect(r.headers.etag).toBe(etag);
    expect(
      (await get("/channels/stable.json", { "If-None-Match": `"other", W/${etag}` })).status,
    ).toBe(304);
    expect((await get("/channels/stable.json", { "If-None-Match": '"other"' })).status).toBe(200);
  });

  it("changes the ETag when a file is replaced", async () => {
    const before = String((await get("/channels/stable.json")).headers.etag);
    const tmp = join(repoDir, "channels/.next.tmp");
    await writeFile(tmp, '{"x":2}\n');
    const { rename } = await import("node:fs/promises");
    await rename(tmp, join(repoDir, "channels/stable.json"));
    const after = await get("/channels/stable.json", { "If-None-Match": before });
    expect(after.status).toBe(200);
    expect(after.body.toString()).toBe('{"x":2}\n');
  });

  it("refuses path traversal, hidden files, directories and symlinks out of the root", async () => {
    for (const path of [
      "/../secret.txt",
      "/bundles/../../secret.txt",
      "/%2e%2e/secret.txt",
      "/bundles/%2e%2e%2f%2e%2e%2fsecret.txt",
      "/bundles/..%5c..%5csecret.txt",
      "/channels/.stable.json.abc.tmp",
      "/channels/",
      "/channels",
      "/",
      "/escape.txt",
      "/bundles/%00",
      "/bundles/%zz",
      "/nope.bundle",
    ]) {
      const r = await get(path);
      expect(r.status, path).toBe(404);
      expect(r.body.toString()).not.toContain("secret");
    }
  });

  it("allows only GET and HEAD", async () => {
    const r = await get("/channels/stable.json", {}, "DELETE");
    expect(r.status).toBe(405);
    expect(r.headers.allow).toBe("GET, HEAD");
  });
});

describe("parseRange and safeRelativePath", () => {
  it("parse the single-range forms of RFC 9110", () => {
    expect(parseRange("bytes=0-0", 10)).toEqual({ start: 0, end: 0 });
    expect(parseRange("bytes=-20", 10)).toEqual({ start: 0, end: 9 });
    expect(parseRange("bytes=-0", 10)).toBe("unsatisfiable");
    expect(parseRange("bytes=10-", 10)).toBe("unsatisfiable");
    expect(parseRange("bytes=-", 10)).toBeUndefined();
    expect(parseRange(undefined, 10)).toBeUndefined();
  });

  it("map URL paths to repository paths only when safe", () => {
    expect(safeRelativePath("/bundles/demo-1.0.0%2Bbuild.bundle")).toBe(
      "bundles/demo-1.0.0+build.bundle",
    );
    expect(safeRelativePath("/a//b")).toBeUndefined();
    expect(safeRelativePath("relative")).toBeUndefined();
  });
});
