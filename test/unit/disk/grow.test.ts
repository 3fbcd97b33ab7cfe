/**
 * Growing the state partition (README.md, "Growing the state partition"):
 * the pure table, the writes against sgdisk's bytes, the power-cut states,
 * refusals, and `abforge disk grow-state` on image files (and on a loop
 * device when this machine lets us attach one).
 */
import { execFileSync } from "node:child_process";
import { copyFileSync, readFileSync, writeFileSync } from "node:fs";
import { truncate } from "node:fs/promises";
import { join } from "node:path";
import { crc32 } from "node:zlib";
import { describe, expect, it } from "vitest";
import { GptAttributes } from "../../../src/disk/attributes.ts";
import { encodeGpt } from "../../../src/disk/codec.ts";
import { GptError } from "../../../src/disk/errors.ts";
import { DEFAULT_STATE_NAME, growStateTable, resizeProtectiveMbr } from "../../../src/disk/grow.ts";
import { ext4Size, growGpt } from "../../../src/disk/grow-io.ts";
import { readGpt, writeGpt } from "../../../src/disk/io.ts";
import { planDisk } from "../../../src/disk/plan.ts";
import type { GptTable } from "../../../src/disk/table.ts";
import { PARTITION_TYPES } from "../../../src/disk/types.ts";
import { STATE_PARTITION_NAME } from "../../../src/image/index.ts";
import { abforge } from "../../helpers/cli.ts";
import { tempDir } from "../../helpers/tmp.ts";

const dir = tempDir("abforge-disk-grow-");
const MiB = 1024 * 1024;
const SECTORS_PER_MIB = 2048n;

/** An abforge disk's layout, small: ESP | A | B | state, state with attributes to keep. */
function layout(o: { stateLast?: boolean; diskSizeBytes?: number } = {}): GptTable {
  const state = {
    name: "state",
    typeGuid: PARTITION_TYPES.LINUX_GENERIC,
    sizeBytes: 8 * MiB,
    attributes: new GptAttributes().withGrowFs(true).withRequired(true),
  };
  const slots = [
    { name: "abforge-A", typeGuid: PARTITION_TYPES.ROOT_X86_64, sizeBytes: 4 * MiB },
    { name: "abforge-B", typeGuid: PARTITION_TYPES.ROOT_X86_64, sizeBytes: 4 * MiB },
  ];
  return planDisk({
    guidSeed: "grow",
    diskSizeBytes: o.diskSizeBytes,
    partitions: [
      { name: "esp", typeGuid: PARTITION_TYPES.ESP, sizeBytes: 4 * MiB },
      ...(o.stateLast === false ? [slots[0]!, state, slots[1]!] : [...slots, state]),
    ],
  });
}

function refusal(fn: () => unknown): GptError {
  try {
    fn();
  } catch (err) {
    if (err instanceof GptError) return err;
    throw err;
  }
  throw new Error("did not throw");
}

async function refusalAsync(p: Promise<unknown>): Promise<GptError> {
  try {
    await p;
  } catch (err) {
    if (err instanceof GptError) return err;
    throw err;
  }
  throw new Error("did not throw");
}

function sh(cmd: string, args: string[], input?: string): string {
  return execFileSync(cmd, args, { encoding: "utf8", input, stdio: ["pipe", "pipe", "pipe"] });
}

