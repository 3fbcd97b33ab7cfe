/** The GPT codec against src/disk/README.md: layout, fields, CRC rules, names, reading order. */
import { describe, expect, it } from "vitest";
import type { GptAttributes } from "../../../src/disk/attributes.ts";
import { decodeGpt, decodeName, encodeGpt } from "../../../src/disk/codec.ts";
import { GptError } from "../../../src/disk/errors.ts";
import type { GptTable } from "../../../src/disk/table.ts";
import { imageOf, readerOf, smallTable } from "./fixtures.ts";

/** Bitwise CRC32 (IEEE, reflected 0xEDB88320), independent of zlib. */
function crc32(bytes: Uint8Array): number {
  let c = 0xffffffff;
  for (const b of bytes) {
    c ^= b;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0xedb88320 : c >>> 1;
  }
  return (c ^ 0xffffffff) >>> 0;
}

function dv(img: Uint8Array, offset: number, length: number): DataView {
  return new DataView(img.buffer, img.byteOffset + offset, length);
}

/** Edit a header's fields, then make its CRC right again (unless told not to). */
function editHeader(
  img: Uint8Array,
  lba: number,
  edit: (v: DataView) => void,
  fixCrc = true,
): void {
  const v = dv(img, lba * 512, 512);
  edit(v);
  if (!fixCrc) return;
  const size = Math.min(Math.max(v.getUint32(12, true), 92), 512);
  v.setUint32(16, 0, true);
  v.setUint32(16, crc32(img.subarray(lba * 512, lba * 512 + size)), true);
}

/** Edit the entry array a header points to, then fix the entries CRC and the header CRC. */
function editEntries(img: Uint8Array, headerLba: number, edit: (v: DataView) => void): void {
  const h = dv(img, headerLba * 512, 512);
  const at = Number(h.getBigUint64(72, true)) * 512;
  const len = h.getUint32(80, true) * h.getUint32(84, true);
  edit(dv(img, at, len));
  editHeader(img, headerLba, (v) => v.setUint32(88, crc32(img.subarray(at, at + len)), true));
}

function decode(img: Uint8Array) {
  return decodeGpt(readerOf(img), img.length, { name: "t.img" });
}

function gptError(fn: () => unknown): GptError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(GptError);
    return err as GptError;
  }
  throw new Error("expected a GptError");
}

const LAST = 255; // last LBA of smallTable()

