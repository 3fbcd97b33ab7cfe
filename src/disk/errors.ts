import { BaseError } from "../errors.ts";

/**
 * - GPT_BAD_INPUT: a table or argument we were asked to write is invalid
 *   (name too long, bad GUID string, overlapping partitions, ...).
 * - GPT_CORRUPT: what is on the disk is not a valid GPT (bad CRC, LBA out of
 *   range, ...) and no valid copy was found.
 * - GPT_MISSING: the disk has no GPT at all (no signature in either header).
 * - GPT_NO_SPACE: the partitions do not fit on the disk.
 * - GPT_NOT_FOUND: no partition matches a lookup.
 * - GPT_GROW_REFUSED: growing the state partition (grow.ts) is refused: it
 *   is not the last partition, the table has something abforge does not
 *   write, the primary is damaged, ... Nothing was written.
 */
export type GptErrorCode =
  | "GPT_BAD_INPUT"
  | "GPT_CORRUPT"
  | "GPT_MISSING"
  | "GPT_NO_SPACE"
  | "GPT_NOT_FOUND"
  | "GPT_GROW_REFUSED";

export class GptError extends BaseError<GptErrorCode> {}
