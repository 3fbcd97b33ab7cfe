/**
 * Parsers under fuzz: the GPT decoder, the GRUB environment block (and the
 * boot state read from it), the bundle manifest, the streaming bundle (tar)
 * reader and the channel index. Each gets FUZZ_RUNS (10,000) inputs from a
 * seeded generator (fuzz-kit.ts): byte mutations of a valid input, mutations
 * that keep the outer checks passing so the inner ones are reached (CRCs and
 * tar checksums fixed up, JSON re-encoded canonically, the index re-signed),
 * and random bytes. The only failure allowed is the parser's own typed error
 * (its module's BaseError subclass, with a code). Accepted inputs must also
 * keep the parser's promises:
 * - GPT: the decoded table passes the table rules (`tableProblems`);
 * - env block: a parsed boot state encodes and decodes to itself;
 * - manifest: the accepted bytes are exactly `encodeManifest` of the result;
 * - bundle reader: every emitted slot byte is the signed image's byte at that
 *   offset (no unverified byte ever leaves the reader), the manifest is the
 *   signed one;
 * - channel index: a verified index's `signed` is exactly what was signed.
 *
 * Depth is asserted, not only printed: each target names its outer checks
 * (framing, CRC, signature) as stages, computes them itself, and requires a
 * minimum share of its inputs to pass each one and reach the parser behind it
 * (expectDepth); a generator whose inputs all die at the first check fails.
 */

import { sign, verify } from "node:crypto";
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { Readable } from "node:stream";
import { crc32 } from "node:zlib";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  BootloaderError,
  type BootState,
  bootStateFromEnv,
  bootStateToEnv,
  decodeEnv,
  encodeEnv,
  locateFatFile,
  nextBootSlot,
} from "../../src/bootloader/index.ts";
import {
  BundleError,
  BundleReader,
  decodeManifest,
  encodeManifest,
  type KeyObject,
  keyId,
  publicKeyFromPrivate,
} from "../../src/bundle/index.ts";
import {
  decodeGpt,
  encodeGpt,
  GptError,
  PARTITION_TYPES,
  planDisk,
  tableProblems,
} from "../../src/disk/index.ts";
import {
  canonicalJson,
  decodeIndex,
  encodeIndex,
  type IndexSigned,
  RepoError,
  signedBytes,
  signIndex,
  verifyIndex,
} from "../../src/repo/index.ts";
import { type FixtureKey, makeBundle, makeKey, makeSlotImage, tool } from "../helpers/fixtures.ts";
import { tempDir } from "../helpers/tmp.ts";
import {
  describeReport,
  expectDepth,
  type FuzzReport,
  fuzz,
  mutate,
  type Rng,
} from "./fuzz-kit.ts";
import { type BundleParts, bundleParts, fixTarChecksum, recordFigure } from "./helpers.ts";

const FUZZ_DIR = tempDir("abforge-fuzz-");
const reports: FuzzReport[] = [];
afterAll(() => {
  const lines = reports.map(describeReport);
  process.stdout.write(`\n${lines.join("\n")}\n`);
  for (const r of reports) recordFigure(`fuzz inputs, ${r.name}`, r.runs);
});

/** No untyped failure, the full count, and at least `min` of the inputs past each outer check. */
function expectClean(r: FuzzReport, min: Record<string, number>): void {
  reports.push(r);
  expect(r.failures).toEqual([]);
  expect(r.runs).toBeGreaterThanOrEqual(10_000);
  expectDepth(r, min);
}

/** A tar header's checksum as tar computes it (the field counted as spaces). */
function tarChecksumOk(b: Buffer, offset: number): boolean {
  if (offset + 512 > b.length) return false;
  let sum = 0;
  for (let i = 0; i < 512; i++) sum += i >= 148 && i < 156 ? 0x20 : (b[offset + i] as number);
  return Number.parseInt(b.toString("latin1", offset + 148, offset + 156).trim(), 8) === sum;
}

describe("the depth check itself", () => {
  it("fails a generator whose inputs all die at the first check", async () => {
    const r = await fuzz("random bytes as a manifest", {
      runs: 500,
      errorClass: BundleError,
      generate: (rng) => rng.bytes(rng.pick([0, 2, 2048])),
      stages: ["JSON"],
      check(b, reach) {
        try {
          JSON.parse(b.toString());
          reach("JSON");
        } catch {
          // not JSON
        }
        decodeManifest(b);
        return true;
      },
    });
    expect(r.failures).toEqual([]);
    expect(() => expectDepth(r, { JSON: 0.1 })).toThrow(
      /do not reach deep enough: JSON: 0\.0% passed/,
    );
  });
});

