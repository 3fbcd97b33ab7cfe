/**
 * A bundle is a plain POSIX tar (src/bundle/README.md, "Tar layout"): GNU tar
 * lists and extracts ours, and our reader takes one that GNU tar made from
 * the same three files. The extracted slot image checks with veritysetup
 * against the manifest's verity fields.
 */
import { generateKeyPairSync } from "node:crypto";
import { mkdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import {
  type Manifest,
  verifyBundleFile,
  verifySignature,
  writeBundle,
} from "../../../src/bundle/index.ts";
import { run } from "../../../src/exec.ts";
import { tempDir } from "../../helpers/tmp.ts";
import { makeManifest, makeSlotImage, readBundle } from "../../unit/bundle/fixtures.ts";

const dir = tempDir("abforge-bundle-interop-");
const key = generateKeyPairSync("ed25519");
const bundle = join(dir, "demo.bundle");
let manifest: Manifest;
let slotPath: string;

beforeAll(async () => {
  const slot = await makeSlotImage(dir, "slot.img", 1024 * 1024 + 3 * 4096);
  slotPath = slot.path;
  manifest = (
    await writeBundle({
      outPath: bundle,
      manifest: await makeManifest(slot),
      key: key.privateKey,
      slotImagePath: slot.path,
    })
  ).manifest;
});

describe("bundle and GNU tar", () => {
  it("GNU tar lists three root-owned 0644 files dated createdAt", async () => {
    const r = await run("tar", ["--numeric-owner", "--utc", "-tvf", bundle]);
    const lines = r.stdout.trim().split("\n");
    expect(lines.map((l) => l.split(/\s+/).slice(0, 2).join(" "))).toEqual([
      "-rw-r--r-- 0/0",
      "-rw-r--r-- 0/0",
      "-rw-r--r-- 0/0",
    ]);
    expect(lines.map((l) => l.split(/\s+/).at(-1))).toEqual([
      "manifest.json",
      "manifest.sig",
      "slot.img",
    ]);
    for (const l of lines) expect(l).toContain("2026-05-01 12:00");
  });

  it("GNU tar extracts the exact manifest, signature and slot image; veritysetup verifies the slot", async () => {
    const out = join(dir, "x");
    mkdirSync(out);
    await run("tar", ["-xf", bundle, "-C", out]);
    const m = readFileSync(join(out, "manifest.json"));
    expect(JSON.parse(m.toString("utf8"))).toEqual(manifest);
    verifySignature(m, readFileSync(join(out, "manifest.sig")), [key.publicKey]);
    expect(readFileSync(join(out, "slot.img")).equals(readFileSync(slotPath))).toBe(true);
    const v = manifest.verity;
    const r = await run("veritysetup", [
      "verify",
      join(out, "slot.img"),
      join(out, "slot.img"),
      v.rootHash,
      `--hash-offset=${v.hashOffset}`,
    ]);
    expect(r.code).toBe(0);
  });

  it("our reader accepts the same three files tarred by GNU tar in ustar format", async () => {
    const out = join(dir, "x");
    const gnu = join(dir, "gnu.bundle");
    await run("tar", [
      "--format=ustar",
      "--blocking-factor=1",
      "--owner=0",
      "--group=0",
      "--numeric-owner",
      "-C",
      out,
      "-cf",
      gnu,
      "manifest.json",
      "manifest.sig",
      "slot.img",
    ]);
    const o = await readBundle(readFileSync(gnu), [key.publicKey]);
    expect(o.error).toBeUndefined();
    expect(o.emitted.equals(readFileSync(slotPath))).toBe(true);
    expect(await verifyBundleFile(gnu, [key.publicKey])).toEqual(manifest);
  });
});
