// The delta install (src/updater/README.md, "Delta install"): a format 2 bundle served by
// `abforge repo serve` on 127.0.0.1, installed on a real GPT disk image whose slot A holds
// 1.0.0 (real squashfs + verity); 2.0.0 differs by one file. Hostile servers too.
import { cp, mkdir, readFile, writeFile } from "node:fs/promises";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { hashSlotImage, writeBundle } from "../../../src/bundle/index.ts";
import { createLogger } from "../../../src/log.ts";
import { parseRanges, type RepoServer, type Span, serve } from "../../../src/repo/index.ts";
import {
  makeUpdateWorld,
  readRange,
  squashfsWithVerity,
  type UpdateWorld,
} from "../../helpers/fixtures.ts";
import { tempDir } from "../../helpers/tmp.ts";
import { readBoot, testAgent } from "./harness.ts";

let w: UpdateWorld;
let repo: RepoServer;
let bundle: Buffer;
let slotImage: Buffer;
let rootHash: string;
let hostile: Server;
let hostileUrl: string;
let mode: "other-bytes" | "ignore-range" = "other-bytes";
const NAME = "demo-2.0.0.bundle";

beforeAll(async () => {
  w = await makeUpdateWorld(tempDir(), { versions: [] });
  // 2.0.0: the 1.0.0 tree with its release file changed and one file added in /etc
  const root = join(w.dir, "slot-2.0.0.root");
  await cp(join(w.dir, "slot-1.0.0.img.root"), root, { recursive: true });
  const releasePath = join(root, "etc/abforge/release.json");
  const release = JSON.parse(await readFile(releasePath, "utf8"));
  await writeFile(releasePath, `${JSON.stringify({ ...release, version: "2.0.0" })}\n`);
  await writeFile(join(root, "etc/motd"), "delta\n");
  const path = join(w.dir, "slot-2.0.0.img");
  const { verity } = await squashfsWithVerity(root, path, ["-comp", "gzip"]);
  await mkdir(join(w.dir, "bundles"), { recursive: true });
  const out = join(w.dir, "bundles", NAME);
  await writeBundle({
    outPath: out,
    key: w.key.privateKey,
    slotImagePath: path,
    manifest: {
      formatVersion: 2,
      name: "demo",
      compatible: w.compatible,
      version: "2.0.0",
      createdAt: "2026-05-01T12:00:00Z",
      // small chunks, so that the verity tree of this small image (24 KiB with its
      // superblock) spans several: the chunk holding its last leaf hashes (the image's
      // changed end) starts after hashOffset, so the host makes it instead of fetching it
      slotImage: await hashSlotImage(path, { minSize: 1024, avgSize: 4096, maxSize: 16384 }),
      verity,
    },
  });
  bundle = await readFile(out);
  slotImage = await readFile(path);
  rootHash = verity.rootHash;
  repo = await serve({ repoDir: w.dir, port: 0, log: createLogger({ level: "silent" }) });
  // a server that answers ranges with other bytes at the right offsets, or ignores Range
  hostile = createServer((req, res) => {
    const ranges = parseRanges(req.headers.range, bundle.length);
    if (mode === "ignore-range" || !Array.isArray(ranges) || req.headers.range === undefined) {
      res.writeHead(200, { "Content-Length": String(bundle.length) });
      return void res.end(bundle);
    }
    const s = ranges[0] as Span;
    const body = Buffer.from(bundle.subarray(s.start, s.end));
    for (let i = 0; i < body.length; i += 4096) body[i] = (body[i] ?? 0) ^ 0x5a;
    res.writeHead(206, {
      "Content-Range": `bytes ${s.start}-${s.end - 1}/${bundle.length}`,
      "Content-Length": String(body.length),
    });
    res.end(body);
  });
  await new Promise<void>((r) => hostile.listen(0, "127.0.0.1", r));
  hostileUrl = `http://127.0.0.1:${(hostile.address() as AddressInfo).port}/${NAME}`;
}, 60_000);

afterAll(async () => {
  await repo?.close();
  hostile?.closeAllConnections();
  await new Promise((r) => hostile?.close(r));
});

