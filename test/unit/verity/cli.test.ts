// `abforge verity format|verify` through the real binary.
import { randomBytes } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { EXIT_CODES } from "../../../src/cli/exit-codes.ts";
import { abforge } from "../../helpers/cli.ts";
import { tempDir } from "../../helpers/tmp.ts";

const dir = tempDir("abforge-verity-cli-");
const data = join(dir, "data.img");
const hash = join(dir, "hash.img");
writeFileSync(data, randomBytes(64 * 1024));
const uuid = "3f1e4c2a-1b2c-4d5e-8f90-a1b2c3d4e5f6";

describe("abforge verity", () => {
  it("format prints the root hash; --json prints every parameter", async () => {
    const r = await abforge(["verity", "format", data, hash, "--salt", "abcd", "--uuid", uuid]);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^[0-9a-f]{64}\n$/);
    const j = await abforge([
      "verity",
      "format",
      data,
      hash,
      "--salt",
      "abcd",
      "--uuid",
      uuid,
      "--json",
    ]);
    expect(j.code).toBe(0);
    expect(JSON.parse(j.stdout)).toEqual({
      hashAlgorithm: "sha256",
      dataBlockSize: 4096,
      hashBlockSize: 4096,
      dataBlocks: 16,
      salt: "abcd",
      uuid,
      superblock: true,
      hashOffset: 0,
      hashStartBlock: 1,
      hashAreaSize: 8192,
      rootHash: r.stdout.trim(),
    });
  });

  it("format takes the algorithm, block sizes, offset and no superblock; random salt by default", async () => {
    const j = await abforge([
      "verity",
      "format",
      data,
      hash,
      "--hash",
      "sha512",
      "--data-block-size",
      "1024",
      "--hash-block-size",
      "2048",
      "--hash-offset",
      "8192",
      "--no-superblock",
      "--json",
    ]);
    expect(j.code).toBe(0);
    const p = JSON.parse(j.stdout);
    expect(p).toMatchObject({
      hashAlgorithm: "sha512",
      dataBlockSize: 1024,
      hashBlockSize: 2048,
      dataBlocks: 64,
      uuid: null,
      superblock: false,
      hashOffset: 8192,
      hashStartBlock: 4,
    });
    expect(p.salt).toMatch(/^[0-9a-f]{64}$/);
    const v = await abforge([
      "verity",
      "verify",
      data,
      hash,
      p.rootHash,
      "--hash",
      "sha512",
      "--data-block-size",
      "1024",
      "--hash-block-size",
      "2048",
      "--hash-offset",
      "8192",
      "--no-superblock",
      "--salt",
      p.salt,
    ]);
    expect(v.code).toBe(0);
    expect(v.stdout).toMatch(/^verified 64 data blocks\n/);
  });

  it("verify exits 0, or non-zero naming the first bad block", async () => {
    const f = await abforge(["verity", "format", data, hash, "--json"]);
    const root = JSON.parse(f.stdout).rootHash;
    const ok = await abforge(["verity", "verify", data, hash, root, "--json"]);
    expect(ok.code).toBe(0);
    expect(JSON.parse(ok.stdout)).toMatchObject({ verified: true, rootHash: root, dataBlocks: 16 });
    const bytes = readFileSync(data);
    bytes[5 * 4096 + 100] = (bytes[5 * 4096 + 100] as number) ^ 0x10;
    const bad = join(dir, "bad.img");
    writeFileSync(bad, bytes);
    const r = await abforge(["verity", "verify", bad, hash, root]);
    expect(r.code).toBe(EXIT_CODES.VERITY_MISMATCH);
    expect(r.stderr).toBe(
      `abforge: data file ${bad}: data block 5 (byte 20480) does not match its hash\n`,
    );
    const j = await abforge(["verity", "verify", bad, hash, root, "--json"]);
    expect(JSON.parse(j.stdout).error).toMatchObject({
      code: "VERITY_MISMATCH",
      details: { area: "data", block: 5 },
    });
  });

  it("maps errors to their exit codes", async () => {
    const odd = join(dir, "odd.img");
    writeFileSync(odd, randomBytes(5000));
    const u = await abforge(["verity", "format", odd, join(dir, "odd.hash")]);
    expect(u.code).toBe(EXIT_CODES.VERITY_UNALIGNED_DATA);
    expect(u.stderr).toBe(
      `abforge: data file ${odd}: size 5000 is not a multiple of the data block size 4096\n`,
    );
    const bs = await abforge(["verity", "format", data, hash, "--data-block-size", "8192"]);
    expect(bs.code).toBe(EXIT_CODES.VERITY_BAD_PARAMS);
    const salt = await abforge(["verity", "format", data, hash, "--salt", "xyz"]);
    expect(salt.code).toBe(2);
    expect(salt.stderr).toMatch(/salt "xyz" is not an even number of hex digits/);
    const nosb = await abforge(["verity", "verify", data, data, "00".repeat(32)]);
    expect(nosb.code).toBe(EXIT_CODES.VERITY_BAD_SUPERBLOCK);
    expect(nosb.stderr).toMatch(/superblock has no "verity" signature/);
  });
});
