/**
 * Our GPT against the reference tools (gdisk's sgdisk, util-linux's sfdisk):
 * tables we write pass `sgdisk -v` and read back the same through
 * `sfdisk --json`; tables sgdisk writes read back the same through ours.
 */
import { execFileSync, spawnSync } from "node:child_process";
import { closeSync, openSync, readSync, writeFileSync } from "node:fs";
import { open, truncate } from "node:fs/promises";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { GptAttributes } from "../../../src/disk/attributes.ts";
import { encodeProtectiveMbr } from "../../../src/disk/codec.ts";
import { readGpt, writeGpt } from "../../../src/disk/io.ts";
import { planDisk } from "../../../src/disk/plan.ts";
import type { GptTable } from "../../../src/disk/table.ts";
import { PARTITION_TYPE_INFO, PARTITION_TYPES } from "../../../src/disk/types.ts";
import { requireTool } from "../../../src/exec.ts";
import { tempDir } from "../../helpers/tmp.ts";

const dir = tempDir("abforge-disk-interop-");
const MiB = 1024 * 1024;

interface SfdiskPartition {
  node: string;
  start: number;
  size: number;
  type: string;
  uuid: string;
  name?: string;
  attrs?: string;
}
interface SfdiskTable {
  label: string;
  id: string;
  firstlba: number;
  lastlba: number;
  sectorsize: number;
  partitions: SfdiskPartition[];
}

