/** src/repo/README.md: "Publishing". */
import { createHash } from "node:crypto";
import { readdir, readFile, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { Readable } from "node:stream";
import { describe, expect, it } from "vitest";
import { readBundleHead } from "../../../src/bundle/index.ts";
import { ToolError } from "../../../src/errors.ts";
import {
  decodeIndex,
  encodeIndex,
  publish,
  RepoError,
  signIndex,
  verifyIndex,
} from "../../../src/repo/index.ts";
import { tempDir } from "../../helpers/tmp.ts";
import { makeBundle, makeKey } from "./fixtures.ts";

const dir = tempDir("abforge-repo-publish-");
const now = new Date("2026-03-01T12:00:00.000Z");

async function setup(name: string) {
  const base = join(dir, name);
  const { mkdir } = await import("node:fs/promises");
  await mkdir(base, { recursive: true });
  const key = await makeKey(base);
  const repoDir = join(base, "repo");
  const bundle = async (version: string, fill = 0x5a, other = key) => {
    const path = join(base, `in-${version}-${fill}-${other === key ? "k" : "o"}.bundle`);
    await makeBundle(path, other, { version, fill });
    return path;
  };
  return { base, key, repoDir, bundle };
}

async function refusal(p: Promise<unknown>): Promise<RepoError | ToolError> {
  try {
    await p;
  } catch (err) {
    if (err instanceof RepoError || err instanceof ToolError) return err;
    throw err;
  }
  throw new Error("publish was not refused");
}

describe("publish", () => {
  it("copies the bundle and writes a signed index an agent accepts", async () => {
    const { key, repoDir, bundle } = await setup("first");
    const src = await bundle("1.0.0");
    const r = await publish({
      repoDir,
      bundlePath: src,
      channel: "stable",
      key: key.privateKey,
      minUpdateFrom: "0.9.0",
      rolloutPercent: 25,
      expiresInMs: 3_600_000,
      now,
    });
    expect(r).toMatchObject({
      serial: 1,
      version: "1.0.0",
      bundlePath: "bundles/demo-1.0.0.bundle",
      bundleCopied: true,
    });
    const copied = await readFile(join(repoDir, "bundles/demo-1.0.0.bundle"));
    expect(copied.equals(await readFile(src))).toBe(true);
    const v = verifyIndex(await readFile(join(repoDir, "channels/stable.json")), {
      channel: "stable",
      trustedKeys: [key.publicKey],
      now,
      minSerial: 0,
    });
    expect(v.signed).toMatchObject({
      name: "demo",
      compatible: "demo-x86_64",
      serial: 1,
      issuedAt: "2026-03-01T12:00:00.000Z",
      expiresAt: "2026-03-01T13:00:00.000Z",
      latest: {
        version: "1.0.0",
        bundle: "../bundles/demo-1.0.0.bundle",
        size: copied.length,
        sha256: createHash("sha256").update(copied).digest("hex"),
        minUpdateFrom: "0.9.0",
      },
      rollout: { percent: 25 },
    });
    // format 2: the index commits to the bundle's manifest.json, byte for byte
    expect(v.signed.formatVersion).toBe(2);
    const head = await readBundleHead(Readable.from([copied]));
    const manifestSha256 = createHash("sha256").update(head.manifestBytes).digest("hex");
    expect(v.signed.latest.manifestSha256).toBe(manifestSha256);
    expect(r.manifestSha256).toBe(manifestSha256);
    // the slot data offset points at the slot image's bytes inside the bundle
    const off = v.signed.latest.slotDataOffset;
    expect(off % 4096).toBe(0);
    expect(copied.subarray(off, off + 16384).every((b) => b === 0x5a)).toBe(true);
    expect(copied[off - 1]).not.toBe(0x5a);
  });

  it("increments the serial at each publish, and re-publishing the same bundle renews the index", async () => {
    const { key, repoDir, bundle } = await setup("serial");
    const common = { repoDir, channel: "stable", key: key.privateKey };
    const a = await publish({ ...common, bundlePath: await bundle("1.0.0"), now });
    const b = await publish({ ...common, bundlePath: await bundle("1.1.0"), now });
    const c = await publish({
      ...common,
      bundlePath: await bundle("1.1.0"),
      now: new Date("2026-03-20T00:00:00Z"),
    });
    expect([a.serial, b.serial, c.serial]).toEqual([1, 2, 3]);
    expect(c.bundleCopied).toBe(false);
    expect(c.expiresAt).toBe("2026-04-19T00:00:00.000Z");
    expect(c.previousVersion).toBe("1.1.0");
    expect((await readdir(join(repoDir, "bundles"))).sort()).toEqual([
      "demo-1.0.0.bundle",
      "demo-1.1.0.bundle",
    ]);
  });

  it("continues the serial of a format 1 index an older publisher wrote, in format 2", async () => {
    const { key, repoDir, bundle } = await setup("format1");
    const common = { repoDir, channel: "stable", key: key.privateKey, now };
    await publish({ ...common, bundlePath: await bundle("1.0.0") });
    const indexPath = join(repoDir, "channels/stable.json");
    const { signed } = decodeIndex(await readFile(indexPath));
    const { manifestSha256: _, ...latest } = signed.latest;
    const v1 = signIndex({ ...signed, formatVersion: 1, serial: 4, latest }, key.privateKey);
    await writeFile(indexPath, encodeIndex(v1));
    const r = await publish({ ...common, bundlePath: await bundle("1.1.0") });
    expect(r.serial).toBe(5);
    const next = decodeIndex(await readFile(indexPath)).signed;
    expect(next.formatVersion).toBe(2);
    expect(next.latest.manifestSha256).toBe(r.manifestSha256);
  });

  it("refuses a bundle not signed by the key", async () => {
    const { base, key, repoDir, bundle } = await setup("unsigned");
    const other = await makeKey(base, "other");
    const e = await refusal(
      publish({
        repoDir,
        bundlePath: await bundle("1.0.0", 1, other),
        channel: "stable",
        key: key.privateKey,
        now,
      }),
    );
    expect(e.code).toBe("REPO_PUBLISH_REFUSED");
    expect(e.message).toMatch(/does not verify with key/);
    expect(await readdir(join(repoDir, "bundles"))).toEqual([]);
    await expect(stat(join(repoDir, "channels/stable.json"))).rejects.toThrow();
  });

  it("refuses a bundle whose bytes were altered after signing", async () => {
    const { key, repoDir, bundle } = await setup("tampered");
    const path = await bundle("1.0.0");
    const bytes = await readFile(path);
    bytes[600] = (bytes[600] ?? 0) ^ 0xff; // inside manifest.json
    await writeFile(path, bytes);
    const e = await refusal(
      publish({ repoDir, bundlePath: path, channel: "stable", key: key.privateKey, now }),
    );
    expect(e.code).toBe("REPO_PUBLISH_REFUSED");
  });

  it("refuses a downgrade and says why", async () => {
    const { key, repoDir, bundle } = await setup("downgrade");
    const common = { repoDir, channel: "stable", key: key.privateKey, now };
    await publish({ ...common, bundlePath: await bundle("2.0.0") });
    const before = await readFile(join(repoDir, "channels/stable.json"));
    const e = await refusal(publish({ ...common, bundlePath: await bundle("1.9.9") }));
    expect(e.code).toBe("REPO_PUBLISH_REFUSED");
    expect(e.message).toMatch(/is at 2\.0\.0; publishing 1\.9\.9 would be a downgrade/);
    expect((await readFile(join(repoDir, "channels/stable.json"))).equals(before)).toBe(true);
    // another channel is independent
    expect(
      (await publish({ ...common, channel: "lts", bundlePath: await bundle("1.9.9") })).serial,
    ).toBe(1);
  });

  it("refuses the same name and version with different bytes", async () => {
    const { key, repoDir, bundle } = await setup("conflict");
    const common = { repoDir, key: key.privateKey, now };
    await publish({ ...common, channel: "stable", bundlePath: await bundle("1.0.0", 1) });
    const onDisk = await readFile(join(repoDir, "bundles/demo-1.0.0.bundle"));
    // same channel: the index already names other content
    const e1 = await refusal(
      publish({ ...common, channel: "stable", bundlePath: await bundle("1.0.0", 2) }),
    );
    expect(e1.message).toMatch(/already has version 1\.0\.0 with other content/);
    // another channel: the bundle file itself is immutable
    const e2 = await refusal(
      publish({ ...common, channel: "beta", bundlePath: await bundle("1.0.0", 2) }),
    );
    expect(e2.code).toBe("REPO_PUBLISH_REFUSED");
    expect(e2.message).toMatch(/already exists with other content/);
    expect((await readFile(join(repoDir, "bundles/demo-1.0.0.bundle"))).equals(onDisk)).toBe(true);
    expect((await readdir(join(repoDir, "bundles"))).filter((f) => f.startsWith("."))).toEqual([]);
  });

  it("keeps the previous index when it fails between the bundle copy and the index rename", async () => {
    const { key, repoDir, bundle } = await setup("atomic");
    const common = { repoDir, channel: "stable", key: key.privateKey, now };
    await publish({ ...common, bundlePath: await bundle("1.0.0") });
    const indexPath = join(repoDir, "channels/stable.json");
    const before = await readFile(indexPath);
    const renames: string[] = [];
    const e = await refusal(
      publish({
        ...common,
        bundlePath: await bundle("1.1.0"),
        io: {
          rename: async (from, to) => {
            renames.push(from, to);
            throw Object.assign(new Error("simulated crash before rename"), { code: "EIO" });
          },
        },
      }),
    );
    expect(e.code).toBe("IO_ERROR");
    expect(renames[0]).toMatch(/channels\/\.stable\.json\.[0-9a-f]+\.tmp$/);
    expect(renames[1]).toBe(indexPath);
    // the new bundle is in place (unreferenced), the index is byte for byte the old one
    await stat(join(repoDir, "bundles/demo-1.1.0.bundle"));
    expect((await readFile(indexPath)).equals(before)).toBe(true);
    expect(decodeIndex(before).signed.serial).toBe(1);
    expect((await readdir(join(repoDir, "channels"))).sort()).toEqual(["stable.json"]);
    // the next publish goes through with the next serial
    const r = await publish({ ...common, bundlePath: await bundle("1.1.0") });
    expect(r).toMatchObject({ serial: 2, bundleCopied: false });
  });

  it("ignores temporary files a crashed publish left behind", async () => {
    const { key, repoDir, bundle } = await setup("leftovers");
    const common = { repoDir, channel: "stable", key: key.privateKey, now };
    await publish({ ...common, bundlePath: await bundle("1.0.0") });
    await writeFile(join(repoDir, "channels/.stable.json.deadbeef0000.tmp"), "{half");
    await writeFile(join(repoDir, "bundles/.incoming-deadbeef0000.tmp"), "half");
    expect((await publish({ ...common, bundlePath: await bundle("1.0.1") })).serial).toBe(2);
  });

  it("refuses to go on from an unreadable current index", async () => {
    const { key, repoDir, bundle } = await setup("corrupt");
    const common = { repoDir, channel: "stable", key: key.privateKey, now };
    await publish({ ...common, bundlePath: await bundle("1.0.0") });
    await writeFile(join(repoDir, "channels/stable.json"), "{ broken");
    const e = await refusal(publish({ ...common, bundlePath: await bundle("1.0.1") }));
    expect(e.code).toBe("REPO_BAD_INDEX");
    expect(e.message).toMatch(/next serial is unknown/);
  });

  it("validates its options, listing every problem", async () => {
    const { key, repoDir, bundle } = await setup("options");
    const e = await refusal(
      publish({
        repoDir,
        bundlePath: await bundle("1.0.0"),
        channel: "../x",
        key: key.privateKey,
        rolloutPercent: 150,
        minUpdateFrom: "one",
        expiresInMs: 0,
        now,
      }),
    );
    expect(e.code).toBe("REPO_PUBLISH_REFUSED");
    expect(e.details.problems).toHaveLength(4);
  });
});
