/**
 * src/repo/README.md, "Range reads": fetchRanges against a static server that
 * does one range per request and answers several with the whole file —
 * busybox httpd (Debian's busybox-static, installed by scripts/setup.sh) —
 * and against one that ignores Range (Python's http.server, Debian's python3).
 */
import { type ChildProcess, spawn } from "node:child_process";
import { writeFile } from "node:fs/promises";
import { connect } from "node:net";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createLogger } from "../../../src/log.ts";
import { fetchRanges, planRanges, type RangeStats, RepoError } from "../../../src/repo/index.ts";
import { freePort } from "../../helpers/net.ts";
import { tempDir } from "../../helpers/tmp.ts";

const dir = tempDir("abforge-range-static-");
const data = Buffer.from(Array.from({ length: 500_000 }, (_, i) => (i * 17 + (i >> 11)) & 0xff));
const log = createLogger({ level: "silent" });
const children: ChildProcess[] = [];

async function listening(port: number): Promise<void> {
  for (let i = 0; i < 100; i++) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = connect(port, "127.0.0.1", () => {
        s.destroy();
        resolve(true);
      });
      s.on("error", () => resolve(false));
    });
    if (ok) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`nothing listens on 127.0.0.1:${port}`);
}

async function start(cmd: string, args: string[], port: number): Promise<string> {
  const child = spawn(cmd, args, { cwd: dir, stdio: "ignore" });
  children.push(child);
  await listening(port);
  return `http://127.0.0.1:${port}/blob.bin`;
}

let busybox: string;
let python: string;
beforeAll(async () => {
  await writeFile(join(dir, "blob.bin"), data);
  const p1 = await freePort();
  busybox = await start("busybox", ["httpd", "-f", "-p", `127.0.0.1:${p1}`, "-h", dir], p1);
  const p2 = await freePort();
  python = await start(
    "/usr/bin/python3",
    ["-m", "http.server", "-b", "127.0.0.1", String(p2)],
    p2,
  );
});
afterAll(() => {
  for (const c of children) c.kill();
});

const spans = planRanges(
  Array.from({ length: 12 }, (_, i) => ({ start: i * 40000 + 77, end: i * 40000 + 77 + 3000 + i })),
  { maxGapBytes: 0, maxRanges: 64 },
);

describe("fetchRanges against static servers", () => {
  it("busybox httpd: several ranges get the whole file, so one range per request, the right bytes", async () => {
    const stats: RangeStats = { requests: 0, bytes: 0, multipart: undefined };
    const got: Buffer[] = [];
    for await (const p of fetchRanges(busybox, spans, { fileSize: data.length, log }, stats))
      got.push(Buffer.from(p.data));
    expect(
      Buffer.concat(got).equals(Buffer.concat(spans.map((s) => data.subarray(s.start, s.end)))),
    ).toBe(true);
    expect(stats.multipart).toBe(false);
    // the one multi-range request (answered 200, not read), then one per range
    expect(stats.requests).toBe(1 + spans.length);
    expect(stats.bytes).toBe(spans.reduce((n, s) => n + s.end - s.start, 0));
  });

  it("python http.server ignores Range: refused with rangeIgnored, nothing handed on", async () => {
    const handed: number[] = [];
    let error: unknown;
    try {
      for await (const p of fetchRanges(python, spans.slice(0, 1), { fileSize: data.length, log }))
        handed.push(p.data.length);
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(RepoError);
    expect((error as RepoError).details.rangeIgnored).toBe(true);
    expect(handed).toEqual([]);
  });
});
