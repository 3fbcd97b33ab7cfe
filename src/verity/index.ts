/** dm-verity (format 1) hash trees, byte-compatible with veritysetup. See README.md. */
export { VerityError, type VerityErrorCode } from "./errors.ts";
export { blockDigest, buildTree, hashRecords } from "./hash.ts";
export {
  checkBlockSize,
  checkHashAlgorithm,
  DIGEST_SIZES,
  type HashAlgorithm,
  hashStartBlock,
  isHashAlgorithm,
  type LevelLayout,
  MAX_SALT_SIZE,
  parseSaltHex,
  SUPERBLOCK_SIZE,
  type TreeLayout,
  type TreeLayoutInput,
  treeLayout,
} from "./layout.ts";
export {
  checkUuid,
  decodeSuperblock,
  encodeSuperblock,
  SB,
  type Superblock,
} from "./superblock.ts";
export { dmVerityTable } from "./table.ts";
export {
  formatVerity,
  type VerityFormatOptions,
  type VerityParams,
  type VerityVerifyOptions,
  verifyVerity,
} from "./verity.ts";