describe("encodeGpt layout (README: Layout, MBR, Header, Partition entry)", () => {
  const table = smallTable();
  const { head, tail, tailOffset } = encodeGpt(table);

  it("gives a head of LBA 0-33 and a tail of the last 33 LBAs", () => {
    expect(head.length).toBe(34 * 512);
    expect(tail.length).toBe(33 * 512);
    expect(tailOffset).toBe((256 - 33) * 512);
  });

  it("writes a protective MBR", () => {
    expect([...head.subarray(446, 446 + 8)]).toEqual([
      0x00, 0x00, 0x02, 0x00, 0xee, 0x04, 0x04, 0x00,
    ]);
    const v = dv(head, 446, 16);
    expect(v.getUint32(8, true)).toBe(1);
    expect(v.getUint32(12, true)).toBe(255);
    expect([head[510], head[511]]).toEqual([0x55, 0xaa]);
    expect(head.subarray(0, 446).every((b) => b === 0)).toBe(true);
  });

  it("writes both headers field by field", () => {
    const p = dv(head, 512, 512);
    const b = dv(tail, 32 * 512, 512);
    expect(Buffer.from(head.subarray(512, 520)).toString("latin1")).toBe("EFI PART");
    for (const [v, my, alt, entries] of [
      [p, 1n, 255n, 2n],
      [b, 255n, 1n, 223n],
    ] as const) {
      expect(v.getUint32(8, true)).toBe(0x00010000);
      expect(v.getUint32(12, true)).toBe(92);
      expect(v.getUint32(20, true)).toBe(0);
      expect(v.getBigUint64(24, true)).toBe(my);
      expect(v.getBigUint64(32, true)).toBe(alt);
      expect(v.getBigUint64(40, true)).toBe(34n);
      expect(v.getBigUint64(48, true)).toBe(222n);
      expect(v.getBigUint64(72, true)).toBe(entries);
      expect(v.getUint32(80, true)).toBe(128);
      expect(v.getUint32(84, true)).toBe(128);
    }
    // disk GUID 11111111-2222-4333-8444-555555555555, mixed-endian
    expect([...head.subarray(512 + 56, 512 + 72)]).toEqual([
      0x11, 0x11, 0x11, 0x11, 0x22, 0x22, 0x33, 0x43, 0x84, 0x44, 0x55, 0x55, 0x55, 0x55, 0x55,
      0x55,
    ]);
    expect(head.subarray(512 + 92, 1024).every((x) => x === 0)).toBe(true);
  });

  it("follows the CRC rules: entries over count*size bytes, header over its size with the CRC zeroed", () => {
    const entries = head.subarray(1024, 1024 + 128 * 128);
    const p = dv(head, 512, 512);
    expect(p.getUint32(88, true)).toBe(crc32(entries));
    const hdr = Uint8Array.from(head.subarray(512, 512 + 92));
    dv(hdr, 0, 92).setUint32(16, 0, true);
    expect(p.getUint32(16, true)).toBe(crc32(hdr));
    expect(crc32(new TextEncoder().encode("123456789"))).toBe(0xcbf43926);
    expect(Buffer.from(tail.subarray(0, 32 * 512)).equals(Buffer.from(head.subarray(1024)))).toBe(
      true,
    );
  });

  it("writes entries at their index with mixed-endian GUIDs, LBAs, attributes and a UTF-16LE name", () => {
    const e1 = head.subarray(1024, 1024 + 128);
    expect([...e1.subarray(0, 16)]).toEqual([
      0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e, 0xc9,
      0x3b,
    ]);
    expect(dv(e1, 0, 128).getBigUint64(32, true)).toBe(34n);
    expect(dv(e1, 0, 128).getBigUint64(40, true)).toBe(99n);
    expect([...e1.subarray(56, 64)]).toEqual([0x65, 0, 0x73, 0, 0x70, 0, 0, 0]);
    const e2 = dv(head, 1024 + 128, 128);
    expect(e2.getBigUint64(48, true)).toBe(0x0132000000000000n);
    const e3 = head.subarray(1024 + 256, 1024 + 384);
    expect(e3.every((x) => x === 0)).toBe(true); // index 3 unused
    const e4 = head.subarray(1024 + 384, 1024 + 512);
    // "état-日本-😀": é = E9 00, 日 = E5 65, 😀 = D83D DE00
    expect([...e4.subarray(56, 58)]).toEqual([0xe9, 0x00]);
    expect([...e4.subarray(56 + 10, 56 + 12)]).toEqual([0xe5, 0x65]);
    expect([...e4.subarray(56 + 16, 56 + 20)]).toEqual([0x3d, 0xd8, 0x00, 0xde]);
    expect([...e4.subarray(56 + 20, 56 + 22)]).toEqual([0, 0]);
  });
});