// ---------------------------------------------------------------- random JSON values

function randomJson(rng: Rng, depth = 0): unknown {
  switch (rng.int(depth > 1 ? 9 : 11)) {
    case 0:
      return null;
    case 1:
      return rng.bool();
    case 2:
      return rng.pick([0, -1, 1, 2, 1.5, 4096, 1048576, 2 ** 53, -(2 ** 31), 1e308, 64]);
    case 3:
      return rng.int(10_000_000);
    case 4:
      return "";
    case 5:
      return rng.pick(["sha256", "1.0.0", "2.0.0", "stable", "../x", "/abs", "a b", "\u0000", "é"]);
    case 6:
      return "0123456789abcdef".repeat(1 + rng.int(8)).slice(0, rng.pick([16, 63, 64, 65, 128]));
    case 7:
      return rng.bytes(1 + rng.int(20)).toString("latin1");
    case 8:
      return new Date(rng.int(4_000_000_000_000)).toISOString();
    case 9:
      return Array.from({ length: rng.int(4) }, () => randomJson(rng, depth + 1));
    default:
      return { [rng.pick(["a", "size", "version", "__proto__"])]: randomJson(rng, depth + 1) };
  }
}

/** Paths to every value inside a JSON tree. */
function paths(v: unknown, at: (string | number)[] = []): (string | number)[][] {
  const out: (string | number)[][] = [at];
  if (Array.isArray(v)) {
    for (const [i, x] of v.entries()) out.push(...paths(x, [...at, i]));
  } else if (v && typeof v === "object")
    for (const [k, x] of Object.entries(v)) out.push(...paths(x, [...at, k]));
  return out;
}

/** A copy of `doc` with one random structural edit: replace, delete, add a field, or grow an array. */
function mutateJson(rng: Rng, doc: unknown): unknown {
  const copy = structuredClone(doc) as Record<string, unknown>;
  const all = paths(copy).filter((p) => p.length > 0);
  const p = rng.pick(all);
  let parent: unknown = copy;
  for (const k of p.slice(0, -1)) parent = (parent as Record<string | number, unknown>)[k];
  const last = p[p.length - 1] as string | number;
  const obj = parent as Record<string | number, unknown>;
  switch (rng.int(4)) {
    case 0:
      if (Array.isArray(obj)) obj.splice(last as number, 1);
      else delete obj[last];
      break;
    case 1:
      if (!Array.isArray(obj)) obj[rng.pick(["extra", "keyid", "type", "size"])] = randomJson(rng);
      else obj.push(randomJson(rng));
      break;
    default:
      obj[last] = randomJson(rng);
  }
  return copy;
}

// ---------------------------------------------------------------- GPT