describe("delta install", () => {
  it("installs 2.0.0 fetching a small share of the bundle by ranges, the slot byte for byte", async () => {
    const d = await w.freshDisk("delta");
    const { agent, lines } = await testAgent(d.path);
    const r = await agent.install(`${repo.url}bundles/${NAME}`);
    expect(r).toMatchObject({ outcome: "installed", version: "2.0.0", slot: "B" });
    if (r.outcome !== "installed") throw new Error("not installed");
    expect(r.bundleBytes).toBe(bundle.length);
    expect(r.bytesFetched).toBeLessThan(bundle.length * 0.3);
    expect(r.delta?.requests).toBeGreaterThan(0);
    expect(r.delta?.requests).toBeLessThanOrEqual(5);
    expect((r.delta?.copied ?? 0) + (r.delta?.inPlace ?? 0)).toBeGreaterThan(0);
    // the verity tree is made here, not fetched
    expect(r.delta?.computed).toBeGreaterThan(0);
    expect(
      (await readRange(d.path, { offset: d.slots.B.offset, size: slotImage.length })).equals(
        slotImage,
      ),
    ).toBe(true);
    const boot = await readBoot(d.path);
    expect(boot.slots.B).toMatchObject({ rootHash, version: "2.0.0" });
    expect(
      lines.some((l) =>
        /2\.0\.0: fetched \d+ of \d+ bytes \(\d+\.\d%\) in \d+ range requests/.test(String(l.msg)),
      ),
    ).toBe(true);
  });

  it("resumes after a stop: the next run finds what the first wrote in place and fetches the rest", async () => {
    const d = await w.freshDisk("resume");
    const { agent } = await testAgent(d.path);
    const stop = new AbortController();
    let total = 0;
    agent.onChunk = (done, of) => {
      total = of;
      if (done === Math.floor(of / 2)) stop.abort(new Error("killed"));
    };
    const err = await agent.install(`${repo.url}bundles/${NAME}`, stop.signal).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toMatchObject({ code: "UPDATE_ABORTED" });
    expect((await readBoot(d.path)).slots.B.rootHash).toBe("");
    const again = await testAgent(d.path);
    const r = await again.agent.install(`${repo.url}bundles/${NAME}`);
    if (r.outcome !== "installed") throw new Error(`not installed: ${r.outcome}`);
    expect(r.delta?.inPlace).toBeGreaterThanOrEqual(Math.floor(total / 2) - 1);
    expect(
      (await readRange(d.path, { offset: d.slots.B.offset, size: slotImage.length })).equals(
        slotImage,
      ),
    ).toBe(true);
    expect((await readBoot(d.path)).slots.B).toMatchObject({ rootHash, version: "2.0.0" });
  });

  it("refuses chunks a server sends with other bytes: nothing of them written, slot B not activated", async () => {
    mode = "other-bytes";
    const d = await w.freshDisk("hostile");
    const { agent } = await testAgent(d.path);
    const err = await agent.install(hostileUrl).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toMatchObject({ code: "UPDATE_VERIFY_FAILED" });
    expect(String((err as Error).message)).toMatch(
      /from the bundle has sha256 .* the manifest says/,
    );
    const boot = await readBoot(d.path);
    expect(boot.slots.B.rootHash).toBe("");
    // the tampered bytes (every 4096th byte flipped) appear nowhere in slot B
    const b = await readRange(d.path, { offset: d.slots.B.offset, size: slotImage.length });
    const tampered = Buffer.from(slotImage.subarray(0, 4096));
    tampered[0] = (tampered[0] ?? 0) ^ 0x5a;
    expect(b.subarray(0, 4096).equals(tampered)).toBe(false);
  });

  it("installs in full from a server that ignores Range", async () => {
    mode = "ignore-range";
    const d = await w.freshDisk("norange");
    const { agent, lines } = await testAgent(d.path);
    const r = await agent.install(hostileUrl);
    if (r.outcome !== "installed") throw new Error("not installed");
    expect(r.delta).toBeUndefined();
    expect(r.bytesFetched).toBe(bundle.length);
    expect(
      lines.some((l) => /ignores Range requests: installing 2\.0\.0 in full/.test(String(l.msg))),
    ).toBe(true);
    expect(
      (await readRange(d.path, { offset: d.slots.B.offset, size: slotImage.length })).equals(
        slotImage,
      ),
    ).toBe(true);
  });
});
