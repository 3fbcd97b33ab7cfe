/** planDisk, partitionRange, findPartition and the CLI spec parser (README: Planning). */
import { describe, expect, it } from "vitest";
import { GptAttributes } from "../../../src/disk/attributes.ts";
import { parsePartitionSpec, parseSize, tableToJson } from "../../../src/disk/describe.ts";
import { GptError } from "../../../src/disk/errors.ts";
import { findPartition, partitionRange, planDisk } from "../../../src/disk/plan.ts";
import { PARTITION_TYPES } from "../../../src/disk/types.ts";

const MiB = 1024 * 1024;

function plan(extra: Partial<Parameters<typeof planDisk>[0]> = {}) {
  return planDisk({
    partitions: [
      { name: "esp", typeGuid: PARTITION_TYPES.ESP, sizeBytes: 64 * MiB },
      { name: "abforge-A", typeGuid: PARTITION_TYPES.ROOT_X86_64, sizeBytes: 100 * MiB + 1 },
      { name: "abforge-B", typeGuid: PARTITION_TYPES.ROOT_X86_64, sizeBytes: 100 * MiB + 1 },
      { name: "state", typeGuid: PARTITION_TYPES.LINUX_GENERIC, sizeBytes: 3 * MiB + 512 },
    ],
    ...extra,
  });
}

describe("planDisk", () => {
  it("lays partitions out in order from LBA 2048, each start 1 MiB aligned", () => {
    const t = plan();
    const firsts = t.partitions.map((p) => p.firstLba);
    expect(firsts).toEqual([
      2048n,
      2048n + 131072n,
      2048n + 131072n + 206848n,
      2048n + 131072n + 2n * 206848n,
    ]);
    for (const p of t.partitions) expect((p.firstLba * 512n) % BigInt(MiB)).toBe(0n);
    // 100 MiB + 1 byte rounds up to 204801 sectors
    expect(t.partitions[1]!.lastLba - t.partitions[1]!.firstLba + 1n).toBe(204801n);
    expect(t.partitions.map((p) => p.index)).toEqual([1, 2, 3, 4]);
    expect(t.entryCount).toBe(128);
    expect(t.firstUsableLba).toBe(34n);
  });

  it("sizes the disk: last partition's end rounded up to 1 MiB, plus 1 MiB", () => {
    const t = plan();
    const end = (t.partitions[3]!.lastLba + 1n) * 512n; // 3 MiB + 512 bytes past its start
    const expected = ((end + BigInt(MiB) - 1n) / BigInt(MiB)) * BigInt(MiB) + BigInt(MiB);
    expect(t.diskSectors * 512n).toBe(expected);
    expect(t.lastUsableLba).toBe(t.diskSectors - 34n);
  });

  it("uses random GUIDs, or the ones given, or ones derived from a seed", () => {
    const a = plan();
    const b = plan();
    expect(a.diskGuid).not.toBe(b.diskGuid);
    expect(new Set(a.partitions.map((p) => p.uniqueGuid)).size).toBe(4);
    const s1 = plan({ guidSeed: "demo" });
    const s2 = plan({ guidSeed: "demo" });
    expect(s1).toEqual(s2);
    expect(plan({ guidSeed: "other" }).diskGuid).not.toBe(s1.diskGuid);
    const given = planDisk({
      diskGuid: "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee",
      partitions: [
        {
          name: "x",
          typeGuid: PARTITION_TYPES.VAR,
          sizeBytes: MiB,
          uniqueGuid: "12345678-1234-4234-8234-123456789abc",
          attributes: GptAttributes.NONE.withNoAuto(true),
        },
      ],
    });
    expect(given.diskGuid).toBe("AAAAAAAA-BBBB-4CCC-8DDD-EEEEEEEEEEEE");
    expect(given.partitions[0]!.uniqueGuid).toBe("12345678-1234-4234-8234-123456789ABC");
    expect(given.partitions[0]!.attributes.noAuto).toBe(true);
  });

  it("fills a fixed disk size, or says GPT_NO_SPACE", () => {
    const t = plan({ diskSizeBytes: 1024 * MiB });
    expect(t.diskSectors).toBe(2097152n);
    expect(t.lastUsableLba).toBe(2097152n - 34n);
    try {
      plan({ diskSizeBytes: 200 * MiB });
      expect.unreachable();
    } catch (err) {
      expect((err as GptError).code).toBe("GPT_NO_SPACE");
      expect((err as GptError).message).toMatch(
        /the partitions need a disk of \d+ bytes at least .* but the disk has 209715200 bytes/,
      );
    }
  });

  it("refuses bad sizes, names and type GUIDs", () => {
    const bad = (p: object) => () =>
      planDisk({
        partitions: [{ name: "x", typeGuid: PARTITION_TYPES.VAR, sizeBytes: MiB, ...p }],
      });
    expect(bad({ sizeBytes: 0 })).toThrow(/size 0 is not a positive byte count/);
    expect(bad({ sizeBytes: 1.5 })).toThrow(GptError);
    expect(bad({ name: "n".repeat(37) })).toThrow(/37 UTF-16 code units/);
    expect(bad({ typeGuid: "esp" })).toThrow(/type GUID "esp" is not a GUID/);
  });
});

