/** writeBundle (src/bundle/README.md, "Tar layout"). */
import { generateKeyPairSync } from "node:crypto";
import { copyFileSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import tar from "tar-stream";
import { beforeAll, describe, expect, it } from "vitest";
import {
  CHUNK_SIZE,
  keyId,
  slotDataOffset,
  type UnsignedManifest,
  writeBundle,
} from "../../../src/bundle/index.ts";
import { ToolError } from "../../../src/errors.ts";
import { tempDir } from "../../helpers/tmp.ts";
import { expectCode, makeManifest, makeSlotImage, type SlotFixture, streamOf } from "./fixtures.ts";

const dir = tempDir("abforge-writer-");
const key = generateKeyPairSync("ed25519");
let slot: SlotFixture;
let manifest: UnsignedManifest;

beforeAll(async () => {
  slot = await makeSlotImage(dir, "slot.img", 2 * CHUNK_SIZE + 256 * 1024);
  manifest = await makeManifest(slot);
});

async function catchOf(p: Promise<unknown>): Promise<unknown> {
  try {
    await p;
  } catch (e) {
    return e;
  }
  return undefined;
}

describe("writeBundle", () => {
  it("writes identical bytes for identical inputs", async () => {
    const a = join(dir, "a.bundle");
    const b = join(dir, "b.bundle");
    await writeBundle({ outPath: a, manifest, key: key.privateKey, slotImagePath: slot.path });
    await writeBundle({ outPath: b, manifest, key: key.privateKey, slotImagePath: slot.path });
    expect(readFileSync(a).equals(readFileSync(b))).toBe(true);
  });

  it("writes manifest.json, manifest.sig, slot.img with fixed owner, mode and mtime, slot data 4096-aligned", async () => {
    const out = join(dir, "layout.bundle");
    const w = await writeBundle({
      outPath: out,
      manifest,
      key: key.privateKey,
      slotImagePath: slot.path,
    });
    expect(w.manifest.keyId).toBe(keyId(key.publicKey));
    const bytes = readFileSync(out);
    const seen: { header: tar.Header; data: Buffer }[] = [];
    const ex = tar.extract();
    const done = (async () => {
      for await (const entry of ex) {
        const parts: Buffer[] = [];
        for await (const c of entry) parts.push(c as Buffer);
        seen.push({ header: entry.header, data: Buffer.concat(parts) });
      }
    })();
    streamOf(bytes).pipe(ex);
    await done;
    expect(seen.map((s) => s.header.name)).toEqual(["manifest.json", "manifest.sig", "slot.img"]);
    for (const { header } of seen) {
      expect(header).toMatchObject({
        uid: 0,
        gid: 0,
        mode: 0o644,
        uname: "",
        gname: "",
        type: "file",
      });
      expect(header.mtime.toISOString()).toBe("2026-05-01T12:00:00.000Z");
    }
    expect(seen[0]?.data.equals(Buffer.from(w.manifestBytes))).toBe(true);
    expect(seen[1]?.data.equals(Buffer.from(w.signature))).toBe(true);
    expect(seen[2]?.data.equals(readFileSync(slot.path))).toBe(true);
    const offset = slotDataOffset(w.manifestBytes.length, 64);
    expect(offset % 4096).toBe(0);
    expect(
      bytes.subarray(offset, offset + 4096).equals(readFileSync(slot.path).subarray(0, 4096)),
    ).toBe(true);
    // Three entries, the slot padded to 512, then exactly two zero blocks.
    const size = manifest.slotImage.size;
    expect(bytes.length).toBe(offset + Math.ceil(size / 512) * 512 + 1024);
  });

  it("fails without output when the slot image no longer matches its manifest", async () => {
    const changed = join(dir, "changed.img");
    copyFileSync(slot.path, changed);
    const b = readFileSync(changed);
    b[CHUNK_SIZE + 5]! ^= 0x40;
    writeFileSync(changed, b);
    const existing = join(dir, "existing.bundle");
    writeFileSync(existing, "previous bundle");
    const before = readdirSync(dir).sort();
    const e = expectCode(
      await catchOf(
        writeBundle({ outPath: existing, manifest, key: key.privateKey, slotImagePath: changed }),
      ),
      "BUNDLE_BAD_HASH",
    );
    expect(e.details.chunk).toBe(1);
    expect(e.message).toMatch(new RegExp(`^slot image ${changed}: slot image chunk 1 `));
    expect(readFileSync(existing, "utf8")).toBe("previous bundle");
    expect(readdirSync(dir).sort()).toEqual(before);
  });

  it("refuses a slot image of another size, a foreign key id, a public key, a missing slot file", async () => {
    const short = join(dir, "short.img");
    writeFileSync(short, readFileSync(slot.path).subarray(0, 4096));
    const out = join(dir, "refused.bundle");
    const opts = { outPath: out, manifest, key: key.privateKey, slotImagePath: slot.path };
    expectCode(await catchOf(writeBundle({ ...opts, slotImagePath: short })), "BUNDLE_BAD_HASH");
    expectCode(
      await catchOf(writeBundle({ ...opts, manifest: { ...manifest, keyId: "0000000000000000" } })),
      "KEY_BAD",
    );
    expectCode(await catchOf(writeBundle({ ...opts, key: key.publicKey })), "KEY_BAD");
    const missing = await catchOf(writeBundle({ ...opts, slotImagePath: join(dir, "nope.img") }));
    expect(missing).toBeInstanceOf(ToolError);
    expect((missing as ToolError).code).toBe("IO_ERROR");
    expect((missing as Error).message).toContain("nope.img");
    expectCode(
      await catchOf(writeBundle({ ...opts, manifest: { ...manifest, version: "one" } })),
      "BUNDLE_BAD_MANIFEST",
    );
    expect(readdirSync(dir)).not.toContain("refused.bundle");
  });
});
