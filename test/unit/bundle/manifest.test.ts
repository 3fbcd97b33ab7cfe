/** The manifest codec (src/bundle/README.md, "Manifest"). */
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  BundleError,
  CHUNK_SIZE,
  decodeManifest,
  encodeManifest,
  MAX_MANIFEST_BYTES,
  type Manifest,
  slotDataOffset,
  validateManifest,
} from "../../../src/bundle/index.ts";
import { expectCode } from "./fixtures.ts";

const hex = (c: string, n: number) => c.repeat(n);

/** A valid manifest of a 2.5 MiB slot image (data 2 MiB, tree after it). */
function sample(): Manifest {
  const size = 2 * CHUNK_SIZE + 512 * 1024;
  return {
    formatVersion: 1,
    name: "demo",
    compatible: "x86_64-efi-demo",
    version: "1.2.3-rc.1+build.5",
    createdAt: "2026-05-01T12:00:00Z",
    keyId: "0123456789abcdef",
    slotImage: {
      size,
      sha256: hex("a", 64),
      chunkSize: CHUNK_SIZE,
      chunks: [hex("1", 64), hex("2", 64), hex("3", 64)],
    },
    verity: {
      hashAlgorithm: "sha256",
      dataBlockSize: 4096,
      hashBlockSize: 4096,
      dataBlocks: 512,
      salt: hex("5", 64),
      uuid: "e7dbabed-c67a-46d9-9d43-fbdfac158f7c",
      superblock: true,
      hashOffset: 2 * CHUNK_SIZE,
      hashStartBlock: 513,
      hashAreaSize: 16384,
      rootHash: hex("b", 64),
    },
  };
}

const text = (b: Uint8Array) => new TextDecoder().decode(b);
const bytes = (s: string) => new TextEncoder().encode(s);

function issuesOf(fn: () => unknown): { field: string; problem: string }[] {
  try {
    fn();
  } catch (err) {
    const e = expectCode(err, "BUNDLE_BAD_MANIFEST");
    return e.details.issues as { field: string; problem: string }[];
  }
  throw new Error("expected BUNDLE_BAD_MANIFEST");
}

