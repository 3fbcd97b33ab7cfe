/**
 * Chunk hashing of the slot image (README.md, "Manifest" and "Streaming
 * read", steps 8-10): a verifier that releases a chunk only after its
 * sha256 matched the signed manifest, and the hasher that produces the
 * manifest's slotImage fields from a file.
 */
import { createHash, type Hash } from "node:crypto";
import { createReadStream } from "node:fs";
import { type CdcChunk, CdcChunker, type CdcParams } from "./cdc.ts";
import { BundleError } from "./errors.ts";
import { ioStep } from "./io.ts";
import { type CdcEntry, CHUNK_SIZE, chunkCount, type SlotImageInfo } from "./manifest.ts";

export interface VerifiedChunk {
  /** 0-based chunk number; the chunk starts at index * CHUNK_SIZE in the slot image. */
  index: number;
  /**
   * The chunk's bytes, in the verifier's own buffer: the bytes that were
   * hashed are the bytes handed out, whatever the source does with its
   * buffers afterwards. With `reuseBuffers`, valid until `release()`.
   */
  bytes: Buffer;
  /**
   * With `reuseBuffers`: the caller is done with `bytes` (written), and the
   * buffer may hold a later chunk. Without it, or called twice: nothing.
   */
  release(): void;
}

export interface ChunkVerifierOptions {
  /** The first chunk fed is this one (resume). The whole-image sha256 is only checked from 0. */
  fromChunk?: number;
  /** For messages, e.g. "bundle demo.bundle". */
  where?: string;
  /**
   * Hand out chunk buffers that come back by `release()` and hold later
   * chunks (at most two are kept): a download of any size then allocates
   * about three 1 MiB buffers instead of one per chunk. Default false (each
   * chunk its own buffer, for consumers that keep them).
   */
  reuseBuffers?: boolean;
}

/** Free chunk buffers kept for reuse. */
const POOL_KEEP = 2;

/**
 * Feed it the slot image bytes from the start of chunk `fromChunk` on, in
 * pieces of any size; it copies them into a chunk buffer and hands back
 * whole chunks, each only after the sha256 of that buffer matched. A
 * mismatch throws BUNDLE_BAD_HASH and the bad chunk is never handed out.
 */
export class ChunkVerifier {
  readonly fromChunk: number;
  readonly #info: SlotImageInfo;
  readonly #where: string;
  readonly #total: Hash | undefined;
  readonly #free: Buffer[] | undefined;
  /** The chunk being filled (undefined until its first byte). */
  #buf: Buffer | undefined;
  #filled = 0;
  #next: number;
  /** Offset in the slot image of the next byte expected. */
  #offset: number;

  constructor(info: SlotImageInfo, o: ChunkVerifierOptions = {}) {
    const from = o.fromChunk ?? 0;
    const count = chunkCount(info.size);
    if (!Number.isSafeInteger(from) || from < 0 || from > count)
      throw new RangeError(`fromChunk ${from} is outside 0..${count}`);
    this.#info = info;
    this.#where = o.where ?? "slot image";
    this.fromChunk = from;
    this.#next = from;
    this.#offset = Math.min(from * CHUNK_SIZE, info.size);
    this.#total = from === 0 ? createHash("sha256") : undefined;
    this.#free = o.reuseBuffers ? [] : undefined;
  }

  /** Chunks verified so far (including the ones before fromChunk). */
  get verifiedChunks(): number {
    return this.#next;
  }

  /** Offset in the slot image of the next byte expected. */
  get offset(): number {
    return this.#offset;
  }

  get done(): boolean {
    return this.#offset === this.#info.size;
  }

