/** `abforge disk show|create`, run as an operator does. */
import { writeFileSync } from "node:fs";
import { open } from "node:fs/promises";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { abforge } from "../../helpers/cli.ts";
import { tempDir } from "../../helpers/tmp.ts";

const dir = tempDir("abforge-disk-cli-");

async function create(name: string, ...extra: string[]) {
  const path = join(dir, name);
  const r = await abforge([
    "disk",
    "create",
    path,
    "--part",
    "esp:esp:2MiB",
    "--part",
    "abforge-A:root-x86-64:3MiB",
    "--part",
    "données-😀:linux:1M",
    "--seed",
    "cli",
    ...extra,
  ]);
  expect(r.stderr).toBe("");
  expect(r.code).toBe(0);
  return { path, r };
}

describe("abforge disk", () => {
  it("create prints the new table; show prints the same as text", async () => {
    const { path, r } = await create("a.img");
    expect(r.stdout).toMatch(/^Disk .*a\.img: 16384 sectors of 512 bytes \(8 MiB\)/);
    const show = await abforge(["disk", "show", path]);
    expect(show.code).toBe(0);
    expect(show.stdout).toBe(r.stdout);
    const lines = show.stdout.trimEnd().split("\n");
    expect(lines[1]).toMatch(/^Disk GUID: [0-9A-F-]{36}$/);
    expect(lines[2]).toBe("Usable LBA 34-16350, 128 entries, 3 used");
    expect(lines[4]).toMatch(
      /^#\s+Type\s+Unique GUID\s+First LBA\s+Last LBA\s+Size\s+Name\s+Attributes$/,
    );
    expect(lines[5]).toMatch(/^1\s+esp\s+[0-9A-F-]{36}\s+2048\s+6143\s+2 MiB\s+"esp"\s+-$/);
    expect(lines[6]).toMatch(
      /^2\s+root-x86-64\s+[0-9A-F-]{36}\s+6144\s+12287\s+3 MiB\s+"abforge-A"\s+-$/,
    );
    expect(lines[7]).toMatch(/^3\s+linux\s+.*\s+12288\s+14335\s+1 MiB\s+"données-😀"\s+-$/);
  });

  it("show --json gives every field", async () => {
    const { path } = await create("b.img");
    const r = await abforge(["disk", "show", path, "--json"]);
    expect(r.code).toBe(0);
    const j = JSON.parse(r.stdout);
    expect(j).toMatchObject({
      path,
      source: "primary",
      warnings: [],
      sectorSize: 512,
      diskSectors: 16384,
      entryCount: 128,
    });
    expect(j.partitions.map((p: { name: string }) => p.name)).toEqual([
      "esp",
      "abforge-A",
      "données-😀",
    ]);
    expect(j.partitions[1]).toMatchObject({
      index: 2,
      type: "root-x86-64",
      typeGuid: "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709",
      firstLba: 6144,
      lastLba: 12287,
      sizeBytes: 3 * 1024 * 1024,
      attributes: { raw: "0x0000000000000000", priority: 0, tries: 0, successful: false },
    });
    // the seed makes the GUIDs reproducible
    const again = JSON.parse(
      (await abforge(["disk", "show", (await create("b2.img")).path, "--json"])).stdout,
    );
    expect(again.diskGuid).toBe(j.diskGuid);
    expect(again.partitions[0].uniqueGuid).toBe(j.partitions[0].uniqueGuid);
  });

  it("show warns on stderr and reads the backup when the primary is damaged", async () => {
    const { path } = await create("c.img");
    const fh = await open(path, "r+");
    await fh.write(Buffer.from("XXXX"), 0, 4, 512);
    await fh.close();
    const r = await abforge(["disk", "show", path, "--json"]);
    expect(r.code).toBe(0);
    const j = JSON.parse(r.stdout);
    expect(j.source).toBe("backup");
    expect(j.partitions).toHaveLength(3);
    expect(r.stderr).toMatch(
      /the primary GPT header at LBA 1 is invalid \(no \\?"EFI PART\\?" signature\); using the backup/,
    );
  });

  it("a corrupt disk exits 31 with one line; a blank one 34; a missing one 5", async () => {
    const { path } = await create("d.img");
    const fh = await open(path, "r+");
    await fh.write(Buffer.from("XXXX"), 0, 4, 512);
    await fh.write(Buffer.from("XXXX"), 0, 4, 16383 * 512 + 20);
    await fh.close();
    const r = await abforge(["disk", "show", path]);
    expect(r.code).toBe(31);
    expect(r.stdout).toBe("");
    const lines = r.stderr
      .trimEnd()
      .split("\n")
      .filter((l) => !l.startsWith("{"));
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(
      /^abforge: \S+d\.img: no valid GPT: primary header at LBA 1: no "EFI PART" signature; backup header at LBA 16383: header CRC32 0x[0-9a-f]{8} does not match the computed 0x[0-9a-f]{8}$/,
    );
    const blank = join(dir, "blank.img");
    writeFileSync(blank, Buffer.alloc(1024 * 1024));
    const b = await abforge(["disk", "show", blank, "--json"]);
    expect(b.code).toBe(34);
    expect(JSON.parse(b.stdout).error.code).toBe("GPT_MISSING");
    const m = await abforge(["disk", "show", join(dir, "missing.img")]);
    expect(m.code).toBe(5);
    expect(m.stderr).toMatch(/^abforge: .*missing\.img: cannot open: ENOENT/m);
  });

  it("create refuses a bad spec with exit 30, and a disk too small with 32", async () => {
    const bad = await abforge(["disk", "create", join(dir, "e.img"), "--part", "esp:nope:1M"]);
    expect(bad.code).toBe(30);
    expect(bad.stderr).toMatch(/type "nope" is not a GUID nor a known type/);
    const long = await abforge([
      "disk",
      "create",
      join(dir, "e.img"),
      "--part",
      `${"n".repeat(37)}:linux:1M`,
    ]);
    expect(long.code).toBe(30);
    expect(long.stderr).toMatch(/37 UTF-16 code units long; GPT names hold at most 36/);
    const small = await abforge([
      "disk",
      "create",
      join(dir, "f.img"),
      "--part",
      "esp:esp:8M",
      "--size",
      "4MiB",
    ]);
    expect(small.code).toBe(32);
  });
});
