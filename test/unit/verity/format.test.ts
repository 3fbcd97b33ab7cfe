// formatVerity / verifyVerity against the pure reference (src/verity/README.md,
// "Format" and "Verify"), including the hash area inside the data file.
import { randomBytes } from "node:crypto";
import { readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  blockDigest,
  buildTree,
  decodeSuperblock,
  dmVerityTable,
  formatVerity,
  type HashAlgorithm,
  treeLayout,
  type VerityFormatOptions,
  verifyVerity,
} from "../../../src/verity/index.ts";
import { rejection } from "../../helpers/errors.ts";
import { tempDir } from "../../helpers/tmp.ts";

const dir = tempDir("abforge-verity-");
let n = 0;
const file = (name: string) => join(dir, `${n++}-${name}`);

function flip(path: string, byte: number, bit = 0): void {
  const b = readFileSync(path);
  b[byte] = (b[byte] as number) ^ (1 << bit);
  writeFileSync(path, b);
}

const configArb = fc.record({
  hashAlgorithm: fc.constantFrom<HashAlgorithm>("sha1", "sha256", "sha512"),
  dataBlockSize: fc.constantFrom(512, 1024, 2048, 4096),
  hashBlockSize: fc.constantFrom(512, 1024, 2048, 4096),
  dataBlocks: fc.integer({ min: 1, max: 300 }),
  salt: fc.uint8Array({ maxLength: 256 }),
  superblock: fc.boolean(),
  // where the hash area goes: a separate file at an offset, or inside the data file after the data
  inside: fc.boolean(),
  extraOffsetSectors: fc.integer({ min: 0, max: 16 }),
});

