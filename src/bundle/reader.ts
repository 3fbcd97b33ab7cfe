/**
 * Streaming bundle reader (README.md, "Streaming read"). Works on any
 * byte stream — a file, an HTTP response body — and never holds more than
 * one chunk of the slot image. Nothing of the slot image is handed out
 * before the signature has been checked, and no chunk before its hash.
 */
import type { KeyObject } from "node:crypto";
import { Readable } from "node:stream";
import { ByteSource, type ByteStream } from "./byte-source.ts";
import { ChunkVerifier, type VerifiedChunk } from "./chunks.ts";
import { BundleError } from "./errors.ts";
import { keyId, SIGNATURE_BYTES, verifySignature } from "./keys.ts";
import {
  CHUNK_SIZE,
  chunkCount,
  decodeManifest,
  MAX_MANIFEST_BYTES,
  type Manifest,
} from "./manifest.ts";
import {
  BLOCK,
  decodeTarHeader,
  END_OF_ARCHIVE,
  isZeroBlock,
  malformed,
  padding,
  type TarHeader,
} from "./tar.ts";

export const MANIFEST_ENTRY = "manifest.json";
export const SIGNATURE_ENTRY = "manifest.sig";
export const SLOT_ENTRY = "slot.img";

export interface BundleEntry {
  name: string;
  /** Byte offset of the entry's 512-byte tar header in the bundle. */
  headerOffset: number;
  /** Byte offset of the entry's data (headerOffset + 512). */
  dataOffset: number;
  size: number;
  mode: number;
  uid: number;
  gid: number;
  /** Seconds since the epoch. */
  mtime: number;
}

export interface BundleLayout {
  /** manifest.json, manifest.sig, slot.img, in this order. */
  entries: BundleEntry[];
  /** Byte offset of the slot image's first byte in the bundle: chunk n starts at slotOffset + n * CHUNK_SIZE. */
  slotOffset: number;
  slotSize: number;
  /** Size of the whole bundle file, end-of-archive blocks included. */
  archiveSize: number;
}

export interface BundleReaderOptions {
  trustedKeys: readonly KeyObject[];
  /** Refuse a slot image larger than this many bytes (BUNDLE_TOO_LARGE). Default: no limit. */
  maxSlotBytes?: number;
  /** Names the bundle in messages, e.g. a path or URL. Default "bundle". */
  name?: string;
  /**
   * The source's buffers are the reader's once read (e.g. an HTTP body or a
   * file stream, which allocate a fresh buffer per read): while the slot image
   * streams, a buffer whose bytes were all copied into chunks is released at
   * once (its ArrayBuffer detached), instead of waiting for a garbage
   * collection. At download speed that is tens of MiB of buffers that are
   * dead but not yet collected. Only buffers that span their whole
   * ArrayBuffer and were first read after the slot image began are released;
   * applies to a resume's `source` too. Default false: the caller's buffers
   * are left alone.
   */
  releaseSourceBuffers?: boolean;
  /**
   * Sees every byte the reader consumes, in order, with its offset in the
   * bundle, before it is parsed or released: a digest of the whole file in
   * the same pass (src/updater checks the channel index's size and sha256).
   * With a resume `source` the offsets jump to where that stream starts.
   */
  onBytes?: (bytes: Uint8Array, offset: number) => void;
}

export interface SlotImageOptions {
  /**
   * Start at this chunk. Without `source`, the chunks before it are read
   * and verified on the same stream but not emitted; with `source`, that
   * stream must start at byte `layout.slotOffset + fromChunk * CHUNK_SIZE`
   * of the bundle (an HTTP Range response), and the whole-image sha256 is
   * not checked (each chunk still is). `fromChunk` may be the chunk count:
   * nothing is emitted, and `source` starts at the end of the slot image
   * (`layout.slotOffset + slotSize`), where the padding and the
   * end-of-archive blocks follow.
   */
  fromChunk?: number;
  source?: ByteStream;
}

type State = "new" | "opened" | "streaming" | "slotRead" | "finished" | "failed";

/**
 * const r = new BundleReader(stream, { trustedKeys });
 * const manifest = await r.open();           // steps 1-7: entries 1-2, signature, slot header
 * await pipeline(r.slotImage(), target);     // steps 8-10: verified chunks
 * await r.finish();                          // step 11: end of archive, nothing after
 */
