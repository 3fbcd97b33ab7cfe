// Polling a real repository over HTTP and resuming an interrupted download
// (src/updater/README.md, "Resume"): src/repo publish + serve on 127.0.0.1,
// behind a recording proxy that shows each Range request the agent makes.
import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { stat, writeFile } from "node:fs/promises";
import { createServer, request, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { readBundleHead } from "../../../src/bundle/index.ts";
import { publish, type RepoServer, serve } from "../../../src/repo/index.ts";
import { type AgentState, initialAgentState, StateStore } from "../../../src/updater/index.ts";
import { FakeClock } from "../../helpers/clock.ts";
import {
  type BundleFixture,
  copyInto,
  makeUpdateWorld,
  readRange,
  type UpdateWorld,
} from "../../helpers/fixtures.ts";
import { tempDir } from "../../helpers/tmp.ts";
import { REBOOT_OFF, readBoot, testAgent } from "./harness.ts";

const MiB = 1024 * 1024;
let w: UpdateWorld;
let repo: RepoServer;
let proxy: Server;
let proxyUrl: string;
/** Every request that reached the repository: path and Range header. */
const requests: { url: string; range: string | undefined }[] = [];
/** When set, the proxy holds a bundle response after its first `after` bytes until `release`. */
let pause: { after: number; release: Promise<void> } | null = null;
let slotOffset: number;

beforeAll(async () => {
  // 4.5 MiB of payload: a slot image of 5 chunks
  w = await makeUpdateWorld(tempDir(), { payloadBytes: 4.5 * MiB, versions: ["2.0.0"] });
  const repoDir = join(w.dir, "repo");
  await publish({ repoDir, bundlePath: bundle().path, channel: "stable", key: w.key.privateKey });
  repo = await serve({ repoDir, host: "127.0.0.1", port: 0 });
  const target = new URL(repo.url);
  proxy = createServer((req, res) => {
    requests.push({ url: req.url ?? "", range: req.headers.range });
    const up = request(
      {
        host: target.hostname,
        port: target.port,
        path: req.url,
        method: req.method,
        headers: req.headers,
      },
      (r) => {
        res.writeHead(r.statusCode ?? 502, r.headers);
        const hold = req.url?.includes("/bundles/") ? pause : null;
        if (!hold) return void r.pipe(res);
        let sent = 0;
        r.on("data", (d: Buffer) => {
          const before = sent;
          sent += d.length;
          if (before >= hold.after || sent < hold.after) return void res.write(d);
          res.write(d.subarray(0, hold.after - before));
          r.pause();
          void hold.release.then(() => {
            res.write(d.subarray(hold.after - before));
            r.resume();
          });
        });
        r.on("end", () => res.end());
      },
    );
    up.on("error", () => res.destroy());
    req.pipe(up);
  });
  await new Promise<void>((r) => proxy.listen(0, "127.0.0.1", r));
  proxyUrl = `http://127.0.0.1:${(proxy.address() as AddressInfo).port}/`;
  slotOffset = (await readBundleHead(createReadStream(bundle().path))).layout.slotOffset;
});

afterAll(async () => {
  proxy?.closeAllConnections();
  await new Promise((r) => proxy?.close(r));
  await repo?.close();
});

const bundle = () => w.bundles["2.0.0"] as BundleFixture;
const digest = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");
const config = () => ({ repoUrl: proxyUrl, channel: "stable", reboot: REBOOT_OFF });
const bundleRequests = () => requests.filter((r) => r.url.includes("/bundles/"));

/** Check with an agent that is stopped (as by SIGTERM) once `afterChunks` chunks are written. */
async function interruptedCheck(disk: string, afterChunks: number) {
  const t = await testAgent(disk, { config: config() });
  const stop = new AbortController();
  t.agent.onChunk = (done) => {
    if (done === afterChunks) stop.abort(new Error("SIGTERM"));
  };
  await expect(t.agent.check(stop.signal)).rejects.toMatchObject({ code: "UPDATE_ABORTED" });
  return t;
}

describe("check against a served repository", () => {
  it("fetches and verifies the index, installs over HTTP, then is up to date", async () => {
    const d = await w.freshDisk("check-ok");
    const t = await testAgent(d.path, { config: config() });
    expect(await t.agent.check()).toEqual({
      outcome: "installed",
      version: "2.0.0",
      slot: "B",
      rebooting: false,
      waiting: expect.objectContaining({ for: "operator", version: "2.0.0" }),
      // a format 1 bundle: the whole file
      bytesFetched: (await stat(bundle().path)).size,
      bundleBytes: (await stat(bundle().path)).size,
    });
    expect(
      digest(await readRange(d.path, { offset: d.slots.B.offset, size: bundle().slot.size })),
    ).toBe(bundle().manifest.slotImage.sha256);
    expect((await readBoot(d.path)).slots.B).toMatchObject({
      version: "2.0.0",
      tries: 3,
      good: false,
    });
    expect(t.agent.state.index?.serial).toBe(1);
    // the image now boots B = 2.0.0, the latest
    expect(await t.agent.check()).toEqual({ outcome: "up-to-date", version: "2.0.0" });
    expect(t.agent.state.lastCheck).toMatchObject({ outcome: "up-to-date", version: "2.0.0" });
  });

  it("skips a version recorded as bad without downloading it", async () => {
    const d = await w.freshDisk("check-bad");
    await new StateStore(`${d.path}.abforge-state`).save({
      ...initialAgentState(),
      badVersions: ["2.0.0"],
    });
    const t = await testAgent(d.path, { config: config() });
    const before = requests.length;
    expect(await t.agent.check()).toMatchObject({ outcome: "skipped", version: "2.0.0" });
    expect(requests.slice(before).map((r) => r.url)).toEqual(["/channels/stable.json"]);
    expect(t.lines.map((l) => l.msg)).toContain("skip 2.0.0: recorded as bad (it rolled back)");
    expect(t.lines.some((l) => /downloading/.test(l.msg))).toBe(false);
  });

  it("refuses an index with a lower serial than one already seen (replay)", async () => {
    const d = await w.freshDisk("check-replay");
    await new StateStore(`${d.path}.abforge-state`).save({
      ...initialAgentState(),
      index: { serial: 9, sha256: "0".repeat(64) },
    });
    const t = await testAgent(d.path, { config: config() });
    await expect(t.agent.check()).rejects.toMatchObject({ code: "REPO_INDEX_REPLAYED" });
    expect(t.agent.state.lastError).toMatchObject({ code: "REPO_INDEX_REPLAYED" });
  });
});

describe("resume after an interrupted download", () => {
  it("a restarted agent continues with a Range request at the first chunk not written", async () => {
    const d = await w.freshDisk("resume-http");
    await interruptedCheck(d.path, 2);
    const state = await new StateStore(`${d.path}.abforge-state`).load();
    expect(state.progress).toMatchObject({
      slot: "B",
      version: "2.0.0",
      verifiedChunks: 2,
      chunksTotal: 5,
    });
    expect(state.lastError).toBeNull(); // stopped, not failed
    // interrupted: B is unbootable, A (good) boots
    expect((await readBoot(d.path)).order).toEqual(["A", "B"]);

    const before = bundleRequests().length;
    const t = await testAgent(d.path, { config: config() }); // the restart
    expect(await t.agent.check()).toMatchObject({ outcome: "installed", version: "2.0.0" });
    // the head (manifest, signature) again from byte 0, then the slot image from chunk 2
    expect(
      bundleRequests()
        .slice(before)
        .map((r) => r.range),
    ).toEqual([undefined, `bytes=${slotOffset + 2 * MiB}-`]);
    expect(t.lines.map((l) => l.msg)).toContain(
      "resuming 2.0.0 at chunk 2 of 5 (chunks before it verified in slot B)",
    );
    expect(
      digest(await readRange(d.path, { offset: d.slots.B.offset, size: bundle().slot.size })),
    ).toBe(bundle().manifest.slotImage.sha256);
    expect((await readBoot(d.path)).slots.B).toMatchObject({ version: "2.0.0", tries: 3 });
  });

  it("re-checks the written chunks on the partition instead of trusting the state file", async () => {
    const d = await w.freshDisk("resume-damaged");
    await interruptedCheck(d.path, 3);
    // chunk 1 is damaged on the partition after the state file recorded it
    const zeros = join(w.dir, "zeros");
    await writeFile(zeros, Buffer.alloc(MiB));
    await copyInto(zeros, d.path, d.slots.B.offset + MiB);
    const before = bundleRequests().length;
    const t = await testAgent(d.path, { config: config() });
    expect(await t.agent.check()).toMatchObject({ outcome: "installed" });
    expect(
      bundleRequests()
        .slice(before)
        .map((r) => r.range),
    ).toEqual([undefined, `bytes=${slotOffset + 1 * MiB}-`]);
    expect(t.lines.map((l) => l.msg)).toContain(
      "chunk 1 in slot B does not match; rewriting from there",
    );
    expect(
      digest(await readRange(d.path, { offset: d.slots.B.offset, size: bundle().slot.size })),
    ).toBe(bundle().manifest.slotImage.sha256);
  });

  it("a run stopped after the last chunk fetches only the end of the archive, and the file's digest still holds", async () => {
    const d = await w.freshDisk("resume-tail");
    await interruptedCheck(d.path, 5);
    const state = await new StateStore(`${d.path}.abforge-state`).load();
    expect(state.progress).toMatchObject({ verifiedChunks: 5, chunksTotal: 5 });
    const before = bundleRequests().length;
    const t = await testAgent(d.path, { config: config() });
    const written: number[] = [];
    t.agent.onChunk = (done) => written.push(done);
    expect(await t.agent.check()).toMatchObject({ outcome: "installed", version: "2.0.0" });
    expect(written).toEqual([]);
    // the head again, then the bytes after the slot image (padding, end-of-archive) only:
    // the whole file's sha256 = head + the chunks re-read from the slot + that tail
    expect(
      bundleRequests()
        .slice(before)
        .map((r) => r.range),
    ).toEqual([undefined, `bytes=${slotOffset + bundle().slot.size}-`]);
  });

  it("a local bundle file resumes by seeking", async () => {
    const d = await w.freshDisk("resume-file");
    const t1 = await testAgent(d.path, { config: { reboot: REBOOT_OFF } });
    const stop = new AbortController();
    t1.agent.onChunk = (done) => {
      if (done === 4) stop.abort(new Error("SIGTERM"));
    };
    await expect(t1.agent.install(bundle().path, stop.signal)).rejects.toMatchObject({
      code: "UPDATE_ABORTED",
    });
    const t2 = await testAgent(d.path, { config: { reboot: REBOOT_OFF } });
    const written: number[] = [];
    t2.agent.onChunk = (done) => written.push(done);
    expect(await t2.agent.install(bundle().path)).toMatchObject({ outcome: "installed" });
    expect(written).toEqual([5]); // only the last chunk was read and written again
    expect(t2.lines.map((l) => l.msg)).toContain(
      "resuming 2.0.0 at chunk 4 of 5 (chunks before it verified in slot B)",
    );
  });
});

describe("recording the progress (README.md, install step 5)", () => {
  /** The progress records the agent saves (verifiedChunks of each), and a wait for one. */
  function recordSaves() {
    const saves: number[] = [];
    const waiters: { chunks: number; resolve: () => void }[] = [];
    const save = StateStore.prototype.save;
    const spy = vi.spyOn(StateStore.prototype, "save").mockImplementation(async function (
      this: StateStore,
      state: AgentState,
    ) {
      await save.call(this, state);
      if (!state.progress) return;
      saves.push(state.progress.verifiedChunks);
      for (const w of waiters) if (w.chunks === state.progress.verifiedChunks) w.resolve();
    });
    const saved = (chunks: number) =>
      new Promise<void>((resolve) => waiters.push({ chunks, resolve }));
    return { saves, saved, restore: () => spy.mockRestore() };
  }

  it("saves at most once a second while chunks arrive, not after every chunk", async () => {
    const d = await w.freshDisk("record-fast");
    const clock = new FakeClock();
    const t = await testAgent(d.path, { config: { reboot: REBOOT_OFF }, overrides: { clock } });
    const r = recordSaves();
    try {
      // no time passes during the download: the record at the start and at the last chunk only
      expect(await t.agent.install(bundle().path)).toMatchObject({ outcome: "installed" });
    } finally {
      r.restore();
    }
    expect(r.saves).toEqual([0, 5]);
  });

  it("a second after the last save, the chunks written since are saved", async () => {
    const d = await w.freshDisk("record-second");
    const clock = new FakeClock();
    const t = await testAgent(d.path, { config: { reboot: REBOOT_OFF }, overrides: { clock } });
    t.agent.onChunk = (done) => {
      if (done === 2) clock.advance(1000);
    };
    const r = recordSaves();
    try {
      expect(await t.agent.install(bundle().path)).toMatchObject({ outcome: "installed" });
    } finally {
      r.restore();
    }
    // the timer armed at chunk 1 fired at 1 s with 2 chunks written; 3 and 4 came within
    // the next second; the last chunk is saved at once
    expect(r.saves).toEqual([0, 2, 5]);
  });

  it("records the chunks written before a pause of the download within a second", async () => {
    const d = await w.freshDisk("record-pause");
    let release = () => {};
    pause = { after: slotOffset + 3 * MiB, release: new Promise<void>((r) => (release = r)) };
    const clock = new FakeClock();
    const r = recordSaves();
    try {
      const t = await testAgent(d.path, { config: config(), overrides: { clock } });
      const threeWritten = new Promise<void>((resolve) => {
        t.agent.onChunk = (done) => {
          if (done === 3) resolve();
        };
      });
      const threeSaved = r.saved(3);
      const check = t.agent.check();
      await threeWritten;
      // the proxy holds chunk 4: only the timer armed at chunk 1 can record chunks 0-2
      clock.advance(999);
      expect(clock.dueAt).toContain(1000); // the recorder's timer, not fired yet
      expect(r.saves).toEqual([0]);
      clock.advance(1);
      await threeSaved;
      expect(r.saves).toEqual([0, 3]);
      release();
      expect(await check).toMatchObject({ outcome: "installed", version: "2.0.0" });
      expect(r.saves).toEqual([0, 3, 5]);
    } finally {
      release();
      pause = null;
      r.restore();
    }
  });
});
