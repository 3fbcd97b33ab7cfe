/**
 * Update bundles: the signed manifest, ed25519 keys, and the streaming tar
 * writer and reader. The format and procedures are in README.md.
 */

export type { ByteStream } from "./byte-source.ts";
export {
  type CdcChunk,
  CdcChunker,
  type CdcParams,
  cdcChunkFile,
  cdcLengths,
  cdcParamsIssues,
  DEFAULT_CDC,
} from "./cdc.ts";
export {
  ChunkVerifier,
  type ChunkVerifierOptions,
  hashSlotImage,
  type VerifiedChunk,
} from "./chunks.ts";
export { BundleError, type BundleErrorCode } from "./errors.ts";
export { formatInspect, formatVerify, inspectJson, verifyJson } from "./format.ts";
export {
  generateKeyPair,
  type KeyObject,
  type KeyPairPaths,
  keyId,
  loadPrivateKey,
  loadPublicKey,
  PRIVATE_KEY_FILE,
  PUBLIC_KEY_FILE,
  publicKeyFromPrivate,
  SIGNATURE_BYTES,
  signBytes,
  type VerifyOptions,
  verifySignature,
} from "./keys.ts";
export {
  type CdcEntry,
  type CdcInfo,
  CHUNK_SIZE,
  chunkCount,
  DEFAULT_FORMAT_VERSION,
  decodeManifest,
  encodeManifest,
  MANIFEST_FORMAT_VERSIONS,
  MAX_MANIFEST_BYTES,
  type Manifest,
  type ManifestFormatVersion,
  type ManifestIssue,
  manifestDigest,
  type SlotImageInfo,
  type UnsignedManifest,
  validateManifest,
} from "./manifest.ts";
export {
  type BundleEntry,
  type BundleHeadInfo,
  type BundleLayout,
  BundleReader,
  type BundleReaderOptions,
  MANIFEST_ENTRY,
  readBundleHead,
  SIGNATURE_ENTRY,
  SLOT_ENTRY,
  type SlotImageOptions,
} from "./reader.ts";
export { slotDataOffset } from "./tar.ts";
export {
  type BundleVerification,
  checkBundleFile,
  inspectBundleFile,
  type VerifyBundleOptions,
  verifyBundleFile,
} from "./verify.ts";
export { type WriteBundleOptions, type WrittenBundle, writeBundle } from "./writer.ts";
