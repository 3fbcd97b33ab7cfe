/**
 * Byte ranges (README.md, "Range reads"): the plan of a delta fetch
 * (neighbouring ranges coalesced, a bounded count), the Range header with
 * several ranges (RFC 9110 14.1.2) as the server reads it, and the
 * multipart/byteranges framing (RFC 9110 14.6) as both sides write and read
 * it. Pure.
 */

/** Bytes [start, end) of a file. */
export interface Span {
  start: number;
  end: number;
}

export interface PlanOptions {
  /** Merge two ranges when fewer than this many bytes lie between them. */
  maxGapBytes: number;
  /** At most this many ranges: the smallest gaps are merged until it holds. */
  maxRanges: number;
}

/**
 * The ranges to ask for, ascending and disjoint, covering every byte of
 * `spans` (which may come in any order and overlap) and as few others as the
 * bounds allow: first every gap under maxGapBytes is merged (a request's
 * header and part framing cost about as much as a few hundred bytes), then
 * the smallest gaps until at most maxRanges remain.
 */
export function planRanges(spans: readonly Span[], o: PlanOptions): Span[] {
  if (!Number.isSafeInteger(o.maxRanges) || o.maxRanges < 1)
    throw new RangeError(`maxRanges must be a positive integer, got ${o.maxRanges}`);
  const sorted = spans
    .filter((s) => s.end > s.start)
    .map((s) => ({ start: s.start, end: s.end }))
    .sort((a, b) => a.start - b.start);
  const merged: Span[] = [];
  for (const s of sorted) {
    const last = merged[merged.length - 1];
    if (last && s.start - last.end < o.maxGapBytes) last.end = Math.max(last.end, s.end);
    else merged.push(s);
  }
  if (merged.length <= o.maxRanges) return merged;
  // merge the (n - maxRanges) smallest gaps; ties by position, so the result is deterministic
  const gaps = merged.slice(1).map((s, i) => ({ i, gap: s.start - (merged[i] as Span).end }));
  gaps.sort((a, b) => a.gap - b.gap || a.i - b.i);
  const join = new Set(gaps.slice(0, merged.length - o.maxRanges).map((g) => g.i));
  const out: Span[] = [{ ...(merged[0] as Span) }];
  for (let i = 1; i < merged.length; i++) {
    const s = merged[i] as Span;
    if (join.has(i - 1)) (out[out.length - 1] as Span).end = s.end;
    else out.push({ ...s });
  }
  return out;
}

/** `bytes=a-b,c-d` for spans (end exclusive). */
export function rangeHeader(spans: readonly Span[]): string {
  return `bytes=${spans.map((s) => `${s.start}-${s.end - 1}`).join(",")}`;
}

/** Longest Range header the server reads (bytes) and most ranges in one. */
export const MAX_RANGE_HEADER = 16384;
export const MAX_RANGES_PER_REQUEST = 256;

/**
 * The ranges of a `Range` header against a file of `size` bytes, in the
 * order asked, as spans. undefined: ignore the header and send the whole file
 * (absent, malformed, not bytes, too long, too many ranges); "unsatisfiable":
 * 416 (no range starts inside the file). Ranges that start past the end are
 * dropped, as RFC 9110 says.
 */
export function parseRanges(
  header: string | undefined,
  size: number,
): Span[] | "unsatisfiable" | undefined {
  if (header === undefined || header.length > MAX_RANGE_HEADER) return undefined;
  const m = /^\s*bytes=(.*)$/.exec(header);
  if (!m) return undefined;
  const specs = (m[1] as string).split(",").map((s) => s.trim());
  if (specs.length > MAX_RANGES_PER_REQUEST) return undefined;
  const out: Span[] = [];
  for (const spec of specs) {
    const r = /^(\d*)-(\d*)$/.exec(spec);
    if (!r) return undefined;
    const [, a = "", b = ""] = r;
    if (a === "" && b === "") return undefined;
    if (a === "") {
      const suffix = Number(b);
      if (suffix > 0 && size > 0) out.push({ start: Math.max(0, size - suffix), end: size });
      continue;
    }
    const start = Number(a);
    if (b !== "" && Number(b) < start) return undefined;
    if (start >= size) continue;
    out.push({ start, end: b === "" ? size : Math.min(Number(b), size - 1) + 1 });
  }
  return out.length === 0 ? "unsatisfiable" : out;
}

/** The header block that opens part n of a multipart/byteranges body. */
export function partHead(
  boundary: string,
  contentType: string,
  s: Span,
  size: number,
  first: boolean,
): string {
  return `${first ? "" : "\r\n"}--${boundary}\r\nContent-Type: ${contentType}\r\nContent-Range: bytes ${s.start}-${s.end - 1}/${size}\r\n\r\n`;
}

/** The delimiter that closes a multipart/byteranges body. */
export function closeDelimiter(boundary: string): string {
  return `\r\n--${boundary}--\r\n`;
}

/** Content-Length of a multipart/byteranges body. */
export function multipartLength(
  boundary: string,
  contentType: string,
  spans: readonly Span[],
  size: number,
): number {
  let n = Buffer.byteLength(closeDelimiter(boundary));
  spans.forEach((s, i) => {
    n += Buffer.byteLength(partHead(boundary, contentType, s, size, i === 0)) + (s.end - s.start);
  });
  return n;
}

/** `bytes a-b/total` → the span and total; undefined when it is not exactly that. */
export function parseContentRange(
  v: string | undefined,
): { span: Span; total: number | undefined } | undefined {
  const m = v === undefined ? null : /^bytes (\d{1,15})-(\d{1,15})\/(\d{1,15}|\*)$/.exec(v.trim());
  if (!m) return undefined;
  const start = Number(m[1]);
  const last = Number(m[2]);
  if (last < start) return undefined;
  return { span: { start, end: last + 1 }, total: m[3] === "*" ? undefined : Number(m[3]) };
}

/** The boundary of a `multipart/byteranges; boundary=...` Content-Type, else undefined. */
export function multipartBoundary(contentType: string | undefined): string | undefined {
  if (contentType === undefined) return undefined;
  const m = /^\s*multipart\/byteranges\s*;(.*)$/i.exec(contentType);
  if (!m) return undefined;
  const b = /(?:^|;)\s*boundary\s*=\s*(?:"([^"]{1,70})"|([^\s;"]{1,70}))/i.exec(m[1] as string);
  return b ? (b[1] ?? b[2]) : undefined;
}
