/** src/repo/README.md: "Index schema", "Signature", "Checks an agent makes". */
import { generateKeyPairSync } from "node:crypto";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  bundlePathFromRoot,
  canonicalJson,
  decodeIndex,
  encodeIndex,
  type IndexSigned,
  indexDigest,
  RepoError,
  resolveBundleUrl,
  rolloutBucket,
  signIndex,
  verifyIndex,
} from "../../../src/repo/index.ts";

const oldKey = generateKeyPairSync("ed25519");
const newKey = generateKeyPairSync("ed25519");
const strangerKey = generateKeyPairSync("ed25519");

function signed(over: Partial<IndexSigned> = {}): IndexSigned {
  return {
    type: "abforge-channel-index",
    formatVersion: 2,
    channel: "stable",
    name: "demo",
    compatible: "demo-x86_64",
    serial: 7,
    issuedAt: "2026-03-01T00:00:00.000Z",
    expiresAt: "2026-03-31T00:00:00.000Z",
    latest: {
      version: "2.0.0",
      bundle: "../bundles/demo-2.0.0.bundle",
      size: 123456,
      sha256: "ab".repeat(32),
      slotDataOffset: 2048,
      manifestSha256: "cd".repeat(32),
      minUpdateFrom: "1.0.0",
    },
    rollout: { percent: 100 },
    ...over,
  };
}

const now = new Date("2026-03-10T00:00:00.000Z");
const opts = { channel: "stable", trustedKeys: [oldKey.publicKey], now, minSerial: 0 };

function code(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    if (err instanceof RepoError) return err.code;
    throw err;
  }
  return "no error";
}

describe("channel index codec", () => {
  it("round-trips encode → decode", () => {
    const index = signIndex(signed(), oldKey.privateKey);
    const bytes = encodeIndex(index);
    expect(decodeIndex(bytes)).toEqual(index);
    expect(new TextDecoder().decode(bytes).endsWith("}\n")).toBe(true);
  });

  it("reports every bad field at once", () => {
    const index = signIndex(signed(), oldKey.privateKey);
    const doc = JSON.parse(new TextDecoder().decode(encodeIndex(index)));
    doc.signed.type = "something-else";
    doc.signed.serial = -1;
    doc.signed.expiresAt = "tomorrow";
    doc.signed.latest.sha256 = "XYZ";
    doc.signed.latest.version = "v2";
    doc.signed.latest.bundle = "../../etc/passwd";
    doc.signed.rollout.percent = 101;
    doc.signed.extra = true;
    delete doc.signed.compatible;
    doc.signatures[0].sig = "not base64!";
    try {
      decodeIndex(new TextEncoder().encode(JSON.stringify(doc)));
      expect.fail("decodeIndex accepted a bad index");
    } catch (err) {
      expect(err).toBeInstanceOf(RepoError);
      const e = err as RepoError;
      expect(e.code).toBe("REPO_BAD_INDEX");
      const problems = e.details.problems as string[];
      for (const field of [
        "signed.type",
        "signed.serial",
        "signed.expiresAt",
        "signed.latest.sha256",
        "signed.latest.version",
        "signed.latest.bundle",
        "signed.rollout.percent",
        "signed.extra",
        "signed.compatible",
        "signatures[0].sig",
      ])
        expect(
          problems.some((p) => p.startsWith(`${field}:`)),
          field,
        ).toBe(true);
      expect(problems).toHaveLength(10);
    }
  });

  it("refuses non-JSON, non-UTF-8 and non-object input", () => {
    for (const bad of ["", "nul", "[]", '{"signed":1}', "\u00ff"]) {
      expect(code(() => decodeIndex(new TextEncoder().encode(bad)))).toBe("REPO_BAD_INDEX");
    }
    expect(code(() => decodeIndex(new Uint8Array([0xff, 0xfe])))).toBe("REPO_BAD_INDEX");
  });

  it("refuses an index whose expiry is not after its issue time, or minUpdateFrom above the version", () => {
    expect(
      code(() =>
        encodeIndex(
          signIndex(signed({ expiresAt: "2026-03-01T00:00:00.000Z" }), oldKey.privateKey),
        ),
      ),
    ).toBe("REPO_BAD_INDEX");
    const s = signed();
    s.latest.minUpdateFrom = "3.0.0";
    expect(code(() => signIndex(s, oldKey.privateKey))).toBe("REPO_BAD_INDEX");
  });

  it("never throws anything but REPO_BAD_INDEX on arbitrary or mutated input", () => {
    const good = JSON.parse(
      new TextDecoder().decode(encodeIndex(signIndex(signed(), oldKey.privateKey))),
    );
    fc.assert(
      fc.property(
        fc.oneof(
          fc.uint8Array({ maxLength: 200 }),
          fc.jsonValue().map((v) => new TextEncoder().encode(JSON.stringify(v))),
          fc
            .tuple(
              fc.constantFrom("type", "serial", "channel", "latest", "rollout", "issuedAt"),
              fc.jsonValue(),
            )
            .map(([k, v]) => {
              const doc = structuredClone(good);
              doc.signed[k] = v;
              return new TextEncoder().encode(JSON.stringify(doc));
            }),
        ),
        (bytes) => {
          try {
            decodeIndex(bytes);
          } catch (err) {
            expect(err).toBeInstanceOf(RepoError);
            expect((err as RepoError).code).toBe("REPO_BAD_INDEX");
          }
        },
      ),
      { numRuns: 500 },
    );
  });
});

