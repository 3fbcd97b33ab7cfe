// The FAT32 locator on real mkfs.vfat + mcopy images
// (src/bootloader/README.md, "Finding /GRUBENV in the FAT").
import { closeSync, openSync, writeSync } from "node:fs";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import {
  encodeEnv,
  locateFatFile,
  readFatGeometry,
  shortName,
} from "../../../src/bootloader/index.ts";
import { tempDir } from "../../helpers/tmp.ts";
import { fileReadAt, makeFatImage, tool as run } from "./images.ts";

const dir = tempDir();
const env = encodeEnv(new Map([["order", "A B"]]));

function patchU32(path: string, offset: number, value: number): void {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(value);
  const fd = openSync(path, "r+");
  try {
    writeSync(fd, b, 0, 4, offset);
  } finally {
    closeSync(fd);
  }
}

describe("shortName", () => {
  it("pads the base to 8 and the extension to 3, upper case", () => {
    expect(shortName("GRUBENV")).toBe("GRUBENV    ");
    expect(shortName("grubenv")).toBe("GRUBENV    ");
    expect(shortName("boot.cfg")).toBe("BOOT    CFG");
    expect(() => shortName("toolongname")).toThrow(/not an 8\.3 file name/);
    expect(() => shortName("a.b.c")).toThrow(/not an 8\.3 file name/);
  });
});

