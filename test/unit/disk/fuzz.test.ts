/**
 * Properties: random tables round-trip; damaged disks only ever raise our
 * GptError (README: Reading — "Nothing but a GptError leaves the decoder").
 */
import * as zlib from "node:zlib";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { GptAttributes } from "../../../src/disk/attributes.ts";
import { decodeGpt, encodeGpt } from "../../../src/disk/codec.ts";
import { GptError } from "../../../src/disk/errors.ts";
import { entryArraySectors, type GptPartition, type GptTable } from "../../../src/disk/table.ts";
import { imageOf, readerOf } from "./fixtures.ts";

const guid = fc.uuid().map((u) => u.toUpperCase());
/** Any UTF-16 code units but NUL (lone surrogates included), at most 36. */
const name = fc
  .array(fc.integer({ min: 1, max: 0xffff }), { maxLength: 36 })
  .map((units) => String.fromCharCode(...units));

const tableArb: fc.Arbitrary<GptTable> = fc
  .record({
    sectorSize: fc.constantFrom(512, 4096),
    entryCount: fc.oneof(fc.constant(128), fc.integer({ min: 1, max: 300 })),
    usable: fc.integer({ min: 1, max: 400 }),
    diskGuid: guid,
    cuts: fc.uniqueArray(fc.integer({ min: 0, max: 1_000_000 }), { maxLength: 16 }),
    seeds: fc.array(
      fc.record({
        typeGuid: guid,
        uniqueGuid: guid,
        attrs: fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }),
        name,
        gap: fc.boolean(),
      }),
      { minLength: 8, maxLength: 8 },
    ),
    indexes: fc.uniqueArray(fc.integer({ min: 1, max: 300 }), { minLength: 8, maxLength: 8 }),
  })
  .map((r) => {
    const a = entryArraySectors(r.entryCount, r.sectorSize);
    const first = BigInt(2 + a);
    const last = first + BigInt(r.usable) - 1n;
    const diskSectors = last + 2n + BigInt(a);
    // cut points inside the usable range → consecutive ranges, some skipped
    const points = [...new Set(r.cuts.map((c) => BigInt(c % r.usable)))].sort((x, y) =>
      x < y ? -1 : 1,
    );
    const bounds = [0n, ...points.filter((p) => p > 0n), BigInt(r.usable)];
    const indexes = r.indexes.map((i) => ((i - 1) % r.entryCount) + 1);
    const used = new Set<number>();
    const partitions: GptPartition[] = [];
    for (let i = 0; i + 1 < bounds.length && i < r.seeds.length; i++) {
      const s = r.seeds[i]!;
      const index = indexes[i]!;
      if (s.gap || used.has(index)) continue;
      used.add(index);
      partitions.push({
        index,
        typeGuid: s.typeGuid,
        uniqueGuid: s.uniqueGuid,
        firstLba: first + bounds[i]!,
        lastLba: first + bounds[i + 1]! - 1n,
        attributes: new GptAttributes(s.attrs),
        name: s.name,
      });
    }
    partitions.sort((x, y) => x.index - y.index);
    return {
      diskGuid: r.diskGuid,
      sectorSize: r.sectorSize,
      diskSectors,
      firstUsableLba: first,
      lastUsableLba: last,
      entryCount: r.entryCount,
      partitions,
    };
  });

/** Decode; anything but a GptError fails the property. */
function decodeOrGptError(img: Uint8Array, size = img.length): "ok" | "error" {
  try {
    const r = decodeGpt(readerOf(img), size);
    // what we read, we can write again, and it reads back the same
    const { head, tail, tailOffset } = encodeGpt(r.table);
    const again = new Uint8Array(Number(r.table.diskSectors) * r.table.sectorSize);
    again.set(head);
    again.set(tail, tailOffset);
    expect(decodeGpt(readerOf(again), again.length).table).toEqual(r.table);
    return "ok";
  } catch (err) {
    if (err instanceof GptError) return "error";
    throw err;
  }
}