describe("growStateTable", () => {
  it("is the layout's own name for the state partition", () => {
    expect(DEFAULT_STATE_NAME).toBe(STATE_PARTITION_NAME);
  });

  it("moves the last usable LBA to the new end and extends state to the last whole MiB", () => {
    const t = layout();
    const grown = { ...t, diskSectors: t.diskSectors + 100n * SECTORS_PER_MIB + 5n };
    const plan = growStateTable(grown);
    expect(plan.changed).toBe(true);
    const last = grown.diskSectors - 1n;
    expect(plan.table.lastUsableLba).toBe(last - 33n);
    expect(plan.lastUsableBefore).toBe(t.lastUsableLba);
    const state = plan.table.partitions.find((p) => p.name === "state")!;
    expect((state.lastLba + 1n) % SECTORS_PER_MIB).toBe(0n);
    expect(state.lastLba).toBeLessThanOrEqual(plan.table.lastUsableLba);
    expect(plan.table.lastUsableLba - state.lastLba).toBeLessThan(SECTORS_PER_MIB);
    // 8 MiB + the 100 MiB the disk grew by
    expect(state.lastLba - state.firstLba + 1n).toBe(108n * SECTORS_PER_MIB);
    // nothing else changes
    expect({ ...state, lastLba: 0n }).toEqual({ ...plan.before, lastLba: 0n });
    expect(plan.table.partitions.filter((p) => p.name !== "state")).toEqual(
      t.partitions.filter((p) => p.name !== "state"),
    );
    expect({ ...plan.table, partitions: [], lastUsableLba: 0n }).toEqual({
      ...grown,
      partitions: [],
      lastUsableLba: 0n,
    });
  });

  it("does nothing on a disk of the image's size, and a second time (idempotent)", () => {
    const t = layout();
    const same = growStateTable(t);
    expect(same.changed).toBe(false);
    expect(same.table).toBe(t);
    const once = growStateTable({ ...t, diskSectors: t.diskSectors * 3n });
    const twice = growStateTable(once.table);
    expect(twice.changed).toBe(false);
    expect(twice.table).toBe(once.table);
  });

  it("takes the image's unused last MiB; grown by less than what reaches the next MiB, moves only the table's end", () => {
    const t = layout();
    // planDisk leaves 1 MiB for the backup, of which 2015 sectors are free
    const first = growStateTable({ ...t, diskSectors: t.diskSectors + 100n });
    expect(first.after.lastLba).toBe(first.before.lastLba + SECTORS_PER_MIB);
    const plan = growStateTable({ ...first.table, diskSectors: first.table.diskSectors + 100n });
    expect(plan.changed).toBe(true);
    expect(plan.table.lastUsableLba).toBe(first.table.lastUsableLba + 100n);
    expect(plan.after.lastLba).toBe(plan.before.lastLba);
  });

  it("never shrinks a state partition that ends past the last whole MiB", () => {
    const t = layout();
    const s = t.partitions.find((p) => p.name === "state")!;
    const odd = {
      ...t,
      partitions: t.partitions.map((p) => (p === s ? { ...p, lastLba: t.lastUsableLba } : p)),
    };
    const plan = growStateTable(odd);
    expect(plan.changed).toBe(false);
  });

  it("refuses when state is not the last partition", () => {
    const t = layout({ stateLast: false });
    const e = refusal(() => growStateTable({ ...t, diskSectors: t.diskSectors * 2n }));
    expect(e.code).toBe("GPT_GROW_REFUSED");
    expect(e.message).toMatch(/partition 3 "state" is not the last on the disk.*4 "abforge-B"/);
  });

  it("refuses a missing, a doubled or an invalid state partition, and a disk smaller than its table", () => {
    const t = layout();
    const big = { ...t, diskSectors: t.diskSectors * 2n };
    expect(refusal(() => growStateTable(big, { name: "data" })).code).toBe("GPT_NOT_FOUND");
    const doubled = {
      ...big,
      partitions: big.partitions.map((p) => (p.name === "esp" ? { ...p, name: "state" } : p)),
    };
    expect(refusal(() => growStateTable(doubled)).message).toMatch(
      /2 partitions are named "state" \(1, 4\)/,
    );
    const overlapping = {
      ...big,
      partitions: big.partitions.map((p) =>
        p.name === "abforge-B" ? { ...p, lastLba: p.lastLba + 10n } : p,
      ),
    };
    expect(refusal(() => growStateTable(overlapping)).message).toMatch(
      /invalid partition table: .*overlaps/,
    );
    const shrunk = { ...t, diskSectors: t.diskSectors - SECTORS_PER_MIB };
    expect(refusal(() => growStateTable(shrunk)).message).toMatch(
      /last usable LBA .* past the end of a disk/,
    );
  });
});

