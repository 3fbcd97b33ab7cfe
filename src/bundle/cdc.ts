/**
 * Content-defined chunking of the slot image (README.md, "Content-defined
 * chunks"): a gear rolling hash with FastCDC's normalized chunking. A cut
 * point depends only on the bytes just before it, so an edit moves the cut
 * points near it and leaves the chunks after it as they were: a host that
 * holds the old image holds most of the new one's chunks. Pure: bytes in,
 * lengths out; `cdcChunkFile` is the streaming form over a file.
 */
import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { ioStep } from "./io.ts";

export interface CdcParams {
  /** No cut before this many bytes (bytes); at least 64. */
  minSize: number;
  /** The target average (bytes); a power of two, > minSize. */
  avgSize: number;
  /** A cut at this many bytes whatever the content (bytes); > avgSize. */
  maxSize: number;
}

/** The build's defaults (README.md, "Content-defined chunks", why these sizes). */
export const DEFAULT_CDC: Readonly<CdcParams> = Object.freeze({
  minSize: 16384,
  avgSize: 65536,
  maxSize: 262144,
});

/** The limits any params must keep (a manifest with others is invalid). */
export const CDC_LIMITS = Object.freeze({ minSize: 64, maxSize: 16 * 1024 * 1024 });

export interface CdcChunk {
  /** Offset in the slot image (bytes). */
  offset: number;
  /** Length (bytes). */
  length: number;
  /** sha256 of the chunk, lowercase hex. */
  sha256: string;
}

/**
 * gear[b] = the first 4 bytes, big-endian, of sha256 of the single byte b:
 * a fixed table, so every writer and agent cuts the same bytes at the same
 * points.
 */
export const GEAR: Uint32Array = (() => {
  const t = new Uint32Array(256);
  for (let b = 0; b < 256; b++)
    t[b] = createHash("sha256").update(Uint8Array.of(b)).digest().readUInt32BE(0);
  return t;
})();

/** Problems with params, empty when valid. */
export function cdcParamsIssues(p: CdcParams): string[] {
  const out: string[] = [];
  const int = (v: unknown) => Number.isSafeInteger(v) && (v as number) > 0;
  if (!int(p.minSize) || p.minSize < CDC_LIMITS.minSize)
    out.push(`minSize must be an integer >= ${CDC_LIMITS.minSize}, got ${p.minSize}`);
  if (!int(p.avgSize) || (p.avgSize & (p.avgSize - 1)) !== 0 || p.avgSize <= p.minSize)
    out.push(`avgSize must be a power of two above minSize, got ${p.avgSize}`);
  if (!int(p.maxSize) || p.maxSize <= p.avgSize || p.maxSize > CDC_LIMITS.maxSize)
    out.push(
      `maxSize must be an integer above avgSize and at most ${CDC_LIMITS.maxSize}, got ${p.maxSize}`,
    );
  return out;
}

interface Masks {
  /** Before avgSize: one bit more than log2(avgSize), so cuts are rarer. */
  small: number;
  /** From avgSize on: one bit less, so cuts come sooner. */
  large: number;
}

/**
 * Masks of the hash's top bits. The hash shifts left once per byte, so bit
 * k depends on the last k + 1 bytes: the top bits see a 32-byte window.
 */
function masks(avgSize: number): Masks {
  const bits = Math.round(Math.log2(avgSize));
  const top = (n: number) => (n >= 32 ? 0xffffffff : ((0xffffffff << (32 - n)) >>> 0) | 0);
  return { small: top(bits + 1), large: top(bits - 1) };
}

/**
 * Length of the chunk that starts at data[start], with `end - start` bytes
 * available; `final` says no more bytes follow `end`. Returns 0 when more
 * bytes are needed to decide (fewer than maxSize available, not final).
 */