  /** Feed bytes; returns the chunks they completed, verified. */
  update(data: Uint8Array): VerifiedChunk[] {
    const out: VerifiedChunk[] = [];
    let at = 0;
    if (data.byteLength > this.#info.size - this.#offset)
      throw new BundleError(
        "BUNDLE_MALFORMED",
        `${this.#where}: slot image data runs past its ${this.#info.size} bytes`,
        { details: { size: this.#info.size } },
      );
    while (at < data.byteLength) {
      const length = this.#chunkLength(this.#next);
      this.#buf ??= this.#free?.pop() ?? Buffer.allocUnsafeSlow(CHUNK_SIZE);
      const n = Math.min(length - this.#filled, data.byteLength - at);
      this.#buf.set(data.subarray(at, at + n), this.#filled);
      at += n;
      this.#filled += n;
      this.#offset += n;
      if (this.#filled === length) out.push(this.#completeChunk(length));
    }
    return out;
  }

  /** Call at the end of the data: throws when bytes are missing. */
  end(): void {
    if (this.#offset !== this.#info.size)
      throw new BundleError(
        "BUNDLE_TRUNCATED",
        `${this.#where}: slot image ends after ${this.#offset} of ${this.#info.size} bytes`,
        { details: { offset: this.#offset, size: this.#info.size } },
      );
  }

  #chunkLength(index: number): number {
    return Math.min(CHUNK_SIZE, this.#info.size - index * CHUNK_SIZE);
  }

  #completeChunk(length: number): VerifiedChunk {
    const index = this.#next;
    const buf = this.#buf as Buffer;
    const bytes = buf.subarray(0, length);
    this.#buf = undefined;
    this.#filled = 0;
    const actual = createHash("sha256").update(bytes).digest("hex");
    const expected = this.#info.chunks[index];
    if (actual !== expected)
      throw new BundleError(
        "BUNDLE_BAD_HASH",
        `${this.#where}: slot image chunk ${index} (bytes ${index * CHUNK_SIZE}-${this.#offset - 1}) has sha256 ${actual}, the manifest says ${expected}`,
        { details: { chunk: index, offset: index * CHUNK_SIZE, expected, actual } },
      );
    // The whole-image hash is checked before the last chunk is handed out.
    this.#total?.update(bytes);
    if (this.#offset === this.#info.size && this.#total) {
      const whole = this.#total.digest("hex");
      if (whole !== this.#info.sha256)
        throw new BundleError(
          "BUNDLE_BAD_HASH",
          `${this.#where}: slot image sha256 is ${whole}, the manifest says ${this.#info.sha256}`,
          { details: { expected: this.#info.sha256, actual: whole } },
        );
    }
    this.#next = index + 1;
    const free = this.#free;
    let released = false;
    return {
      index,
      bytes,
      release() {
        if (released || !free) return;
        released = true;
        if (free.length < POOL_KEEP) free.push(buf);
      },
    };
  }
}

/**
 * The manifest's slotImage fields for a file, read as a stream; with `cdc`,
 * format 2's content-defined chunks too, in the same pass.
 */
export async function hashSlotImage(path: string, cdc?: CdcParams): Promise<SlotImageInfo> {
  return ioStep(`read slot image ${path}`, async () => {
    const total = createHash("sha256");
    const chunks: string[] = [];
    let chunk = createHash("sha256");
    let inChunk = 0;
    let size = 0;
    const cutter = cdc ? new CdcChunker(cdc) : undefined;
    const cdcChunks: CdcEntry[] = [];
    const keep = (cs: CdcChunk[]) => {
      for (const c of cs) cdcChunks.push([c.offset, c.length, c.sha256]);
    };
    for await (const data of createReadStream(path, { highWaterMark: CHUNK_SIZE })) {
      let buf = data as Buffer;
      total.update(buf);
      if (cutter) keep(cutter.update(buf));
      size += buf.length;
      while (buf.length > 0) {
        const piece = buf.subarray(0, CHUNK_SIZE - inChunk);
        buf = buf.subarray(piece.length);
        chunk.update(piece);
        inChunk += piece.length;
        if (inChunk === CHUNK_SIZE) {
          chunks.push(chunk.digest("hex"));
          chunk = createHash("sha256");
          inChunk = 0;
        }
      }
    }
    if (inChunk > 0) chunks.push(chunk.digest("hex"));
    const info: SlotImageInfo = {
      size,
      sha256: total.digest("hex"),
      chunkSize: CHUNK_SIZE,
      chunks,
    };
    if (cutter && cdc) {
      keep(cutter.end());
      info.cdc = { ...pickParams(cdc), chunks: cdcChunks };
    }
    return info;
  });
}

function pickParams(p: CdcParams): CdcParams {
  return { minSize: p.minSize, avgSize: p.avgSize, maxSize: p.maxSize };
}