export class BundleReader {
  readonly #o: BundleReaderOptions;
  readonly #where: string;
  #src: ByteSource;
  #state: State = "new";
  #manifest: Manifest | undefined;
  #layout: BundleLayout | undefined;
  #signer: string | undefined;

  constructor(source: ByteStream, o: BundleReaderOptions) {
    this.#o = o;
    this.#where = o.name ?? "bundle";
    this.#src = new ByteSource(source, 0, o.releaseSourceBuffers ?? false, o.onBytes);
  }

  /** The verified manifest (after open()). */
  get manifest(): Manifest {
    if (!this.#manifest) throw new Error("BundleReader: call open() first");
    return this.#manifest;
  }

  /** Entry offsets; slotOffset is where an HTTP Range request for a chunk starts (after open()). */
  get layout(): BundleLayout {
    if (!this.#layout) throw new Error("BundleReader: call open() first");
    return this.#layout;
  }

  /** keyId() of the trusted key that verified the signature (after open()). */
  get signerKeyId(): string {
    if (!this.#signer) throw new Error("BundleReader: call open() first");
    return this.#signer;
  }

  /** Read entries 1 and 2 and the slot image's header; verify the signature and the manifest. */
  async open(): Promise<Manifest> {
    this.#expect("new", "open");
    return this.#guard(async () => {
      const head = await readHead(this.#src, this.#where);
      const key = verifySignature(head.manifestBytes, head.signature, this.#o.trustedKeys, {
        keyIdHint: claimedKeyId(head.manifestBytes),
        where: this.#where,
      });
      const manifest = decodeManifest(head.manifestBytes, `${this.#where}: ${MANIFEST_ENTRY}`);
      const max = this.#o.maxSlotBytes;
      if (max !== undefined && manifest.slotImage.size > max)
        throw new BundleError(
          "BUNDLE_TOO_LARGE",
          `${this.#where}: slot image is ${manifest.slotImage.size} bytes, over the limit of ${max}`,
          { details: { size: manifest.slotImage.size, limit: max } },
        );
      const slot = await readSlotHeader(this.#src, this.#where, manifest);
      this.#layout = layoutOf([...head.entries, slot]);
      this.#manifest = manifest;
      this.#signer = keyId(key);
      this.#state = "opened";
      return manifest;
    });
  }

  /** The slot image bytes, each 1 MiB chunk emitted only after its sha256 matched. */
  slotImage(o: SlotImageOptions = {}): Readable {
    const chunks = this.#startSlot(o, "slotImage", false);
    return Readable.from(
      (async function* () {
        for await (const c of chunks) yield c.bytes;
      })(),
      { objectMode: false, highWaterMark: CHUNK_SIZE },
    );
  }

  /**
   * The slot image as verified chunks, each only after its sha256 matched:
   * what `slotImage()` streams, without a Readable in between and with the
   * chunk buffers reused (ChunkVerifier `reuseBuffers`): call `release()` on
   * a chunk once its bytes are written. Leaving the loop early closes the
   * source.
   */
  slotChunks(o: SlotImageOptions = {}): AsyncGenerator<VerifiedChunk, void, undefined> {
    return this.#startSlot(o, "slotChunks", true);
  }

  #startSlot(
    o: SlotImageOptions,
    method: string,
    reuseBuffers: boolean,
  ): AsyncGenerator<VerifiedChunk, void, undefined> {
    this.#expect("opened", method);
    const manifest = this.manifest;
    const from = o.fromChunk ?? 0;
    const count = chunkCount(manifest.slotImage.size);
    if (!Number.isSafeInteger(from) || from < 0 || from > count)
      throw new RangeError(`fromChunk ${from} is outside 0..${count}`);
    if (o.source) {
      void this.#src.close();
      this.#src = new ByteSource(
        o.source,
        this.layout.slotOffset + Math.min(from * CHUNK_SIZE, manifest.slotImage.size),
        this.#o.releaseSourceBuffers ?? false,
        this.#o.onBytes,
      );
    }
    this.#state = "streaming";
    return this.#slotChunks(from, o.source !== undefined, reuseBuffers);
  }