describe("resizeProtectiveMbr", () => {
  it("changes only the 0xEE record's end CHS and size, and nothing when they are right", () => {
    const t = layout();
    const lba0 = encodeGpt(t).head.subarray(0, 512);
    lba0.set([1, 2, 3], 0); // boot code kept
    const out = resizeProtectiveMbr(lba0, t.diskSectors * 4n)!;
    const changed = [...out].flatMap((b, i) => (b === lba0[i] ? [] : [i]));
    expect(changed.every((i) => (i >= 451 && i < 454) || (i >= 458 && i < 462))).toBe(true);
    expect(new DataView(out.buffer).getUint32(458, true)).toBe(Number(t.diskSectors * 4n - 1n));
    expect(out.subarray(0, 3)).toEqual(new Uint8Array([1, 2, 3]));
    expect(resizeProtectiveMbr(out, t.diskSectors * 4n)).toBeUndefined();
    expect(resizeProtectiveMbr(new Uint8Array(512), t.diskSectors * 4n)).toBeUndefined();
  });
});

/** A built disk grown by `growBytes`, with a copy made the reference tool's way. */
async function grownDisk(name: string, growBytes: number) {
  const path = join(dir, `${name}.img`);
  const t = layout();
  await writeGpt(path, t);
  const before = readFileSync(path);
  await truncate(path, Number(t.diskSectors) * 512 + growBytes);
  return { path, table: t, before };
}