describe("round trip", () => {
  it("decodes what it encodes, from the primary, with no warnings", () => {
    const table = smallTable();
    const r = decode(imageOf(table));
    expect(r.source).toBe("primary");
    expect(r.warnings).toEqual([]);
    expect(r.table).toEqual(table);
  });

  it("keeps names of exactly 36 UTF-16 units, surrogate pairs counted as two", () => {
    for (const name of [
      "x".repeat(36),
      "😀".repeat(18),
      `${"😀".repeat(17)}ab`,
      "Ünïcødé ✓ 名前",
      "",
    ]) {
      const t = smallTable();
      t.partitions[0]!.name = name;
      expect(decode(imageOf(t)).table.partitions[0]!.name).toBe(name);
    }
  });

  it("refuses a name longer than 36 UTF-16 units, or with a NUL", () => {
    for (const name of ["x".repeat(37), `${"😀".repeat(18)}a`]) {
      const t = smallTable();
      t.partitions[0]!.name = name;
      const e = gptError(() => encodeGpt(t));
      expect(e.code).toBe("GPT_BAD_INPUT");
      expect(e.message).toMatch(
        /partition 1 .*name is 37 UTF-16 code units long; GPT names hold at most 36/,
      );
    }
    const t = smallTable();
    t.partitions[0]!.name = "a\0b";
    expect(gptError(() => encodeGpt(t)).message).toMatch(/NUL/);
  });

  it("reads a name up to the first NUL unit, or all 36 units", () => {
    const b = new Uint8Array(72).fill(0x41);
    expect(decodeName(b, 0)).toBe("䅁".repeat(36));
    b.set([0x62, 0, 0, 0], 0);
    expect(decodeName(b, 0)).toBe("b");
  });

  it("reads and writes 4096-byte sectors", () => {
    const t: GptTable = {
      ...smallTable(),
      sectorSize: 4096,
      diskSectors: 64n,
      firstUsableLba: 6n,
      lastUsableLba: 58n,
    };
    t.partitions = t.partitions.map((p, i) => ({
      ...p,
      firstLba: BigInt(6 + i * 10),
      lastLba: BigInt(15 + i * 10),
    }));
    const img = imageOf(t);
    const r = decode(img);
    expect(r.table).toEqual(t);
  });

  it("reads a disk that grew, from the primary, warning that the backup is not at the end", () => {
    const small = imageOf(smallTable());
    const img = new Uint8Array(small.length + 64 * 512);
    img.set(small);
    const r = decode(img);
    expect(r.source).toBe("primary");
    expect(r.table.diskSectors).toBe(320n);
    expect(r.warnings.join()).toMatch(/backup GPT header is at LBA 255, not at the last LBA 319/);
  });
});

