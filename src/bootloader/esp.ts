/**
 * The EFI System Partition image: FAT32 holding `/GRUBENV` (the boot state)
 * and `/EFI/BOOT/BOOTX64.EFI` (GRUB), byte-identical from run to run.
 * Procedure: src/build/README.md, "ESP".
 */
import { copyFile, mkdtemp, open, rename, rm, truncate, utimes, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { run } from "../exec.ts";
import { logger } from "../log.ts";
import { ENV_BLOCK_SIZE } from "./env.ts";
import { BootloaderError } from "./errors.ts";

export interface BuildEspOptions {
  outPath: string;
  sizeBytes: number;
  /** The GRUB EFI image (buildGrubEfi). */
  efiPath: string;
  /** The 1024-byte GRUB environment block (encodeEnv). */
  env: Uint8Array;
  /** FAT volume serial, 8 hex digits (e.g. derived from the image name). */
  volumeId: string;
  /** Timestamp of the files (default: SOURCE_DATE_EPOCH, else 0). */
  mtime?: number;
  /** More files for the root directory, after the EFI image (8.3 names: the Secure Boot slot files). */
  rootFiles?: readonly { name: string; data: Uint8Array }[];
}

/** The fewest clusters a FAT32 volume may have (fewer and it reads as FAT16). */
export const FAT32_MIN_CLUSTERS = 65525;

/** Cluster count of a FAT volume from its boot sector (BPB). Pure. */
export function fatClusterCount(bootSector: Uint8Array): number {
  const v = new DataView(bootSector.buffer, bootSector.byteOffset, bootSector.byteLength);
  const bytesPerSector = v.getUint16(11, true);
  const sectorsPerCluster = v.getUint8(13);
  const reserved = v.getUint16(14, true);
  const fats = v.getUint8(16);
  const rootEntries = v.getUint16(17, true);
  const total = v.getUint16(19, true) || v.getUint32(32, true);
  const fatSize = v.getUint16(22, true) || v.getUint32(36, true);
  const rootSectors = Math.ceil((rootEntries * 32) / bytesPerSector);
  return Math.floor((total - reserved - fats * fatSize - rootSectors) / sectorsPerCluster);
}

function epoch(): number {
  const v = process.env.SOURCE_DATE_EPOCH;
  return v && /^\d+$/.test(v) ? Number(v) : 0;
}

/**
 * Build the ESP image: mkfs.vfat -F 32 with the largest cluster (4 KiB at
 * most) that still gives a valid FAT32 cluster count, then /GRUBENV first
 * (so it is contiguous at the start of the data area) and the EFI image.
 */
export async function buildEsp(o: BuildEspOptions): Promise<void> {
  const started = Date.now();
  if (!/^[0-9A-Fa-f]{8}$/.test(o.volumeId)) {
    throw new BootloaderError("ESP_BAD", `ESP volume ID "${o.volumeId}": expected 8 hex digits`, {
      details: { volumeId: o.volumeId },
    });
  }
  if (o.env.length !== ENV_BLOCK_SIZE) {
    throw new BootloaderError(
      "ENV_BAD_BLOCK",
      `ESP ${o.outPath}: the environment block has ${o.env.length} bytes, not ${ENV_BLOCK_SIZE}`,
      { details: { size: o.env.length } },
    );
  }
  if (!Number.isSafeInteger(o.sizeBytes) || o.sizeBytes % 512 !== 0) {
    throw new BootloaderError("ESP_BAD", `ESP size ${o.sizeBytes}: not a multiple of 512 bytes`, {
      details: { sizeBytes: o.sizeBytes },
    });
  }
  const mtime = o.mtime ?? epoch();
  const work = await mkdtemp(join(tmpdir(), "abforge-esp-"));
  const tmp = `${o.outPath}.tmp-${process.pid}`;
  try {
    let clusterSectors = 0;
    for (const s of [8, 4, 2, 1]) {
      await rm(tmp, { force: true });
      await writeFile(tmp, "");
      await truncate(tmp, o.sizeBytes);
      await run("mkfs.vfat", [
        "-F",
        "32",
        "-s",
        String(s),
        "--invariant",
        "-i",
        o.volumeId.toUpperCase(),
        "-n",
        "ESP",
        tmp,
      ]);
      const fh = await open(tmp, "r");
      const boot = new Uint8Array(512);
      await fh.read(boot, 0, 512, 0);
      await fh.close();
      if (fatClusterCount(boot) >= FAT32_MIN_CLUSTERS) {
        clusterSectors = s;
        break;
      }
    }
    if (!clusterSectors) {
      throw new BootloaderError(
        "ESP_BAD",
        `ESP size ${o.sizeBytes} bytes is too small for FAT32 (${FAT32_MIN_CLUSTERS} clusters of 512 bytes, about 33 MiB, at least)`,
        { details: { sizeBytes: o.sizeBytes } },
      );
    }
    // mcopy -m keeps the source files' mtime: give them the build's timestamp.
    const envFile = join(work, "GRUBENV");
    const efiFile = join(work, "BOOTX64.EFI");
    await writeFile(envFile, o.env);
    await copyFile(o.efiPath, efiFile);
    for (const f of [envFile, efiFile]) await utimes(f, mtime, mtime);
    const env = { ...process.env, SOURCE_DATE_EPOCH: String(mtime), MTOOLS_NO_VFAT: "1" };
    await run("mcopy", ["-m", "-i", tmp, envFile, "::/GRUBENV"], { env });
    await run("mmd", ["-i", tmp, "::/EFI", "::/EFI/BOOT"], { env });
    await run("mcopy", ["-m", "-i", tmp, efiFile, "::/EFI/BOOT/BOOTX64.EFI"], { env });
    for (const f of o.rootFiles ?? []) {
      if (!/^[A-Z0-9_]{1,8}(\.[A-Z0-9_]{1,3})?$/.test(f.name))
        throw new BootloaderError(
          "ESP_BAD",
          `ESP file name ${f.name}: not an upper-case 8.3 name`,
          {
            details: { name: f.name },
          },
        );
      const path = join(work, f.name);
      await writeFile(path, f.data);
      await utimes(path, mtime, mtime);
      await run("mcopy", ["-m", "-i", tmp, path, `::/${f.name}`], { env });
    }
    await rename(tmp, o.outPath);
    logger()
      .child({ module: "bootloader", step: "esp" })
      .info(
        {
          path: o.outPath,
          sizeBytes: o.sizeBytes,
          clusterBytes: clusterSectors * 512,
          ms: Date.now() - started,
        },
        "ESP built",
      );
  } finally {
    await rm(work, { recursive: true, force: true });
    await rm(tmp, { force: true });
  }
}