describe("growGpt on an image file", () => {
  it("writes the bytes sgdisk -e and a re-made partition 4 write; sgdisk -v and sfdisk agree", async () => {
    const { path, table } = await grownDisk("ref", 37 * MiB + 512 * 7);
    const ref = join(dir, "ref-sgdisk.img");
    copyFileSync(path, ref);
    const r = await growGpt(path);
    expect(r.plan.changed).toBe(true);
    expect(r.mbrUpdated).toBe(true);
    const state = r.plan.after;
    sh("sgdisk", ["-e", ref]);
    sh("sgdisk", [
      "-d",
      "4",
      "-n",
      `4:${state.firstLba}:${state.lastLba}`,
      "-c",
      "4:state",
      "-t",
      `4:${state.typeGuid}`,
      "-u",
      `4:${state.uniqueGuid}`,
      "-A",
      "4:set:0",
      "-A",
      "4:set:59",
      ref,
    ]);
    expect(Buffer.compare(readFileSync(path), readFileSync(ref))).toBe(0);

    expect(sh("sgdisk", ["-v", path])).toMatch(/No problems found/);
    const j = JSON.parse(sh("sfdisk", ["--json", path])).partitiontable;
    const diskSectors = (Number(table.diskSectors) * 512 + 37 * MiB + 512 * 7) / 512;
    expect(j.lastlba).toBe(diskSectors - 34);
    const p4 = j.partitions.find((p: { name: string }) => p.name === "state");
    expect(p4.start + p4.size).toBe(Math.floor((diskSectors - 33) / 2048) * 2048);
    expect(p4.uuid).toBe(state.uniqueGuid);
    const after = await readGpt(path);
    expect(after.warnings).toEqual([]);
    expect(
      after.table.partitions.map((p) => [p.index, p.uniqueGuid, p.name, p.attributes.raw]),
    ).toEqual(table.partitions.map((p) => [p.index, p.uniqueGuid, p.name, p.attributes.raw]));
    // the second run writes nothing
    const bytes = readFileSync(path);
    expect((await growGpt(path)).plan.changed).toBe(false);
    expect(Buffer.compare(readFileSync(path), bytes)).toBe(0);
  });

  it("leaves a disk of the image's size byte for byte as it was", async () => {
    const { path, before } = await grownDisk("same", 0);
    expect((await growGpt(path)).plan.changed).toBe(false);
    expect(Buffer.compare(readFileSync(path), before)).toBe(0);
  });

  it("every state a power cut can leave is read, by us and by sfdisk, and the next run finishes", async () => {
    const { path, table } = await grownDisk("cut", 20 * MiB);
    const plan = growStateTable((await readGpt(path)).table);
    const enc = encodeGpt(plan.table);
    // 1. new backup written, primary not yet: the old table, from the primary
    const cut1 = join(dir, "cut1.img");
    copyFileSync(path, cut1);
    writeAt(cut1, enc.tail, enc.tailOffset);
    const r1 = await readGpt(cut1);
    expect(r1.source).toBe("primary");
    expect(r1.table.partitions).toEqual(table.partitions);
    expect(JSON.parse(sh("sfdisk", ["--json", cut1])).partitiontable.partitions).toHaveLength(4);
    await growGpt(cut1);
    // 2. primary written, MBR not yet: the new table, valid everywhere
    const cut2 = join(dir, "cut2.img");
    copyFileSync(cut1, cut2);
    writeAt(cut2, readFileSync(path).subarray(0, 512), 0); // the old MBR
    expect((await readGpt(cut2)).table).toEqual(plan.table);
    expect(sh("sgdisk", ["-v", cut2])).toMatch(/No problems found|PMBR/);
    await growGpt(cut2); // the table is done; the MBR is not rewritten by a no-op
    // 3. the one-write primary torn (new header, old array): the backup has the new table,
    //    and growth refuses to go on until it is repaired
    const cut3 = join(dir, "cut3.img");
    copyFileSync(path, cut3);
    writeAt(cut3, enc.tail, enc.tailOffset);
    writeAt(cut3, enc.head.subarray(512, 1024), 512);
    const r3 = await readGpt(cut3);
    expect(r3.source).toBe("backup");
    expect(r3.table).toEqual(plan.table);
    const e = await refusalAsync(growGpt(cut3));
    expect(e.code).toBe("GPT_GROW_REFUSED");
    expect(e.message).toMatch(/primary GPT is invalid/);
  });

  it("refuses, writing nothing, a table with bytes our encoder would not keep", async () => {
    const { path } = await grownDisk("odd", 10 * MiB);
    // a stray byte in unused entry 9's name, with both CRCs fixed: valid, but not ours
    const img = readFileSync(path);
    img[1024 + 8 * 128 + 60] = 0x41;
    fixCrcs(img, 1);
    writeFileSync(path, img);
    expect((await readGpt(path)).source).toBe("primary");
    const e = await refusalAsync(growGpt(path));
    expect(e.code).toBe("GPT_GROW_REFUSED");
    expect(e.message).toMatch(/the GPT has bytes abforge would not write back \(LBA 1, byte 16/);
    expect(Buffer.compare(readFileSync(path), img)).toBe(0);
  });
});

function writeAt(path: string, bytes: Uint8Array, at: number): void {
  const img = readFileSync(path);
  img.set(bytes, at);
  writeFileSync(path, img);
}

/** Recompute the entry array CRC and the header CRC of the header at `lba`. */
function fixCrcs(img: Buffer, lba: number): void {
  const h = lba * 512;
  const entriesLba = Number(img.readBigUInt64LE(h + 72));
  img.writeUInt32LE(
    crc32(img.subarray(entriesLba * 512, entriesLba * 512 + 128 * 128)) >>> 0,
    h + 88,
  );
  img.writeUInt32LE(0, h + 16);
  img.writeUInt32LE(crc32(img.subarray(h, h + 92)) >>> 0, h + 16);
}

describe("abforge disk grow-state IMAGE", () => {
  it("grows the table, reports the sizes and that the ext4 grows at the next boot; then nothing to do", async () => {
    const { path, table } = await grownDisk("cli", 24 * MiB);
    const state = table.partitions.find((p) => p.name === "state")!;
    sh("mkfs.ext4", ["-q", "-E", `offset=${Number(state.firstLba) * 512}`, path, "8M"]);
    const r = await abforge(["disk", "grow-state", path]);
    expect(r.code).toBe(0);
    expect(r.stdout).toBe(
      `state partition 4 of ${path}: 8 MiB -> 32 MiB; filesystem 8 MiB, grows at the host's next boot\n`,
    );
    const again = await abforge(["disk", "grow-state", path, "--json"]);
    expect(again.code).toBe(0);
    expect(JSON.parse(again.stdout)).toMatchObject({
      disk: path,
      blockDevice: false,
      table: "unchanged",
      kernel: "n/a",
      nothingToDo: true,
      partition: { index: 4, name: "state", bytesAfter: 32 * MiB },
      filesystem: { action: "next-boot", bytesBefore: 8 * MiB },
    });
    expect((await abforge(["disk", "grow-state", path])).stdout).toMatch(/^nothing to do: /);
    expect(await ext4Size(path, Number(state.firstLba) * 512)).toMatchObject({ bytes: 8 * MiB });
  });

  it("exits 35 (GPT_GROW_REFUSED) when state is not the last partition, and 33 without one", async () => {
    const p = join(dir, "notlast.img");
    const t = layout({ stateLast: false });
    await writeGpt(p, t);
    await truncate(p, Number(t.diskSectors) * 512 + 4 * MiB);
    const r = await abforge(["disk", "grow-state", p, "--json"]);
    expect(r.code).toBe(35);
    expect(JSON.parse(r.stdout).error.code).toBe("GPT_GROW_REFUSED");
    expect(r.stderr).toMatch(/is not the last on the disk/);
    const q = join(dir, "nostate.img");
    await writeGpt(q, { ...t, partitions: t.partitions.filter((x) => x.name !== "state") });
    expect((await abforge(["disk", "grow-state", q])).code).toBe(33);
  });
});

/** A loop device, when this machine lets us attach one (root, /dev/loop-control). */
function loopAvailable(): boolean {
  if (process.getuid?.() !== 0) return false;
  try {
    sh("losetup", ["-f"]);
    return true;
  } catch {
    return false;
  }
}

describe.runIf(loopAvailable())("abforge disk grow-state DEVICE on a loop device", () => {
  it("grows the GPT, the kernel's partition and the (unmounted) ext4; then nothing to do", async () => {
    const { path, table } = await grownDisk("loop", 0);
    const state = table.partitions.find((p) => p.name === "state")!;
    sh("mkfs.ext4", ["-q", "-E", `offset=${Number(state.firstLba) * 512}`, path, "8M"]);
    const loop = sh("losetup", ["-f", "--show", path]).trim();
    try {
      sh("partx", ["-a", loop]);
      await truncate(path, Number(table.diskSectors) * 512 + 40 * MiB);
      sh("losetup", ["-c", loop]);
      const r = await abforge(["disk", "grow-state", loop]);
      expect(r.stderr).not.toMatch(/abforge:/);
      expect(r.code).toBe(0);
      expect(r.stdout).toBe(
        `state partition 4 of ${loop}: 8 MiB -> 48 MiB (kernel told); filesystem 8 MiB -> 48 MiB\n`,
      );
      const name = loop.replace("/dev/", "");
      expect(Number(readFileSync(`/sys/class/block/${name}p4/size`, "utf8"))).toBe(48 * 2048);
      const again = await abforge(["disk", "grow-state", loop]);
      expect(again.code).toBe(0);
      expect(again.stdout).toMatch(
        /^nothing to do: state partition 4 of .*: 48 MiB; filesystem 48 MiB\n$/,
      );
      expect(sh("sgdisk", ["-v", loop])).toMatch(/No problems found/);
    } finally {
      // partitions partx added outlive the loop device otherwise
      try {
        sh("partx", ["-d", loop]);
      } catch {
        // already gone
      }
      sh("losetup", ["-d", loop]);
    }
  });
});
