/** GPT: the public face of src/disk (README.md states the format). */
export { GptAttributes, type GptAttributesJson } from "./attributes.ts";
export {
  type DecodedGpt,
  type DecodeOptions,
  decodeGpt,
  decodeName,
  type EncodedGpt,
  encodeGpt,
  encodeName,
  encodeProtectiveMbr,
  GPT_REVISION,
  GPT_SIGNATURE,
  HEADER_SIZE,
  type ReadAt,
} from "./codec.ts";
export {
  formatBytes,
  formatTable,
  type PartitionJson,
  parsePartitionSpec,
  parseSize,
  type TableJson,
  tableToJson,
} from "./describe.ts";
export { GptError, type GptErrorCode } from "./errors.ts";
export { DEFAULT_STATE_NAME, type GrowPlan, growStateTable, resizeProtectiveMbr } from "./grow.ts";
export {
  type Ext4Size,
  ext4Size,
  GROW_THRESHOLD_BYTES,
  type GrowGptResult,
  type GrowStateResult,
  growGpt,
  growState,
} from "./grow-io.ts";
export { guidFromSeed, isGuid, normalizeGuid, randomGuid, ZERO_GUID } from "./guid.ts";
export { createDisk, type DiskInfo, diskInfo, readGpt, writeGpt } from "./io.ts";
export {
  ALIGNMENT_BYTES,
  FIRST_PARTITION_LBA,
  findPartition,
  type PlannedPartition,
  type PlanOptions,
  partitionRange,
  planDisk,
  SECTOR_SIZE,
} from "./plan.ts";
export {
  DEFAULT_ENTRY_COUNT,
  ENTRY_SIZE,
  entryArraySectors,
  type GptPartition,
  type GptTable,
  MAX_ENTRY_ARRAY_BYTES,
  NAME_UNITS,
  tableProblems,
} from "./table.ts";
export {
  PARTITION_TYPE_INFO,
  PARTITION_TYPES,
  type PartitionTypeInfo,
  type PartitionTypeKey,
  partitionTypeInfo,
  resolvePartitionType,
} from "./types.ts";
