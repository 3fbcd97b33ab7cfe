/**
 * Whole-file checks of a bundle (README.md, "Verifying a bundle file"):
 * the streaming read of every byte, then the dm-verity tree checked in
 * place, since the slot image lies uncompressed at a known offset.
 */
import type { KeyObject } from "node:crypto";
import { createReadStream } from "node:fs";
import { stat } from "node:fs/promises";
import { Writable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { isBaseError } from "../errors.ts";
import { type VerityParams, verifyVerity } from "../verity/index.ts";
import { BundleError } from "./errors.ts";
import { ioStep } from "./io.ts";
import { CHUNK_SIZE, type Manifest } from "./manifest.ts";
import { type BundleHeadInfo, type BundleLayout, BundleReader, readBundleHead } from "./reader.ts";

export interface BundleVerification {
  manifest: Manifest;
  /** keyId() of the trusted key that verified the signature. */
  keyId: string;
  layout: BundleLayout;
}

export interface VerifyBundleOptions {
  maxSlotBytes?: number;
}

/** Signature, layout, sizes, chunk hashes, sha256 and verity root hash; the verified manifest. */
export async function verifyBundleFile(
  path: string,
  trusted: readonly KeyObject[],
  o: VerifyBundleOptions = {},
): Promise<Manifest> {
  return (await checkBundleFile(path, trusted, o)).manifest;
}

/** Like verifyBundleFile, and also says which key signed and where each entry lies. */
export async function checkBundleFile(
  path: string,
  trusted: readonly KeyObject[],
  o: VerifyBundleOptions = {},
): Promise<BundleVerification> {
  const where = `bundle ${path}`;
  await ioStep(`open ${where}`, () => stat(path));
  const reader = new BundleReader(createReadStream(path, { highWaterMark: CHUNK_SIZE }), {
    trustedKeys: trusted,
    name: where,
    ...(o.maxSlotBytes === undefined ? {} : { maxSlotBytes: o.maxSlotBytes }),
  });
  const manifest = await ioStep(`read ${where}`, () => reader.open());
  await ioStep(`read ${where}`, () =>
    pipeline(
      reader.slotImage(),
      new Writable({
        write(_chunk, _enc, done) {
          done();
        },
      }),
    ),
  );
  await ioStep(`read ${where}`, () => reader.finish());
  await checkVerity(path, where, manifest, reader.layout.slotOffset);
  return { manifest, keyId: reader.signerKeyId, layout: reader.layout };
}

/**
 * Read the head of a bundle file for display; the signature is NOT checked.
 * A file shorter than the archive its headers describe is BUNDLE_TRUNCATED.
 */
export async function inspectBundleFile(path: string): Promise<BundleHeadInfo> {
  const where = `bundle ${path}`;
  const { size } = await ioStep(`open ${where}`, () => stat(path));
  const head = await ioStep(`read ${where}`, () => readBundleHead(createReadStream(path), where));
  if (size < head.layout.archiveSize) {
    const slot = head.layout.entries.at(-1);
    throw new BundleError(
      "BUNDLE_TRUNCATED",
      `${where}: truncated, ends at byte ${size}, ${slot ? `inside ${slot.name} (bytes ${slot.dataOffset}-${slot.dataOffset + slot.size})` : "before its end"}; the archive is ${head.layout.archiveSize} bytes`,
      { details: { offset: size, archiveSize: head.layout.archiveSize } },
    );
  }
  return head;
}

/** The verity fields the tree itself determines (hashOffset is relative to a different file). */
const VERITY_FIELDS = [
  "hashAlgorithm",
  "dataBlockSize",
  "hashBlockSize",
  "dataBlocks",
  "salt",
  "uuid",
  "superblock",
  "hashAreaSize",
  "rootHash",
] as const;

async function checkVerity(path: string, where: string, m: Manifest, slotOffset: number) {
  const v = m.verity;
  let found: VerityParams;
  try {
    found = await verifyVerity({
      dataPath: path,
      dataOffset: slotOffset,
      dataSize: v.dataBlocks * v.dataBlockSize,
      hashPath: path,
      hashOffset: slotOffset + v.hashOffset,
      hashAlgorithm: v.hashAlgorithm,
      dataBlockSize: v.dataBlockSize,
      hashBlockSize: v.hashBlockSize,
      salt: Buffer.from(v.salt, "hex"),
      superblock: v.superblock,
      ...(v.uuid === null ? {} : { uuid: v.uuid }),
      rootHash: v.rootHash,
    });
  } catch (cause) {
    if (isBaseError(cause) && cause.code.startsWith("VERITY_"))
      throw new BundleError(
        "BUNDLE_BAD_VERITY",
        `${where}: the slot image's dm-verity tree does not check against the manifest: ${cause.message}`,
        { cause, details: { ...cause.details, slotOffset } },
      );
    throw cause;
  }
  const differ = VERITY_FIELDS.filter((f) => found[f] !== v[f]);
  if (differ.length > 0)
    throw new BundleError(
      "BUNDLE_BAD_VERITY",
      `${where}: the slot image's dm-verity superblock disagrees with the manifest on ${differ
        .map((f) => `${f} (${String(found[f])} vs ${String(v[f])})`)
        .join(", ")}`,
      { details: { fields: differ } },
    );
}
