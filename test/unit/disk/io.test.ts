/** readGpt / writeGpt on image files (README: Reading, Writing). */
import { mkdirSync, readFileSync, type Stats, statSync, writeFileSync } from "node:fs";
import { open, truncate } from "node:fs/promises";
import { join } from "node:path";
import { afterEach, describe, expect, it, vi } from "vitest";
import { GptError } from "../../../src/disk/errors.ts";
import { createDisk, diskInfo, readGpt, writeGpt } from "../../../src/disk/io.ts";
import { planDisk } from "../../../src/disk/plan.ts";
import { PARTITION_TYPES } from "../../../src/disk/types.ts";
import { ToolError } from "../../../src/errors.ts";
import { tempDir } from "../../helpers/tmp.ts";
import { smallTable } from "./fixtures.ts";

const dir = tempDir("abforge-disk-io-");
const MiB = 1024 * 1024;

function table() {
  return planDisk({
    guidSeed: "io",
    partitions: [
      { name: "esp", typeGuid: PARTITION_TYPES.ESP, sizeBytes: 2 * MiB },
      { name: "abforge-A", typeGuid: PARTITION_TYPES.ROOT_X86_64, sizeBytes: 3 * MiB },
    ],
  });
}

afterEach(() => vi.restoreAllMocks());

describe("writeGpt and readGpt on a file", () => {
  it("creates the file at the table's size and reads it back", async () => {
    const path = join(dir, "new.img");
    const t = table();
    await writeGpt(path, t);
    expect(statSync(path).size).toBe(Number(t.diskSectors) * 512);
    const r = await readGpt(path);
    expect(r.table).toEqual(t);
    expect(r.warnings).toEqual([]);
  });

  it("extends a smaller file, keeping its data", async () => {
    const path = join(dir, "small.img");
    writeFileSync(path, Buffer.alloc(2 * MiB, 0x5a));
    await writeGpt(path, table());
    const bytes = readFileSync(path);
    expect(bytes[MiB + 5]).toBe(0x5a);
    expect((await readGpt(path)).table).toEqual(table());
  });

  it("refuses a file larger than the table's disk", async () => {
    const path = join(dir, "large.img");
    writeFileSync(path, "");
    await truncate(path, 64 * MiB);
    await expect(writeGpt(path, table())).rejects.toMatchObject({ code: "GPT_BAD_INPUT" });
  });

  it("writes the backup first, fsyncs, then the primary, and fsyncs", async () => {
    const path = join(dir, "order.img");
    const t = table();
    const fh = await open(path, "w+");
    const proto = Object.getPrototypeOf(fh);
    await fh.close();
    const calls: string[] = [];
    const write = proto.write;
    const sync = proto.sync;
    vi.spyOn(proto, "write").mockImplementation(function (this: unknown, ...args: unknown[]) {
      calls.push(`write@${args[3]}`);
      return write.apply(this, args);
    });
    vi.spyOn(proto, "sync").mockImplementation(function (this: unknown) {
      calls.push("sync");
      return sync.apply(this);
    });
    await writeGpt(path, t);
    const tailOffset = (Number(t.diskSectors) - 33) * 512;
    expect(calls).toEqual([`write@${tailOffset}`, "sync", "write@0", "sync"]);
  });

  it("reads the backup of a file whose primary is damaged, and warns", async () => {
    const path = join(dir, "damaged.img");
    await writeGpt(path, table());
    const fh = await open(path, "r+");
    await fh.write(Buffer.alloc(512), 0, 512, 512);
    await fh.close();
    const r = await readGpt(path);
    expect(r.source).toBe("backup");
    expect(r.table).toEqual(table());
    expect(r.warnings[0]).toMatch(/damaged\.img: the primary GPT header at LBA 1 is invalid/);
  });

  it("says IO_ERROR for a missing file and GPT_MISSING for a blank one", async () => {
    await expect(readGpt(join(dir, "nope.img"))).rejects.toBeInstanceOf(ToolError);
    await expect(readGpt(join(dir, "nope.img"))).rejects.toMatchObject({ code: "IO_ERROR" });
    const blank = join(dir, "blank.img");
    writeFileSync(blank, Buffer.alloc(MiB));
    await expect(readGpt(blank)).rejects.toMatchObject({ code: "GPT_MISSING" });
    await expect(readGpt(dir)).rejects.toBeInstanceOf(GptError);
  });

  it("writes nothing, not even the file, for a table encodeGpt refuses", async () => {
    const path = join(dir, "refused.img");
    const t = { ...smallTable(), entryCount: 0 };
    await expect(writeGpt(path, t)).rejects.toMatchObject({ code: "GPT_BAD_INPUT" });
    expect(() => statSync(path)).toThrow();
  });
});

describe("createDisk", () => {
  it("keeps an existing file's size and fills it", async () => {
    const path = join(dir, "existing.img");
    writeFileSync(path, "");
    await truncate(path, 32 * MiB);
    const t = await createDisk(path, {
      partitions: [{ name: "esp", typeGuid: PARTITION_TYPES.ESP, sizeBytes: 4 * MiB }],
    });
    expect(t.diskSectors).toBe(65536n);
    expect(statSync(path).size).toBe(32 * MiB);
    expect((await readGpt(path)).table).toEqual(t);
  });

  it("says GPT_NO_SPACE when the partitions do not fit an existing file", async () => {
    const path = join(dir, "tiny.img");
    writeFileSync(path, Buffer.alloc(2 * MiB));
    await expect(
      createDisk(path, {
        partitions: [{ name: "esp", typeGuid: PARTITION_TYPES.ESP, sizeBytes: 4 * MiB }],
      }),
    ).rejects.toMatchObject({ code: "GPT_NO_SPACE" });
  });
});

describe("diskInfo", () => {
  function blockDevice(rdev: number): Stats {
    return { isFile: () => false, isBlockDevice: () => true, rdev } as Stats;
  }

  it("takes a block device's size and sector size from sysfs by major:minor", async () => {
    const sys = join(dir, "sys");
    // 259:300 is encoded with the minor's high bits above the major (Linux's new_encode_dev)
    const dev = join(sys, "dev/block/259:300");
    mkdirSync(join(dev, "queue"), { recursive: true });
    writeFileSync(join(dev, "size"), "81920\n");
    writeFileSync(join(dev, "queue/logical_block_size"), "4096\n");
    const rdev = (300 & 0xff) | (259 << 8) | ((300 & ~0xff) << 12);
    expect(await diskInfo("/dev/fake", { stats: blockDevice(rdev), sysRoot: sys })).toEqual({
      sizeBytes: 81920 * 512,
      sectorSize: 4096,
      blockDevice: true,
    });
    await expect(
      diskInfo("/dev/other", { stats: blockDevice(7 << 8), sysRoot: sys }),
    ).rejects.toMatchObject({
      code: "IO_ERROR",
    });
  });

  it("gives a file's size, and refuses what is neither a file nor a block device", async () => {
    const path = join(dir, "info.img");
    writeFileSync(path, Buffer.alloc(4096));
    expect(await diskInfo(path)).toEqual({ sizeBytes: 4096, sectorSize: 512, blockDevice: false });
    await expect(diskInfo("/dev/null")).rejects.toMatchObject({ code: "GPT_BAD_INPUT" });
  });
});