  /** After the slot image: the end-of-archive blocks and nothing else. */
  async finish(): Promise<void> {
    this.#expect("slotRead", "finish");
    await this.#guard(async () => {
      const at = this.#src.offset;
      const end = await this.#src.readExact(END_OF_ARCHIVE, (got) =>
        truncated(this.#where, at + got, "in the end-of-archive blocks"),
      );
      const first = end.subarray(0, BLOCK);
      if (!isZeroBlock(first)) {
        const at = this.#src.offset - END_OF_ARCHIVE;
        const h = decodeTarHeader(first, `${this.#where}: entry 4 at byte ${at}`);
        throw malformed(this.#where, `extra entry ${JSON.stringify(h.name)} after ${SLOT_ENTRY}`, {
          offset: at,
        });
      }
      if (!isZeroBlock(end.subarray(BLOCK)))
        throw malformed(this.#where, "second end-of-archive block is not zero");
      if (await this.#src.read(1))
        throw malformed(
          this.#where,
          `data after the end of the archive at byte ${this.#src.offset - 1}`,
        );
      this.#state = "finished";
      await this.#src.close();
    });
  }

  async *#slotChunks(
    from: number,
    resumed: boolean,
    reuseBuffers: boolean,
  ): AsyncGenerator<VerifiedChunk, void, undefined> {
    const size = this.manifest.slotImage.size;
    const verifier = new ChunkVerifier(this.manifest.slotImage, {
      fromChunk: resumed ? from : 0,
      where: this.#where,
      reuseBuffers,
    });
    let ok = false;
    const src = this.#src;
    src.owning = true;
    try {
      let remaining = size - verifier.offset;
      while (remaining > 0) {
        const piece = await src.read(Math.min(remaining, CHUNK_SIZE));
        if (!piece)
          throw truncated(
            this.#where,
            src.offset,
            `inside ${SLOT_ENTRY} (${verifier.offset} of ${size} bytes)`,
          );
        remaining -= piece.length;
        const chunks = verifier.update(piece);
        // the piece is copied into chunk buffers: its source buffer may go
        src.releaseConsumed();
        for (const c of chunks) {
          if (c.index >= from) yield c;
          else c.release();
        }
      }
      src.owning = false;
      verifier.end();
      await readPadding(this.#src, size, this.#where, SLOT_ENTRY);
      this.#state = "slotRead";
      ok = true;
    } finally {
      if (!ok) {
        // A bad chunk, truncation, or the consumer stopped reading.
        this.#state = "failed";
        await this.#src.close();
      }
    }
  }

  #expect(state: State, method: string): void {
    if (this.#state !== state)
      throw new Error(`BundleReader.${method}() called in state ${this.#state}, expected ${state}`);
  }

  async #guard<T>(fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      this.#state = "failed";
      await this.#src.close();
      throw err;
    }
  }
}

export interface BundleHeadInfo {
  /** Decoded and validated, but NOT verified: the signature is not checked. */
  manifest: Manifest;
  manifestBytes: Uint8Array;
  signature: Uint8Array;
  layout: BundleLayout;
}

/**
 * The head of a bundle for display (`abforge bundle inspect`): entries,
 * offsets and the manifest as written, without checking the signature.
 * Reads only the first three headers and the first two entries.
 */
export async function readBundleHead(source: ByteStream, name = "bundle"): Promise<BundleHeadInfo> {
  const src = new ByteSource(source, 0, false, undefined);
  try {
    const head = await readHead(src, name);
    const manifest = decodeManifest(head.manifestBytes, `${name}: ${MANIFEST_ENTRY}`);
    const slot = await readSlotHeader(src, name, manifest);
    return {
      manifest,
      manifestBytes: head.manifestBytes,
      signature: head.signature,
      layout: layoutOf([...head.entries, slot]),
    };
  } finally {
    await src.close();
  }
}

interface Head {
  entries: BundleEntry[];
  manifestBytes: Uint8Array;
  signature: Uint8Array;
}

