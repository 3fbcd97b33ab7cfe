/**
 * Writes a bundle (README.md, "Tar layout") with tar-stream: manifest.json,
 * manifest.sig, slot.img, deterministic headers. The slot image streams
 * from its file through a ChunkVerifier, so a file that changed since its
 * manifest was made fails instead of producing a bundle that every host
 * would refuse. Output goes to a temporary file that is renamed into place.
 */
import type { KeyObject } from "node:crypto";
import { createReadStream, createWriteStream } from "node:fs";
import { rename, rm, stat } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import { Transform } from "node:stream";
import { pipeline } from "node:stream/promises";
import tar from "tar-stream";
import { type CdcChunk, CdcChunker } from "./cdc.ts";
import { ChunkVerifier } from "./chunks.ts";
import { BundleError } from "./errors.ts";
import { fsyncDir, ioStep } from "./io.ts";
import { keyId, publicKeyFromPrivate, signBytes } from "./keys.ts";
import {
  type CdcInfo,
  CHUNK_SIZE,
  encodeManifest,
  type Manifest,
  type UnsignedManifest,
} from "./manifest.ts";
import { MANIFEST_ENTRY, SIGNATURE_ENTRY, SLOT_ENTRY } from "./reader.ts";

/** tar-stream encodes mtime as a signed 32-bit number of seconds; later times are clamped. */
const MAX_TAR_MTIME_MS = (2 ** 31 - 1) * 1000;
const ENTRY_MODE = 0o644;

export interface WriteBundleOptions {
  outPath: string;
  /** keyId may be left out: it is set from the signing key. */
  manifest: UnsignedManifest;
  /** The private ed25519 signing key. */
  key: KeyObject;
  slotImagePath: string;
}

export interface WrittenBundle {
  manifest: Manifest;
  manifestBytes: Uint8Array;
  signature: Uint8Array;
}

export async function writeBundle(o: WriteBundleOptions): Promise<WrittenBundle> {
  if (o.key.type !== "private")
    throw new BundleError("KEY_BAD", `bundle ${o.outPath}: signing needs the private key`);
  const id = keyId(publicKeyFromPrivate(o.key));
  if (o.manifest.keyId !== undefined && o.manifest.keyId !== id)
    throw new BundleError(
      "KEY_BAD",
      `bundle ${o.outPath}: the manifest names key ${o.manifest.keyId}, the signing key is ${id}`,
    );
  const manifest: Manifest = { ...o.manifest, keyId: id };
  const manifestBytes = encodeManifest(manifest);
  const signature = signBytes(manifestBytes, o.key);

  const size = (await ioStep(`read slot image ${o.slotImagePath}`, () => stat(o.slotImagePath)))
    .size;
  if (size !== manifest.slotImage.size)
    throw new BundleError(
      "BUNDLE_BAD_HASH",
      `slot image ${o.slotImagePath} is ${size} bytes, its manifest says ${manifest.slotImage.size}`,
      { details: { size, manifestSize: manifest.slotImage.size } },
    );

  const dir = dirname(o.outPath);
  const tmp = join(dir, `.${basename(o.outPath)}.${process.pid}.${Date.now()}.tmp`);
  try {
    await ioStep(`write bundle ${tmp}`, () => packInto(tmp, manifest, manifestBytes, signature, o));
    await ioStep(`rename ${tmp} to ${o.outPath}`, () => rename(tmp, o.outPath));
    await fsyncDir(dir);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
  return { manifest, manifestBytes, signature };
}

async function packInto(
  tmp: string,
  manifest: Manifest,
  manifestBytes: Uint8Array,
  signature: Uint8Array,
  o: WriteBundleOptions,
): Promise<void> {
  const mtime = new Date(Math.min(Date.parse(manifest.createdAt), MAX_TAR_MTIME_MS));
  const header = (name: string, size: number): Partial<tar.Header> & { name: string } => ({
    name,
    size,
    mode: ENTRY_MODE,
    uid: 0,
    gid: 0,
    uname: "",
    gname: "",
    mtime,
    type: "file",
  });
  const pack = tar.pack();
  const written = pipeline(pack, createWriteStream(tmp, { flags: "wx", mode: 0o644, flush: true }));
  try {
    pack.entry(header(MANIFEST_ENTRY, manifestBytes.length), Buffer.from(manifestBytes));
    pack.entry(header(SIGNATURE_ENTRY, signature.length), Buffer.from(signature));
    const where = `slot image ${o.slotImagePath}`;
    const verifier = new ChunkVerifier(manifest.slotImage, { where });
    const cdc = manifest.slotImage.cdc
      ? new CdcListCheck(manifest.slotImage.cdc, where)
      : undefined;
    await pipeline(
      createReadStream(o.slotImagePath, { highWaterMark: CHUNK_SIZE }),
      new Transform({
        transform(data: Buffer, _enc, done) {
          try {
            cdc?.update(data);
            for (const c of verifier.update(data)) this.push(c.bytes);
            done();
          } catch (err) {
            done(err as Error);
          }
        },
        flush(done) {
          try {
            verifier.end();
            cdc?.end();
            done();
          } catch (err) {
            done(err as Error);
          }
        },
      }),
      pack.entry(header(SLOT_ENTRY, manifest.slotImage.size)),
    );
    pack.finalize();
  } catch (err) {
    pack.destroy(err as Error);
    await written.catch(() => {});
    throw err;
  }
  await written;
}

/** Format 2: the file's content-defined chunks must be the manifest's, else no bundle. */
class CdcListCheck {
  readonly #chunker: CdcChunker;
  readonly #info: CdcInfo;
  readonly #where: string;
  #n = 0;

  constructor(info: CdcInfo, where: string) {
    this.#chunker = new CdcChunker(info);
    this.#info = info;
    this.#where = where;
  }

  update(data: Uint8Array): void {
    this.#check(this.#chunker.update(data));
  }

  end(): void {
    this.#check(this.#chunker.end());
    if (this.#n !== this.#info.chunks.length) this.#fail(`has ${this.#n} content-defined chunks`);
  }

  #check(cs: CdcChunk[]): void {
    for (const c of cs) {
      const e = this.#info.chunks[this.#n];
      if (!e || e[0] !== c.offset || e[1] !== c.length || e[2] !== c.sha256)
        this.#fail(`content-defined chunk ${this.#n} is ${c.offset}+${c.length} ${c.sha256}`);
      this.#n++;
    }
  }

  #fail(what: string): never {
    throw new BundleError(
      "BUNDLE_BAD_HASH",
      `${this.#where} ${what}, not what its manifest lists (${this.#info.chunks.length} chunks)`,
      { details: { chunk: this.#n } },
    );
  }
}