describe("formatVerity / verifyVerity", () => {
  it("writes the reference tree and superblock for random sizes, salts, block sizes and layouts", async () => {
    await fc.assert(
      fc.asyncProperty(configArb, fc.integer(), async (c, seed) => {
        const dataBytes = c.dataBlocks * c.dataBlockSize;
        const data = randomBytes(dataBytes);
        const dataPath = file("data.img");
        writeFileSync(dataPath, data);
        // without a superblock the offset must be a whole hash block
        const unit = c.superblock ? 512 : c.hashBlockSize;
        const base = c.inside ? Math.ceil(dataBytes / unit) * unit : 0;
        const hashOffset = base + c.extraOffsetSectors * unit;
        const hashPath = c.inside ? dataPath : file("hash.img");
        const uuid = "0f0e0d0c-0b0a-4908-8706-050403020100";
        const opts: VerityFormatOptions = {
          dataPath,
          hashPath,
          hashOffset,
          hashAlgorithm: c.hashAlgorithm,
          dataBlockSize: c.dataBlockSize,
          hashBlockSize: c.hashBlockSize,
          salt: c.salt,
          uuid,
          superblock: c.superblock,
        };
        const p = await formatVerity(opts);
        const layout = treeLayout({ ...c, hashOffset });
        const ref = buildTree(data, c, layout);
        expect(p).toMatchObject({
          dataBlocks: c.dataBlocks,
          salt: Buffer.from(c.salt).toString("hex"),
          uuid: c.superblock ? uuid : null,
          hashStartBlock: layout.hashStartBlock,
          hashAreaSize: layout.treeEnd - hashOffset,
          rootHash: ref.rootHash.toString("hex"),
        });
        const written = readFileSync(hashPath);
        // the file ends with the tree (or the superblock's zero fill); like veritysetup,
        // nothing is written without a superblock when one data block needs no tree
        const expectedEnd = c.superblock || layout.treeBlocks > 0 ? layout.treeEnd : 0;
        expect(written.length).toBe(Math.max(expectedEnd, c.inside ? dataBytes : 0));
        if (c.inside) expect(written.subarray(0, dataBytes).equals(data)).toBe(true);
        const start = layout.hashStartBlock * c.hashBlockSize;
        expect(written.subarray(start, layout.treeEnd).equals(Buffer.from(ref.tree))).toBe(true);
        if (c.superblock) {
          const sb = decodeSuperblock(written.subarray(hashOffset, hashOffset + 512));
          expect(sb).toEqual({
            ...c,
            uuid,
            salt: Uint8Array.from(c.salt),
            dataBlocks: c.dataBlocks,
            superblock: undefined,
            inside: undefined,
            extraOffsetSectors: undefined,
          });
          // zero padding from the superblock's end to the first tree block
          expect(written.subarray(hashOffset + 512, start).every((x) => x === 0)).toBe(true);
        }
        // verify: accepted as written; with a superblock nothing but the root hash is
        // needed, without one every parameter (the data size too: the file grew)
        const verifyOpts = c.superblock
          ? { dataPath, hashPath, hashOffset, rootHash: p.rootHash }
          : { ...opts, dataBlocks: c.dataBlocks, rootHash: p.rootHash };
        await expect(verifyVerity(verifyOpts)).resolves.toEqual(p);
        // one flipped bit in the data is named by block
        const block = Math.abs(seed) % c.dataBlocks;
        const bit = Math.abs(seed >> 3) % (c.dataBlockSize * 8);
        flip(dataPath, block * c.dataBlockSize + (bit >> 3), bit & 7);
        const e = await rejection(verifyVerity(verifyOpts));
        expect(e.code).toBe("VERITY_MISMATCH");
        expect(e.details).toMatchObject({ area: "data", block });
        expect(e.message).toContain(`data block ${block} `);
        flip(dataPath, block * c.dataBlockSize + (bit >> 3), bit & 7);
        // one flipped bit in the tree is named by hash block
        if (layout.treeBlocks > 0) {
          const hb = layout.hashStartBlock + (Math.abs(seed >> 5) % layout.treeBlocks);
          const hbit = Math.abs(seed >> 7) % (c.hashBlockSize * 8);
          flip(hashPath, hb * c.hashBlockSize + (hbit >> 3), hbit & 7);
          const t = await rejection(verifyVerity(verifyOpts));
          expect(t.code).toBe("VERITY_MISMATCH");
          expect(t.details).toMatchObject({ area: "hash", block: hb });
          expect(t.message).toContain(`hash block ${hb} `);
        }
      }),
      { numRuns: 60 },
    );
  });

  it("gives the same tree and the lowest bad block when the data level is shared with workers", async () => {
    const dataPath = file("big.img");
    const hashPath = file("big.hash");
    const data = randomBytes(3077 * 4096); // 4 ranges of the shared queue
    writeFileSync(dataPath, data);
    const salt = randomBytes(32);
    const p = await formatVerity({ dataPath, hashPath, salt, threads: 2 });
    const layout = treeLayout({
      hashAlgorithm: "sha256",
      dataBlockSize: 4096,
      hashBlockSize: 4096,
      dataBlocks: 3077,
      hashOffset: 0,
      superblock: true,
    });
    const ref = buildTree(
      data,
      { hashAlgorithm: "sha256", dataBlockSize: 4096, hashBlockSize: 4096, salt },
      layout,
    );
    expect(p.rootHash).toBe(ref.rootHash.toString("hex"));
    expect(readFileSync(hashPath).subarray(4096).equals(Buffer.from(ref.tree))).toBe(true);
    await expect(
      verifyVerity({ dataPath, hashPath, rootHash: p.rootHash, threads: 2 }),
    ).resolves.toEqual(p);
    // bad blocks in both workers' ranges: the lower one is named
    flip(dataPath, 3000 * 4096 + 17);
    flip(dataPath, 2100 * 4096 + 9);
    const e = await rejection(
      verifyVerity({ dataPath, hashPath, rootHash: p.rootHash, threads: 2 }),
    );
    expect(e.details).toMatchObject({ area: "data", block: 2100, offset: 2100 * 4096 });
    flip(dataPath, 10 * 4096);
    const e2 = await rejection(
      verifyVerity({ dataPath, hashPath, rootHash: p.rootHash, threads: 2 }),
    );
    expect(e2.details).toMatchObject({ area: "data", block: 10 });
  });

  it("computes the root of a single block as H(salt || block), with no tree", async () => {
    const dataPath = file("one.img");
    const hashPath = file("one.hash");
    const block = randomBytes(4096);
    writeFileSync(dataPath, block);
    const salt = Uint8Array.from([7]);
    const p = await formatVerity({ dataPath, hashPath, salt });
    expect(p.rootHash).toBe(blockDigest("sha256", salt, block).toString("hex"));
    expect(statSync(hashPath).size).toBe(4096);
    flip(dataPath, 100);
    const e = await rejection(verifyVerity({ dataPath, hashPath, rootHash: p.rootHash }));
    expect(e.details).toMatchObject({ area: "data", block: 0 });
  });

  it("refuses data that is not a whole number of blocks, empty data and overlaps", async () => {
    const dataPath = file("odd.img");
    writeFileSync(dataPath, randomBytes(5000));
    const e = await rejection(formatVerity({ dataPath, hashPath: file("odd.hash") }));
    expect(e.code).toBe("VERITY_UNALIGNED_DATA");
    expect(e.message).toBe(
      `data file ${dataPath}: size 5000 is not a multiple of the data block size 4096`,
    );
    const empty = file("empty.img");
    writeFileSync(empty, "");
    expect(
      (await rejection(formatVerity({ dataPath: empty, hashPath: file("e.hash") }))).code,
    ).toBe("VERITY_BAD_PARAMS");
    const same = file("same.img");
    writeFileSync(same, randomBytes(8 * 4096));
    const o = await rejection(
      formatVerity({ dataPath: same, hashPath: same, hashOffset: 4096, dataSize: 8 * 4096 }),
    );
    expect(o.code).toBe("VERITY_BAD_PARAMS");
    expect(o.message).toMatch(/overlaps the hash area/);
    const nosb = await rejection(
      formatVerity({
        dataPath: same,
        hashPath: file("n.hash"),
        superblock: false,
        hashOffset: 1024,
      }),
    );
    expect(nosb.code).toBe("VERITY_BAD_PARAMS");
    expect(nosb.message).toMatch(/without a superblock the tree starts at hash block 0/);
    const missing = await rejection(
      formatVerity({ dataPath: file("nope"), hashPath: file("n2.hash") }),
    );
    expect(missing.code).toBe("IO_ERROR");
    expect(missing.message).toMatch(/^data file .*nope: cannot open/);
  });

  it("takes the data size up to the hash offset when the tree is inside the data file (re-format)", async () => {
    const path = file("flatcar.img");
    writeFileSync(path, randomBytes(16 * 4096));
    const first = await formatVerity({
      dataPath: path,
      hashPath: path,
      hashOffset: 16 * 4096,
      salt: new Uint8Array(0),
      uuid: "00000000-0000-4000-8000-000000000000",
    });
    const before = readFileSync(path);
    const again = await formatVerity({
      dataPath: path,
      hashPath: path,
      hashOffset: 16 * 4096,
      salt: new Uint8Array(0),
      uuid: "00000000-0000-4000-8000-000000000000",
    });
    expect(again).toEqual(first);
    expect(readFileSync(path).equals(before)).toBe(true);
    expect(first.dataBlocks).toBe(16);
    expect(first.hashStartBlock).toBe(17);
    expect(dmVerityTable(first, "/dev/vda2", "/dev/vda2")).toBe(
      `0 128 verity 1 /dev/vda2 /dev/vda2 4096 4096 16 17 sha256 ${first.rootHash} -`,
    );
    await expect(
      verifyVerity({
        dataPath: path,
        hashPath: path,
        hashOffset: 16 * 4096,
        rootHash: first.rootHash,
      }),
    ).resolves.toEqual(first);
  });

  it("verify refuses options that contradict the superblock, bad root hashes and short files", async () => {
    const dataPath = file("c.img");
    const hashPath = file("c.hash");
    writeFileSync(dataPath, randomBytes(40 * 1024));
    const p = await formatVerity({
      dataPath,
      hashPath,
      dataBlockSize: 1024,
      salt: Uint8Array.from([1, 2]),
    });
    const root = p.rootHash;
    const cases: [Partial<VerityFormatOptions>, RegExp][] = [
      [
        { hashAlgorithm: "sha1" },
        /hash algorithm sha1 contradicts the superblock .* which says sha256/,
      ],
      [{ dataBlockSize: 4096 }, /data block size 4096 contradicts/],
      [{ hashBlockSize: 512 }, /hash block size 512 contradicts/],
      [{ salt: Uint8Array.from([1]) }, /salt 01 contradicts .* which says 0102/],
      [{ uuid: "00000000-0000-4000-8000-000000000000" }, /UUID .* contradicts/],
      [{ dataBlocks: 39 }, /data blocks 39 contradicts/],
    ];
    for (const [extra, message] of cases) {
      const e = await rejection(verifyVerity({ dataPath, hashPath, rootHash: root, ...extra }));
      expect(e.code).toBe("VERITY_BAD_PARAMS");
      expect(e.message).toMatch(message);
    }
    // agreeing options are fine
    await expect(
      verifyVerity({
        dataPath,
        hashPath,
        rootHash: root,
        dataBlockSize: 1024,
        salt: Uint8Array.from([1, 2]),
        uuid: p.uuid ?? "",
      }),
    ).resolves.toEqual(p);
    expect((await rejection(verifyVerity({ dataPath, hashPath, rootHash: "abcd" }))).code).toBe(
      "VERITY_BAD_PARAMS",
    );
    const wrong = await rejection(verifyVerity({ dataPath, hashPath, rootHash: "00".repeat(32) }));
    expect(wrong.code).toBe("VERITY_MISMATCH");
    expect(wrong.details).toMatchObject({ area: "hash", block: 1, level: 0 });
    expect(
      (await rejection(verifyVerity({ dataPath, hashPath, rootHash: root, hashOffset: 4096 })))
        .code,
    ).toBe("VERITY_BAD_SUPERBLOCK");
    // fewer data blocks than the tree was made for: the left-over digests are caught
    const nosbData = file("nosb.img");
    const nosbHash = file("nosb.hash");
    writeFileSync(nosbData, randomBytes(10 * 4096));
    const q = await formatVerity({
      dataPath: nosbData,
      hashPath: nosbHash,
      superblock: false,
      salt: new Uint8Array(0),
    });
    const fewer = await rejection(
      verifyVerity({
        dataPath: nosbData,
        hashPath: nosbHash,
        superblock: false,
        dataBlocks: 9,
        rootHash: q.rootHash,
      }),
    );
    // one level: the only hash block is the top, so the root hash no longer matches
    expect(fewer.details).toMatchObject({ area: "hash", block: 0 });
    writeFileSync(nosbData, randomBytes(300 * 4096));
    const r = await formatVerity({
      dataPath: nosbData,
      hashPath: nosbHash,
      superblock: false,
      salt: new Uint8Array(0),
    });
    const fewer2 = await rejection(
      verifyVerity({
        dataPath: nosbData,
        hashPath: nosbHash,
        superblock: false,
        dataBlocks: 290,
        rootHash: r.rootHash,
      }),
    );
    expect(fewer2.code).toBe("VERITY_MISMATCH");
    expect(fewer2.details).toMatchObject({
      area: "hash",
      block: 3,
      level: 0,
      byteInBlock: (290 - 256) * 32,
    });
    expect(fewer2.message).toMatch(
      /hash block 3 \(level 0, byte 12288\) has a non-zero byte at 1088 where it must be zero/,
    );
    // a truncated data file names the first missing block
    writeFileSync(dataPath, readFileSync(dataPath).subarray(0, 30 * 1024));
    const short = await rejection(verifyVerity({ dataPath, hashPath, rootHash: root }));
    expect(short.code).toBe("VERITY_MISMATCH");
    expect(short.details).toMatchObject({ area: "data", block: 30 });
  });
});