describe("partitionRange and findPartition", () => {
  const t = plan({ guidSeed: "x" });

  it("gives byte offset and size", () => {
    expect(partitionRange(t.partitions[0]!)).toEqual({ offset: MiB, size: 64 * MiB });
    expect(partitionRange(t.partitions[1]!, 512).size).toBe(204801 * 512);
  });

  it("finds by name, type, index, or all of them; GPT_NOT_FOUND otherwise", () => {
    expect(findPartition(t, { name: "abforge-B" }).index).toBe(3);
    expect(findPartition(t, { typeGuid: PARTITION_TYPES.ROOT_X86_64.toLowerCase() }).index).toBe(2);
    expect(findPartition(t, { index: 4 }).name).toBe("state");
    expect(
      findPartition(t, { typeGuid: PARTITION_TYPES.ROOT_X86_64, name: "abforge-B" }).index,
    ).toBe(3);
    try {
      findPartition(t, { name: "abforge-C" });
      expect.unreachable();
    } catch (err) {
      expect((err as GptError).code).toBe("GPT_NOT_FOUND");
      expect((err as GptError).message).toMatch(/no partition with name "abforge-C"/);
    }
    expect(() => findPartition(t, {})).toThrow(GptError);
  });
});

describe("command-line specs", () => {
  it("parses sizes in binary units", () => {
    expect(parseSize("4096")).toBe(4096);
    expect(parseSize("64MiB")).toBe(64 * MiB);
    expect(parseSize("64M")).toBe(64 * MiB);
    expect(parseSize("2GiB")).toBe(2 * 1024 * MiB);
    for (const s of ["", "0", "1.5G", "12XB", "-1"]) expect(() => parseSize(s)).toThrow(GptError);
  });

  it("parses name:type:size, the name may hold colons", () => {
    expect(parsePartitionSpec("abforge-A:root-x86-64:512MiB")).toEqual({
      name: "abforge-A",
      typeGuid: PARTITION_TYPES.ROOT_X86_64,
      sizeBytes: 512 * MiB,
    });
    expect(parsePartitionSpec("a:b:c:esp:1M").name).toBe("a:b:c");
    expect(() => parsePartitionSpec("esp:64M")).toThrow(/is not name:type:size/);
    expect(() => parsePartitionSpec("x:nope:64M")).toThrow(
      /type "nope" is not a GUID nor a known type/,
    );
  });

  it("shows a table as JSON with numbers and type names", () => {
    const j = tableToJson(plan({ guidSeed: "json" }));
    expect(j.partitions[0]).toMatchObject({
      index: 1,
      type: "esp",
      firstLba: 2048,
      offsetBytes: MiB,
      sizeBytes: 64 * MiB,
      name: "esp",
    });
    expect(j.partitions[1]!.type).toBe("root-x86-64");
    expect(j.sizeBytes).toBe(j.diskSectors * 512);
  });
});
