/** src/repo/README.md, "Range reads": the plan and the Range / multipart framing. */
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  closeDelimiter,
  multipartBoundary,
  multipartLength,
  parseContentRange,
  parseRanges,
  partHead,
  planRanges,
  rangeHeader,
  type Span,
} from "../../../src/repo/ranges.ts";

const spanArb = fc
  .tuple(fc.integer({ min: 0, max: 100000 }), fc.integer({ min: 1, max: 3000 }))
  .map(([start, n]) => ({ start, end: start + n }));

describe("planRanges", () => {
  it("covers every byte asked, ascending and disjoint, at most maxRanges, only small gaps merged unless forced", () => {
    fc.assert(
      fc.property(
        fc.array(spanArb, { maxLength: 80 }),
        fc.integer({ min: 0, max: 5000 }),
        fc.integer({ min: 1, max: 30 }),
        (spans, maxGapBytes, maxRanges) => {
          const plan = planRanges(spans, { maxGapBytes, maxRanges });
          expect(plan.length).toBeLessThanOrEqual(maxRanges);
          for (let i = 1; i < plan.length; i++)
            expect(plan[i]!.start).toBeGreaterThan(
              plan[i - 1]!.end + Math.max(0, maxGapBytes - 1) - 1,
            );
          for (const s of spans)
            expect(plan.some((p) => p.start <= s.start && s.end <= p.end)).toBe(true);
          // every planned range starts and ends on an asked byte: nothing fetched at the edges
          for (const p of plan) {
            expect(spans.some((s) => s.start === p.start)).toBe(true);
            expect(spans.some((s) => s.end === p.end)).toBe(true);
          }
          // unforced: gaps of at least maxGapBytes are kept
          if (plan.length < maxRanges) {
            const merged = planRanges(spans, { maxGapBytes, maxRanges: 1e9 });
            expect(plan).toEqual(merged);
          }
        },
      ),
      { numRuns: 200 },
    );
  });

  it("merges the smallest gaps first when over the bound", () => {
    const spans: Span[] = [
      { start: 0, end: 10 },
      { start: 100, end: 110 }, // gap 90
      { start: 115, end: 120 }, // gap 5
      { start: 1000, end: 1010 }, // gap 880
    ];
    expect(planRanges(spans, { maxGapBytes: 0, maxRanges: 3 })).toEqual([
      { start: 0, end: 10 },
      { start: 100, end: 120 },
      { start: 1000, end: 1010 },
    ]);
    expect(planRanges(spans, { maxGapBytes: 0, maxRanges: 2 })).toEqual([
      { start: 0, end: 120 },
      { start: 1000, end: 1010 },
    ]);
    expect(rangeHeader(planRanges(spans, { maxGapBytes: 100, maxRanges: 9 }))).toBe(
      "bytes=0-119,1000-1009",
    );
  });
});

describe("parseRanges", () => {
  it("reads one or several ranges in the order asked", () => {
    expect(parseRanges("bytes=0-9", 100)).toEqual([{ start: 0, end: 10 }]);
    expect(parseRanges("bytes=50-, -10, 5-5", 100)).toEqual([
      { start: 50, end: 100 },
      { start: 90, end: 100 },
      { start: 5, end: 6 },
    ]);
    expect(parseRanges("bytes=90-200", 100)).toEqual([{ start: 90, end: 100 }]);
    // past the end: dropped; none left: 416
    expect(parseRanges("bytes=0-1,200-300", 100)).toEqual([{ start: 0, end: 2 }]);
    expect(parseRanges("bytes=100-", 100)).toBe("unsatisfiable");
  });

  it("ignores what is malformed or too much", () => {
    for (const h of ["items=0-1", "bytes=5-3", "bytes=a-b", "bytes=-", "bytes=0-1,,2-3", undefined])
      expect(parseRanges(h, 100)).toBeUndefined();
    const many = `bytes=${Array.from({ length: 300 }, (_, i) => `${i}-${i}`).join(",")}`;
    expect(parseRanges(many, 1000)).toBeUndefined();
  });
});

describe("multipart framing", () => {
  it("Content-Length is the bytes written", () => {
    const spans = [
      { start: 0, end: 10 },
      { start: 99990, end: 100000 },
    ];
    const body =
      partHead("B", "application/octet-stream", spans[0]!, 100000, true) +
      "x".repeat(10) +
      partHead("B", "application/octet-stream", spans[1]!, 100000, false) +
      "y".repeat(10) +
      closeDelimiter("B");
    expect(multipartLength("B", "application/octet-stream", spans, 100000)).toBe(body.length);
    expect(
      body.startsWith(
        "--B\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes 0-9/100000\r\n\r\n",
      ),
    ).toBe(true);
  });

  it("reads Content-Range and the boundary strictly", () => {
    expect(parseContentRange("bytes 0-9/100")).toEqual({ span: { start: 0, end: 10 }, total: 100 });
    expect(parseContentRange("bytes 9-0/100")).toBeUndefined();
    expect(parseContentRange("bytes 0-9/100, bytes 1-2/100")).toBeUndefined();
    expect(multipartBoundary("multipart/byteranges; boundary=abc")).toBe("abc");
    expect(multipartBoundary('multipart/byteranges; charset=x; boundary="a b"')).toBe("a b");
    expect(multipartBoundary("application/octet-stream")).toBeUndefined();
  });
});
