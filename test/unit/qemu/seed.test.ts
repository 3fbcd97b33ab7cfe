// The NoCloud seed drive (qemu/README.md, "Seed drive (cloud-init)"), read
// back with mtools and blkid, and the checks on what goes into it.
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { gzipSync } from "node:zlib";
import { afterEach, describe, expect, it, vi } from "vitest";
import {
  checkUserData,
  defaultMetaData,
  instanceIdFor,
  makeSeed,
  USER_DATA_MAX_BYTES,
} from "../../../qemu/seed.ts";
import { caught, rejection } from "../../helpers/errors.ts";
import { tempDir } from "../../helpers/tmp.ts";

const dir = tempDir("abforge-seed-");
const USER_DATA = "#cloud-config\nhostname: host1\nusers:\n  - name: ops\n";

function file(name: string, content: string | Uint8Array): string {
  const path = join(dir, name);
  writeFileSync(path, content);
  return path;
}

function mtools(tool: string, ...args: string[]): string {
  return execFileSync(tool, args, { encoding: "utf8", env: { ...process.env, TZ: "UTC" } });
}

describe("makeSeed", () => {
  afterEach(() => {
    vi.unstubAllEnvs();
  });

  it("writes a FAT image labelled CIDATA holding user-data and a derived meta-data", async () => {
    vi.stubEnv("SOURCE_DATE_EPOCH", "");
    const userData = file("ud1", USER_DATA);
    const seed = await makeSeed({ outPath: join(dir, "seed1.img"), userData });
    const hash = createHash("sha256").update(USER_DATA).digest("hex");
    expect(seed.instanceId).toBe(`iid-${hash.slice(0, 16)}`);
    expect(mtools("mtype", "-i", seed.path, "::user-data")).toBe(USER_DATA);
    expect(mtools("mtype", "-i", seed.path, "::meta-data")).toBe(
      `instance-id: iid-${hash.slice(0, 16)}\n`,
    );
    expect(mtools("mlabel", "-s", "-i", seed.path, "::")).toMatch(/Volume label is CIDATA\s*$/);
    const blkid = execFileSync("blkid", ["-o", "export", seed.path], { encoding: "utf8" });
    expect(blkid).toMatch(/^LABEL=CIDATA$/m);
    expect(blkid).toMatch(/^TYPE=vfat$/m);
    expect(blkid).toContain(`UUID=${seed.volumeId.slice(0, 4)}-${seed.volumeId.slice(4)}`);
    // the label cloud-init's blkid lookup finds is in the boot sector too
    const boot = readFileSync(seed.path).subarray(0, 512);
    expect(boot.subarray(43, 54).toString("latin1")).toBe("CIDATA     ");
    // long names as cloud-init (Linux vfat) reads them; timestamps from the fixed epoch
    const listing = mtools("mdir", "-i", seed.path, "::");
    expect(listing).toMatch(/ 1980-01-01 +0:00 +user-data$/m);
    expect(listing).toMatch(/ 1980-01-01 +0:00 +meta-data$/m);
  });

  it("is byte-identical from run to run, and takes its timestamps from SOURCE_DATE_EPOCH", async () => {
    vi.stubEnv("SOURCE_DATE_EPOCH", "");
    const userData = file("ud2", USER_DATA);
    const a = await makeSeed({ outPath: join(dir, "a.img"), userData });
    const b = await makeSeed({ outPath: join(dir, "b.img"), userData });
    expect(readFileSync(a.path).equals(readFileSync(b.path))).toBe(true);
    vi.stubEnv("SOURCE_DATE_EPOCH", "1700000000");
    const c = await makeSeed({ outPath: join(dir, "c.img"), userData });
    expect(mtools("mdir", "-i", c.path, "::")).toMatch(/ 2023-11-14 +22:13 +user-data$/m);
    expect(readFileSync(c.path).equals(readFileSync(a.path))).toBe(false);
  });

  it("takes a given meta-data as it is, and a different user-data gives a different instance-id", async () => {
    const meta = file("md", "instance-id: host1-a\nlocal-hostname: host1\n");
    const seed = await makeSeed({
      outPath: join(dir, "m.img"),
      userData: file("ud3", USER_DATA),
      metaData: meta,
    });
    expect(seed.instanceId).toBeUndefined();
    expect(mtools("mtype", "-i", seed.path, "::meta-data")).toBe(readFileSync(meta, "utf8"));
    expect(instanceIdFor(Buffer.from(`${USER_DATA}#\n`))).not.toBe(
      instanceIdFor(Buffer.from(USER_DATA)),
    );
    expect(defaultMetaData(Buffer.from(""))).toBe("instance-id: iid-e3b0c44298fc1c14\n");
  });

  it("refuses a missing or oversized user-data or meta-data, naming the file", async () => {
    const missing = join(dir, "no-such-user-data");
    const e1 = await rejection(makeSeed({ outPath: join(dir, "x.img"), userData: missing }));
    expect(e1.code).toBe("QEMU_BAD_SEED");
    expect(e1.message).toBe(`user-data ${missing} does not exist or is not a file`);
    const big = file("big", `#cloud-config\n${"#".repeat(USER_DATA_MAX_BYTES)}\n`);
    const e2 = await rejection(makeSeed({ outPath: join(dir, "x.img"), userData: big }));
    expect(e2.code).toBe("QEMU_BAD_SEED");
    expect(e2.message).toMatch(new RegExp(`^user-data ${big} has \\d+ bytes, more than the`));
    const bigMeta = file("bigmeta", "x".repeat(64 * 1024 + 1));
    const e3 = await rejection(
      makeSeed({
        outPath: join(dir, "x.img"),
        userData: file("ud4", USER_DATA),
        metaData: bigMeta,
      }),
    );
    expect(e3.message).toBe(`meta-data ${bigMeta} has 65537 bytes, more than the 65536 accepted`);
    expect(e3.code).toBe("QEMU_BAD_SEED");
  });
});

describe("checkUserData", () => {
  it("accepts the headers cloud-init acts on, and gzip", () => {
    for (const text of [
      "#cloud-config\n",
      "#cloud-config\r\nhostname: a\n",
      "#!/bin/sh\necho hi\n",
      "#include\nhttp://10.0.2.2/x\n",
      "#cloud-boothook\n#!/bin/sh\n",
      "#cloud-config-archive\n- type: text/cloud-config\n",
      'Content-Type: multipart/mixed; boundary="==b=="\nMIME-Version: 1.0\n',
    ]) {
      expect(
        caught(() => checkUserData("u", Buffer.from(text))),
        text,
      ).toBeUndefined();
    }
    expect(caught(() => checkUserData("u", gzipSync("#cloud-config\n")))).toBeUndefined();
  });

  it("refuses anything else with a QEMU_BAD_SEED naming the file and its first line", () => {
    for (const text of ["hostname: a\n", "", "#cloud-configs\n", " #cloud-config\n", "#cloud"]) {
      const err = caught(() => checkUserData("/x/user-data", Buffer.from(text))) as {
        code: string;
        message: string;
      };
      expect(err.code, text).toBe("QEMU_BAD_SEED");
      expect(err.message).toMatch(/^user-data \/x\/user-data starts with ".*", not a header/);
    }
  });
});