describe("locateFatFile", () => {
  let s8: string;
  let s1: string;
  beforeAll(async () => {
    // 4 KiB clusters (the ESP's), the file after a long-name file
    s8 = await makeFatImage(join(dir, "s8.img"), {
      files: { "a long file name.txt": "x", GRUBENV: env },
    });
    // 512-byte clusters: the file spans two clusters, and 60 long names
    // before it make the root directory span many clusters
    const files: Record<string, string | Uint8Array> = {};
    for (let i = 0; i < 60; i++) files[`some long file name number ${i}.txt`] = `${i}`;
    files["GRUBENV"] = env;
    s1 = await makeFatImage(join(dir, "s1.img"), { sectorsPerCluster: 1, files });
  });

  it("finds GRUBENV and its bytes are the file's (4 KiB clusters)", () => {
    const readAt = fileReadAt(s8);
    const g = readFatGeometry(readAt);
    expect(g).toMatchObject({ bytesPerSector: 512, sectorsPerCluster: 8, clusterBytes: 4096 });
    const f = locateFatFile(readAt, "GRUBENV", { size: 1024 });
    expect(f.size).toBe(1024);
    expect(f.offset % 4096).toBe(g.dataOffset % 4096);
    expect(readAt(f.offset, 1024)).toEqual(Buffer.from(env));
  });

  it("follows a root directory over many clusters and a two-cluster file (512-byte clusters)", () => {
    const readAt = fileReadAt(s1);
    const g = readFatGeometry(readAt);
    const f = locateFatFile(readAt, "grubenv", { size: 1024 });
    // the root directory is cluster 2; 60 long names need far more than one 512-byte cluster
    expect(f.firstCluster).toBeGreaterThan(g.rootCluster + 2);
    expect(readAt(f.offset, 1024)).toEqual(Buffer.from(env));
    // the other files are found as well
    expect(() => locateFatFile(readAt, "SOMELO~1.TXT")).not.toThrow();
  });

  it("agrees with mtools on where the file is", async () => {
    const readAt = fileReadAt(s1);
    const g = readFatGeometry(readAt);
    const f = locateFatFile(readAt, "GRUBENV");
    const shown = await run("mshowfat", ["-i", s1, "::/GRUBENV"]);
    expect(shown.stdout.trim()).toBe(`::/GRUBENV <${f.firstCluster}-${f.firstCluster + 1}>`);
    expect(f.offset).toBe(g.dataOffset + (f.firstCluster - 2) * 512);
  });

  it("refuses a missing file, a file of another size, a directory (ESP_BAD)", async () => {
    const readAt = fileReadAt(s8);
    expect(() => locateFatFile(readAt, "NOFILE")).toThrow(
      expect.objectContaining({
        code: "ESP_BAD",
        message: expect.stringMatching(/no file NOFILE/),
      }),
    );
    const other = await makeFatImage(join(dir, "big.img"), {
      files: { GRUBENV: new Uint8Array(2048).fill(0x23) },
    });
    expect(() => locateFatFile(fileReadAt(other), "GRUBENV", { size: 1024 })).toThrow(
      expect.objectContaining({
        code: "ESP_BAD",
        message: expect.stringMatching(/GRUBENV is 2048 bytes, expected exactly 1024/),
      }),
    );
    const withDir = await makeFatImage(join(dir, "dir.img"));
    await run("mmd", ["-i", withDir, "::/GRUBENV"]);
    expect(() => locateFatFile(fileReadAt(withDir), "GRUBENV")).toThrow(/is a directory/);
  });

  it("refuses a file whose clusters are not contiguous, or whose chain is too long", async () => {
    const readAt = fileReadAt(s1);
    const g = readFatGeometry(readAt);
    const f = locateFatFile(readAt, "GRUBENV");
    const fatEntry = (c: number) => g.fatOffset + c * 4;

    const fragmented = join(dir, "fragmented.img");
    await run("cp", ["--sparse=always", s1, fragmented]);
    // first cluster -> first+2 (end), as if first+1 had been taken by another file
    patchU32(fragmented, fatEntry(f.firstCluster), f.firstCluster + 2);
    patchU32(fragmented, fatEntry(f.firstCluster + 2), 0x0fffffff);
    expect(() => locateFatFile(fileReadAt(fragmented), "GRUBENV")).toThrow(
      expect.objectContaining({
        code: "ESP_BAD",
        message: expect.stringMatching(
          /GRUBENV is not contiguous \(cluster \d+ is followed by \d+/,
        ),
      }),
    );

    const long = join(dir, "long.img");
    await run("cp", ["--sparse=always", s1, long]);
    patchU32(long, fatEntry(f.firstCluster + 1), f.firstCluster + 2);
    patchU32(long, fatEntry(f.firstCluster + 2), 0x0fffffff);
    expect(() => locateFatFile(fileReadAt(long), "GRUBENV")).toThrow(
      /chain is longer than its size/,
    );
  });

  it("uses the FAT that mirroring-off names as active", async () => {
    const img = join(dir, "active.img");
    await run("cp", ["--sparse=always", s1, img]);
    const g = readFatGeometry(fileReadAt(img));
    const f = locateFatFile(fileReadAt(img), "GRUBENV");
    // break FAT 0's entry; mark FAT 1 active: the file is found through FAT 1
    patchU32(img, g.fatOffset + f.firstCluster * 4, 0);
    expect(() => locateFatFile(fileReadAt(img), "GRUBENV")).toThrow(/not contiguous/);
    const b = Buffer.from([0x81, 0x00]);
    const fd = openSync(img, "r+");
    writeSync(fd, b, 0, 2, 40);
    closeSync(fd);
    expect(locateFatFile(fileReadAt(img), "GRUBENV").offset).toBe(f.offset);
  });

  it("refuses what is not FAT32 (ESP_BAD)", async () => {
    const fat16 = join(dir, "fat16.img");
    await run("mkfs.vfat", ["-F", "16", "-C", fat16, "65536"]);
    expect(() => readFatGeometry(fileReadAt(fat16))).toThrow(/is not FAT32/);
    const zeros = join(dir, "zeros.img");
    await run("truncate", ["-s", "1M", zeros]);
    expect(() => readFatGeometry(fileReadAt(zeros), { where: "ESP of x.img" })).toThrow(
      "ESP of x.img: no boot sector signature 55 AA",
    );
    expect(() => readFatGeometry(fileReadAt(s8), { volumeBytes: 1024 * 1024 })).toThrow(
      /larger than its partition/,
    );
  });
});