describe("GPT decoder", () => {
  it("takes 10,000 generated disks; only GptError escapes; accepted tables are valid", async () => {
    const table = planDisk({
      guidSeed: "fuzz",
      partitions: [
        { name: "esp", typeGuid: PARTITION_TYPES.ESP, sizeBytes: 1024 * 1024 },
        { name: "abforge-A", typeGuid: PARTITION_TYPES.ROOT_X86_64, sizeBytes: 1024 * 1024 },
        { name: "abforge-B", typeGuid: PARTITION_TYPES.ROOT_X86_64, sizeBytes: 1024 * 1024 },
      ],
    });
    const enc = encodeGpt(table);
    const size = Number(table.diskSectors) * table.sectorSize;
    type Disk = Buffer & { tail: Buffer; size: number };
    const disk = (head: Buffer, tail: Buffer, sz: number): Disk =>
      Object.assign(head, { tail, size: sz });
    const head0 = Buffer.from(enc.head);
    const tail0 = Buffer.from(enc.tail);
    const tailOffset = enc.tailOffset;

    /** Recompute the entry-array and header CRCs of a header at `h` (offsets into `buf`, `base` = byte offset of buf in the disk). */
    const fixCrcs = (buf: Buffer, h: number, base: number) => {
      if (h + 92 > buf.length) return;
      const hsize = Math.min(Math.max(buf.readUInt32LE(h + 12), 92), 512);
      const entriesAt = Number(buf.readBigUInt64LE(h + 72)) * 512 - base;
      const count = buf.readUInt32LE(h + 80);
      const esize = buf.readUInt32LE(h + 84);
      const len = count * esize;
      if (entriesAt >= 0 && len > 0 && len < 1 << 20 && entriesAt + len <= buf.length)
        buf.writeUInt32LE(crc32(buf.subarray(entriesAt, entriesAt + len)) >>> 0, h + 88);
      if (h + hsize <= buf.length) {
        buf.writeUInt32LE(0, h + 16);
        buf.writeUInt32LE(crc32(buf.subarray(h, h + hsize)) >>> 0, h + 16);
      }
    };
    const headerFocus: [number, number][] = [
      [446, 512],
      [512, 604],
      [1024, 1024 + 3 * 128],
    ];
    const r = await fuzz("GPT", {
      errorClass: GptError,
      generate(rng) {
        const mode = rng.int(10);
        let head: Buffer = Buffer.from(head0);
        let tail: Buffer = Buffer.from(tail0);
        let sz = size;
        if (mode < 4) {
          // plain byte edits of the primary (and sometimes the backup)
          head = mutate(rng, head, { focus: headerFocus });
          if (rng.bool(0.3)) tail = mutate(rng, tail, { max: 3 });
        } else if (mode < 8) {
          // edits of header fields and entries with the CRCs made right again
          const fields = [8, 12, 24, 32, 40, 48, 72, 80, 84];
          for (let e = 0, n = 1 + rng.int(3); e < n; e++) {
            if (rng.bool(0.6)) {
              const f = rng.pick(fields);
              const wide = f >= 24 && f <= 72;
              const v = rng.pick([0, 1, 2, 33, 34, 127, 128, 129, 0xffffffff, rng.int(20000)]);
              if (wide)
                head.writeBigUInt64LE(
                  (BigInt(v) * (rng.bool(0.1) ? 1n << 40n : 1n)) & 0xffffffffffffffffn,
                  512 + f,
                );
              else head.writeUInt32LE(v >>> 0, 512 + f);
            } else {
              const entry = 1024 + 128 * rng.int(4);
              const off = rng.pick([0, 16, 32, 40, 48, 56, 56 + 2 * rng.int(36)]);
              head = mutate(rng, head, { focus: [[entry + off, entry + off + 8]], max: 2 });
              if (head.length < head0.length)
                head = Buffer.concat([head, Buffer.alloc(head0.length - head.length)]);
            }
          }
          fixCrcs(head, 512, 0);
          if (rng.bool(0.5)) {
            // the same edits on the backup, so it cannot rescue the primary
            tail = mutate(rng, tail, { focus: [[tail.length - 512, tail.length - 420]], max: 2 });
            if (tail.length >= 512) fixCrcs(tail, tail.length - 512, tailOffset);
          }
        } else if (mode < 9) {
          sz = rng.pick([
            0,
            511,
            512,
            1024,
            17408,
            34 * 512,
            size - 512,
            size + 512,
            rng.int(size * 2),
          ]);
        } else {
          head = rng.bytes(rng.pick([512, 1024, head0.length]));
          if (rng.bool()) head.write("EFI PART", 512);
        }
        return disk(head, tail, sz);
      },
      stages: ["signature", "header CRC", "entries CRC"],
      check(d, reach) {
        // the primary header's outer checks, computed here as the UEFI spec says
        if (d.size >= 1024 && d.length >= 604 && d.toString("latin1", 512, 520) === "EFI PART") {
          reach("signature");
          const hsize = d.readUInt32LE(512 + 12);
          if (hsize >= 92 && hsize <= 512 && 512 + hsize <= d.length) {
            const h = Buffer.from(d.subarray(512, 512 + hsize));
            const want = h.readUInt32LE(16);
            h.writeUInt32LE(0, 16);
            if (crc32(h) >>> 0 === want) {
              reach("header CRC");
              const at = Number(d.readBigUInt64LE(512 + 72)) * 512;
              const len = d.readUInt32LE(512 + 80) * d.readUInt32LE(512 + 84);
              if (
                len > 0 &&
                at + len <= d.length &&
                crc32(d.subarray(at, at + len)) >>> 0 === d.readUInt32LE(512 + 88)
              )
                reach("entries CRC");
            }
          }
        }
        const readAt = (offset: number, length: number): Uint8Array => {
          const out = Buffer.alloc(Math.max(0, Math.min(length, d.size - offset)));
          const copy = (src: Buffer, at: number) => {
            const from = Math.max(offset, at);
            const to = Math.min(offset + out.length, at + src.length);
            if (to > from) src.copy(out, from - offset, from - at, to - at);
          };
          copy(d, 0);
          copy(d.tail, tailOffset);
          return out;
        };
        const result = decodeGpt(readAt, d.size, { name: "fuzz.img" });
        const problems = tableProblems(result.table);
        if (problems.length)
          throw new Error(`accepted a table with problems: ${problems.join("; ")}`);
        return true;
      },
    });
    expectClean(r, { signature: 0.5, "header CRC": 0.5, "entries CRC": 0.4 });
  });
});