describe("manifest codec", () => {
  it("round-trips and is canonical: schema key order, no whitespace, newline, space padding", () => {
    const m = sample();
    const b = encodeManifest(m);
    expect(decodeManifest(b)).toEqual(m);
    const t = text(b);
    const json = t.trimEnd();
    expect(json).toBe(JSON.stringify(JSON.parse(json)));
    expect(Object.keys(JSON.parse(json))).toEqual([
      "formatVersion",
      "name",
      "compatible",
      "version",
      "createdAt",
      "keyId",
      "slotImage",
      "verity",
    ]);
    expect(t.slice(json.length)).toMatch(/^\n *$/);
    // README "Tar layout": 4096k + 2048 bytes, so the slot data is 4096-aligned.
    expect(b.length % 4096).toBe(2048);
    expect(slotDataOffset(b.length, 64) % 4096).toBe(0);
  });

  it("encodes the same manifest to the same bytes whatever the key order of the input", () => {
    const m = sample();
    const reversed = <T extends object>(o: T) =>
      Object.fromEntries(Object.entries(o).reverse()) as T;
    const shuffled = reversed({
      ...m,
      slotImage: reversed(m.slotImage),
      verity: reversed(m.verity),
    });
    expect(Object.keys(shuffled)[0]).toBe("verity");
    expect(encodeManifest(shuffled)).toEqual(encodeManifest(m));
  });

  it("pads to the next 4096k + 2048 when the JSON grows past 2048 bytes", () => {
    const m = sample();
    m.slotImage.size = 40 * CHUNK_SIZE;
    m.slotImage.chunks = Array.from({ length: 40 }, (_, i) => i.toString(16).padStart(64, "0"));
    const b = encodeManifest(m);
    expect(b.length).toBeGreaterThan(2048);
    expect(b.length % 4096).toBe(2048);
    expect(decodeManifest(b)).toEqual(m);
  });

  it("reports every invalid field in one error", () => {
    const bad = {
      formatVersion: "2",
      name: "../etc",
      compatible: "",
      version: "v1.2",
      createdAt: "2026-02-30T00:00:00Z",
      keyId: "XYZ",
      extra: true,
      slotImage: { size: -1, sha256: "AB", chunkSize: 4096, chunks: ["zz"], more: 1 },
      verity: {
        hashAlgorithm: "md5",
        dataBlockSize: 1000,
        hashBlockSize: 8192,
        dataBlocks: 0,
        salt: "abc",
        uuid: "not-a-uuid",
        superblock: "yes",
        hashOffset: -4096,
        hashStartBlock: 1.5,
        hashAreaSize: 0,
        rootHash: "00",
      },
    };
    const issues = issuesOf(() => decodeManifest(bytes(JSON.stringify(bad))));
    const fields = issues.map((i) => i.field).sort();
    expect(fields).toEqual(
      [
        "formatVersion",
        "name",
        "compatible",
        "version",
        "createdAt",
        "keyId",
        "extra",
        "slotImage.size",
        "slotImage.sha256",
        "slotImage.chunkSize",
        "slotImage.chunks[0]",
        "slotImage.more",
        "verity.hashAlgorithm",
        "verity.dataBlockSize",
        "verity.hashBlockSize",
        "verity.dataBlocks",
        "verity.salt",
        "verity.uuid",
        "verity.superblock",
        "verity.hashOffset",
        "verity.hashStartBlock",
        "verity.hashAreaSize",
      ].sort(),
    );
    // verity.rootHash is not checked against an unknown algorithm's length; the message lists all.
    const err = (() => {
      try {
        decodeManifest(bytes(JSON.stringify(bad)), "bundle x.bundle: manifest.json");
      } catch (e) {
        return e as BundleError;
      }
    })();
    expect(err?.message).toMatch(/^bundle x\.bundle: manifest\.json: 22 invalid fields: /);
    expect(err?.message).not.toContain("\n");
  });

  it("reports missing fields", () => {
    const m = sample() as Partial<Manifest>;
    delete m.version;
    delete m.verity;
    const fields = issuesOf(() => decodeManifest(bytes(JSON.stringify(m)))).map((i) => i.field);
    expect(fields).toEqual(["version", "verity"]);
  });

  it("checks fields against each other", () => {
    const m = sample();
    m.slotImage.chunks.pop();
    m.verity.hashStartBlock = 512; // superblock: must be hashOffset/4096 + 1 = 513
    m.verity.hashAreaSize = 1024 * 1024; // past the end of the slot image
    m.verity.dataBlocks = 600; // data area reaches past hashOffset
    const issues = issuesOf(() => encodeManifest(m));
    expect(issues.map((i) => i.field)).toEqual([
      "slotImage.chunks",
      "verity.hashStartBlock",
      "verity.hashOffset",
      "verity.hashAreaSize",
    ]);
    expect(issues[0]?.problem).toMatch(/must have 3 entries/);
  });

  it("accepts a manifest without a superblock or uuid and each hash algorithm", () => {
    for (const [alg, len] of [
      ["sha1", 40],
      ["sha512", 128],
    ] as const) {
      const m = sample();
      m.verity = { ...m.verity, hashAlgorithm: alg, rootHash: hex("c", len), uuid: null };
      m.verity.superblock = false;
      m.verity.hashStartBlock = 512;
      expect(decodeManifest(encodeManifest(m))).toEqual(m);
    }
    const m = sample();
    m.verity.rootHash = hex("c", 40); // sha256 needs 64
    expect(issuesOf(() => encodeManifest(m)).map((i) => i.field)).toEqual(["verity.rootHash"]);
  });

  it("validates the version with semver, strictly", () => {
    for (const v of ["1.2", "v1.2.3", "01.2.3", " 1.2.3", "1.2.3 ", "latest"]) {
      const m = { ...sample(), version: v };
      expect(validateManifest(m).map((i) => i.field)).toEqual(["version"]);
    }
    for (const v of ["0.0.0", "10.20.30", "1.0.0-alpha.1", "1.0.0+sha.5114f85"])
      expect(validateManifest({ ...sample(), version: v })).toEqual([]);
  });

  it("refuses bytes that are not in canonical form", () => {
    const b = encodeManifest(sample());
    const t = text(b);
    const json = t.trimEnd();
    const variants = {
      "no padding": json,
      "pretty-printed": JSON.stringify(JSON.parse(json), null, 2),
      "padding one short": t.slice(0, -1),
      "padding one long": `${t} `,
      "tab instead of space": `${t.slice(0, -1)}\t`,
      "keys reordered": t.replace(
        '{"formatVersion":1,"name":"demo"',
        '{"name":"demo","formatVersion":1',
      ),
      "duplicate key": t.replace('"name":"demo"', '"name":"evil","name":"demo"').slice(0, t.length),
    };
    for (const [what, v] of Object.entries(variants)) {
      const err = (() => {
        try {
          decodeManifest(bytes(v));
        } catch (e) {
          return e;
        }
      })();
      expectCode(err, "BUNDLE_BAD_MANIFEST");
      expect((err as Error).message, what).toMatch(/canonical/);
    }
  });

  it("refuses non-UTF-8, non-JSON, non-objects and oversized input", () => {
    expectCode(
      catchOf(() => decodeManifest(Uint8Array.of(0xff, 0xfe))),
      "BUNDLE_BAD_MANIFEST",
    );
    expectCode(
      catchOf(() => decodeManifest(bytes("{"))),
      "BUNDLE_BAD_MANIFEST",
    );
    expect(issuesOf(() => decodeManifest(bytes("[1]")))[0]?.field).toBe("(manifest)");
    expect(issuesOf(() => decodeManifest(bytes("null")))[0]?.field).toBe("(manifest)");
    const big = new Uint8Array(MAX_MANIFEST_BYTES + 1).fill(0x20);
    expect(catchOf(() => decodeManifest(big))?.message).toMatch(/over the limit of 2097152/);
  });

  it("caps the number of chunk hashes it names", () => {
    const m = sample() as unknown as { slotImage: { chunks: string[] } };
    m.slotImage.chunks = ["x", "x", "x"];
    const issues = validateManifest(m);
    expect(issues.filter((i) => i.field.startsWith("slotImage.chunks[")).length).toBe(3);
    const many = { ...sample(), slotImage: { ...sample().slotImage, size: 20 * CHUNK_SIZE } };
    many.slotImage.chunks = Array(20).fill("x");
    many.verity.hashAreaSize = 4096;
    const named = validateManifest(many).filter((i) => i.field.startsWith("slotImage.chunks"));
    expect(named.length).toBe(6);
    expect(named[5]?.problem).toBe("has 15 more invalid entries");
  });

  it("only ever throws BUNDLE_BAD_MANIFEST on mutated bytes (fuzz)", () => {
    const good = encodeManifest(sample());
    fc.assert(
      fc.property(
        fc.array(fc.tuple(fc.nat(good.length - 1), fc.integer({ min: 0, max: 255 })), {
          minLength: 1,
          maxLength: 8,
        }),
        fc.option(fc.nat(good.length), { nil: undefined }),
        (edits, cut) => {
          const b = Uint8Array.from(good);
          for (const [i, v] of edits) b[i] = v;
          const input = cut === undefined ? b : b.subarray(0, cut);
          try {
            const m = decodeManifest(input);
            // Accepted only if the bytes are canonical, i.e. re-encode identically.
            expect(encodeManifest(m)).toEqual(input);
          } catch (err) {
            expect(err).toBeInstanceOf(BundleError);
            expect((err as BundleError).code).toBe("BUNDLE_BAD_MANIFEST");
          }
        },
      ),
      { numRuns: 3000 },
    );
  });

  it("only ever throws BUNDLE_BAD_MANIFEST on arbitrary JSON (fuzz)", () => {
    fc.assert(
      fc.property(fc.jsonValue(), (v) => {
        const err = catchOf(() => decodeManifest(bytes(JSON.stringify(v))));
        expectCode(err, "BUNDLE_BAD_MANIFEST");
      }),
      { numRuns: 1000 },
    );
    // Valid structure with one random field: either listed as invalid or round-trips.
    const m = sample();
    fc.assert(
      fc.property(fc.constantFrom(...Object.keys(m.verity)), fc.jsonValue(), (field, value) => {
        const v = { ...m, verity: { ...m.verity, [field]: value } } as Manifest;
        const issues = validateManifest(v);
        if (issues.length === 0) expect(decodeManifest(encodeManifest(v))).toEqual(v);
        else expect(issues.every((i) => i.field.startsWith("verity."))).toBe(true);
      }),
      { numRuns: 1000 },
    );
  });
});

function catchOf(fn: () => unknown): Error | undefined {
  try {
    fn();
  } catch (e) {
    return e as Error;
  }
  return undefined;
}