export function cutLength(
  data: Uint8Array,
  start: number,
  end: number,
  p: CdcParams,
  final: boolean,
  m: Masks = masks(p.avgSize),
): number {
  const n = end - start;
  if (n < p.maxSize && !final) return 0;
  if (n <= p.minSize) return n;
  const normal = start + Math.min(p.avgSize, n);
  const limit = start + Math.min(p.maxSize, n);
  let h = 0;
  let i = start + p.minSize;
  for (; i < normal; i++) {
    h = ((h << 1) + (GEAR[data[i] as number] as number)) | 0;
    if ((h & m.small) === 0) return i + 1 - start;
  }
  for (; i < limit; i++) {
    h = ((h << 1) + (GEAR[data[i] as number] as number)) | 0;
    if ((h & m.large) === 0) return i + 1 - start;
  }
  return limit - start;
}

/** The chunk lengths of `data`, which is the whole image (tests and small inputs). */
export function cdcLengths(data: Uint8Array, p: CdcParams = DEFAULT_CDC): number[] {
  const issues = cdcParamsIssues(p);
  if (issues.length > 0) throw new RangeError(`CDC params: ${issues.join("; ")}`);
  const m = masks(p.avgSize);
  const out: number[] = [];
  let at = 0;
  while (at < data.length) {
    const n = cutLength(data, at, data.length, p, true, m);
    out.push(n);
    at += n;
  }
  return out;
}

/**
 * Cuts a stream of bytes fed in pieces of any size: `update` returns the
 * chunks the bytes completed, `end` the last one. Holds at most 2 × maxSize
 * bytes. Each chunk is hashed as it is cut.
 */
export class CdcChunker {
  readonly #p: CdcParams;
  readonly #m: Masks;
  #buf: Buffer;
  #start = 0;
  #end = 0;
  #offset = 0;

  constructor(p: CdcParams = DEFAULT_CDC) {
    const issues = cdcParamsIssues(p);
    if (issues.length > 0) throw new RangeError(`CDC params: ${issues.join("; ")}`);
    this.#p = p;
    this.#m = masks(p.avgSize);
    this.#buf = Buffer.allocUnsafe(2 * p.maxSize);
  }

  update(data: Uint8Array): CdcChunk[] {
    const out: CdcChunk[] = [];
    let at = 0;
    while (at < data.length) {
      if (this.#end === this.#buf.length) this.#compact();
      const n = Math.min(data.length - at, this.#buf.length - this.#end);
      this.#buf.set(data.subarray(at, at + n), this.#end);
      this.#end += n;
      at += n;
      this.#cut(out, false);
    }
    return out;
  }

  end(): CdcChunk[] {
    const out: CdcChunk[] = [];
    this.#cut(out, true);
    return out;
  }

  #cut(out: CdcChunk[], final: boolean): void {
    for (;;) {
      if (this.#start === this.#end) return;
      const n = cutLength(this.#buf, this.#start, this.#end, this.#p, final, this.#m);
      if (n === 0) return;
      const bytes = this.#buf.subarray(this.#start, this.#start + n);
      out.push({
        offset: this.#offset,
        length: n,
        sha256: createHash("sha256").update(bytes).digest("hex"),
      });
      this.#offset += n;
      this.#start += n;
    }
  }

  #compact(): void {
    this.#buf.copy(this.#buf, 0, this.#start, this.#end);
    this.#end -= this.#start;
    this.#start = 0;
  }
}

/** The content-defined chunks of a file, read as a stream. */
export async function cdcChunkFile(
  path: string,
  p: CdcParams = DEFAULT_CDC,
  range?: { start: number; end: number },
): Promise<CdcChunk[]> {
  return ioStep(`read ${path}`, async () => {
    const c = new CdcChunker(p);
    const out: CdcChunk[] = [];
    const stream = createReadStream(path, {
      highWaterMark: 1 << 20,
      ...(range ? { start: range.start, end: range.end - 1 } : {}),
    });
    for await (const data of stream) out.push(...c.update(data as Buffer));
    out.push(...c.end());
    return out;
  });
}