// ---------------------------------------------------------------- env block

describe("GRUB environment block and boot state", () => {
  it("takes 10,000 generated blocks; only BootloaderError escapes; a parsed state round-trips", async () => {
    const slot = (v: string) => ({
      tries: 0,
      good: true,
      boots: 0,
      rootHash: "ab".repeat(32),
      verity: `123456:31:${"cd".repeat(32)}`,
      version: v,
    });
    const state: BootState = {
      order: ["A", "B"],
      goodTries: 3,
      slots: { A: slot("1.0.0"), B: slot("2.0.0") },
    };
    const vars0 = bootStateToEnv(state);
    const block0 = Buffer.from(encodeEnv(vars0));
    const content = [...vars0].map(([k, v]) => `${k}=${v}\n`).join("").length + 25;
    const alphabet = "0123456789abcdefAB :#=\\\n.-+ABCxyz\u00e9";
    const names = [...vars0.keys(), "x", "order ", "#c", "", "A_tries\n"];
    const r = await fuzz("env block", {
      errorClass: BootloaderError,
      generate(rng) {
        const mode = rng.int(10);
        if (mode < 4) return mutate(rng, block0, { focus: [[0, content + 4]] });
        if (mode < 8) {
          const vars = new Map(vars0);
          for (let e = 0, n = 1 + rng.int(3); e < n; e++) {
            const name = rng.pick(names);
            if (rng.bool(0.15)) vars.delete(name);
            else {
              const len = rng.int(rng.bool(0.8) ? 8 : 300);
              let v = "";
              for (let i = 0; i < len; i++) v += alphabet[rng.int(alphabet.length)];
              if (rng.bool(0.3))
                v = rng.pick(["0", "1", "9", "10", "-1", "A B", "B A", "A A", "1.0", "v1.0.0", ""]);
              vars.set(name, v);
            }
          }
          try {
            return Buffer.from(encodeEnv(vars));
          } catch {
            return mutate(rng, block0, { focus: [[0, content]] });
          }
        }
        if (mode < 9)
          return Buffer.concat([block0.subarray(0, 25), rng.bytes(rng.pick([999, 1000, 1023]))]);
        return rng.bytes(rng.pick([0, 25, 512, 1024, 2048]));
      },
      stages: ["framing", "block"],
      check(b, reach) {
        if (b.length === 1024 && b.toString("latin1", 0, 25) === "# GRUB Environment Block\n")
          reach("framing");
        const vars = decodeEnv(b);
        reach("block");
        const s = bootStateFromEnv(vars);
        nextBootSlot(s);
        const again = bootStateFromEnv(decodeEnv(encodeEnv(bootStateToEnv(s))));
        if (JSON.stringify(again) !== JSON.stringify(s))
          throw new Error("boot state does not round-trip");
        return true;
      },
    });
    expectClean(r, { framing: 0.25, block: 0.2 });
  });
});

// ---------------------------------------------------------------- FAT (the ESP's /GRUBENV)

