/**
 * The slot image (src/build/README.md, "Slot image"): squashfs padded to
 * 4096, verity superblock at the padded size, tree after it; checked with
 * veritysetup.
 */
import { execFileSync, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { buildSlotImage, veritySeed } from "../../../src/build/slot.ts";
import { buildSquashfs } from "../../../src/build/squashfs.ts";
import { formatSlotVerity, parseSlotVerity } from "../../../src/image/index.ts";
import { tempDir } from "../../helpers/tmp.ts";

describe("buildSlotImage", async () => {
  const dir = tempDir();
  const src = join(dir, "root");
  mkdirSync(src);
  writeFileSync(join(src, "data"), randomBytes(300_000));
  const sq = await buildSquashfs({
    sourceDir: src,
    outPath: join(dir, "root.sqfs"),
    compression: "gzip",
  });
  const slot = await buildSlotImage({ squashfsPath: sq.path, outPath: join(dir, "slot.img") });
  const padded = Math.ceil(sq.bytes / 4096) * 4096;

  it("puts the squashfs first, zero-padded to 4096, then the superblock and tree", () => {
    const img = readFileSync(slot.path);
    expect(img.subarray(0, sq.bytes).equals(readFileSync(sq.path))).toBe(true);
    expect(img.subarray(sq.bytes, padded).every((b) => b === 0)).toBe(true);
    expect(img.subarray(padded, padded + 8).toString("latin1")).toBe("verity\0\0");
    expect(slot.verity).toMatchObject({
      hashAlgorithm: "sha256",
      dataBlockSize: 4096,
      hashBlockSize: 4096,
      dataBlocks: padded / 4096,
      hashOffset: padded,
      hashStartBlock: padded / 4096 + 1,
      superblock: true,
    });
    expect(slot.bytes).toBe(statSync(slot.path).size);
  });

  it("verifies with veritysetup against its root hash", () => {
    const ok = spawnSync(
      "veritysetup",
      ["verify", slot.path, slot.path, slot.verity.rootHash, `--hash-offset=${padded}`],
      { encoding: "utf8" },
    );
    expect(ok.status, ok.stderr).toBe(0);
    const dump = execFileSync("veritysetup", ["dump", slot.path, `--hash-offset=${padded}`], {
      encoding: "utf8",
    });
    expect(dump).toMatch(new RegExp(`Data blocks:\\s+${padded / 4096}`));
    expect(dump).toMatch(new RegExp(`Salt:\\s+${slot.verity.salt}`));
  });

  it("is byte-identical across builds (salt and UUID derive from the squashfs)", async () => {
    const again = await buildSlotImage({ squashfsPath: sq.path, outPath: join(dir, "again.img") });
    expect(again.sha256).toBe(slot.sha256);
    expect(veritySeed(sq.sha256).uuid).toBe(slot.verity.uuid);
    expect(veritySeed("0".repeat(64)).uuid).not.toBe(slot.verity.uuid);
  });

  it("gives the X_verity value the boot state reads back", () => {
    expect(parseSlotVerity(formatSlotVerity(slot.verity))).toEqual({
      dataBlocks: slot.verity.dataBlocks,
      hashStartBlock: slot.verity.hashStartBlock,
      salt: slot.verity.salt,
    });
  });

  it("refuses an image larger than the slot, with both sizes", async () => {
    await expect(
      buildSlotImage({ squashfsPath: sq.path, outPath: join(dir, "big.img"), maxBytes: 8192 }),
    ).rejects.toMatchObject({
      code: "PARTITION_TOO_SMALL",
      message: expect.stringMatching(/does not fit the slot of 8192 bytes/),
    });
  });
});
