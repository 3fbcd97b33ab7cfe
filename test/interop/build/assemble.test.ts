/** Disk assembly (src/build/README.md, "Disk assembly") checked with sgdisk and the bytes. */
import { execFileSync } from "node:child_process";
import { readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { abforgePartitions, assembleDisk } from "../../../src/build/assemble.ts";
import { partitionRange } from "../../../src/disk/index.ts";
import { tempDir } from "../../helpers/tmp.ts";

const MiB = 1024 * 1024;

function image(path: string, size: number, seed: number): Buffer {
  const b = Buffer.alloc(size);
  // Data, then a long zero run, then data again: the zero run must stay a hole.
  for (let i = 0; i < 64 * 1024; i++) b[i] = (i * seed + 1) % 256;
  for (let i = size - 4096; i < size; i++) b[i] = (i + seed) % 256 || 1;
  writeFileSync(path, b);
  return b;
}

describe("assembleDisk", async () => {
  const dir = tempDir();
  const esp = image(join(dir, "esp"), 2 * MiB, 3);
  const slot = image(join(dir, "slot"), 3 * MiB + 4096, 5);
  const state = image(join(dir, "state"), 1 * MiB, 7);
  const parts = abforgePartitions({
    espBytes: 2 * MiB,
    slotBytes: 4 * MiB,
    stateBytes: 2 * MiB,
    espImage: join(dir, "esp"),
    slotAImage: join(dir, "slot"),
    stateImage: join(dir, "state"),
  });
  const disk = join(dir, "disk.img");
  const table = await assembleDisk({ outPath: disk, partitions: parts, diskGuidSeed: "demo" });

  it("writes a GPT sgdisk accepts, with the contract's names and types", () => {
    expect(execFileSync("sgdisk", ["-v", disk], { encoding: "utf8" })).toMatch(/No problems found/);
    const info = (n: number) =>
      execFileSync("sgdisk", ["-i", String(n), disk], { encoding: "utf8" });
    expect(info(1)).toMatch(/Partition GUID code: C12A7328-F81F-11D2-BA4B-00A0C93EC93B/);
    expect(info(1)).toMatch(/Partition name: 'esp'/);
    expect(info(2)).toMatch(/Partition GUID code: 4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709/);
    expect(info(2)).toMatch(/Partition name: 'abforge-A'/);
    expect(info(3)).toMatch(/Partition name: 'abforge-B'/);
    expect(info(4)).toMatch(/Partition name: 'state'/);
  });

  it("places each image at its partition's offset, the rest reading as zeros, and stays sparse", () => {
    const bytes = readFileSync(disk);
    const at = (i: number) => partitionRange(table.partitions[i]!);
    for (const [i, img] of [
      [0, esp],
      [1, slot],
      [3, state],
    ] as const) {
      const { offset, size } = at(i);
      expect(bytes.subarray(offset, offset + img.length).equals(img)).toBe(true);
      expect(bytes.subarray(offset + img.length, offset + size).every((b) => b === 0)).toBe(true);
    }
    const b = at(2);
    expect(bytes.subarray(b.offset, b.offset + b.size).every((x) => x === 0)).toBe(true);
    const st = statSync(disk);
    expect(st.blocks * 512).toBeLessThan(st.size / 4);
  });

  it("gives the same bytes for the same seed", async () => {
    const again = join(dir, "again.img");
    await assembleDisk({ outPath: again, partitions: parts, diskGuidSeed: "demo" });
    expect(readFileSync(again).equals(readFileSync(disk))).toBe(true);
  });

  it("copies an image whose size is not a multiple of the block size", async () => {
    const odd = Buffer.alloc(5000 + 4096 * 3, 0);
    odd.fill(9, 0, 5000);
    odd.fill(4, odd.length - 10);
    writeFileSync(join(dir, "odd"), odd);
    const oddDisk = join(dir, "odd.img");
    const t = await assembleDisk({
      outPath: oddDisk,
      diskGuidSeed: "odd",
      partitions: [
        {
          name: "state",
          typeGuid: parts[3]!.typeGuid,
          sizeBytes: 1 * MiB,
          imagePath: join(dir, "odd"),
        },
      ],
    });
    const { offset } = partitionRange(t.partitions[0]!);
    expect(
      readFileSync(oddDisk)
        .subarray(offset, offset + odd.length)
        .equals(odd),
    ).toBe(true);
  });

  it("refuses an image larger than its partition", async () => {
    await expect(
      assembleDisk({
        outPath: join(dir, "bad.img"),
        diskGuidSeed: "demo",
        partitions: [{ ...parts[1]!, sizeBytes: 1 * MiB }],
      }),
    ).rejects.toMatchObject({
      code: "PARTITION_TOO_SMALL",
      message: expect.stringMatching(
        /partition 1 \(abforge-A\): its image .* has 3149824 bytes, the partition 1048576/,
      ),
    });
  });
});