describe("FAT32 locator of /GRUBENV", () => {
  it("takes 10,000 generated volumes; only BootloaderError escapes; a found file lies inside the volume", async () => {
    const img = join(FUZZ_DIR, "esp.img");
    const kib = 34 * 1024;
    await tool("mkfs.vfat", ["-C", "-F", "32", "-s", "1", "-n", "ESP", img, String(kib)]);
    const env = join(FUZZ_DIR, "GRUBENV");
    await writeFile(env, encodeEnv(new Map([["order", "A B"]])));
    await tool("mcopy", ["-i", img, env, "::/GRUBENV"]);
    const base = await readFile(img);
    const volumeBytes = base.length;
    const read0 = (o: number, n: number) => base.subarray(o, o + n);
    const found0 = locateFatFile(read0, "GRUBENV", { size: 1024, volumeBytes });
    // the bytes that matter: boot sector and FS info, the FAT entries of the
    // root directory's and the file's clusters (both FATs), the root directory
    const bps = base.readUInt16LE(11);
    const reserved = base.readUInt16LE(14);
    const fatBytes = base.readUInt32LE(36) * bps;
    const root = base.readUInt32LE(44);
    const fat0 = reserved * bps;
    const dataStart = fat0 + 2 * fatBytes;
    const clusterBytes = base[13]! * bps;
    const rootDir = dataStart + (root - 2) * clusterBytes;
    const fileFat = fat0 + 4 * found0.firstCluster;
    const focus: [number, number][] = [
      [0, 512],
      [512, 1024],
      [fat0, fat0 + 4 * (root + 2)],
      [fileFat - 8, fileFat + 16],
      [fat0 + fatBytes + fileFat - fat0 - 8, fat0 + fatBytes + fileFat - fat0 + 16],
      [rootDir, rootDir + 128],
    ];
    type Input = Buffer & { patches: { at: number; bytes: Buffer }[]; size: number };
    const r = await fuzz("FAT locator", {
      errorClass: BootloaderError,
      generate(rng): Input {
        const patches: { at: number; bytes: Buffer }[] = [];
        for (let e = 0, n = 1 + rng.int(4); e < n; e++) {
          const [lo, hi] = rng.pick(focus);
          const at = lo + rng.int(Math.max(1, hi - lo));
          const len = rng.pick([1, 1, 1, 2, 4, 4, 8, 32]);
          let bytes: Buffer;
          if (rng.bool(0.5)) {
            bytes = Buffer.from(base.subarray(at, at + len));
            const i = rng.int(len);
            bytes[i] = (bytes[i] as number) ^ (1 << rng.int(8));
          } else if (len === 4 && rng.bool())
            bytes = Buffer.from(
              Uint32Array.of(
                rng.pick([0, 1, 2, 3, root, 0x0ffffff7, 0x0ffffff8, 0xffffffff, rng.int(70000)]),
              ).buffer,
            );
          else bytes = rng.bytes(len);
          patches.push({ at, bytes });
        }
        const size = rng.bool(0.1)
          ? rng.pick([0, 511, 4096, 1 << 20, volumeBytes - 512])
          : volumeBytes;
        // the patches as the input's bytes, for a saved failure
        const flat = Buffer.concat(
          patches.map((p) => Buffer.concat([Buffer.from(`${p.at}:`), p.bytes])),
        );
        return Object.assign(flat, { patches, size });
      },
      stages: ["boot sector", "located"],
      check(input, reach) {
        const readAt = (o: number, n: number): Uint8Array => {
          const len = Math.max(0, Math.min(n, input.size - o));
          const out = Buffer.from(base.subarray(o, o + len));
          for (const p of input.patches) {
            const from = Math.max(o, p.at);
            const to = Math.min(o + len, p.at + p.bytes.length);
            if (to > from) p.bytes.copy(out, from - o, from - p.at, to - p.at);
          }
          return out;
        };
        const bs = Buffer.from(readAt(0, 512));
        if (
          bs.length === 512 &&
          bs.readUInt16LE(510) === 0xaa55 &&
          bs.toString("latin1", 82, 90) === "FAT32   "
        )
          reach("boot sector");
        const f = locateFatFile(readAt, "GRUBENV", { size: 1024, volumeBytes: input.size });
        reach("located");
        if (f.offset < 0 || f.offset + f.size > input.size)
          throw new Error(
            `located ${f.size} bytes at ${f.offset}, outside the ${input.size}-byte volume`,
          );
        return true;
      },
    });
    expectClean(r, { "boot sector": 0.5, located: 0.3 });
  });
});

// ---------------------------------------------------------------- manifest, bundle reader, index

let key: FixtureKey;
/** A bundle whose slot image is a little over one chunk (two chunks, the last one short). */
let parts: BundleParts;
/** A bundle with a small slot image (one short chunk): most reader inputs use it, for speed. */
let small: BundleParts;

beforeAll(async () => {
  key = await makeKey(join(FUZZ_DIR, "key"));
  // One full chunk and a bit: the reader's chunk boundary, last-chunk and whole-image paths.
  const slot = await makeSlotImage(join(FUZZ_DIR, "slot.img"), {
    version: "2.0.0",
    compatible: "demo-x86_64",
    trustedKeys: [key.publicKey],
    payloadBytes: 1024 * 1024,
  });
  const b = await makeBundle(join(FUZZ_DIR, "fuzz.bundle"), slot, key.privateKey);
  parts = await bundleParts(b.path);
  const slot2 = await makeSlotImage(join(FUZZ_DIR, "small.img"), {
    version: "2.0.0",
    compatible: "demo-x86_64",
    trustedKeys: [key.publicKey],
    payloadBytes: 16 * 1024,
  });
  small = await bundleParts(
    (await makeBundle(join(FUZZ_DIR, "small.bundle"), slot2, key.privateKey)).path,
  );
}, 120_000);

