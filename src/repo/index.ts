/** The static update repository: channel index, publishing, serving, and the agent's client. */
export {
  bundlePathFromRoot,
  type ChannelIndex,
  canonicalJson,
  decodeIndex,
  encodeIndex,
  INDEX_FORMAT_VERSION,
  INDEX_FORMAT_VERSIONS,
  INDEX_TYPE,
  type IndexLatest,
  type IndexRollout,
  type IndexSignature,
  type IndexSigned,
  indexDigest,
  resolveBundleUrl,
  rolloutBucket,
  signedBytes,
  signIndex,
  type VerifiedIndex,
  type VerifyIndexOptions,
  validateSigned,
  verifyIndex,
} from "./channel-index.ts";
export {
  downloadRange,
  type FetchIndexOptions,
  fetchIndex,
  type OpenRangeOptions,
  openRange,
} from "./client.ts";
export { RepoError, type RepoErrorCode } from "./errors.ts";
export {
  DEFAULT_EXPIRES_IN_MS,
  type PublishIo,
  type PublishOptions,
  type PublishResult,
  publish,
} from "./publish.ts";
export {
  type FetchRangesOptions,
  fetchRanges,
  type RangePiece,
  type RangeStats,
} from "./range-client.ts";
export { type PlanOptions, parseRanges, planRanges, rangeHeader, type Span } from "./ranges.ts";
export { type RepoServer, type ServeOptions, serve } from "./server.ts";
export {
  formatWaves,
  MAX_WAVES,
  parseWaves,
  SEED_RANGE,
  type Wave,
  type WaveSlot,
  waveSlot,
  wavesProblems,
} from "./waves.ts";
