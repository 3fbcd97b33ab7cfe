/** The content-defined chunker (src/bundle/README.md, "Content-defined chunks"). */
import { createHash } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import fc from "fast-check";
import { afterAll, describe, expect, it } from "vitest";
import {
  CdcChunker,
  type CdcParams,
  cdcChunkFile,
  cdcLengths,
  cdcParamsIssues,
  DEFAULT_CDC,
  GEAR,
} from "../../../src/bundle/cdc.ts";

/** Small sizes so that a few hundred KiB make hundreds of chunks. */
const SMALL: CdcParams = { minSize: 256, avgSize: 1024, maxSize: 4096 };

/** Deterministic pseudo-random bytes (xorshift32) from a seed. */
function bytes(seed: number, n: number): Uint8Array {
  const out = new Uint8Array(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    out[i] = x & 0xff;
  }
  return out;
}

const sha = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");

function chunkHashes(data: Uint8Array, p: CdcParams): string[] {
  const out: string[] = [];
  let at = 0;
  for (const n of cdcLengths(data, p)) {
    out.push(sha(data.subarray(at, at + n)));
    at += n;
  }
  return out;
}

/** Share of `after`'s bytes that lie in chunks `before` also has. */
function reusedShare(before: Uint8Array, after: Uint8Array, p: CdcParams): number {
  const have = new Set(chunkHashes(before, p));
  let at = 0;
  let reused = 0;
  for (const n of cdcLengths(after, p)) {
    if (have.has(sha(after.subarray(at, at + n)))) reused += n;
    at += n;
  }
  return reused / after.length;
}

const dir = mkdtempSync(join(tmpdir(), "abforge-cdc-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("gear table", () => {
  it("is sha256 of each byte value, first 4 bytes big-endian", () => {
    expect(GEAR[0]).toBe(0x6e340b9c); // sha256(00) = 6e340b9c…
    expect(GEAR[0x61]).toBe(0xca978112); // sha256("a") = ca978112…
    expect(new Set(GEAR).size).toBe(256);
  });
});

describe("cdcLengths", () => {
  it("covers every byte with chunks inside the bounds, only the last one shorter than minSize", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 2 ** 31 }),
        fc.integer({ min: 0, max: 40000 }),
        (seed, n) => {
          const lengths = cdcLengths(bytes(seed, n), SMALL);
          expect(lengths.reduce((a, b) => a + b, 0)).toBe(n);
          lengths.forEach((l, i) => {
            expect(l).toBeLessThanOrEqual(SMALL.maxSize);
            if (i < lengths.length - 1) expect(l).toBeGreaterThan(SMALL.minSize);
            else expect(l).toBeGreaterThan(0);
          });
        },
      ),
      { numRuns: 60 },
    );
  });

  it("is deterministic and averages near avgSize on random data", () => {
    const data = bytes(7, 1 << 20);
    const a = cdcLengths(data, SMALL);
    expect(cdcLengths(data, SMALL)).toEqual(a);
    const mean = data.length / a.length;
    expect(mean).toBeGreaterThan(SMALL.avgSize * 0.8);
    expect(mean).toBeLessThan(SMALL.avgSize * 1.6);
  });

  it("cuts data without content (zeros) at maxSize", () => {
    expect(cdcLengths(new Uint8Array(3 * 4096 + 100), SMALL)).toEqual([4096, 4096, 4096, 100]);
  });

  it("keeps most chunks after an insertion or a deletion anywhere", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 2 ** 31 }),
        fc.integer({ min: 0, max: 199999 }),
        fc.integer({ min: 1, max: 300 }),
        fc.boolean(),
        (seed, at, n, insert) => {
          const before = bytes(seed, 200000);
          const after = insert
            ? Buffer.concat([before.subarray(0, at), bytes(seed + 1, n), before.subarray(at)])
            : Buffer.concat([
                before.subarray(0, at),
                before.subarray(Math.min(at + n, before.length)),
              ]);
          // an edit disturbs the chunk it falls in and at most a few after it
          const lost = after.length * (1 - reusedShare(before, after, SMALL));
          expect(lost).toBeLessThanOrEqual(4 * SMALL.maxSize + n);
        },
      ),
      { numRuns: 40 },
    );
  });

  it("refuses params outside the rules", () => {
    expect(cdcParamsIssues(DEFAULT_CDC)).toEqual([]);
    expect(cdcParamsIssues({ minSize: 8, avgSize: 1000, maxSize: 500 })).toHaveLength(3);
    expect(() => cdcLengths(new Uint8Array(1), { minSize: 10, avgSize: 64, maxSize: 128 })).toThrow(
      RangeError,
    );
  });
});

describe("CdcChunker", () => {
  it("cuts a stream fed in pieces of any size exactly as the whole", () => {
    const data = bytes(99, 300000);
    const expected = cdcLengths(data, SMALL);
    fc.assert(
      fc.property(fc.array(fc.integer({ min: 1, max: 20000 }), { maxLength: 40 }), (pieces) => {
        const c = new CdcChunker(SMALL);
        const got = [];
        let at = 0;
        for (const p of pieces) {
          if (at >= data.length) break;
          got.push(...c.update(data.subarray(at, at + p)));
          at += p;
        }
        got.push(...c.update(data.subarray(Math.min(at, data.length))), ...c.end());
        expect(got.map((x) => x.length)).toEqual(expected);
        let off = 0;
        for (const x of got) {
          expect(x.offset).toBe(off);
          expect(x.sha256).toBe(sha(data.subarray(off, off + x.length)));
          off += x.length;
        }
      }),
      { numRuns: 25 },
    );
  });

  it("cdcChunkFile reads a file (or a range of it) into the same chunks", async () => {
    const data = bytes(5, 500000);
    const path = join(dir, "f.img");
    writeFileSync(path, data);
    const chunks = await cdcChunkFile(path, SMALL);
    expect(chunks.map((c) => c.length)).toEqual(cdcLengths(data, SMALL));
    const part = await cdcChunkFile(path, SMALL, { start: 1000, end: 90000 });
    expect(part.map((c) => c.length)).toEqual(cdcLengths(data.subarray(1000, 90000), SMALL));
  });
});