/** Header-field damage that keeps the CRC right, so the checks after it run. */
function fixHeaderCrc(img: Uint8Array, at: number, ss: number): void {
  const v = new DataView(img.buffer, img.byteOffset + at);
  const size = Math.min(Math.max(v.getUint32(12, true), 92), ss);
  v.setUint32(16, 0, true);
  v.setUint32(16, zlib.crc32(img.subarray(at, at + size)) >>> 0, true);
}

describe("GPT properties", () => {
  it("round-trips random tables (names with any UTF-16 units, any attribute bits)", () => {
    fc.assert(
      fc.property(tableArb, (t) => {
        const r = decodeGpt(readerOf(imageOf(t)), Number(t.diskSectors) * t.sectorSize);
        expect(r.source).toBe("primary");
        expect(r.warnings).toEqual([]);
        expect(r.table).toEqual(t);
      }),
      { numRuns: 500 },
    );
  });

  it("raises only GptError on random byte damage to the tables", () => {
    fc.assert(
      fc.property(
        tableArb,
        fc.array(
          fc.record({
            where: fc.nat(),
            value: fc.integer({ min: 0, max: 255 }),
            tail: fc.boolean(),
          }),
          {
            minLength: 1,
            maxLength: 24,
          },
        ),
        (t, edits) => {
          const img = imageOf(t);
          const { head, tailOffset } = encodeGpt(t);
          for (const e of edits) {
            const pos = e.tail
              ? tailOffset + (e.where % (img.length - tailOffset))
              : e.where % head.length;
            img[pos] = e.value;
          }
          decodeOrGptError(img);
        },
      ),
      { numRuns: 2000 },
    );
  });

  it("raises only GptError on damaged header fields with a correct CRC", () => {
    const fields = [8, 12, 20, 24, 32, 40, 48, 72, 80, 84, 88];
    fc.assert(
      fc.property(
        tableArb,
        fc.array(
          fc.record({
            field: fc.constantFrom(...fields),
            value: fc.oneof(
              fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }),
              fc.bigInt({ min: 0n, max: 5000n }),
            ),
            backup: fc.boolean(),
          }),
          { minLength: 1, maxLength: 6 },
        ),
        (t, edits) => {
          const img = imageOf(t);
          const ss = t.sectorSize;
          for (const e of edits) {
            const at = e.backup ? img.length - ss : ss;
            const v = new DataView(img.buffer, at);
            if ([24, 32, 40, 48, 72].includes(e.field)) v.setBigUint64(e.field, e.value, true);
            else v.setUint32(e.field, Number(e.value & 0xffffffffn), true);
            fixHeaderCrc(img, at, ss);
          }
          decodeOrGptError(img);
        },
      ),
      { numRuns: 2000 },
    );
  });

  it("raises only GptError on damaged entries with correct CRCs", () => {
    fc.assert(
      fc.property(
        tableArb,
        fc.array(
          fc.record({ where: fc.nat(), value: fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }) }),
          {
            minLength: 1,
            maxLength: 8,
          },
        ),
        (t, edits) => {
          const img = imageOf(t);
          const ss = t.sectorSize;
          const len = t.entryCount * 128;
          for (const [hdr, arr] of [
            [ss, 2 * ss],
            [img.length - ss, img.length - ss - entryArraySectors(t.entryCount, ss) * ss],
          ] as const) {
            const v = new DataView(img.buffer, arr, len);
            for (const e of edits) v.setBigUint64(((e.where % (len / 8)) | 0) * 8, e.value, true);
            new DataView(img.buffer, hdr).setUint32(
              88,
              zlib.crc32(img.subarray(arr, arr + len)) >>> 0,
              true,
            );
            fixHeaderCrc(img, hdr, ss);
          }
          decodeOrGptError(img);
        },
      ),
      { numRuns: 1000 },
    );
  });

  it("raises only GptError on random bytes and sizes", () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 70_000 }), fc.nat({ max: 200_000 }), (bytes, size) => {
        decodeOrGptError(bytes, size);
        const withSig = Uint8Array.from(bytes);
        if (withSig.length >= 520) withSig.set(new TextEncoder().encode("EFI PART"), 512);
        decodeOrGptError(withSig);
      }),
      { numRuns: 500 },
    );
  });
});