describe("primary and backup (README: Reading)", () => {
  it("reads the backup when the primary header is damaged, and says so", () => {
    const img = imageOf(smallTable());
    img.fill(0, 512, 1024);
    const r = decode(img);
    expect(r.source).toBe("backup");
    expect(r.table).toEqual(smallTable());
    expect(r.warnings).toHaveLength(1);
    expect(r.warnings[0]).toMatch(
      /t\.img: the primary GPT header at LBA 1 is invalid \(no "EFI PART" signature\); using the backup at LBA 255/,
    );
  });

  it("reads the backup when the primary entry array is damaged", () => {
    const img = imageOf(smallTable());
    img[1024 + 40] = img[1024 + 40]! ^ 0xff;
    const r = decode(img);
    expect(r.source).toBe("backup");
    expect(r.warnings[0]).toMatch(
      /entry array CRC32 0x[0-9a-f]{8} does not match the computed 0x[0-9a-f]{8}/,
    );
  });

  it("reads the primary and warns when only the backup is damaged", () => {
    const img = imageOf(smallTable());
    img[LAST * 512 + 30] = img[LAST * 512 + 30]! ^ 1;
    const r = decode(img);
    expect(r.source).toBe("primary");
    expect(r.table).toEqual(smallTable());
    expect(r.warnings.join()).toMatch(/backup GPT header at LBA 255 is invalid \(header CRC32/);
  });

  it("warns when the two copies differ", () => {
    const img = imageOf(smallTable());
    editEntries(img, LAST, (v) => v.setUint8(56, 0x7a));
    const r = decode(img);
    expect(r.source).toBe("primary");
    expect(r.warnings.join()).toMatch(/primary and backup GPT differ \(entries\)/);
  });

  it("fails with GPT_CORRUPT naming both reasons when both headers are damaged", () => {
    const img = imageOf(smallTable());
    img[512 + 30] = img[512 + 30]! ^ 1;
    img[LAST * 512 + 8] = 9;
    const e = gptError(() => decode(img));
    expect(e.code).toBe("GPT_CORRUPT");
    expect(e.message).toMatch(
      /^t\.img: no valid GPT: primary header at LBA 1: header CRC32 .*; backup header at LBA 255: revision/,
    );
  });

  it("fails with GPT_MISSING on a disk without a GPT, or too small for one", () => {
    expect(gptError(() => decode(new Uint8Array(256 * 512))).code).toBe("GPT_MISSING");
    const e = gptError(() => decode(new Uint8Array(2048)));
    expect(e.code).toBe("GPT_MISSING");
    expect(e.message).toMatch(/too small/);
  });

  it("warns, and still reads, when LBA 0 is not a protective MBR", () => {
    const img = imageOf(smallTable());
    img.fill(0, 0, 512);
    const r = decode(img);
    expect(r.table).toEqual(smallTable());
    expect(r.warnings.join()).toMatch(/no protective MBR/);
    const img2 = imageOf(smallTable());
    img2[446 + 4] = 0x83;
    expect(decode(img2).warnings.join()).toMatch(/no protective \(type 0xEE\) partition/);
  });
});

describe("validation of what we read (README: Header, Partition entry)", () => {
  const headerCases: [string, (v: DataView) => void, RegExp, boolean?][] = [
    ["signature", (v) => v.setUint8(7, 0x58), /no "EFI PART" signature/],
    ["revision", (v) => v.setUint32(8, 0x00020000, true), /revision 0x00020000 is not 1\.0/],
    ["header size too small", (v) => v.setUint32(12, 91, true), /header size 91 is not 92-512/],
    ["header size too large", (v) => v.setUint32(12, 513, true), /header size 513 is not 92-512/],
    [
      "header CRC",
      (v) => v.setUint8(60, v.getUint8(60) ^ 1),
      /header CRC32 0x[0-9a-f]{8} does not match/,
      false,
    ],
    ["reserved", (v) => v.setUint32(20, 1, true), /reserved field at offset 20/],
    ["my LBA", (v) => v.setBigUint64(24, 2n, true), /its own LBA field says 2, but it is at LBA 1/],
    [
      "alternate LBA past the disk",
      (v) => v.setBigUint64(32, 1000n, true),
      /backup header LBA 1000 is outside the disk/,
    ],
    [
      "first usable after last usable",
      (v) => v.setBigUint64(40, 230n, true),
      /first usable LBA 230 is after last usable LBA 222/,
    ],
    [
      "last usable over the backup",
      (v) => v.setBigUint64(48, 255n, true),
      /usable LBA range 34-255 is not between the headers/,
    ],
    ["last usable past the disk", (v) => v.setBigUint64(48, 1n << 60n, true), /usable LBA range/],
    ["entry array on the header", (v) => v.setBigUint64(72, 1n, true), /entry array at LBA 1-32/],
    [
      "entry array in the usable range",
      (v) => v.setBigUint64(72, 100n, true),
      /entry array at LBA 100-131/,
    ],
    [
      "entry array past the disk",
      (v) => v.setBigUint64(72, (1n << 64n) - 1n, true),
      /entry array at LBA/,
    ],
    [
      "entry size not 128·2^n",
      (v) => v.setUint32(84, 384, true),
      /entry size 384 is not 128 times a power of 2/,
    ],
    ["entry size 0", (v) => v.setUint32(84, 0, true), /entry size 0/],
    ["entry size huge", (v) => v.setUint32(84, 0x80000000, true), /entries of 2147483648 bytes/],
    ["entry count 0", (v) => v.setUint32(80, 0, true), /0 entries of 128 bytes/],
    ["entry count huge", (v) => v.setUint32(80, 0xffffffff, true), /4294967295 entries/],
  ];
  for (const [what, edit, reason, fixCrc] of headerCases) {
    it(`rejects a primary header with a bad ${what}, falling back to the backup`, () => {
      const img = imageOf(smallTable());
      editHeader(img, 1, edit, fixCrc ?? true);
      const r = decode(img);
      expect(r.source).toBe("backup");
      expect(r.warnings[0]).toMatch(reason);
    });
  }

  it("checks the backup header the same way", () => {
    const img = imageOf(smallTable());
    img.fill(0, 512, 1024);
    editHeader(img, LAST, (v) => v.setBigUint64(32, 7n, true));
    expect(gptError(() => decode(img)).message).toMatch(
      /backup header at LBA 255: primary header LBA 7 is not 1/,
    );
    const img2 = imageOf(smallTable());
    img2.fill(0, 512, 1024);
    editHeader(img2, LAST, (v) => v.setBigUint64(72, 20n, true));
    expect(gptError(() => decode(img2)).message).toMatch(
      /entry array at LBA 20-51 is not between the last usable LBA 222 and the header/,
    );
  });

  const entryCases: [string, (v: DataView) => void, RegExp][] = [
    [
      "overlapping partitions",
      (v) => v.setBigUint64(128 + 32, 90n, true),
      /partition 2 \(LBA 90-159\) overlaps partition 1 \(LBA 34-99\)/,
    ],
    [
      "a partition past the usable range",
      (v) => v.setBigUint64(384 + 40, 240n, true),
      /partition 4: LBA 160-240 is outside the usable range 34-222/,
    ],
    [
      "a partition before the usable range",
      (v) => v.setBigUint64(32, 2n, true),
      /partition 1: LBA 2-99 is outside the usable range/,
    ],
    [
      "first LBA after last LBA",
      (v) => v.setBigUint64(128 + 32, 170n, true),
      /partition 2: first LBA 170 is after last LBA 159/,
    ],
  ];
  for (const [what, edit, reason] of entryCases) {
    it(`rejects ${what} in both copies with GPT_CORRUPT`, () => {
      const img = imageOf(smallTable());
      editEntries(img, 1, edit);
      editEntries(img, LAST, edit);
      const e = gptError(() => decode(img));
      expect(e.code).toBe("GPT_CORRUPT");
      expect(e.message).toMatch(reason);
    });
  }

  it("ignores the bytes of unused entries", () => {
    const img = imageOf(smallTable());
    editEntries(img, 1, (v) => v.setBigUint64(2 * 128 + 32, 999999n, true));
    editEntries(img, LAST, (v) => v.setBigUint64(2 * 128 + 32, 999999n, true));
    expect(decode(img).table).toEqual(smallTable());
  });

  it("survives a reader that returns short", () => {
    const img = imageOf(smallTable());
    const e = gptError(() =>
      decodeGpt((o, l) => img.subarray(o, o + l).subarray(0, l - 1), img.length),
    );
    expect(["GPT_CORRUPT", "GPT_MISSING"]).toContain(e.code);
  });
});

describe("encodeGpt refuses a bad table, listing every problem", () => {
  it("reports overlaps, bad GUIDs, duplicate indexes and out-of-range LBAs together", () => {
    const t = smallTable();
    t.partitions[1]!.firstLba = 50n;
    t.partitions[1]!.uniqueGuid = "nope";
    t.partitions[2]!.index = 1;
    t.partitions[2]!.lastLba = 230n;
    const e = gptError(() => encodeGpt(t));
    expect(e.code).toBe("GPT_BAD_INPUT");
    const problems = e.details.problems as string[];
    expect(problems.join("\n")).toMatch(/unique GUID "nope" is not a GUID/);
    expect(problems.join("\n")).toMatch(/index 1 is used twice/);
    expect(problems.join("\n")).toMatch(/LBA 160-230 is outside the usable range 34-222/);
    expect(problems.join("\n")).toMatch(/overlaps/);
  });

  it("refuses a zero type GUID, a usable range over the tables and a bad entry count", () => {
    const t = smallTable();
    t.partitions[0]!.typeGuid = "00000000-0000-0000-0000-000000000000";
    expect(gptError(() => encodeGpt(t)).message).toMatch(/type GUID is all zeros/);
    expect(gptError(() => encodeGpt({ ...smallTable(), firstUsableLba: 33n })).message).toMatch(
      /inside the primary table/,
    );
    expect(gptError(() => encodeGpt({ ...smallTable(), lastUsableLba: 223n })).message).toMatch(
      /inside the backup table/,
    );
    expect(gptError(() => encodeGpt({ ...smallTable(), entryCount: 0 })).message).toMatch(
      /entry count 0/,
    );
    const bad = smallTable();
    bad.partitions[0]!.attributes = 5n as unknown as GptAttributes;
    expect(gptError(() => encodeGpt(bad)).message).toMatch(/attributes are not a GptAttributes/);
  });
});