describe("canonical JSON", () => {
  it("sorts keys at every level and has no whitespace", () => {
    expect(canonicalJson({ b: 1, a: { d: [1, "x"], c: null } })).toBe(
      '{"a":{"c":null,"d":[1,"x"]},"b":1}',
    );
  });

  it("is the same for any key order (property)", () => {
    fc.assert(
      fc.property(
        fc.dictionary(fc.string(), fc.oneof(fc.integer(), fc.string(), fc.boolean())),
        (obj) => {
          const reversed = Object.fromEntries(Object.entries(obj).reverse());
          expect(canonicalJson(reversed)).toBe(canonicalJson(obj));
          expect(JSON.parse(canonicalJson(obj))).toEqual(obj);
        },
      ),
    );
  });

  it("refuses fractions", () => {
    expect(() => canonicalJson({ a: 1.5 })).toThrow(/safe integers/);
  });
});

describe("verifyIndex", () => {
  const bytes = (s: IndexSigned, keys = [oldKey.privateKey]) => encodeIndex(signIndex(s, keys));

  it("accepts a valid index and returns its digest and key", () => {
    const v = verifyIndex(bytes(signed()), opts);
    expect(v.signed.latest.version).toBe("2.0.0");
    expect(v.digest).toBe(indexDigest(signed()));
    expect(v.keyId).toMatch(/^[0-9a-f]+$/);
  });

  it("returns the manifest digest the index commits to", () => {
    expect(verifyIndex(bytes(signed()), opts).manifestSha256).toBe("cd".repeat(32));
  });

  it("refuses a format 1 index, which does not commit to the bundle's manifest (README.md, Format versions)", () => {
    const { manifestSha256: _, ...latest } = signed().latest;
    const v1 = signed({ formatVersion: 1, latest });
    // decodeIndex reads it (a publish continues the serial), the agent refuses it
    expect(decodeIndex(bytes(v1)).signed.formatVersion).toBe(1);
    let err: unknown;
    try {
      verifyIndex(bytes(v1), opts);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(RepoError);
    expect((err as RepoError).code).toBe("REPO_BAD_INDEX");
    expect((err as RepoError).details.reason).toBe("old-format");
    expect((err as RepoError).message).toMatch(/format 1.*does not commit.*publish it again/);
    // only after the signature: an unsigned old index is untrusted, not "old"
    expect(code(() => verifyIndex(bytes(v1, [strangerKey.privateKey]), opts))).toBe(
      "REPO_UNTRUSTED",
    );
  });

  it("format 2 requires manifestSha256; format 1 may not carry it", () => {
    const { manifestSha256: _, ...latest } = signed().latest;
    expect(() => signIndex(signed({ latest }), oldKey.privateKey)).toThrow(
      /latest\.manifestSha256: missing/,
    );
    expect(() => signIndex(signed({ formatVersion: 1 }), oldKey.privateKey)).toThrow(
      /latest\.manifestSha256: unknown field/,
    );
    expect(() =>
      signIndex(
        signed({ latest: { ...signed().latest, manifestSha256: "XY" } }),
        oldKey.privateKey,
      ),
    ).toThrow(/latest\.manifestSha256/);
    expect(() =>
      signIndex(signed({ formatVersion: 3 as unknown as 2 }), oldKey.privateKey),
    ).toThrow(/formatVersion: must be 1 or 2, got 3/);
  });

  it("refuses an expired index (REPO_INDEX_EXPIRED), also at the exact instant", () => {
    expect(
      code(() => verifyIndex(bytes(signed()), { ...opts, now: new Date("2026-04-01T00:00:00Z") })),
    ).toBe("REPO_INDEX_EXPIRED");
    expect(
      code(() =>
        verifyIndex(bytes(signed()), { ...opts, now: new Date("2026-03-31T00:00:00.000Z") }),
      ),
    ).toBe("REPO_INDEX_EXPIRED");
  });

  it("refuses a serial lower than seen, and the same serial with other content (REPO_INDEX_REPLAYED)", () => {
    expect(code(() => verifyIndex(bytes(signed()), { ...opts, minSerial: 8 }))).toBe(
      "REPO_INDEX_REPLAYED",
    );
    const seen = indexDigest(signed());
    expect(
      verifyIndex(bytes(signed()), { ...opts, minSerial: 7, minSerialDigest: seen }).signed.serial,
    ).toBe(7);
    const other = signed({ rollout: { percent: 50 } });
    expect(
      code(() => verifyIndex(bytes(other), { ...opts, minSerial: 7, minSerialDigest: seen })),
    ).toBe("REPO_INDEX_REPLAYED");
  });

  it("refuses the index of another channel", () => {
    expect(code(() => verifyIndex(bytes(signed({ channel: "beta" })), opts))).toBe(
      "REPO_BAD_INDEX",
    );
  });

  it("refuses an index signed only by an unknown key", () => {
    try {
      verifyIndex(bytes(signed(), [strangerKey.privateKey]), opts);
      expect.fail("accepted");
    } catch (err) {
      expect((err as RepoError).code).toBe("REPO_UNTRUSTED");
      expect((err as RepoError).details.reason).toBe("unknown-key");
    }
  });

  it("refuses an index altered after signing", () => {
    const doc = JSON.parse(new TextDecoder().decode(bytes(signed())));
    doc.signed.latest.version = "2.0.1";
    try {
      verifyIndex(new TextEncoder().encode(JSON.stringify(doc)), opts);
      expect.fail("accepted");
    } catch (err) {
      expect((err as RepoError).code).toBe("REPO_UNTRUSTED");
      expect((err as RepoError).details.reason).toBe("bad-signature");
    }
  });

  it("supports key rotation: an index signed by old and new keys verifies with either", () => {
    const b = bytes(signed(), [oldKey.privateKey, newKey.privateKey]);
    expect(verifyIndex(b, opts).signed.serial).toBe(7);
    expect(verifyIndex(b, { ...opts, trustedKeys: [newKey.publicKey] }).signed.serial).toBe(7);
    // a host that trusts both keys accepts an index signed only by the new key
    const onlyNew = bytes(signed(), [newKey.privateKey]);
    expect(
      verifyIndex(onlyNew, { ...opts, trustedKeys: [oldKey.publicKey, newKey.publicKey] }).signed
        .serial,
    ).toBe(7);
    expect(code(() => verifyIndex(onlyNew, opts))).toBe("REPO_UNTRUSTED");
  });

  it("checks the signature before anything the signature protects", () => {
    // an expired index from an untrusted signer is reported as untrusted, not expired
    const b = bytes(signed(), [strangerKey.privateKey]);
    expect(code(() => verifyIndex(b, { ...opts, now: new Date("2030-01-01T00:00:00Z") }))).toBe(
      "REPO_UNTRUSTED",
    );
  });

  it("takes the time as a parameter", () => {
    expect(() => verifyIndex(bytes(signed()), { ...opts, now: new Date("nope") })).toThrow(
      TypeError,
    );
  });
});

describe("bundle paths", () => {
  it("accepts paths that stay inside the repository", () => {
    expect(bundlePathFromRoot("../bundles/demo-2.0.0.bundle")).toBe("bundles/demo-2.0.0.bundle");
    expect(bundlePathFromRoot("demo.bundle")).toBe("channels/demo.bundle");
    expect(bundlePathFromRoot("./../bundles/./x.bundle")).toBe("bundles/x.bundle");
  });

  it("refuses escapes, absolute paths, URLs and encoded tricks", () => {
    for (const bad of [
      "../../bundles/x.bundle",
      "../../../etc/passwd",
      "/bundles/x.bundle",
      "http://evil.example/x.bundle",
      "//evil.example/x.bundle",
      "..%2f..%2fx",
      "../bundles/x.bundle?y",
      "../bundles/x.bundle#y",
      "..\\..\\x",
      "../bundles//x.bundle",
      "..",
      "../bundles/..",
      "",
    ])
      expect(bundlePathFromRoot(bad), bad).toBeUndefined();
  });

  it("resolves the bundle URL against the index URL", () => {
    expect(
      resolveBundleUrl(
        "http://10.0.2.100/repo/channels/stable.json",
        "../bundles/demo-2.0.0.bundle",
      ).href,
    ).toBe("http://10.0.2.100/repo/bundles/demo-2.0.0.bundle");
    expect(() => resolveBundleUrl("http://h/channels/stable.json", "../../x")).toThrow(RepoError);
  });
});

describe("rollout", () => {
  it("puts hosts in stable buckets 0-99 spread roughly evenly", () => {
    const buckets = Array.from({ length: 2000 }, (_, i) => rolloutBucket(`machine-${i}`, "2.0.0"));
    expect(buckets.every((b) => b >= 0 && b < 100)).toBe(true);
    const under10 = buckets.filter((b) => b < 10).length;
    expect(under10).toBeGreaterThan(120);
    expect(under10).toBeLessThan(280);
    expect(rolloutBucket("machine-1", "2.0.0")).toBe(buckets[1]);
  });
});
