// The state file (src/updater/README.md, "State file"): atomic replace, schema, corruption moved aside.
import { spawn } from "node:child_process";
import { readdir, readFile, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  type AgentState,
  initialAgentState,
  STATE_SCHEMA_VERSION,
  StateStore,
  validateState,
} from "../../../src/updater/index.ts";
import { tempDir } from "../../helpers/tmp.ts";

const sample = (n: number): AgentState => ({
  ...initialAgentState(),
  badVersions: [`3.0.${n}`],
  rollbacks: [
    { version: `3.0.${n}`, slot: "A", reason: "out of tries", at: "2026-01-01T00:00:00.000Z" },
  ],
  progress: {
    slot: "B",
    version: "2.0.0",
    source: "http://repo/bundles/demo-2.0.0.bundle",
    bundleSha256: "a".repeat(64),
    manifestSha256: "b".repeat(64),
    slotImageSha256: "c".repeat(64),
    slotDataOffset: 2048,
    slotImageSize: 5 * 1048576,
    chunkSize: 1048576,
    chunksTotal: 5,
    verifiedChunks: n % 6,
    startedAt: "2026-01-01T00:00:00.000Z",
    updatedAt: "2026-01-01T00:00:01.000Z",
  },
  rolloutId: "host-1",
});

describe("state file", () => {
  it("no file yet is the initial state; save then load gives the same state with the schema version", async () => {
    const store = new StateStore(join(tempDir(), "state"));
    expect(await store.load()).toEqual(initialAgentState());
    await store.save(sample(3));
    const text = await readFile(store.path, "utf8");
    expect(JSON.parse(text).schemaVersion).toBe(STATE_SCHEMA_VERSION);
    expect(await store.load()).toEqual(sample(3));
    expect((await readdir(store.dir)).sort()).toEqual(["state.json"]);
  });

  it("a crash before the rename leaves the old file whole; the stale temp file is removed at start", async () => {
    const store = new StateStore(tempDir());
    await store.save(sample(1));
    // what a crash between write and rename leaves: a half-written temp file
    await writeFile(join(store.dir, "state.json.tmp-4194399"), '{"schemaVersion": 1, "badVer');
    expect(await store.load()).toEqual(sample(1));
    // a temp file of a live process (another agent command saving now) is not touched
    const live = `state.json.tmp-${process.pid}`;
    await writeFile(join(store.dir, live), "{}");
    expect(await store.removeStaleTemps()).toEqual(["state.json.tmp-4194399"]);
    expect((await readdir(store.dir)).sort()).toEqual(["state.json", live]);
    await rm(join(store.dir, live));
    expect(await readdir(store.dir)).toEqual(["state.json"]);
  });

  it("a reader never sees a partial file while another process rewrites it", async () => {
    const store = new StateStore(tempDir());
    await store.save(sample(0));
    // a second process reads as fast as it can while this one saves 200 times
    const reader = spawn(
      process.execPath,
      [
        "-e",
        `const fs=require("fs");let bad=0,n=0;const t=Date.now();
         while(Date.now()-t<1500){try{JSON.parse(fs.readFileSync(${JSON.stringify(store.path)},"utf8"));n++}catch(e){bad++}}
         console.log(JSON.stringify({bad,n}))`,
      ],
      { stdio: ["ignore", "pipe", "inherit"] },
    );
    let out = "";
    reader.stdout.on("data", (d) => {
      out += d;
    });
    const done = new Promise((r) => reader.on("close", r));
    for (let i = 0; i < 200; i++) await store.save(sample(i));
    await done;
    const { bad, n } = JSON.parse(out) as { bad: number; n: number };
    expect(n).toBeGreaterThan(0);
    expect(bad).toBe(0);
  });

  it.each([
    ["not JSON", "{ this is not json"],
    ["truncated", JSON.stringify(sample(2)).slice(0, 40)],
    ["wrong types", JSON.stringify({ ...sample(2), badVersions: "3.0.0" })],
    [
      "bad slot",
      JSON.stringify({
        ...sample(2),
        pending: { slot: "C", version: "1", rootHash: "x", installedAt: "t" },
      }),
    ],
  ])("a corrupt file (%s) is moved aside and reported as STATE_CORRUPT", async (_what, text) => {
    const store = new StateStore(tempDir());
    await writeFile(store.path, text);
    const err = await store.load(new Date("2026-02-03T04:05:06.789Z")).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: "STATE_CORRUPT" });
    const movedTo = (err as { details: { movedTo: string } }).details.movedTo;
    expect(movedTo).toBe(`${store.path}.corrupt-2026-02-03T04-05-06-789Z`);
    expect(await readFile(movedTo, "utf8")).toBe(text);
    // the next load starts from the initial state: the bad file is kept, not reused
    expect(await store.load()).toEqual(initialAgentState());
  });

  it("validateState accepts what the agent writes, and fields added by a newer agent", () => {
    fc.assert(
      fc.property(fc.nat(1000), fc.string(), (n, extra) => {
        expect(validateState(JSON.parse(JSON.stringify(sample(n))))).toEqual([]);
        expect(validateState({ ...sample(n), schemaVersion: 2, futureField: extra })).toEqual([]);
      }),
    );
  });

  it("read() changes nothing: a corrupt file is reported and stays; load() moves it aside", async () => {
    const store = new StateStore(tempDir());
    await writeFile(store.path, '{"schemaVersion": 1, "badVersions": "x"}');
    expect(await store.read()).toEqual({ corrupt: ["badVersions: not a list"] });
    expect(await readdir(store.dir)).toEqual(["state.json"]);
    await expect(store.load(new Date("2026-01-01T00:00:00Z"))).rejects.toMatchObject({
      code: "STATE_CORRUPT",
    });
    expect(await readdir(store.dir)).toEqual(["state.json.corrupt-2026-01-01T00-00-00-000Z"]);
  });

  it("a newer schema is refused by read() and load() (STATE_SCHEMA_NEWER) and left byte for byte", async () => {
    const store = new StateStore(tempDir());
    // fields this agent would take for corruption: a newer agent's, not to be moved or rewritten
    const text = '{"schemaVersion": 2, "badVersions": {"3.0.0": "rolled back"}}';
    await writeFile(store.path, text);
    for (const attempt of [() => store.read(), () => store.load()])
      await expect(attempt()).rejects.toMatchObject({
        code: "STATE_SCHEMA_NEWER",
        details: { schemaVersion: 2, known: STATE_SCHEMA_VERSION },
      });
    expect(await readdir(store.dir)).toEqual(["state.json"]);
    expect(await readFile(store.path, "utf8")).toBe(text);
  });
});
