/**
 * `abforge build --format`: the demo disk as raw, qcow2, vmdk, vhd and a GCE
 * tarball, each read back with qemu-img and tar (README "What survives what":
 * disk formats); the checks that refuse a wrong output; an unknown format;
 * an interrupted conversion.
 */
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import {
  createReadStream,
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  statSync,
} from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { beforeAll, describe, expect, it } from "vitest";
import { checkDiskFormat, parseFormats } from "../../../src/build/formats.ts";
import { abforge, startAbforge } from "../../helpers/cli.ts";
import { dirSnapshot, tempDir } from "../../helpers/tmp.ts";

const DEMO = fileURLToPath(new URL("../../../images/demo.yaml", import.meta.url));
const FORMATS = "raw,qcow2,vmdk,vhd,gce";

interface Output {
  format: string;
  file: string;
  bytes: number;
  sha256: string;
}

let dir: string;
let out: string;
let key: string;
let summary: string;
let report: { disk: { size: number }; outputs: Output[]; steps: { name: string; ms: number }[] };

async function sha256(path: string): Promise<string> {
  const h = createHash("sha256");
  for await (const chunk of createReadStream(path)) h.update(chunk as Buffer);
  return h.digest("hex");
}

function info(path: string, format?: string): { format: string; "virtual-size": number } {
  const forced = format ? ["-f", format] : [];
  return JSON.parse(
    execFileSync("qemu-img", ["info", ...forced, "--output=json", path], { encoding: "utf8" }),
  );
}

beforeAll(async () => {
  dir = tempDir("abforge-formats-");
  const k = await abforge(["keygen", "--out", join(dir, "keys")]);
  expect(k.code, k.stderr).toBe(0);
  key = join(dir, "keys", "signing.key");
  out = join(dir, "out");
  const r = await abforge(["build", DEMO, "--key", key, "--out", out, "--format", FORMATS]);
  expect(r.code, r.stderr).toBe(0);
  summary = r.stdout;
  report = JSON.parse(readFileSync(join(out, "build.json"), "utf8"));
}, 120_000);

describe("abforge build --format raw,qcow2,vmdk,vhd,gce", () => {
  it("writes each form, named in build.json (file, bytes, sha256) and in the summary", async () => {
    expect(report.outputs.map((o) => [o.format, o.file])).toEqual([
      ["raw", "disk.img"],
      ["qcow2", "disk.qcow2"],
      ["vmdk", "disk.vmdk"],
      ["vhd", "disk.vhd"],
      ["gce", "demo-1.0.0.gce.tar.gz"],
    ]);
    for (const o of report.outputs) {
      const path = join(out, o.file);
      expect(statSync(path).size, o.file).toBe(o.bytes);
      expect(await sha256(path), o.file).toBe(o.sha256);
      if (o.format !== "raw") expect(summary).toContain(`${path} (`);
    }
    expect(report.steps.map((s) => s.name)).toEqual(
      expect.arrayContaining(FORMATS.split(",").map((f) => `format ${f}`)),
    );
    // nothing but the outputs is left in --out (the temp dir is gone)
    expect(readdirSync(out).sort()).toEqual(
      [...report.outputs.map((o) => o.file), "build.json", "demo-1.0.0.bundle"].sort(),
    );
  });

  it("qemu-img reads qcow2, vmdk and vhd as their format, with the raw disk's size and content", () => {
    const raw = join(out, "disk.img");
    const size = statSync(raw).size;
    expect(size).toBe(report.disk.size);
    for (const [file, format, probe] of [
      ["disk.qcow2", "qcow2", undefined],
      ["disk.vmdk", "vmdk", undefined],
      // a fixed VHD is raw data and a footer: probed, it reads as raw
      ["disk.vhd", "vpc", "vpc"],
    ] as const) {
      const path = join(out, file);
      const i = info(path, probe);
      expect(i.format, file).toBe(format);
      expect(i["virtual-size"], file).toBe(size);
      const cmp = execFileSync("qemu-img", ["compare", "-f", "raw", "-F", format, raw, path], {
        encoding: "utf8",
      });
      expect(cmp, file).toMatch(/Images are identical/);
    }
    const vmdk = JSON.parse(
      execFileSync("qemu-img", ["info", "--output=json", join(out, "disk.vmdk")], {
        encoding: "utf8",
      }),
    );
    expect(vmdk["format-specific"].data["create-type"]).toBe("streamOptimized");
    // the raw disk stays sparse: far fewer blocks than its size
    expect(statSync(raw).blocks * 512).toBeLessThan(size / 4);
  });

  it("the GCE tarball holds only disk.raw, byte for byte the raw disk, and is far smaller than it", async () => {
    const tgz = join(out, "demo-1.0.0.gce.tar.gz");
    const listing = execFileSync("tar", ["-tzf", tgz], { encoding: "utf8" });
    expect(listing).toBe("disk.raw\n");
    const x = join(dir, "x");
    mkdirSync(x);
    execFileSync("tar", ["--sparse", "-xzf", tgz, "-C", x]);
    expect(readdirSync(x)).toEqual(["disk.raw"]);
    expect(await sha256(join(x, "disk.raw"))).toBe(await sha256(join(out, "disk.img")));
    expect(statSync(tgz).size).toBeLessThan(report.disk.size / 10);
    // a sparse (oldgnu) archive: the member extracts sparse too
    expect(statSync(join(x, "disk.raw")).blocks * 512).toBeLessThan(report.disk.size / 4);
  });
});

