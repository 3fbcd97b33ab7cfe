/** GUIDs, attribute bits and type constants (src/disk/README.md). */
import { describe, expect, it } from "vitest";
import { GptAttributes } from "../../../src/disk/attributes.ts";
import { GptError } from "../../../src/disk/errors.ts";
import {
  guidFromSeed,
  normalizeGuid,
  randomGuid,
  readGuid,
  writeGuid,
} from "../../../src/disk/guid.ts";
import {
  PARTITION_TYPE_INFO,
  PARTITION_TYPES,
  partitionTypeInfo,
  resolvePartitionType,
} from "../../../src/disk/types.ts";

describe("GUIDs (README: GUIDs)", () => {
  it("stores the first three fields little-endian, the rest as written", () => {
    const b = new Uint8Array(16);
    writeGuid(b, 0, "c12a7328-f81f-11d2-ba4b-00a0c93ec93b");
    expect(Buffer.from(b).toString("hex")).toBe("28732ac11ff8d211ba4b00a0c93ec93b");
    expect(readGuid(b, 0)).toBe("C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
  });

  it("derives a stable version-4-shaped GUID from a seed", () => {
    const g = guidFromSeed("demo:disk");
    expect(g).toBe(guidFromSeed("demo:disk"));
    expect(g).not.toBe(guidFromSeed("demo:disk2"));
    expect(g).toMatch(/^[0-9A-F]{8}-[0-9A-F]{4}-4[0-9A-F]{3}-[89AB][0-9A-F]{3}-[0-9A-F]{12}$/);
    // sha256("abc") = ba7816bf 8f01 cfea 4141 40de5dae2223...
    expect(guidFromSeed("abc")).toBe("BA7816BF-8F01-4FEA-8141-40DE5DAE2223");
  });

  it("makes random GUIDs from the randomness it is given", () => {
    expect(randomGuid(() => new Uint8Array(16).fill(0xff))).toBe(
      "FFFFFFFF-FFFF-4FFF-BFFF-FFFFFFFFFFFF",
    );
    expect(randomGuid()).not.toBe(randomGuid());
  });

  it("refuses what is not a GUID", () => {
    expect(() => normalizeGuid("C12A7328-F81F-11D2-BA4B-00A0C93EC93")).toThrow(GptError);
    expect(() => normalizeGuid("C12A7328F81F11D2BA4B00A0C93EC93B")).toThrow(/is not a GUID/);
  });
});

describe("GptAttributes (README: Attribute bits)", () => {
  it("reads each named bit and field at its position", () => {
    const a = new GptAttributes(
      (1n << 0n) |
        (1n << 1n) |
        (1n << 2n) |
        (0xan << 48n) |
        (0x5n << 52n) |
        (1n << 56n) |
        (1n << 59n) |
        (1n << 60n) |
        (1n << 63n),
    );
    expect(a.required).toBe(true);
    expect(a.noBlockIo).toBe(true);
    expect(a.legacyBiosBootable).toBe(true);
    expect(a.priority).toBe(10);
    expect(a.tries).toBe(5);
    expect(a.successful).toBe(true);
    expect(a.growFs).toBe(true);
    expect(a.readOnly).toBe(true);
    expect(a.noAuto).toBe(true);
    expect(a.setBits()).toEqual([0, 1, 2, 49, 51, 52, 54, 56, 59, 60, 63]);
    const none = GptAttributes.NONE;
    expect([none.required, none.priority, none.tries, none.successful]).toEqual([
      false,
      0,
      0,
      false,
    ]);
  });

  it("updates one field at a time and leaves the others (and unknown bits) alone", () => {
    const base = new GptAttributes((1n << 40n) | 1n);
    const a = base.withPriority(15).withTries(7).withSuccessful(true);
    expect(a.raw).toBe((1n << 40n) | 1n | (0xfn << 48n) | (7n << 52n) | (1n << 56n));
    expect(base.raw).toBe((1n << 40n) | 1n); // immutable
    const b = a.withPriority(0).withTries(0).withSuccessful(false).withRequired(false);
    expect(b.raw).toBe(1n << 40n);
    expect(b.withNoBlockIo(true).withLegacyBiosBootable(true).raw).toBe((1n << 40n) | 6n);
    expect(b.withGrowFs(true).withReadOnly(true).withNoAuto(true).raw).toBe(
      (1n << 40n) | (1n << 59n) | (1n << 60n) | (1n << 63n),
    );
    expect(a.equals(new GptAttributes(a.raw))).toBe(true);
  });

  it("refuses values outside their fields", () => {
    expect(() => GptAttributes.NONE.withPriority(16)).toThrow(
      /priority must be an integer 0-15, got 16/,
    );
    expect(() => GptAttributes.NONE.withTries(-1)).toThrow(GptError);
    expect(() => GptAttributes.NONE.withTries(1.5)).toThrow(GptError);
    expect(() => new GptAttributes(1n << 64n)).toThrow(GptError);
    expect(() => new GptAttributes(-1n)).toThrow(GptError);
  });

  it("prints itself for people and for JSON", () => {
    const a = GptAttributes.NONE.withRequired(true)
      .withPriority(2)
      .withTries(1)
      .withSuccessful(true);
    expect(a.toString()).toBe("required priority=2 tries=1 successful");
    expect(a.toHex()).toBe("0x0112000000000001");
    expect(new GptAttributes(1n << 40n).toString()).toBe("other=0x10000000000");
    expect(GptAttributes.NONE.toString()).toBe("-");
    expect(a.toJSON()).toMatchObject({
      raw: "0x0112000000000001",
      priority: 2,
      tries: 1,
      successful: true,
      required: true,
    });
  });
});

describe("partition types", () => {
  it("names the Discoverable Partitions Specification types", () => {
    expect(PARTITION_TYPES.ROOT_X86_64).toBe("4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709");
    expect(PARTITION_TYPES.ESP).toBe("C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
    expect(new Set(Object.values(PARTITION_TYPES)).size).toBe(Object.keys(PARTITION_TYPES).length);
    expect(PARTITION_TYPE_INFO).toHaveLength(Object.keys(PARTITION_TYPES).length);
    expect(partitionTypeInfo("4f68bce3-e8cd-4db1-96e7-fbcaf984b709")?.alias).toBe("root-x86-64");
    expect(partitionTypeInfo("00000000-0000-0000-0000-000000000001")).toBeUndefined();
  });

  it("resolves aliases, constant names and GUIDs", () => {
    expect(resolvePartitionType("esp")).toBe(PARTITION_TYPES.ESP);
    expect(resolvePartitionType("ROOT_VERITY_ARM64")).toBe(PARTITION_TYPES.ROOT_VERITY_ARM64);
    expect(resolvePartitionType("linux")).toBe(PARTITION_TYPES.LINUX_GENERIC);
    expect(resolvePartitionType("0fc63daf-8483-4772-8e79-3d69d8477de4")).toBe(
      PARTITION_TYPES.LINUX_GENERIC,
    );
    expect(resolvePartitionType("nope")).toBeUndefined();
  });
});
