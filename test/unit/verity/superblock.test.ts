// Superblock codec (src/verity/README.md, "Superblock").
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  decodeSuperblock,
  encodeSuperblock,
  type HashAlgorithm,
  SB,
  type Superblock,
} from "../../../src/verity/index.ts";
import { codeOf } from "../../helpers/errors.ts";

const sample: Superblock = {
  uuid: "12345678-1234-1234-1234-123456789abc",
  hashAlgorithm: "sha256",
  dataBlockSize: 4096,
  hashBlockSize: 4096,
  dataBlocks: 300,
  salt: Uint8Array.from([0x00, 0x11, 0x22, 0x33]),
};

const superblockArb = fc.record({
  uuid: fc.uuid(),
  hashAlgorithm: fc.constantFrom<HashAlgorithm>("sha1", "sha256", "sha512"),
  dataBlockSize: fc.constantFrom(512, 1024, 2048, 4096),
  hashBlockSize: fc.constantFrom(512, 1024, 2048, 4096),
  dataBlocks: fc.integer({ min: 1, max: Number.MAX_SAFE_INTEGER }),
  salt: fc.uint8Array({ maxLength: 256 }),
});

describe("superblock", () => {
  it("encodes the fields at the README's offsets, little-endian, as veritysetup writes them", () => {
    const b = encodeSuperblock(sample);
    const hex = Buffer.from(b).toString("hex");
    expect(b.length).toBe(512);
    // bytes taken from `veritysetup format --salt 00112233 --uuid 12345678-...` (2.6.1)
    expect(hex.slice(0, 0x60 * 2)).toBe(
      "7665726974790000" + // "verity\0\0"
        "01000000" + // version 1
        "01000000" + // hash type 1
        "12345678123412341234123456789abc" + // uuid
        `${Buffer.from("sha256").toString("hex")}${"00".repeat(26)}` + // algorithm[32]
        "00100000" + // data block size 4096
        "00100000" + // hash block size 4096
        "2c01000000000000" + // data blocks 300
        "0400" + // salt size 4
        "000000000000" + // pad1
        "00112233" + // salt
        "00".repeat(4),
    );
    expect(b.subarray(SB.salt + 4).every((x) => x === 0)).toBe(true);
  });

  it("round-trips any valid superblock", () => {
    fc.assert(
      fc.property(superblockArb, (sb) => {
        const back = decodeSuperblock(encodeSuperblock(sb));
        expect(back).toEqual({
          ...sb,
          uuid: sb.uuid.toLowerCase(),
          salt: Uint8Array.from(sb.salt),
        });
      }),
      { numRuns: 300 },
    );
  });

  it("never decodes a superblock with one flipped bit to the same values", () => {
    fc.assert(
      fc.property(superblockArb, fc.integer({ min: 0, max: 512 * 8 - 1 }), (sb, bit) => {
        const b = encodeSuperblock(sb);
        b[bit >> 3] = (b[bit >> 3] as number) ^ (1 << (bit & 7));
        let decoded: Superblock | undefined;
        try {
          decoded = decodeSuperblock(b);
        } catch (err) {
          expect((err as { code?: string }).code).toBe("VERITY_BAD_SUPERBLOCK");
          return;
        }
        expect(decoded).not.toEqual({
          ...sb,
          uuid: sb.uuid.toLowerCase(),
          salt: Uint8Array.from(sb.salt),
        });
      }),
      { numRuns: 2000 },
    );
  });

  it("rejects bytes outside the fields, unknown types and sizes, naming the field", () => {
    const good = encodeSuperblock(sample);
    const mutate = (at: number, value: number) => {
      const b = Uint8Array.from(good);
      b[at] = value;
      return b;
    };
    const cases: [Uint8Array, string][] = [
      [mutate(0, 0x56), "signature"],
      [mutate(SB.version, 2), "version"],
      [mutate(SB.hashType, 0), "hashType"],
      [mutate(SB.algorithm + 2, 0x35), "algorithm"], // "sh5256"
      [mutate(SB.algorithm + 10, 1), "algorithm"], // garbage after the name
      [mutate(SB.dataBlockSize + 2, 1), "dataBlockSize"],
      [mutate(SB.hashBlockSize, 1), "hashBlockSize"],
      [mutate(SB.saltSize + 1, 1), "saltSize"], // 260 bytes
      [mutate(SB.pad1 + 3, 1), "pad1"],
      [mutate(SB.salt + 4, 1), "salt"], // beyond salt_size
      [mutate(SB.pad2 + 100, 1), "pad2"],
      [mutate(511, 0x80), "pad2"],
    ];
    for (const [b, field] of cases) {
      let caught: unknown;
      try {
        decodeSuperblock(b, "hash file x");
      } catch (err) {
        caught = err;
      }
      expect(caught, field).toMatchObject({ code: "VERITY_BAD_SUPERBLOCK", details: { field } });
      expect((caught as Error).message).toMatch(/^hash file x: superblock /);
    }
    const zeroBlocks = Uint8Array.from(good);
    zeroBlocks.fill(0, SB.dataBlocks, SB.dataBlocks + 8);
    expect(codeOf(() => decodeSuperblock(zeroBlocks))).toBe("VERITY_BAD_SUPERBLOCK");
    expect(codeOf(() => decodeSuperblock(good.subarray(0, 511)))).toBe("VERITY_BAD_SUPERBLOCK");
    expect(
      (() => {
        try {
          decodeSuperblock(mutate(SB.hashType, 0));
        } catch (err) {
          return (err as Error).message;
        }
      })(),
    ).toMatch(/only format 1/);
  });

  it("refuses to encode what cannot be stored", () => {
    expect(codeOf(() => encodeSuperblock({ ...sample, salt: new Uint8Array(257) }))).toBe(
      "VERITY_BAD_PARAMS",
    );
    expect(codeOf(() => encodeSuperblock({ ...sample, uuid: "not-a-uuid" }))).toBe(
      "VERITY_BAD_PARAMS",
    );
    expect(codeOf(() => encodeSuperblock({ ...sample, dataBlockSize: 8192 }))).toBe(
      "VERITY_BAD_PARAMS",
    );
    expect(codeOf(() => encodeSuperblock({ ...sample, dataBlocks: 0 }))).toBe("VERITY_BAD_PARAMS");
  });
});