describe("the checks of an output", () => {
  it("refuse a qcow2 of another size, a vhd that is dynamic, a tarball with another member", async () => {
    const d = tempDir("abforge-formats-check-");
    const size = 4 * 1024 * 1024;
    const qcow2 = join(d, "disk.qcow2");
    execFileSync("qemu-img", ["create", "-q", "-f", "qcow2", qcow2, String(size)]);
    await expect(checkDiskFormat("qcow2", qcow2, size)).resolves.toBeUndefined();
    await expect(checkDiskFormat("qcow2", qcow2, size * 2)).rejects.toMatchObject({
      code: "BUILD_FAILED",
      message: expect.stringMatching(/qcow2 disk .*disk\.qcow2 failed its check: its virtual size/),
    });
    // a vmdk asked, a qcow2 found
    await expect(checkDiskFormat("vmdk", qcow2, size)).rejects.toThrow(/reads it as qcow2/);
    // a corrupted qcow2 (its L1 table's offset overwritten): qemu-img check refuses it
    const bad = join(d, "bad.qcow2");
    execFileSync("cp", [qcow2, bad]);
    execFileSync("sh", [
      "-c",
      `printf '\\377\\377\\377\\377' | dd of=${bad} bs=1 seek=40 conv=notrunc status=none`,
    ]);
    await expect(checkDiskFormat("qcow2", bad, size)).rejects.toMatchObject({
      code: "BUILD_FAILED",
    });

    const fixed = join(d, "fixed.vhd");
    const dynamic = join(d, "dynamic.vhd");
    const raw = join(d, "disk.raw");
    execFileSync("qemu-img", ["create", "-q", "-f", "raw", raw, String(size)]);
    execFileSync("qemu-img", [
      "convert",
      "-O",
      "vpc",
      "-o",
      "subformat=fixed,force_size",
      raw,
      fixed,
    ]);
    execFileSync("qemu-img", [
      "convert",
      "-O",
      "vpc",
      "-o",
      "subformat=dynamic,force_size",
      raw,
      dynamic,
    ]);
    await expect(checkDiskFormat("vhd", fixed, size)).resolves.toBeUndefined();
    await expect(checkDiskFormat("vhd", dynamic, size)).rejects.toThrow(/not a fixed VHD/);

    const tgz = join(d, "two.tar.gz");
    execFileSync("cp", [raw, join(d, "other")]);
    execFileSync("tar", ["-czf", tgz, "-C", d, "disk.raw", "other"]);
    await expect(checkDiskFormat("gce", tgz, size)).rejects.toThrow(/exactly the file disk\.raw/);
    const one = join(d, "one.tar.gz");
    execFileSync("tar", ["-czf", one, "-C", d, "disk.raw"]);
    await expect(checkDiskFormat("gce", one, size)).resolves.toBeUndefined();
    await expect(checkDiskFormat("gce", one, size + 512)).rejects.toThrow(/of 4194816 bytes/);
  });
});

describe("an unknown format", () => {
  it("parseFormats: each once, in order; an unknown or empty name names the known ones", () => {
    expect(parseFormats("qcow2,raw,qcow2, GCE")).toEqual(["qcow2", "raw", "gce"]);
    expect(() => parseFormats("qcow2,vdi")).toThrow(
      'unknown disk format "vdi"; known: raw, qcow2, vmdk, vhd, gce',
    );
    expect(() => parseFormats("raw,")).toThrow(/an empty disk format/);
  });

  it("is a usage error before anything is built: --out is not created", async () => {
    const o = join(dir, "never");
    const r = await abforge(["build", DEMO, "--key", key, "--out", o, "--format", "raw,vdi"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('unknown disk format "vdi"; known: raw, qcow2, vmdk, vhd, gce');
    expect(existsSync(o)).toBe(false);
  });
});

describe("an interrupted conversion", () => {
  it("SIGINT while tar writes the GCE tarball: BUILD_INTERRUPTED, --out as it was", async () => {
    const before = dirSnapshot(out);
    const b = startAbforge([
      "--log-level",
      "debug",
      "build",
      DEMO,
      "--key",
      key,
      "--out",
      out,
      "--version",
      "2.0.0",
      "--format",
      "qcow2,gce",
    ]);
    await b.logLine((l) => l.module === "exec" && l.tool === "tar" && typeof l.pid === "number");
    b.child.kill("SIGINT");
    const r = await b.done;
    expect(r.code, r.stderr).toBe(19);
    expect(r.stderr).toMatch(/build interrupted by SIGINT in the format gce step/);
    expect(dirSnapshot(out)).toEqual(before);
  }, 120_000);
});
