/**
 * A minimal FAT32 reader (README.md, "Finding /GRUBENV in the FAT"): finds a
 * file in the root directory by its 8.3 name and returns where its bytes are
 * inside the volume, so the boot state can be rewritten in place, the way
 * GRUB's `save_env` does, without a FAT driver. Pure over `readAt`.
 */
import { BootloaderError } from "./errors.ts";

/** Reads `length` bytes at byte `offset` of the FAT volume (may return fewer at the end). */
export type FatReadAt = (offset: number, length: number) => Uint8Array;

export interface FatGeometry {
  bytesPerSector: number;
  sectorsPerCluster: number;
  reservedSectors: number;
  fatCount: number;
  sectorsPerFat: number;
  totalSectors: number;
  rootCluster: number;
  /** Byte offset of the FAT in use (the first, unless mirroring is off). */
  fatOffset: number;
  /** Byte offset of cluster 2. */
  dataOffset: number;
  clusterBytes: number;
  clusterCount: number;
}

export interface FatFile {
  /** Byte offset of the file's first byte inside the FAT volume. */
  offset: number;
  /** File size in bytes (from its directory entry). */
  size: number;
  firstCluster: number;
}

const ATTR_VOLUME_ID = 0x08;
const ATTR_DIRECTORY = 0x10;
const ATTR_LONG_NAME = 0x0f;
const END_OF_CHAIN = 0x0ffffff8;
const BAD_CLUSTER = 0x0ffffff7;

function espBad(where: string, message: string, details: Record<string, unknown> = {}) {
  return new BootloaderError("ESP_BAD", `${where}: ${message}`, { details });
}

function read(readAt: FatReadAt, where: string, offset: number, length: number): DataView {
  const b = readAt(offset, length);
  if (b.length < length) {
    throw espBad(where, `cannot read ${length} bytes at byte ${offset} (the volume ends)`, {
      offset,
    });
  }
  return new DataView(b.buffer, b.byteOffset, length);
}

/**
 * The FAT32 boot sector (steps 1-2). A volume is FAT32 when its BPB says so
 * (16-bit FAT size and root entry count are 0), as GRUB and Linux decide,
 * whatever its cluster count.
 */
export function readFatGeometry(
  readAt: FatReadAt,
  options: { volumeBytes?: number; where?: string } = {},
): FatGeometry {
  const where = options.where ?? "FAT volume";
  const bs = read(readAt, where, 0, 512);
  if (bs.getUint16(510, true) !== 0xaa55) throw espBad(where, "no boot sector signature 55 AA");
  const bytesPerSector = bs.getUint16(11, true);
  const sectorsPerCluster = bs.getUint8(13);
  const reservedSectors = bs.getUint16(14, true);
  const fatCount = bs.getUint8(16);
  const rootEntries = bs.getUint16(17, true);
  const totalSectors16 = bs.getUint16(19, true);
  const sectorsPerFat16 = bs.getUint16(22, true);
  const totalSectors32 = bs.getUint32(32, true);
  const sectorsPerFat = bs.getUint32(36, true);
  const extFlags = bs.getUint16(40, true);
  const rootCluster = bs.getUint32(44, true);

  if (![512, 1024, 2048, 4096].includes(bytesPerSector)) {
    throw espBad(where, `bytes per sector ${bytesPerSector} is not 512, 1024, 2048 or 4096`);
  }
  if (sectorsPerCluster === 0 || (sectorsPerCluster & (sectorsPerCluster - 1)) !== 0) {
    throw espBad(where, `sectors per cluster ${sectorsPerCluster} is not a power of two`);
  }
  if (sectorsPerFat16 !== 0 || rootEntries !== 0 || sectorsPerFat === 0) {
    throw espBad(where, "is not FAT32 (it has a 16-bit FAT size or a fixed root directory)");
  }
  if (reservedSectors === 0 || fatCount === 0) {
    throw espBad(where, `bad BPB: ${reservedSectors} reserved sectors, ${fatCount} FATs`);
  }
  const totalSectors = totalSectors16 !== 0 ? totalSectors16 : totalSectors32;
  const dataSector = reservedSectors + fatCount * sectorsPerFat;
  if (totalSectors <= dataSector) {
    throw espBad(where, `bad BPB: ${totalSectors} sectors leave no room for data`);
  }
  if (options.volumeBytes !== undefined && totalSectors * bytesPerSector > options.volumeBytes) {
    throw espBad(
      where,
      `the file system (${totalSectors * bytesPerSector} bytes) is larger than its partition (${options.volumeBytes} bytes)`,
    );
  }
  const clusterCount = Math.floor((totalSectors - dataSector) / sectorsPerCluster);
  // Mirroring off (bit 7): only the FAT named in bits 0-3 is in use.
  const activeFat = extFlags & 0x80 ? extFlags & 0x0f : 0;
  if (activeFat >= fatCount) throw espBad(where, `active FAT ${activeFat} of ${fatCount}`);
  if (rootCluster < 2 || rootCluster > clusterCount + 1) {
    throw espBad(where, `root directory cluster ${rootCluster} is out of range`);
  }
  return {
    bytesPerSector,
    sectorsPerCluster,
    reservedSectors,
    fatCount,
    sectorsPerFat,
    totalSectors,
    rootCluster,
    fatOffset: (reservedSectors + activeFat * sectorsPerFat) * bytesPerSector,
    dataOffset: dataSector * bytesPerSector,
    clusterBytes: sectorsPerCluster * bytesPerSector,
    clusterCount,
  };
}