/** Steps 1-4: manifest.json and manifest.sig with their headers and padding. */
async function readHead(src: ByteSource, where: string): Promise<Head> {
  const m = await readHeader(src, where, 1);
  if (!m) throw malformed(where, "the archive is empty");
  if (m.name !== MANIFEST_ENTRY)
    throw malformed(where, `first entry is ${JSON.stringify(m.name)}, expected ${MANIFEST_ENTRY}`);
  if (m.size > MAX_MANIFEST_BYTES)
    throw new BundleError(
      "BUNDLE_TOO_LARGE",
      `${where}: ${MANIFEST_ENTRY} is ${m.size} bytes, over the limit of ${MAX_MANIFEST_BYTES}`,
      { details: { size: m.size, limit: MAX_MANIFEST_BYTES } },
    );
  const manifestBytes = await readData(src, where, m);
  const s = await readHeader(src, where, 2);
  if (!s || s.name !== SIGNATURE_ENTRY)
    throw new BundleError(
      "BUNDLE_BAD_SIGNATURE",
      `${where}: second entry is ${s ? JSON.stringify(s.name) : "missing"}, expected ${SIGNATURE_ENTRY}: the bundle carries no signature`,
    );
  if (s.size !== SIGNATURE_BYTES)
    throw new BundleError(
      "BUNDLE_BAD_SIGNATURE",
      `${where}: ${SIGNATURE_ENTRY} is ${s.size} bytes, an ed25519 signature is ${SIGNATURE_BYTES}`,
      { details: { size: s.size } },
    );
  const signature = await readData(src, where, s);
  return { entries: [m, s], manifestBytes, signature };
}

/** Step 7: the slot image's header must agree with the (verified) manifest. */
async function readSlotHeader(
  src: ByteSource,
  where: string,
  manifest: Manifest,
): Promise<BundleEntry> {
  const h = await readHeader(src, where, 3);
  if (!h || h.name !== SLOT_ENTRY)
    throw malformed(
      where,
      `third entry is ${h ? JSON.stringify(h.name) : "missing"}, expected ${SLOT_ENTRY}`,
    );
  if (h.size !== manifest.slotImage.size)
    throw malformed(
      where,
      `${SLOT_ENTRY} tar header says ${h.size} bytes, the manifest says ${manifest.slotImage.size}`,
      { headerSize: h.size, manifestSize: manifest.slotImage.size },
    );
  return h;
}

/** A header block; undefined for a zero block (the end-of-archive marker). */
async function readHeader(
  src: ByteSource,
  where: string,
  index: number,
): Promise<BundleEntry | undefined> {
  const at = src.offset;
  const block = await src.readExact(BLOCK, (got) =>
    truncated(where, at + got, `in the header of entry ${index}`),
  );
  if (isZeroBlock(block)) return undefined;
  const h: TarHeader = decodeTarHeader(block, `${where}: entry ${index} at byte ${at}`);
  return {
    name: h.name,
    headerOffset: at,
    dataOffset: at + BLOCK,
    size: h.size,
    mode: h.mode,
    uid: h.uid,
    gid: h.gid,
    mtime: h.mtime,
  };
}

async function readData(src: ByteSource, where: string, e: BundleEntry): Promise<Uint8Array> {
  const data = await src.readExact(e.size, (got) =>
    truncated(where, e.dataOffset + got, `inside ${e.name}`),
  );
  await readPadding(src, e.size, where, e.name);
  return data;
}

async function readPadding(src: ByteSource, size: number, where: string, name: string) {
  const at = src.offset;
  const pad = await src.readExact(padding(size), (got) =>
    truncated(where, at + got, `in the padding after ${name}`),
  );
  if (!isZeroBlock(pad)) throw malformed(where, `padding after ${name} at byte ${at} is not zero`);
}

function layoutOf(entries: BundleEntry[]): BundleLayout {
  const slot = entries[2]!;
  return {
    entries,
    slotOffset: slot.dataOffset,
    slotSize: slot.size,
    archiveSize: slot.dataOffset + slot.size + padding(slot.size) + END_OF_ARCHIVE,
  };
}

/** The key id the manifest claims, read leniently before it is verified (only a hint). */
function claimedKeyId(bytes: Uint8Array): string | undefined {
  try {
    const v = JSON.parse(new TextDecoder().decode(bytes)) as { keyId?: unknown };
    return typeof v.keyId === "string" ? v.keyId : undefined;
  } catch {
    return undefined;
  }
}

function truncated(where: string, offset: number, what: string): BundleError {
  const message =
    offset === 0
      ? `${where}: empty (0 bytes), not a bundle`
      : `${where}: truncated, ends at byte ${offset}, ${what}`;
  return new BundleError("BUNDLE_TRUNCATED", message, { details: { offset } });
}
