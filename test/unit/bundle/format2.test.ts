/** Bundle format 2: the content-defined chunk list (src/bundle/README.md, "Format versions"). */
import { generateKeyPairSync } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import {
  type CdcParams,
  CHUNK_SIZE,
  cdcChunkFile,
  decodeManifest,
  encodeManifest,
  hashSlotImage,
  type Manifest,
  type UnsignedManifest,
  validateManifest,
  writeBundle,
} from "../../../src/bundle/index.ts";
import { tempDir } from "../../helpers/tmp.ts";
import {
  expectCode,
  makeManifest,
  makeSlotImage,
  readBundle,
  type SlotFixture,
} from "./fixtures.ts";

const dir = tempDir("abforge-format2-");
const key = generateKeyPairSync("ed25519");
const CDC: CdcParams = { minSize: 4096, avgSize: 16384, maxSize: 65536 };
let slot: SlotFixture;
let v2: UnsignedManifest;

beforeAll(async () => {
  slot = await makeSlotImage(dir, "slot.img", 2 * CHUNK_SIZE + 256 * 1024);
  v2 = await makeManifest(slot, {
    formatVersion: 2,
    slotImage: await hashSlotImage(slot.path, CDC),
  });
});

const signed = (m: UnsignedManifest): Manifest => ({ ...m, keyId: "0123456789abcdef" });

async function catchOf(p: Promise<unknown> | (() => unknown)): Promise<unknown> {
  try {
    await (typeof p === "function" ? p() : p);
  } catch (e) {
    return e;
  }
  return undefined;
}

describe("format 2 manifest", () => {
  it("lists chunks that tile the slot image, as cdcChunkFile cuts it, and round-trips", async () => {
    const cdc = v2.slotImage.cdc!;
    expect(cdc).toMatchObject(CDC);
    const cut = await cdcChunkFile(slot.path, CDC);
    expect(cdc.chunks).toEqual(cut.map((c) => [c.offset, c.length, c.sha256]));
    const bytes = encodeManifest(signed(v2));
    expect(decodeManifest(bytes)).toEqual(signed(v2));
    // the chunk list sits after the fixed chunks, in the documented order
    const text = new TextDecoder().decode(bytes);
    expect(
      text.indexOf('"cdc":{"minSize":4096,"avgSize":16384,"maxSize":65536,"chunks":[[0,'),
    ).toBe(text.indexOf('"cdc"'));
    expect(text.indexOf('"cdc"')).toBeGreaterThan(text.indexOf('"chunks"'));
  });

  it("refuses a chunk list with a gap, an overlap, a bad length, bad hash or short cover", () => {
    const base = signed(v2);
    const chunks = base.slotImage.cdc!.chunks;
    const withChunks = (c: unknown[]) =>
      validateManifest({ ...base, slotImage: { ...base.slotImage, cdc: { ...CDC, chunks: c } } });
    expect(chunks.length).toBeGreaterThan(10);
    const first = chunks[0]!;
    const second = chunks[1]!;
    // a gap before chunk 1, which then overlaps chunk 2
    expect(withChunks([first, [second[0] + 1, second[1], second[2]], ...chunks.slice(2)])).toEqual([
      expect.objectContaining({
        field: "slotImage.cdc.chunks[1]",
        problem: expect.stringMatching(/offset must be/),
      }),
      expect.objectContaining({ field: "slotImage.cdc.chunks[2]" }),
    ]);
    expect(withChunks([[0, 70000, first[2]], ...chunks.slice(1)]).map((i) => i.field)).toContain(
      "slotImage.cdc.chunks[0]",
    );
    expect(withChunks([[0, first[1], "x"], ...chunks.slice(1)])[0]?.problem).toMatch(/sha256/);
    expect(withChunks(chunks.slice(0, -1))[0]?.problem).toMatch(/must cover the slot image's/);
    expect(withChunks([[0, first[1]], ...chunks.slice(1)])[0]?.problem).toMatch(/\[offset, length/);
  });

  it("is required in format 2 and unknown in format 1", () => {
    const noCdc = signed({ ...v2, slotImage: { ...v2.slotImage, cdc: undefined } });
    delete noCdc.slotImage.cdc;
    expect(validateManifest(noCdc)).toEqual([
      { field: "slotImage.cdc", problem: "must be an object (format 2)" },
    ]);
    expect(validateManifest({ ...signed(v2), formatVersion: 1 })).toEqual([
      { field: "slotImage.cdc", problem: "is not a known field" },
    ]);
    expect(
      validateManifest({
        ...signed(v2),
        slotImage: { ...v2.slotImage, cdc: { ...v2.slotImage.cdc, avgSize: 3000 } },
      })[0]?.problem,
    ).toMatch(/avgSize must be a power of two/);
  });

  it("a format this abforge does not read is one clear line that names the versions it reads", async () => {
    const text = new TextDecoder()
      .decode(encodeManifest(signed(v2)))
      .replace('{"formatVersion":2,', '{"formatVersion":3,');
    const e = expectCode(
      await catchOf(() => decodeManifest(new TextEncoder().encode(text), "bundle x")),
      "BUNDLE_BAD_MANIFEST",
    );
    expect(e.message).toBe(
      "bundle x: bundle format version 3 is not one this abforge reads (1, 2); update the agent with a bundle of format 1 or 2 first",
    );
    expect(e.details).toEqual({ formatVersion: 3, supported: [1, 2] });
  });
});

describe("format 2 bundle", () => {
  it("is written, read and installed in full as format 1 is: the same slot bytes at the same offset", async () => {
    const one = join(dir, "v1.bundle");
    const two = join(dir, "v2.bundle");
    await writeBundle({
      outPath: one,
      manifest: await makeManifest(slot),
      key: key.privateKey,
      slotImagePath: slot.path,
    });
    const w = await writeBundle({
      outPath: two,
      manifest: v2,
      key: key.privateKey,
      slotImagePath: slot.path,
    });
    const r = await readBundle(readFileSync(two), [key.publicKey]);
    expect(r.error).toBeUndefined();
    expect(r.emitted.equals(readFileSync(slot.path))).toBe(true);
    const offset = w.manifestBytes.length + 2048;
    expect(offset % 4096).toBe(0);
    expect(readFileSync(two).subarray(offset, offset + 4096)).toEqual(
      readFileSync(slot.path).subarray(0, 4096),
    );
    expect(readFileSync(two).length - readFileSync(one).length).toBe(
      w.manifestBytes.length - encodeManifest(signed(await makeManifest(slot))).length,
    );
  });

  it("is refused by the writer when the slot image's chunks are not the listed ones", async () => {
    const other = join(dir, "other.img");
    const bytes = readFileSync(slot.path);
    const m = await makeManifest(slot, {
      formatVersion: 2,
      slotImage: await hashSlotImage(slot.path, CDC),
    });
    // same size and fixed-chunk hashes would fail too; here only the cdc list lies
    const chunks = m.slotImage.cdc!.chunks;
    chunks[3] = [chunks[3]![0], chunks[3]![1], "0".repeat(64)];
    writeFileSync(other, bytes);
    const e = expectCode(
      await catchOf(
        writeBundle({
          outPath: join(dir, "bad.bundle"),
          manifest: m,
          key: key.privateKey,
          slotImagePath: other,
        }),
      ),
      "BUNDLE_BAD_HASH",
    );
    expect(e.message).toMatch(/content-defined chunk 3 is/);
  });
});
