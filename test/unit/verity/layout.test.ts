// Tree layout math (src/verity/README.md, "Tree layout" and "Where the tree starts").
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  DIGEST_SIZES,
  type HashAlgorithm,
  hashStartBlock,
  parseSaltHex,
  treeLayout,
} from "../../../src/verity/index.ts";

const base = {
  hashAlgorithm: "sha256" as HashAlgorithm,
  dataBlockSize: 4096,
  hashBlockSize: 4096,
  hashOffset: 0,
  superblock: true,
};

function code(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (err) {
    return (err as { code?: string }).code;
  }
  return undefined;
}

describe("treeLayout", () => {
  it("lays out 300 blocks of sha256/4096 as veritysetup does: 1 + 3 blocks after the superblock", () => {
    const l = treeLayout({ ...base, dataBlocks: 300 });
    expect(l.hashesPerBlock).toBe(128);
    expect(l.digestStride).toBe(32);
    expect(l.hashStartBlock).toBe(1);
    // top level first on disk, level 0 last
    expect(l.levels).toEqual([
      { level: 0, startBlock: 2, blocks: 3, children: 300 },
      { level: 1, startBlock: 1, blocks: 1, children: 3 },
    ]);
    expect(l.treeBlocks).toBe(4);
    expect(l.treeEnd).toBe(20480);
  });

  it("needs no level for a single data block (the root hashes that block)", () => {
    const l = treeLayout({ ...base, dataBlocks: 1 });
    expect(l.levels).toEqual([]);
    expect(l.treeBlocks).toBe(0);
    expect(l.treeEnd).toBe(4096);
  });

  it("pads sha1 digests to 32 bytes and fits 16 in a 512-byte block", () => {
    const l = treeLayout({ ...base, hashAlgorithm: "sha1", hashBlockSize: 512, dataBlocks: 17 });
    expect(l.digestSize).toBe(20);
    expect(l.digestStride).toBe(32);
    expect(l.hashesPerBlock).toBe(16);
    expect(l.levels.map((x) => x.blocks)).toEqual([2, 1]);
  });

  it("starts the tree after the superblock, or at the offset rounded down without one", () => {
    expect(hashStartBlock(0, 4096, true)).toBe(1);
    expect(hashStartBlock(1024, 4096, true)).toBe(1);
    expect(hashStartBlock(3584, 4096, true)).toBe(1);
    expect(hashStartBlock(4096, 4096, true)).toBe(2);
    expect(hashStartBlock(512, 512, true)).toBe(2);
    expect(hashStartBlock(0, 4096, false)).toBe(0);
    expect(hashStartBlock(1024, 4096, false)).toBe(0);
    expect(hashStartBlock(6144, 4096, false)).toBe(1);
  });

  it("rejects bad parameters with VERITY_BAD_PARAMS", () => {
    for (const bs of [256, 1000, 8192, 0]) {
      expect(code(() => treeLayout({ ...base, dataBlockSize: bs, dataBlocks: 1 }))).toBe(
        "VERITY_BAD_PARAMS",
      );
      expect(code(() => treeLayout({ ...base, hashBlockSize: bs, dataBlocks: 1 }))).toBe(
        "VERITY_BAD_PARAMS",
      );
    }
    expect(code(() => treeLayout({ ...base, dataBlocks: 0 }))).toBe("VERITY_BAD_PARAMS");
    expect(code(() => treeLayout({ ...base, dataBlocks: 1.5 }))).toBe("VERITY_BAD_PARAMS");
    expect(code(() => treeLayout({ ...base, dataBlocks: 1, hashOffset: 1000 }))).toBe(
      "VERITY_BAD_PARAMS",
    );
    expect(
      code(() => treeLayout({ ...base, dataBlocks: 1, hashAlgorithm: "md5" as HashAlgorithm })),
    ).toBe("VERITY_BAD_PARAMS");
  });

  it("keeps its invariants for any algorithm, block sizes, size and offset", () => {
    const pow2 = fc.constantFrom(512, 1024, 2048, 4096);
    fc.assert(
      fc.property(
        fc.constantFrom<HashAlgorithm>("sha1", "sha256", "sha512"),
        pow2,
        pow2,
        fc.integer({ min: 1, max: 2 ** 40 }),
        fc.integer({ min: 0, max: 2 ** 20 }).map((n) => n * 512),
        fc.boolean(),
        (hashAlgorithm, dataBlockSize, hashBlockSize, dataBlocks, hashOffset, superblock) => {
          const l = treeLayout({
            hashAlgorithm,
            dataBlockSize,
            hashBlockSize,
            dataBlocks,
            hashOffset,
            superblock,
          });
          expect(l.digestSize).toBe(DIGEST_SIZES[hashAlgorithm]);
          // every digest slot is a power of two, and they fill a hash block exactly
          expect(l.hashesPerBlock * l.digestStride).toBe(hashBlockSize);
          expect(l.hashesPerBlock * l.digestSize).toBeLessThanOrEqual(hashBlockSize);
          expect(2 * l.hashesPerBlock * l.digestSize).toBeGreaterThan(hashBlockSize);
          // levels: level 0 hashes the data, each level hashes the one below, the top is one block
          let children = dataBlocks;
          for (const lv of l.levels) {
            expect(lv.children).toBe(children);
            expect(lv.blocks).toBe(Math.ceil(children / l.hashesPerBlock));
            children = lv.blocks;
          }
          expect(children).toBe(1);
          // on disk: top level first, contiguous, from hashStartBlock to treeEnd
          let pos = l.hashStartBlock;
          for (const lv of [...l.levels].reverse()) {
            expect(lv.startBlock).toBe(pos);
            pos += lv.blocks;
          }
          expect(l.treeEnd).toBe(pos * hashBlockSize);
          // the tree never starts inside the superblock, and never before the offset with one
          if (superblock)
            expect(l.hashStartBlock * hashBlockSize).toBeGreaterThanOrEqual(hashOffset + 512);
          else expect(l.hashStartBlock).toBe(Math.floor(hashOffset / hashBlockSize));
        },
      ),
      { numRuns: 500 },
    );
  });
});

describe("parseSaltHex", () => {
  it("parses hex and '-' for no salt; refuses odd or non-hex or too long", () => {
    expect([...parseSaltHex("00ff10")]).toEqual([0, 255, 16]);
    expect(parseSaltHex("-").length).toBe(0);
    expect(parseSaltHex("").length).toBe(0);
    expect(code(() => parseSaltHex("abc"))).toBe("VERITY_BAD_PARAMS");
    expect(code(() => parseSaltHex("zz"))).toBe("VERITY_BAD_PARAMS");
    expect(parseSaltHex("ab".repeat(256)).length).toBe(256);
    expect(code(() => parseSaltHex("ab".repeat(257)))).toBe("VERITY_BAD_PARAMS");
  });
});
