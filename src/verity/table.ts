/**
 * The device-mapper table line of a verity target (README.md, "dm table";
 * kernel Documentation/admin-guide/device-mapper/verity.rst).
 */
import type { VerityParams } from "./verity.ts";

/**
 * `0 SECTORS verity 1 DATA HASH dbs hbs DATA_BLOCKS HASH_START ALG ROOT SALT`;
 * SECTORS counts 512-byte sectors of the data area, SALT is "-" when empty.
 */
export function dmVerityTable(p: VerityParams, dataDev: string, hashDev: string): string {
  const sectors = (p.dataBlocks * p.dataBlockSize) / 512;
  return [
    0,
    sectors,
    "verity",
    1,
    dataDev,
    hashDev,
    p.dataBlockSize,
    p.hashBlockSize,
    p.dataBlocks,
    p.hashStartBlock,
    p.hashAlgorithm,
    p.rootHash,
    p.salt === "" ? "-" : p.salt,
  ].join(" ");
}