/** The manifest's JSON as decodeManifest wants it: no whitespace, `\n`, spaces up to 4096k + 2048. */
function canonicalManifest(doc: unknown, pad = true): Buffer {
  const json = `${JSON.stringify(doc)}\n`;
  const n = Buffer.byteLength(json);
  const size = pad ? Math.max(2048, Math.ceil((n - 2048) / 4096) * 4096 + 2048) : n;
  return Buffer.concat([Buffer.from(json), Buffer.alloc(Math.max(0, size - n), 0x20)]);
}

describe("bundle manifest", () => {
  it("takes 10,000 generated manifests; only BundleError escapes; accepted bytes re-encode exactly", async () => {
    const bytes0 = Buffer.from(parts.manifest);
    const doc0 = JSON.parse(bytes0.toString()) as unknown;
    const jsonLen = bytes0.indexOf(0x0a) + 1;
    const r = await fuzz("manifest", {
      errorClass: BundleError,
      generate(rng) {
        const mode = rng.int(10);
        if (mode < 4) return mutate(rng, bytes0, { focus: [[0, jsonLen + 2]] });
        if (mode < 8) {
          let doc = doc0;
          for (let e = 0, n = 1 + rng.int(2); e < n; e++) doc = mutateJson(rng, doc);
          return canonicalManifest(doc, rng.bool(0.9));
        }
        if (mode < 9) {
          const json = bytes0.subarray(0, jsonLen);
          return Buffer.concat([
            json,
            Buffer.alloc(
              rng.pick([0, 1, 2047, 2048 - jsonLen, 4096]),
              rng.pick([0x20, 0x00, 0x0a]),
            ),
          ]);
        }
        return rng.bytes(rng.pick([0, 2, 2048, 6144]));
      },
      stages: ["JSON", "framing"],
      check(b, reach) {
        const nl = b.indexOf(0x0a);
        try {
          const doc = JSON.parse(b.toString("utf8", 0, nl < 0 ? b.length : nl)) as unknown;
          if (doc && typeof doc === "object" && !Array.isArray(doc)) {
            reach("JSON");
            // canonical JSON, one newline, space padding to the size rule: what the schema check sees
            if (Buffer.compare(canonicalManifest(doc), b) === 0) reach("framing");
          }
        } catch {
          // not JSON: refused at the first check
        }
        const m = decodeManifest(b);
        if (Buffer.compare(Buffer.from(encodeManifest(m)), b) !== 0)
          throw new Error("accepted bytes that are not the manifest's own encoding");
        return true;
      },
    });
    expectClean(r, { JSON: 0.4, framing: 0.25 });
  });
});

