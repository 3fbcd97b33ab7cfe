/** Small tables and in-memory disks for the GPT tests. */
import { GptAttributes } from "../../../src/disk/attributes.ts";
import { encodeGpt, type ReadAt } from "../../../src/disk/codec.ts";
import type { GptTable } from "../../../src/disk/table.ts";
import { PARTITION_TYPES } from "../../../src/disk/types.ts";

/** A 256-sector disk (128 KiB): usable LBA 34-222. */
export function smallTable(): GptTable {
  return {
    diskGuid: "11111111-2222-4333-8444-555555555555",
    sectorSize: 512,
    diskSectors: 256n,
    firstUsableLba: 34n,
    lastUsableLba: 222n,
    entryCount: 128,
    partitions: [
      {
        index: 1,
        typeGuid: PARTITION_TYPES.ESP,
        uniqueGuid: "AAAAAAAA-0000-4000-8000-000000000001",
        firstLba: 34n,
        lastLba: 99n,
        attributes: GptAttributes.NONE,
        name: "esp",
      },
      {
        index: 2,
        typeGuid: PARTITION_TYPES.ROOT_X86_64,
        uniqueGuid: "AAAAAAAA-0000-4000-8000-000000000002",
        firstLba: 100n,
        lastLba: 159n,
        attributes: new GptAttributes().withPriority(2).withTries(3).withSuccessful(true),
        name: "abforge-A",
      },
      {
        index: 4,
        typeGuid: PARTITION_TYPES.LINUX_GENERIC,
        uniqueGuid: "AAAAAAAA-0000-4000-8000-000000000004",
        firstLba: 160n,
        lastLba: 222n,
        attributes: new GptAttributes().withRequired(true),
        name: "état-日本-😀",
      },
    ],
  };
}

/** The whole disk as bytes. */
export function imageOf(table: GptTable): Uint8Array {
  const img = new Uint8Array(Number(table.diskSectors) * table.sectorSize);
  const { head, tail, tailOffset } = encodeGpt(table);
  img.set(head, 0);
  img.set(tail, tailOffset);
  return img;
}

export function readerOf(img: Uint8Array): ReadAt {
  return (offset, length) => img.subarray(offset, offset + length);
}