/** Run a reference tool; a failure throws unless allowed. stdin is closed. */
async function run(tool: string, args: string[], o: { allowFailure?: boolean } = {}) {
  const r = spawnSync(requireTool(tool), args, {
    encoding: "utf8",
    stdio: ["ignore", "pipe", "pipe"],
  });
  if (r.error) throw r.error;
  if (r.status !== 0 && !o.allowFailure)
    throw new Error(`${tool} ${args.join(" ")} exited ${r.status}: ${r.stderr}`);
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

function firstSector(path: string): Uint8Array {
  const fd = openSync(path, "r");
  try {
    const b = new Uint8Array(512);
    readSync(fd, b, 0, 512, 0);
    return b;
  } finally {
    closeSync(fd);
  }
}

async function sfdiskJson(path: string): Promise<SfdiskTable> {
  const r = await run("sfdisk", ["--json", path]);
  return JSON.parse(r.stdout).partitiontable;
}

/** sfdisk's attribute string: named bits 0-2, then `GUID:` and the bits 48-63. */
function sfdiskAttrs(a: GptAttributes): string | undefined {
  const names = ["RequiredPartition", "NoBlockIOProtocol", "LegacyBIOSBootable"];
  const parts = a
    .setBits()
    .filter((b) => b < 3)
    .map((b) => names[b]!);
  const guidBits = a.setBits().filter((b) => b >= 48);
  if (guidBits.length) parts.push(`GUID:${guidBits.join(",")}`);
  return parts.length ? parts.join(" ") : undefined;
}

function expectSame(ours: GptTable, sf: SfdiskTable): void {
  expect(sf.label).toBe("gpt");
  expect(sf.id).toBe(ours.diskGuid);
  expect(sf.sectorsize).toBe(ours.sectorSize);
  expect(BigInt(sf.firstlba)).toBe(ours.firstUsableLba);
  expect(BigInt(sf.lastlba)).toBe(ours.lastUsableLba);
  expect(sf.partitions).toHaveLength(ours.partitions.length);
  for (const [i, p] of ours.partitions.entries()) {
    const s = sf.partitions[i]!;
    expect(s.node.endsWith(String(p.index))).toBe(true);
    expect(s.type).toBe(p.typeGuid);
    expect(s.uuid).toBe(p.uniqueGuid);
    expect(BigInt(s.start)).toBe(p.firstLba);
    expect(BigInt(s.size)).toBe(p.lastLba - p.firstLba + 1n);
    expect(s.name ?? "").toBe(p.name);
    expect(s.attrs).toBe(sfdiskAttrs(p.attributes));
  }
}

function ourTable(): GptTable {
  return planDisk({
    partitions: [
      { name: "esp", typeGuid: PARTITION_TYPES.ESP, sizeBytes: 8 * MiB },
      {
        name: "abforge-A",
        typeGuid: PARTITION_TYPES.ROOT_X86_64,
        sizeBytes: 16 * MiB,
        attributes: GptAttributes.NONE.withPriority(2)
          .withTries(3)
          .withSuccessful(true)
          .withRequired(true),
      },
      {
        name: "abforge-B",
        typeGuid: PARTITION_TYPES.ROOT_X86_64,
        sizeBytes: 16 * MiB,
        attributes: GptAttributes.NONE.withPriority(1)
          .withLegacyBiosBootable(true)
          .withNoBlockIo(true),
      },
      {
        name: "état-données-日本語-😀🚀",
        typeGuid: PARTITION_TYPES.LINUX_GENERIC,
        sizeBytes: 5 * MiB + 512,
        attributes: GptAttributes.NONE.withReadOnly(true).withNoAuto(true).withGrowFs(true),
      },
    ],
  });
}

describe("tables we write, read by sgdisk and sfdisk", () => {
  it("pass sgdisk -v with no problems and match sfdisk --json field by field", async () => {
    const path = join(dir, "ours.img");
    const t = ourTable();
    await writeGpt(path, t);
    const v = await run("sgdisk", ["-v", path]);
    expect(v.stdout).toMatch(/No problems found/);
    expectSame(t, await sfdiskJson(path));
  });

  it("match sgdisk -i for GUIDs, sectors and the attribute hex", async () => {
    const path = join(dir, "ours-i.img");
    const t = ourTable();
    await writeGpt(path, t);
    for (const p of t.partitions) {
      const info = (await run("sgdisk", ["-i", String(p.index), path])).stdout;
      expect(info).toMatch(new RegExp(`Partition GUID code: ${p.typeGuid}`));
      expect(info).toMatch(new RegExp(`Partition unique GUID: ${p.uniqueGuid}`));
      expect(info).toMatch(new RegExp(`First sector: ${p.firstLba} `));
      expect(info).toMatch(new RegExp(`Last sector: ${p.lastLba} `));
      expect(info).toMatch(
        new RegExp(
          `Attribute flags: ${p.attributes.raw.toString(16).toUpperCase().padStart(16, "0")}`,
        ),
      );
    }
  });

  it("write the same protective MBR as sgdisk", async () => {
    for (const size of [64 * MiB, 9 * 1024 * MiB]) {
      const path = join(dir, `mbr-${size}.img`);
      writeFileSync(path, "");
      await truncate(path, size);
      await run("sgdisk", ["-o", path]);
      const theirs = firstSector(path);
      const ours = encodeProtectiveMbr(BigInt(size / 512), 512);
      expect(Buffer.from(ours.subarray(440))).toEqual(Buffer.from(theirs.subarray(440, 512)));
    }
  });

  it("fall back to the backup when the primary header is damaged, as sgdisk does", async () => {
    const path = join(dir, "ours-damaged.img");
    const t = ourTable();
    await writeGpt(path, t);
    const fh = await open(path, "r+");
    await fh.write(Buffer.alloc(8), 0, 8, 512 + 60);
    await fh.close();
    const r = await readGpt(path);
    expect(r.source).toBe("backup");
    expect(r.table).toEqual(t);
    const v = await run("sgdisk", ["-v", path], { allowFailure: true });
    expect(v.stdout + v.stderr).toMatch(/Main header: ERROR/);
    expect(v.stdout + v.stderr).toMatch(/Backup header: OK/);
  });
});

describe("tables sgdisk writes, read by us", () => {
  it("read back the same as sfdisk --json and sgdisk -i show them", async () => {
    const path = join(dir, "theirs.img");
    writeFileSync(path, "");
    await truncate(path, 128 * MiB);
    await run("sgdisk", [
      "-o",
      "-U",
      "6A1D2F0E-5B3C-4D7E-8F90-A1B2C3D4E5F6",
      "-n",
      "1:2048:+64M",
      "-t",
      "1:ef00",
      "-c",
      "1:esp",
      "-n",
      "2:0:+16M",
      "-t",
      `2:${PARTITION_TYPES.ROOT_X86_64}`,
      "-c",
      "2:abforge-A",
      "-A",
      "2:set:56",
      "-A",
      "2:set:48",
      "-A",
      "2:set:53",
      "-n",
      "3:0:+8M",
      "-t",
      `3:${PARTITION_TYPES.ROOT_X86_64}`,
      "-c",
      "3:Système-日本-😀",
      "-A",
      "3:set:0",
      "-A",
      "3:set:2",
      "-n",
      "5:0:0",
      "-t",
      "5:8300",
      "-c",
      "5:state",
      path,
    ]);
    const { table, warnings, source } = await readGpt(path);
    expect(warnings).toEqual([]);
    expect(source).toBe("primary");
    expect(table.diskGuid).toBe("6A1D2F0E-5B3C-4D7E-8F90-A1B2C3D4E5F6");
    expect(table.partitions.map((p) => p.index)).toEqual([1, 2, 3, 5]);
    expectSame(table, await sfdiskJson(path));
    const a = table.partitions[1]!.attributes;
    expect([a.priority, a.tries, a.successful, a.required]).toEqual([1, 2, true, false]);
    const b = table.partitions[2]!.attributes;
    expect([b.required, b.legacyBiosBootable, b.priority]).toEqual([true, true, 0]);
    expect(table.partitions[2]!.name).toBe("Système-日本-😀");
    const info = (await run("sgdisk", ["-i", "2", path])).stdout;
    expect(info).toMatch(
      new RegExp(`Attribute flags: ${a.raw.toString(16).toUpperCase().padStart(16, "0")}`),
    );
    expect(info).toMatch(new RegExp(`Partition unique GUID: ${table.partitions[1]!.uniqueGuid}`));
  });

  it("read from the backup, with a warning, when sgdisk's primary is zeroed", async () => {
    const path = join(dir, "theirs-damaged.img");
    writeFileSync(path, "");
    await truncate(path, 32 * MiB);
    await run("sgdisk", [
      "-o",
      "-n",
      "1:2048:+4M",
      "-t",
      "1:ef00",
      "-c",
      "1:esp",
      "-n",
      "2:0:0",
      "-c",
      "2:abforge-A",
      path,
    ]);
    const before = await readGpt(path);
    const fh = await open(path, "r+");
    await fh.write(Buffer.alloc(33 * 512), 0, 33 * 512, 512);
    await fh.close();
    const after = await readGpt(path);
    expect(after.source).toBe("backup");
    expect(after.warnings).toHaveLength(1);
    expect(after.table).toEqual(before.table);
  });

  it("fail with GPT_CORRUPT when sgdisk's primary and backup are both damaged", async () => {
    const path = join(dir, "theirs-dead.img");
    writeFileSync(path, "");
    await truncate(path, 32 * MiB);
    await run("sgdisk", ["-o", "-n", "1:2048:+4M", path]);
    const fh = await open(path, "r+");
    await fh.write(Buffer.from([0xff]), 0, 1, 512 + 40);
    await fh.write(Buffer.from([0xff]), 0, 1, 32 * MiB - 512 + 40);
    await fh.close();
    await expect(readGpt(path)).rejects.toMatchObject({ code: "GPT_CORRUPT" });
  });
});

describe("partition type constants", () => {
  it("match util-linux's GPT type list", () => {
    const list = execFileSync("sfdisk", ["-T", "--label", "gpt"], { encoding: "utf8" });
    const guids = new Set(list.split("\n").map((l) => l.trim().split(/\s+/)[0]));
    for (const t of PARTITION_TYPE_INFO) expect(guids.has(t.guid), `${t.key} ${t.guid}`).toBe(true);
  });
});

describe("a block device (loop device)", () => {
  it("takes its size from sysfs; writeGpt and readGpt work on it and sgdisk agrees", async () => {
    const img = join(dir, "loop.img");
    writeFileSync(img, "");
    await truncate(img, 40 * MiB);
    const dev = (await run("losetup", ["--find", "--show", img])).stdout.trim();
    try {
      const t = planDisk({
        diskSizeBytes: 40 * MiB,
        guidSeed: "loop",
        partitions: [
          { name: "esp", typeGuid: PARTITION_TYPES.ESP, sizeBytes: 8 * MiB },
          { name: "abforge-A", typeGuid: PARTITION_TYPES.ROOT_X86_64, sizeBytes: 8 * MiB },
        ],
      });
      await writeGpt(dev, t);
      const r = await readGpt(dev);
      expect(r.table).toEqual(t);
      expect(r.warnings).toEqual([]);
      expect((await run("sgdisk", ["-v", dev])).stdout).toMatch(/No problems found/);
      // a table for another size is refused on a device
      const wrong = planDisk({
        partitions: [{ name: "x", typeGuid: PARTITION_TYPES.ESP, sizeBytes: MiB }],
      });
      await expect(writeGpt(dev, wrong)).rejects.toMatchObject({ code: "GPT_BAD_INPUT" });
    } finally {
      await run("losetup", ["-d", dev]);
    }
    expectSame((await readGpt(img)).table, await sfdiskJson(img));
  });
});