describe("bundle reader (tar stream)", () => {
  it("takes 10,000 generated bundles; only BundleError escapes; no unverified slot byte is emitted", async () => {
    type Input = Buffer & { cuts: number[]; base: BundleParts };
    const layout = (p: BundleParts) => ({
      p,
      headers: [0, 512 + p.M, 1536 + p.M, p.slotOffset + Math.ceil(p.slot.length / 512) * 512],
    });
    const bases = [layout(parts), layout(small)];
    const r = await fuzz("bundle reader", {
      errorClass: BundleError,
      generate(rng): Input {
        // one input in five on the two-chunk bundle, the rest on the small one
        const { p, headers } = rng.bool(0.2)
          ? (bases[0] as ReturnType<typeof layout>)
          : (bases[1] as ReturnType<typeof layout>);
        const bytes0 = p.bytes;
        const s = p.slotOffset;
        const slot0 = p.slot;
        const mode = rng.int(20);
        let b: Buffer;
        if (mode < 7) {
          b = mutate(rng, bytes0, { focus: [[0, s]], max: 3 });
          if (rng.bool())
            for (const h of headers.slice(0, 3)) if (h + 512 <= b.length) fixTarChecksum(b, h);
        } else if (mode < 10) {
          // one tar header field set to something else, checksum fixed
          b = Buffer.from(bytes0);
          const h = rng.pick(headers.slice(0, 3));
          const [at, len] = rng.pick([
            [0, 100],
            [100, 8],
            [124, 12],
            [136, 12],
            [156, 1],
            [157, 100],
            [257, 8],
            [345, 155],
          ] as const);
          const v = rng.bool()
            ? rng.pick([
                "../x",
                "/slot.img",
                "manifest.json",
                "manifest.sig",
                "slot.img",
                "x",
                "5",
                "2",
                "L",
                "ustar  \0",
              ])
            : rng.bool()
              ? `${rng
                  .int(2 ** 33)
                  .toString(8)
                  .padStart(11, "0")} `
              : rng.bytes(len).toString("latin1");
          b.fill(0, h + at, h + at + len);
          b.write(v, h + at, len, "latin1");
          if (rng.bool(0.1)) b[h + 124] = 0x80;
          fixTarChecksum(b, h);
        } else if (mode < 14) {
          b = mutate(rng, bytes0, { focus: [[s, s + slot0.length]], max: 2 });
        } else if (mode < 17) {
          b = bytes0.subarray(0, rng.int(bytes0.length + 1));
        } else if (mode < 19) {
          b = mutate(rng, bytes0, { focus: [[bytes0.length - 1536, bytes0.length]], max: 2 });
        } else b = rng.bytes(rng.pick([0, 511, 512, 4096, 8192]));
        // delivered in random pieces
        const cuts: number[] = [];
        for (let at = 0; at < b.length; ) {
          at += 1 + rng.int(rng.bool(0.2) ? 700 : 300_000);
          cuts.push(Math.min(at, b.length));
        }
        return Object.assign(b, { cuts, base: p });
      },
      stages: ["tar header", "signature", "slot data"],
      async check(b, reach) {
        const { cuts, base } = b;
        if (tarChecksumOk(b, 0)) reach("tar header");
        const slot0 = base.slot;
        const pieces = cuts.map((end, i) => b.subarray(i === 0 ? 0 : (cuts[i - 1] as number), end));
        const reader = new BundleReader(Readable.from(pieces, { objectMode: false }), {
          trustedKeys: [key.publicKey],
          name: "fuzz.bundle",
        });
        const m = await reader.open();
        reach("signature");
        if (Buffer.compare(Buffer.from(encodeManifest(m)), base.manifest) !== 0)
          throw new Error("open() accepted a manifest that is not the signed one");
        let at = 0;
        for await (const piece of reader.slotImage() as AsyncIterable<Buffer>) {
          reach("slot data");
          if (Buffer.compare(piece, slot0.subarray(at, at + piece.length)) !== 0)
            throw new Error(`emitted slot bytes at ${at} that differ from the signed image`);
          at += piece.length;
        }
        if (at !== slot0.length)
          throw new Error(`emitted ${at} slot bytes of ${slot0.length} without an error`);
        await reader.finish();
        return true;
      },
    });
    expectClean(r, { "tar header": 0.5, signature: 0.3, "slot data": 0.05 });
  });
});

/** `signed` with one to three fields set to other values of the right type and shape. */
function plausibleEdit(rng: Rng, signed: IndexSigned): IndexSigned {
  const out = structuredClone(signed) as IndexSigned & Record<string, unknown>;
  const latest = out.latest as unknown as Record<string, unknown>;
  const day = (d: number) => new Date(Date.UTC(2026, 5, 1) + d * 86_400_000).toISOString();
  const edits: (() => void)[] = [
    () => {
      out.serial = rng.pick([0, 1, 6, 7, 8, 100, 2 ** 31]);
    },
    () => {
      out.channel = rng.pick(["stable", "beta", "Stable", "stable-2"]);
    },
    () => {
      out.name = rng.pick(["demo", "other", "demo2"]);
    },
    () => {
      out.compatible = rng.pick(["demo-x86_64", "other-board_arm64"]);
    },
    () => {
      out.issuedAt = day(rng.pick([-60, -2, 0, 1, 30]));
    },
    () => {
      out.expiresAt = day(rng.pick([-30, -1, 0, 1, 29, 400]));
    },
    () => {
      latest.version = rng.pick(["2.0.0", "2.0.1", "1.0.0", "10.0.0", "2.0.0-rc.1"]);
    },
    () => {
      latest.bundle = rng.pick([
        "../bundles/demo-2.0.0.bundle",
        "../bundles/x.bundle",
        "demo.bundle",
      ]);
    },
    () => {
      latest.size = rng.pick([0, 1, 512, 123456, 2 ** 40]);
    },
    () => {
      latest.slotDataOffset = rng.pick([0, 512, 4096, 4095, 123456]);
    },
    () => {
      latest.minUpdateFrom = rng.pick(["1.0.0", "0.0.1", "2.0.0", "3.0.0"]);
    },
    () => {
      out.rollout = { percent: rng.pick([0, 1, 50, 99, 100]) };
    },
  ];
  for (let e = 0, n = 1 + rng.int(3); e < n; e++) rng.pick(edits)();
  return out;
}