/** The FAT entry of a cluster: the next cluster, or >= 0x0FFFFFF8 at the end. */
function fatEntry(readAt: FatReadAt, g: FatGeometry, cluster: number, where: string): number {
  return read(readAt, where, g.fatOffset + cluster * 4, 4).getUint32(0, true) & 0x0fffffff;
}

function clusterOffset(g: FatGeometry, cluster: number): number {
  return g.dataOffset + (cluster - 2) * g.clusterBytes;
}

function checkCluster(g: FatGeometry, cluster: number, where: string, what: string): void {
  if (cluster < 2 || cluster > g.clusterCount + 1) {
    throw espBad(where, `${what}: cluster ${cluster} is out of range`, { cluster });
  }
}

/** `GRUBENV` → `"GRUBENV    "`, `EFI.CFG` → `"EFI     CFG"`: the 11 bytes of a short name. */
export function shortName(name: string): string {
  const m = /^([A-Z0-9_~!#$%&'()@^`{}-]{1,8})(?:\.([A-Z0-9_~!#$%&'()@^`{}-]{1,3}))?$/.exec(
    name.toUpperCase(),
  );
  if (!m) throw new BootloaderError("ESP_BAD", `"${name}" is not an 8.3 file name`);
  return m[1]!.padEnd(8, " ") + (m[2] ?? "").padEnd(3, " ");
}

/**
 * Finds `name` (8.3) in the root directory and returns where its bytes are
 * (steps 3-5). ESP_BAD when it is missing, a directory, not `size` bytes
 * (when given), or its clusters are not one contiguous run.
 */
export function locateFatFile(
  readAt: FatReadAt,
  name: string,
  options: { size?: number; volumeBytes?: number; where?: string } = {},
): FatFile {
  const where = options.where ?? "FAT volume";
  const g = readFatGeometry(readAt, options);
  const wanted = shortName(name);
  const entry = findRootEntry(readAt, g, wanted, where);
  if (!entry) throw espBad(where, `no file ${name} in the root directory`, { file: name });
  if (entry.getUint8(11) & ATTR_DIRECTORY) {
    throw espBad(where, `${name} is a directory`, { file: name });
  }
  const size = entry.getUint32(28, true);
  const firstCluster = (entry.getUint16(20, true) << 16) | entry.getUint16(26, true);
  if (options.size !== undefined && size !== options.size) {
    throw espBad(where, `${name} is ${size} bytes, expected exactly ${options.size}`, {
      file: name,
      sizeBytes: size,
    });
  }
  if (size === 0) throw espBad(where, `${name} is empty`, { file: name });
  checkCluster(g, firstCluster, where, name);

  // Step 5: the chain must be first, first+1, ..., then end, and just long enough.
  const clusters = Math.ceil(size / g.clusterBytes);
  let cluster = firstCluster;
  for (let i = 1; ; i++) {
    const next = fatEntry(readAt, g, cluster, where);
    if (i === clusters) {
      if (next < END_OF_CHAIN) {
        throw espBad(where, `${name}: its cluster chain is longer than its size`, { file: name });
      }
      break;
    }
    if (next >= END_OF_CHAIN || next !== cluster + 1) {
      throw espBad(
        where,
        `${name} is not contiguous (cluster ${cluster} is followed by ${next >= END_OF_CHAIN ? "the end of the chain" : next}, expected ${cluster + 1})`,
        { file: name, cluster, next },
      );
    }
    cluster = next;
  }
  return { offset: clusterOffset(g, firstCluster), size, firstCluster };
}

/** Whether the root directory has an entry named `name` (8.3), whatever it is. */
export function fatFileExists(
  readAt: FatReadAt,
  name: string,
  options: { volumeBytes?: number; where?: string } = {},
): boolean {
  const where = options.where ?? "FAT volume";
  const g = readFatGeometry(readAt, options);
  return findRootEntry(readAt, g, shortName(name), where) !== undefined;
}

/** Steps 3-4: walk the root directory's clusters, entry by entry. */
function findRootEntry(
  readAt: FatReadAt,
  g: FatGeometry,
  wanted: string,
  where: string,
): DataView | undefined {
  let cluster = g.rootCluster;
  for (let hops = 0; hops <= g.clusterCount; hops++) {
    checkCluster(g, cluster, where, "root directory");
    const dir = read(readAt, where, clusterOffset(g, cluster), g.clusterBytes);
    for (let off = 0; off < g.clusterBytes; off += 32) {
      const first = dir.getUint8(off);
      if (first === 0x00) return undefined; // no entries after this one
      if (first === 0xe5) continue; // deleted
      const attr = dir.getUint8(off + 11);
      if (attr === ATTR_LONG_NAME || attr & ATTR_VOLUME_ID) continue;
      let entryName = "";
      for (let i = 0; i < 11; i++) entryName += String.fromCharCode(dir.getUint8(off + i));
      if (entryName === wanted) return new DataView(dir.buffer, dir.byteOffset + off, 32);
    }
    const next = fatEntry(readAt, g, cluster, where);
    if (next >= END_OF_CHAIN) return undefined;
    if (next === BAD_CLUSTER || next === 0) {
      throw espBad(where, `root directory chain is broken at cluster ${cluster}`, { cluster });
    }
    cluster = next;
  }
  throw espBad(where, "root directory cluster chain loops", {});
}
