// The signed channel index is the whole truth (src/updater/README.md, "Install procedure",
// steps 2 and 6): a validly signed bundle that is not the one the index names is refused
// with UPDATE_INDEX_MISMATCH before a byte of the idle slot or the boot state changes, and
// the whole file's size and sha256 are checked in the same pass as the download.
// src/repo publish + serve on 127.0.0.1; the file at the index's bundle path is replaced.
import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { readBundleHead } from "../../../src/bundle/index.ts";
import { publish, type RepoServer, serve } from "../../../src/repo/index.ts";
import {
  type BundleFixture,
  type DiskFixture,
  makeBundle,
  makeSlotImage,
  makeUpdateWorld,
  readRange,
  type UpdateWorld,
} from "../../helpers/fixtures.ts";
import { tempDir } from "../../helpers/tmp.ts";
import { REBOOT_OFF, readBoot, testAgent } from "./harness.ts";

let w: UpdateWorld;
let repo: RepoServer;
let repoDir: string;
/** The file the stable index names. */
let atPath: string;
const extra = {} as Record<"other200" | "older", BundleFixture>;

beforeAll(async () => {
  w = await makeUpdateWorld(tempDir(), { versions: ["2.0.0", "3.0.0"] });
  const img = (name: string, version: string) =>
    makeSlotImage(join(w.dir, `${name}.img`), {
      version,
      compatible: w.compatible,
      trustedKeys: [w.key.publicKey],
    });
  // the same name and version, other bytes (another build), signed by the same key
  extra.other200 = await makeBundle(
    join(w.dir, "other-2.0.0.bundle"),
    await img("other-2.0.0", "2.0.0"),
    w.key.privateKey,
  );
  extra.older = await makeBundle(
    join(w.dir, "older.bundle"),
    await img("older", "0.9.0"),
    w.key.privateKey,
  );
  repoDir = join(w.dir, "repo");
  const stable = await publish({
    repoDir,
    bundlePath: bundle("2.0.0").path,
    channel: "stable",
    key: w.key.privateKey,
  });
  await publish({
    repoDir,
    bundlePath: bundle("3.0.0").path,
    channel: "beta",
    key: w.key.privateKey,
  });
  atPath = join(repoDir, stable.bundlePath);
  repo = await serve({ repoDir, host: "127.0.0.1", port: 0 });
});

afterAll(async () => {
  await repo?.close();
});

const bundle = (v: string) => w.bundles[v] as BundleFixture;
const digest = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");
const config = () => ({ repoUrl: repo.url, channel: "stable", reboot: REBOOT_OFF });

async function snapshot(d: DiskFixture) {
  return {
    A: digest(await readRange(d.path, d.slots.A)),
    B: digest(await readRange(d.path, d.slots.B)),
    boot: await readBoot(d.path),
  };
}

/** `bytes` at the stable index's bundle path for the duration of `fn`. */
async function servedAsStable<T>(bytes: Buffer, fn: () => Promise<T>): Promise<T> {
  const genuine = await readFile(bundle("2.0.0").path);
  await writeFile(atPath, bytes);
  try {
    return await fn();
  } finally {
    await writeFile(atPath, genuine);
  }
}

/** The genuine 2.0.0 bundle with its slot.img tar header's mtime changed (checksum fixed). */
async function reframed(): Promise<Buffer> {
  const b = Buffer.from(await readFile(bundle("2.0.0").path));
  const head = await readBundleHead(createReadStream(bundle("2.0.0").path));
  const h = head.layout.entries[2]?.headerOffset as number;
  b.write(`${(1_800_000_000).toString(8).padStart(11, "0")}\0`, h + 136, "ascii");
  b.fill(0x20, h + 148, h + 156);
  let sum = 0;
  for (let i = 0; i < 512; i++) sum += b[h + i] as number;
  b.write(`${sum.toString(8).padStart(6, "0")}\0 `, h + 148, "ascii");
  return b;
}

describe("a validly signed bundle that is not the one the index names", () => {
  const cases: [string, () => Promise<Buffer>][] = [
    ["the same name and version with other bytes", () => readFile(extra.other200.path)],
    ["an older bundle put at the path", () => readFile(extra.older.path)],
    ["another channel's bundle (beta's 3.0.0)", () => readFile(bundle("3.0.0").path)],
  ];
  it.each(cases)("%s: UPDATE_INDEX_MISMATCH, nothing changes", async (name, bytes) => {
    const d = await w.freshDisk(`promise-${name.replace(/\W+/g, "-")}`);
    const before = await snapshot(d);
    const t = await testAgent(d.path, { config: config() });
    const err = await servedAsStable(await bytes(), () => t.agent.check().catch((e) => e));
    expect(err).toMatchObject({ code: "UPDATE_INDEX_MISMATCH" });
    expect((err as Error).message).toMatch(
      /is not the bundle the signed channel index names \(demo \S+: manifest sha256 [0-9a-f]{64}, the index names [0-9a-f]{64}.*\); nothing written$/,
    );
    expect(await snapshot(d)).toEqual(before);
    expect(t.agent.state).toMatchObject({
      progress: null,
      emptySlot: null,
      lastError: { code: "UPDATE_INDEX_MISMATCH" },
    });
    expect(t.lines.filter((l) => typeof l.step === "string").map((l) => l.step)).toEqual([
      "open-bundle",
      "check-update",
    ]);
  });

  it("the same release in other tar framing: the whole file's sha256 fails in the same pass; not activated", async () => {
    const d = await w.freshDisk("promise-reframed");
    const t = await testAgent(d.path, { config: config() });
    const err = await servedAsStable(await reframed(), () => t.agent.check().catch((e) => e));
    expect(err).toMatchObject({ code: "UPDATE_INDEX_MISMATCH" });
    expect((err as Error).message).toMatch(
      /is \d+ bytes with sha256 [0-9a-f]{64}; the signed channel index names \d+ bytes with sha256 [0-9a-f]{64}: not the file the index names; slot B is not activated$/,
    );
    // the manifest is the committed one, so the slot was written; it is not booted
    expect((await readBoot(d.path)).slots.B).toMatchObject({ good: false, tries: 0, rootHash: "" });
    expect(t.agent.state.emptySlot).toMatchObject({
      slot: "B",
      failure: { code: "UPDATE_INDEX_MISMATCH" },
    });
    expect(t.agent.state.progress).toBeNull();
    // the steps up to the check; sync, verity and activate never ran
    expect(
      t.lines
        .filter((l) => typeof l.step === "string")
        .map((l) => l.step)
        .at(-1),
    ).toBe("check-sha256");
    // with the genuine file back, the next check installs it
    expect(await t.agent.check()).toMatchObject({ outcome: "installed", version: "2.0.0" });
  });

  it("the genuine bundle installs (the file's digest matches over a whole download)", async () => {
    const d = await w.freshDisk("promise-ok");
    const t = await testAgent(d.path, { config: config() });
    expect(await t.agent.check()).toMatchObject({ outcome: "installed", version: "2.0.0" });
  });
});