describe("channel index", () => {
  it("takes 10,000 generated indexes; only RepoError escapes; a verified index holds exactly what was signed", async () => {
    const now = new Date("2026-06-01T00:00:00Z");
    const signed0: IndexSigned = {
      type: "abforge-channel-index",
      formatVersion: 2,
      channel: "stable",
      name: "demo",
      compatible: "demo-x86_64",
      serial: 7,
      issuedAt: "2026-05-30T00:00:00.000Z",
      expiresAt: "2026-06-30T00:00:00.000Z",
      latest: {
        version: "2.0.0",
        bundle: "../bundles/demo-2.0.0.bundle",
        size: 123456,
        sha256: "ab".repeat(32),
        slotDataOffset: 4096,
        manifestSha256: "cd".repeat(32),
        minUpdateFrom: "1.0.0",
      },
      rollout: { percent: 100 },
    };
    const bytes0 = Buffer.from(encodeIndex(signIndex(signed0, key.privateKey)));
    const doc0 = JSON.parse(bytes0.toString()) as { signed: IndexSigned; signatures: unknown[] };
    const canon0 = canonicalJson(signed0);
    type Input = Buffer & { signedAs: string };
    const signRaw = (signed: unknown, k: KeyObject) => {
      const sig = sign(null, signedBytes(signed as IndexSigned), k).toString("base64");
      return { signed, signatures: [{ keyid: keyId(publicKeyFromPrivate(k)), sig }] };
    };
    const r = await fuzz("channel index", {
      errorClass: RepoError,
      generate(rng): Input {
        const mode = rng.int(10);
        let b: Buffer;
        let signedAs = canon0;
        if (mode < 4) b = mutate(rng, bytes0);
        else if (mode < 7) {
          const doc = mutateJson(rng, doc0);
          b = Buffer.from(JSON.stringify(doc, null, rng.pick([0, 2, 4])));
        } else if (mode < 9) {
          // changed and signed again by the trusted key: past the signature, into the later
          // checks; half of the edits are values of the right type and shape, past the
          // schema into the channel, expiry, serial and version rules
          const signed = rng.bool() ? mutateJson(rng, signed0) : plausibleEdit(rng, signed0);
          try {
            b = Buffer.from(JSON.stringify(signRaw(signed, key.privateKey), null, 2));
            signedAs = canonicalJson(signed);
          } catch {
            b = mutate(rng, bytes0); // not canonical-JSON-able (a float): a plain mutation instead
          }
        } else
          b = rng.bool() ? rng.bytes(rng.int(2048)) : Buffer.from(JSON.stringify(randomJson(rng)));
        return Object.assign(b, { signedAs });
      },
      stages: ["JSON", "signature", "schema"],
      check(b, reach) {
        // the outer checks, computed here: JSON, then the trusted key's signature over `signed`
        let raw: { signed?: unknown; signatures?: { sig?: unknown }[] } | undefined;
        try {
          raw = JSON.parse(b.toString("utf8"));
        } catch {
          // not JSON
        }
        if (raw && typeof raw === "object" && !Array.isArray(raw)) {
          reach("JSON");
          const sig = Array.isArray(raw.signatures) ? raw.signatures[0]?.sig : undefined;
          try {
            if (
              typeof sig === "string" &&
              verify(
                null,
                signedBytes(raw.signed as IndexSigned),
                key.publicKey,
                Buffer.from(sig, "base64"),
              )
            )
              reach("signature");
          } catch {
            // a signed part that cannot be encoded: not past the signature
          }
        }
        decodeIndex(b);
        reach("schema");
        const v = verifyIndex(b, {
          channel: "stable",
          trustedKeys: [key.publicKey],
          now,
          minSerial: 7,
          minSerialDigest: "00".repeat(32),
        });
        if (canonicalJson(v.signed) !== b.signedAs)
          throw new Error("verified an index whose content is not what was signed");
        return true;
      },
    });
    expectClean(r, { JSON: 0.4, signature: 0.15, schema: 0.05 });
  });
});
