/**
 * The bundle reader's byte source (reader.ts): exact-size reads over any
 * async byte stream (a file, an HTTP body, a resumed range), with the offset
 * from the bundle's start, a tap that sees every byte in order (the whole
 * file's digest), and the release of consumed buffers.
 */
import type { Readable } from "node:stream";

/** What a bundle is read from: a Node stream or any async iterable of bytes. */
export type ByteStream = Readable | AsyncIterable<Uint8Array>;

const EMPTY = Buffer.alloc(0);

/** Exact-size reads over an async byte stream; `offset` counts bytes from the bundle's start. */
export class ByteSource {
  readonly #it: AsyncIterator<unknown>;
  readonly #release: boolean;
  readonly #tap: ((bytes: Uint8Array, offset: number) => void) | undefined;
  #buf: Buffer = EMPTY;
  /** The value #buf views, when releaseConsumed() may detach it. */
  #releasable: Uint8Array | undefined;
  #ended = false;
  offset: number;
  /**
   * Values read while this is set are owned by the reader (nothing outside
   * keeps a view of them): releasable once consumed, when the source allows.
   */
  owning = false;

  constructor(
    source: ByteStream,
    offset: number,
    release: boolean,
    tap: ((bytes: Uint8Array, offset: number) => void) | undefined,
  ) {
    this.#it = (source as AsyncIterable<unknown>)[Symbol.asyncIterator]();
    this.offset = offset;
    this.#release = release;
    this.#tap = tap;
  }

  /** Up to `max` bytes; null at the end of the stream. */
  async read(max: number): Promise<Buffer | null> {
    while (this.#buf.length === 0) {
      if (this.#ended) return null;
      const r = await this.#it.next();
      if (r.done) {
        this.#ended = true;
        return null;
      }
      const v = r.value;
      if (!(v instanceof Uint8Array)) throw new TypeError("bundle source must yield bytes");
      this.#buf = Buffer.from(v.buffer, v.byteOffset, v.byteLength);
      this.#releasable =
        this.#release &&
        this.owning &&
        v.buffer instanceof ArrayBuffer &&
        !v.buffer.resizable &&
        v.byteOffset === 0 &&
        v.byteLength === v.buffer.byteLength
          ? v
          : undefined;
    }
    const out = this.#buf.subarray(0, max);
    this.#buf = this.#buf.subarray(out.length);
    this.#tap?.(out, this.offset);
    this.offset += out.length;
    return out;
  }

  /**
   * Detach the current value's ArrayBuffer (freeing its memory now) when all
   * its bytes were read and it may be released; the caller has copied them.
   */
  releaseConsumed(): void {
    const v = this.#releasable;
    if (!v || this.#buf.length > 0) return;
    this.#releasable = undefined;
    this.#buf = EMPTY;
    (v.buffer as ArrayBuffer).transfer(0);
  }

  /** Exactly `n` bytes; `short(got)` is thrown when the stream ends first. */
  async readExact(n: number, short: (got: number) => Error): Promise<Buffer> {
    const parts: Buffer[] = [];
    let got = 0;
    while (got < n) {
      const piece = await this.read(n - got);
      if (!piece) throw short(got);
      parts.push(piece);
      got += piece.length;
    }
    return parts.length === 1 ? parts[0]! : Buffer.concat(parts, n);
  }

  /** Stop reading; a Node stream is destroyed (an HTTP download is aborted). */
  async close(): Promise<void> {
    if (this.#ended) return;
    this.#ended = true;
    try {
      await this.#it.return?.();
    } catch {
      // the stream already failed; its error was reported where it was read
    }
  }
}
