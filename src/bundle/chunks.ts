/**
 * Chunk hashing of the slot image (README.md, "Manifest" and "Streaming
 * read", steps 8-10): a verifier that releases a chunk only after its
 * sha256 matched the signed manifest, and the hasher that produces the
 * manifest's slotImage fields from a file.
 */
import { createHash, type Hash } from "node:crypto";
import { createReadStream } from "node:fs";
import { BundleError } from "./errors.ts";
import { ioStep } from "./io.ts";
import { CHUNK_SIZE, chunkCount, type SlotImageInfo } from "./manifest.ts";

export interface VerifiedChunk {
  /** 0-based chunk number; the chunk starts at index * CHUNK_SIZE in the slot image. */
  index: number;
  /**
   * The chunk's bytes as they were fed, in order, not copied (views of the
   * caller's buffers, which must not be changed afterwards: true of what a
   * Node stream emits). Write them with one `writev`.
   */
  pieces: Buffer[];
  /** Length of the chunk in bytes. */
  length: number;
  /** The chunk as one Buffer: the only piece, or the pieces copied together (made on first use). */
  readonly bytes: Buffer;
}

/**
 * Pieces held per chunk before they are copied into one: a source that
 * trickles tiny pieces cannot pile up objects, and a chunk stays within one
 * `writev` (IOV_MAX is 1024 on Linux).
 */
export const MAX_PIECES = 256;

function verifiedChunk(index: number, pieces: Buffer[], length: number): VerifiedChunk {
  let bytes: Buffer | undefined;
  return {
    index,
    pieces,
    length,
    get bytes() {
      bytes ??= pieces.length === 1 ? (pieces[0] as Buffer) : Buffer.concat(pieces, length);
      return bytes;
    },
  };
}

export interface ChunkVerifierOptions {
  /** The first chunk fed is this one (resume). The whole-image sha256 is only checked from 0. */
  fromChunk?: number;
  /** For messages, e.g. "bundle demo.bundle". */
  where?: string;
}

/**
 * Feed it the slot image bytes from the start of chunk `fromChunk` on, in
 * pieces of any size; it hands back whole chunks, each only after its
 * sha256 matched. A mismatch throws BUNDLE_BAD_HASH and the bad chunk is
 * never handed out.
 */
export class ChunkVerifier {
  readonly fromChunk: number;
  readonly #info: SlotImageInfo;
  readonly #where: string;
  readonly #total: Hash | undefined;
  #chunk: Hash = createHash("sha256");
  #pieces: Buffer[] = [];
  #pieceBytes = 0;
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
    let buf = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    if (buf.length > this.#info.size - this.#offset)
      throw new BundleError(
        "BUNDLE_MALFORMED",
        `${this.#where}: slot image data runs past its ${this.#info.size} bytes`,
        { details: { size: this.#info.size } },
      );
    while (buf.length > 0) {
      const want = this.#chunkLength(this.#next) - this.#pieceBytes;
      const piece = buf.subarray(0, want);
      buf = buf.subarray(piece.length);
      this.#chunk.update(piece);
      this.#total?.update(piece);
      if (this.#pieces.length === MAX_PIECES)
        this.#pieces = [Buffer.concat(this.#pieces, this.#pieceBytes)];
      this.#pieces.push(piece);
      this.#pieceBytes += piece.length;
      this.#offset += piece.length;
      if (this.#pieceBytes === this.#chunkLength(this.#next)) out.push(this.#completeChunk());
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

  #completeChunk(): VerifiedChunk {
    const index = this.#next;
    const actual = this.#chunk.digest("hex");
    const expected = this.#info.chunks[index];
    if (actual !== expected)
      throw new BundleError(
        "BUNDLE_BAD_HASH",
        `${this.#where}: slot image chunk ${index} (bytes ${index * CHUNK_SIZE}-${this.#offset - 1}) has sha256 ${actual}, the manifest says ${expected}`,
        { details: { chunk: index, offset: index * CHUNK_SIZE, expected, actual } },
      );
    // The whole-image hash is checked before the last chunk is handed out.
    if (this.#offset === this.#info.size && this.#total) {
      const whole = this.#total.digest("hex");
      if (whole !== this.#info.sha256)
        throw new BundleError(
          "BUNDLE_BAD_HASH",
          `${this.#where}: slot image sha256 is ${whole}, the manifest says ${this.#info.sha256}`,
          { details: { expected: this.#info.sha256, actual: whole } },
        );
    }
    const chunk = verifiedChunk(index, this.#pieces, this.#pieceBytes);
    this.#pieces = [];
    this.#pieceBytes = 0;
    this.#chunk = createHash("sha256");
    this.#next = index + 1;
    return chunk;
  }
}

/** The manifest's slotImage fields for a file, read as a stream. */
export async function hashSlotImage(path: string): Promise<SlotImageInfo> {
  return ioStep(`read slot image ${path}`, async () => {
    const total = createHash("sha256");
    const chunks: string[] = [];
    let chunk = createHash("sha256");
    let inChunk = 0;
    let size = 0;
    for await (const data of createReadStream(path, { highWaterMark: CHUNK_SIZE })) {
      let buf = data as Buffer;
      total.update(buf);
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
    return { size, sha256: total.digest("hex"), chunkSize: CHUNK_SIZE, chunks };
  });
}
