/** BundleReader on good and hostile bundles (src/bundle/README.md, "Streaming read"). */
import { generateKeyPairSync } from "node:crypto";
import { createReadStream, readFileSync } from "node:fs";
import { join } from "node:path";
import { Readable } from "node:stream";
import fc from "fast-check";
import { beforeAll, describe, expect, it } from "vitest";
import {
  BundleError,
  BundleReader,
  CHUNK_SIZE,
  ChunkVerifier,
  keyId,
  type Manifest,
  slotDataOffset,
  writeBundle,
} from "../../../src/bundle/index.ts";
import { caught } from "../../helpers/errors.ts";
import { tempDir } from "../../helpers/tmp.ts";
import {
  expectCode,
  makeManifest,
  makeSlotImage,
  makeTar,
  patchHeader,
  readBundle,
  streamOf,
} from "./fixtures.ts";

const dir = tempDir("abforge-reader-");
const signer = generateKeyPairSync("ed25519");
const rotated = generateKeyPairSync("ed25519");
const stranger = generateKeyPairSync("ed25519");
const trusted = [rotated.publicKey, signer.publicKey];

/** 2.25 MiB data + tree: three chunks, the last one short. */
let bundle: Buffer;
let slotBytes: Buffer;
let manifest: Manifest;
let manifestBytes: Uint8Array;
let sig: Uint8Array;
let slotOffset: number;
/** A bundle of a 64 KiB slot image (one short chunk), for fuzzing. */
let small: Buffer;
let smallSlot: Buffer;

beforeAll(async () => {
  const slot = await makeSlotImage(dir, "slot.img", 2 * CHUNK_SIZE + 256 * 1024);
  const w = await writeBundle({
    outPath: join(dir, "good.bundle"),
    manifest: await makeManifest(slot),
    key: signer.privateKey,
    slotImagePath: slot.path,
  });
  bundle = readFileSync(join(dir, "good.bundle"));
  slotBytes = readFileSync(slot.path);
  manifest = w.manifest;
  manifestBytes = w.manifestBytes;
  sig = w.signature;
  slotOffset = slotDataOffset(manifestBytes.length);

  const s = await makeSlotImage(dir, "small.img", 64 * 1024);
  await writeBundle({
    outPath: join(dir, "small.bundle"),
    manifest: await makeManifest(s),
    key: signer.privateKey,
    slotImagePath: s.path,
  });
  small = readFileSync(join(dir, "small.bundle"));
  smallSlot = readFileSync(s.path);
});

const flip = (b: Buffer, at: number, mask = 0x01) => {
  const c = Buffer.from(b);
  c[at]! ^= mask;
  return c;
};

describe("BundleReader on a good bundle", () => {
  it("verifies, reports layout and signer, streams the exact slot image, finds the end", async () => {
    for (const piece of [1000, 65536, 3 * CHUNK_SIZE]) {
      const r = new BundleReader(streamOf(bundle, piece), { trustedKeys: trusted });
      const m = await r.open();
      expect(m).toEqual(manifest);
      expect(r.signerKeyId).toBe(manifest.keyId);
      expect(r.layout.slotOffset).toBe(slotOffset);
      expect(r.layout.slotOffset % 4096).toBe(0);
      expect(r.layout.archiveSize).toBe(bundle.length);
      expect(r.layout.entries.map((e) => [e.name, e.headerOffset, e.dataOffset, e.size])).toEqual([
        ["manifest.json", 0, 512, manifestBytes.length],
        ["manifest.sig", 512 + manifestBytes.length, 1024 + manifestBytes.length, 64],
        ["slot.img", slotOffset - 512, slotOffset, slotBytes.length],
      ]);
      const parts: Buffer[] = [];
      for await (const c of r.slotImage()) {
        // Whole verified chunks only (the last one shorter).
        expect([CHUNK_SIZE, slotBytes.length % CHUNK_SIZE]).toContain(c.length);
        parts.push(c);
      }
      expect(Buffer.concat(parts).equals(slotBytes)).toBe(true);
      await r.finish();
    }
  });

  it("reads from a file stream", async () => {
    const r = new BundleReader(createReadStream(join(dir, "good.bundle")), {
      trustedKeys: trusted,
    });
    await r.open();
    const parts: Buffer[] = [];
    for await (const c of r.slotImage()) parts.push(c);
    await r.finish();
    expect(Buffer.concat(parts).equals(slotBytes)).toBe(true);
  });

  it("slotChunks hands out the verified copy, reusing released buffers", async () => {
    // a stream of 64 KiB pieces, as a socket delivers them; each piece is
    // overwritten once the reader took it: what was verified must not change
    const pieces: Buffer[] = [];
    for (let at = 0; at < bundle.length; at += 64 * 1024)
      pieces.push(Buffer.from(bundle.subarray(at, at + 64 * 1024)));
    let last: Buffer | undefined;
    const source = (async function* () {
      for (const p of pieces) {
        last?.fill(0xee);
        last = p;
        yield p;
      }
    })();
    const r = new BundleReader(source, { trustedKeys: trusted });
    await r.open();
    const seen: number[] = [];
    const buffers = new Set<ArrayBufferLike>();
    const parts: Buffer[] = [];
    for await (const c of r.slotChunks()) {
      seen.push(c.index);
      buffers.add(c.bytes.buffer);
      parts.push(Buffer.from(c.bytes));
      c.release();
      c.release(); // twice: no effect
    }
    await r.finish();
    expect(seen).toEqual([0, 1, 2]);
    expect(Buffer.concat(parts).equals(slotBytes)).toBe(true);
    // released at once: two buffers serve every chunk (a piece that ends one
    // chunk starts the next before the consumer got the first)
    expect(buffers.size).toBeLessThanOrEqual(2);
  });

  it("releaseSourceBuffers detaches the slot image's source buffers once copied, and no other", async () => {
    const piece = 64 * 1024;
    const own = () => {
      const pieces: Buffer[] = [];
      for (let at = 0; at < bundle.length; at += piece)
        pieces.push(Buffer.from(bundle.subarray(at, at + piece)));
      return pieces;
    };
    const read = async (source: Iterable<Buffer>, release: boolean) => {
      const r = new BundleReader(Readable.from(source, { objectMode: true }), {
        trustedKeys: trusted,
        releaseSourceBuffers: release,
      });
      await r.open();
      const parts: Buffer[] = [];
      for await (const c of r.slotChunks()) {
        parts.push(Buffer.from(c.bytes));
        c.release();
      }
      await r.finish();
      expect(Buffer.concat(parts).equals(slotBytes)).toBe(true);
    };
    const slotEnd = slotOffset + slotBytes.length;
    const detached = (b: Buffer) => (b.buffer as ArrayBuffer).detached;
    const pieces = own();
    await read(pieces, true);
    pieces.forEach((p, i) => {
      const start = i * piece;
      const end = Math.min(start + piece, bundle.length);
      // read before the slot image began (the head), or holding bytes after it
      // (padding, end of archive): kept; wholly inside the slot image: released
      const inside = start >= slotOffset && end <= slotEnd;
      expect({ i, detached: detached(p) }).toEqual({ i, detached: inside });
      if (!inside) expect(p.equals(bundle.subarray(start, end))).toBe(true);
    });
    expect(pieces.filter(detached).length).toBeGreaterThan(30);

    // without the option nothing is touched
    const kept = own();
    await read(kept, false);
    expect(kept.some(detached)).toBe(false);
    // views into a larger buffer are never released, even with the option
    const whole = Buffer.from(bundle);
    await read(
      own().map((_, i) => whole.subarray(i * piece, (i + 1) * piece)),
      true,
    );
    expect(detached(whole)).toBe(false);
    expect(whole.equals(bundle)).toBe(true);
  });

  it("does not pull a slot byte from the source before the signature checked", async () => {
    let opened = false;
    let pulledBeforeOpen = 0;
    async function* source() {
      for (let i = 0; i < bundle.length; i += 512) {
        if (!opened) pulledBeforeOpen = i + 512;
        yield bundle.subarray(i, i + 512);
      }
    }
    const r = new BundleReader(source(), { trustedKeys: trusted });
    await r.open();
    opened = true;
    expect(pulledBeforeOpen).toBe(slotOffset);
    // And with a key it does not trust, the slot image is not offered at all.
    const bad = new BundleReader(streamOf(bundle), { trustedKeys: [stranger.publicKey] });
    expectCode(await bad.open().catch((e) => e), "BUNDLE_UNTRUSTED_KEY");
    expect(() => bad.slotImage()).toThrow(/state failed/);
  });

  it("refuses a slot image over maxSlotBytes before reading it", async () => {
    const o = await readBundle(bundle, trusted, { maxSlotBytes: slotBytes.length - 1 });
    const e = expectCode(o.error, "BUNDLE_TOO_LARGE");
    expect(e.message).toBe(
      `test.bundle: slot image is ${slotBytes.length} bytes, over the limit of ${slotBytes.length - 1}`,
    );
    expect(o.emitted.length).toBe(0);
    expect(
      (await readBundle(bundle, trusted, { maxSlotBytes: slotBytes.length })).error,
    ).toBeUndefined();
  });
});

describe("BundleReader on hostile bundles", () => {
  it("reports truncation anywhere as BUNDLE_TRUNCATED with the offset", async () => {
    const cuts = [
      0,
      100,
      511,
      512 + 10, // in manifest.json
      512 + manifestBytes.length + 100, // in header 2
      1024 + manifestBytes.length + 63, // in manifest.sig
      slotOffset - 1, // in header 3
      slotOffset, // before the slot data
      slotOffset + CHUNK_SIZE, // at a chunk boundary
      slotOffset + CHUNK_SIZE + 12345, // mid-chunk
      slotOffset + slotBytes.length, // before the padding (none: size is a multiple of 512)
      bundle.length - 1024, // before the end blocks
      bundle.length - 1, // one byte short
    ];
    for (const cut of cuts) {
      const o = await readBundle(bundle.subarray(0, cut), trusted);
      const e = expectCode(o.error, "BUNDLE_TRUNCATED");
      expect(e.message, `cut at ${cut}`).toMatch(
        cut === 0
          ? /^test\.bundle: empty \(0 bytes\), not a bundle$/
          : new RegExp(`^test\\.bundle: truncated, ends at byte ${cut}, `),
      );
      expect(e.details.offset).toBe(cut);
      // Only whole verified chunks came out.
      expect(o.emitted.length % CHUNK_SIZE === 0 || o.emitted.length === slotBytes.length).toBe(
        true,
      );
      expect(o.emitted.equals(slotBytes.subarray(0, o.emitted.length))).toBe(true);
    }
  });

  it("never emits a byte of a bad chunk", async () => {
    for (const chunk of [0, 1, 2]) {
      const at = slotOffset + chunk * CHUNK_SIZE + 777;
      const o = await readBundle(flip(bundle, at), trusted);
      const e = expectCode(o.error, "BUNDLE_BAD_HASH");
      expect(e.details.chunk).toBe(chunk);
      expect(e.message).toMatch(new RegExp(`^test\\.bundle: slot image chunk ${chunk} `));
      expect(o.emitted.length).toBe(chunk * CHUNK_SIZE);
      expect(o.emitted.equals(slotBytes.subarray(0, chunk * CHUNK_SIZE))).toBe(true);
    }
  });

  it("refuses a changed manifest, padding or header", async () => {
    const versionAt = 512 + Buffer.from(manifestBytes).indexOf('"version"') + 12;
    expectCode((await readBundle(flip(bundle, versionAt), trusted)).error, "BUNDLE_BAD_SIGNATURE");
    // The spaces after the JSON are signed too.
    expectCode(
      (await readBundle(flip(bundle, 512 + manifestBytes.length - 1), trusted)).error,
      "BUNDLE_BAD_SIGNATURE",
    );
    // A header byte: the checksum no longer matches.
    const e = expectCode(
      (await readBundle(flip(bundle, slotOffset - 512 + 3), trusted)).error,
      "BUNDLE_MALFORMED",
    );
    expect(e.message).toMatch(/entry 3 at byte \d+: tar header checksum does not match/);
    // Padding after the slot image and the end blocks must be zero.
    const m = await readBundle(flip(bundle, bundle.length - 3), trusted);
    expectCode(m.error, "BUNDLE_MALFORMED");
    expect(m.emitted.equals(slotBytes)).toBe(true);
  });

  it("tells an unknown signer, a missing and a garbled signature apart", async () => {
    const o = await readBundle(bundle, [stranger.publicKey]);
    expect(expectCode(o.error, "BUNDLE_UNTRUSTED_KEY").message).toBe(
      `test.bundle: signed by key ${manifest.keyId}, which is not trusted (trusted: ${keyId(stranger.publicKey)})`,
    );
    const sigAt = 1024 + manifestBytes.length;
    expectCode((await readBundle(flip(bundle, sigAt + 5), trusted)).error, "BUNDLE_BAD_SIGNATURE");
    const noSig = await makeTar([
      { name: "manifest.json", data: manifestBytes },
      { name: "slot.img", data: slotBytes },
    ]);
    const e = expectCode((await readBundle(noSig, trusted)).error, "BUNDLE_BAD_SIGNATURE");
    expect(e.message).toBe(
      'test.bundle: second entry is "slot.img", expected manifest.sig: the bundle carries no signature',
    );
    const onlyManifest = await makeTar([{ name: "manifest.json", data: manifestBytes }]);
    expectCode((await readBundle(onlyManifest, trusted)).error, "BUNDLE_BAD_SIGNATURE");
    const shortSig = await makeTar([
      { name: "manifest.json", data: manifestBytes },
      { name: "manifest.sig", data: sig.subarray(0, 63) },
      { name: "slot.img", data: slotBytes },
    ]);
    expect(
      expectCode((await readBundle(shortSig, trusted)).error, "BUNDLE_BAD_SIGNATURE").message,
    ).toMatch(/manifest\.sig is 63 bytes/);
  });

  it("refuses entries out of order, duplicated, extra, or with unsafe names", async () => {
    const M = { name: "manifest.json", data: manifestBytes };
    const S = { name: "manifest.sig", data: sig };
    const I = { name: "slot.img", data: slotBytes };
    const cases: [string, Buffer, string, RegExp][] = [
      ["sig first", await makeTar([S, M, I]), "BUNDLE_MALFORMED", /first entry is "manifest\.sig"/],
      ["slot first", await makeTar([I, M, S]), "BUNDLE_MALFORMED", /first entry is "slot\.img"/],
      [
        "manifest twice",
        await makeTar([M, M, S, I]),
        "BUNDLE_BAD_SIGNATURE",
        /second entry is "manifest\.json"/,
      ],
      [
        "sig twice",
        await makeTar([M, S, S, I]),
        "BUNDLE_MALFORMED",
        /third entry is "manifest\.sig"/,
      ],
      [
        "slot twice",
        await makeTar([M, S, I, I]),
        "BUNDLE_MALFORMED",
        /extra entry "slot\.img" after slot\.img/,
      ],
      [
        "extra file",
        await makeTar([M, S, I, { name: "evil.sh", data: new Uint8Array(3) }]),
        "BUNDLE_MALFORMED",
        /extra entry "evil\.sh"/,
      ],
      ["no slot", await makeTar([M, S]), "BUNDLE_MALFORMED", /third entry is missing/],
      ["empty", await makeTar([]), "BUNDLE_MALFORMED", /the archive is empty/],
      [
        "dir name",
        await makeTar([{ ...M, name: "x/manifest.json" }, S, I]),
        "BUNDLE_MALFORMED",
        /first entry is "x\/manifest\.json"/,
      ],
    ];
    for (const [name, pos] of [
      ["../manifest.json", 0],
      ["/manifest.json", 0],
      ["../../etc/passwd", 1],
      ["/slot.img", 2],
      ["a/../slot.img", 2],
    ] as const) {
      const entries = [M, S, I];
      entries[pos] = { ...entries[pos]!, name };
      cases.push([
        `name ${name}`,
        await makeTar(entries),
        "BUNDLE_MALFORMED",
        /absolute|contains "\.\."/,
      ]);
    }
    for (const [what, bytes, code, re] of cases) {
      const o = await readBundle(bytes, trusted);
      const e = expectCode(o.error, code as BundleError["code"]);
      expect(e.message, what).toMatch(re);
      if (!what.includes("twice") && what !== "extra file") expect(o.emitted.length, what).toBe(0);
    }
  });

  it("refuses tar headers whose sizes disagree with the manifest or the limits", async () => {
    const h3 = slotOffset - 512;
    // The slot header claims one block less / more than the manifest.
    for (const size of [slotBytes.length - 512, slotBytes.length + 512]) {
      const e = expectCode(
        (await readBundle(patchHeader(bundle, h3, { size }), trusted)).error,
        "BUNDLE_MALFORMED",
      );
      expect(e.message).toBe(
        `test.bundle: slot.img tar header says ${size} bytes, the manifest says ${slotBytes.length}`,
      );
    }
    // A manifest.json header claiming 3 MiB is refused before reading it.
    const big = patchHeader(bundle, 0, { size: 3 * 1024 * 1024 });
    expect(
      expectCode((await readBundle(big.subarray(0, 512), trusted)).error, "BUNDLE_TOO_LARGE")
        .message,
    ).toMatch(/manifest\.json is 3145728 bytes, over the limit of 2097152/);
    // A sig header claiming a huge size.
    const sigHeader = 512 + manifestBytes.length;
    expectCode(
      (await readBundle(patchHeader(bundle, sigHeader, { size: 2 ** 33 }), trusted)).error,
      "BUNDLE_BAD_SIGNATURE",
    );
    // A manifest header one block shorter shifts everything: the next "header" is JSON text.
    const e = expectCode(
      (await readBundle(patchHeader(bundle, 0, { size: manifestBytes.length - 512 }), trusted))
        .error,
      "BUNDLE_MALFORMED",
    );
    expect(e.message).toMatch(/entry 2 at byte \d+: tar header checksum does not match/);
  });

  it("refuses pax, GNU and non-file entries", async () => {
    for (const type of ["x", "g", "L", "5", "2", "1"]) {
      const e = expectCode(
        (await readBundle(patchHeader(bundle, slotOffset - 512, { type }), trusted)).error,
        "BUNDLE_MALFORMED",
      );
      expect(e.message).toMatch(/is not a regular file/);
    }
  });

  it("refuses data after the end of the archive", async () => {
    const o = await readBundle(Buffer.concat([bundle, Buffer.alloc(512)]), trusted);
    expect(expectCode(o.error, "BUNDLE_MALFORMED").message).toMatch(
      /data after the end of the archive/,
    );
  });

  it("closes the source when it refuses a bundle", async () => {
    const s = streamOf(flip(bundle, 1024 + manifestBytes.length + 1), 4096);
    const r = new BundleReader(s, { trustedKeys: trusted });
    expectCode(await r.open().catch((e) => e), "BUNDLE_BAD_SIGNATURE");
    expect(s.destroyed).toBe(true);
  });

  it("only ever fails with a BundleError, and never emits bytes that are not the slot image (fuzz)", async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.tuple(fc.nat(small.length - 1), fc.integer({ min: 1, max: 255 })), {
          minLength: 1,
          maxLength: 4,
        }),
        fc.option(fc.nat(small.length), { nil: undefined }),
        fc.integer({ min: 1, max: 70000 }),
        async (edits, cut, piece) => {
          const b = Buffer.from(small);
          for (const [i, x] of edits) b[i]! ^= x;
          const input = cut === undefined ? b : b.subarray(0, cut);
          const o = await readBundle(input, trusted, { piece });
          expect(smallSlot.subarray(0, o.emitted.length).equals(o.emitted)).toBe(true);
          if (o.error !== undefined) expect(o.error).toBeInstanceOf(BundleError);
          // One changed byte is always caught (headers by checksum, data by signature
          // or hash, padding and end blocks by being zero).
          if (edits.length === 1 || cut !== undefined) expect(o.error).toBeInstanceOf(BundleError);
        },
      ),
      { numRuns: 1000 },
    );
  });
});

describe("resuming", () => {
  it("reads chunks n.. from a second stream that starts at slotOffset + n MiB", async () => {
    for (const n of [0, 1, 2]) {
      const r = new BundleReader(streamOf(bundle.subarray(0, slotOffset + 1000)), {
        trustedKeys: trusted,
      });
      await r.open();
      const source = streamOf(bundle.subarray(r.layout.slotOffset + n * CHUNK_SIZE), 50000);
      const parts: Buffer[] = [];
      for await (const c of r.slotImage({ fromChunk: n, source })) parts.push(c);
      await r.finish();
      expect(Buffer.concat(parts).equals(slotBytes.subarray(n * CHUNK_SIZE))).toBe(true);
    }
    const r = new BundleReader(streamOf(bundle), { trustedKeys: trusted });
    await r.open();
    expect(() => r.slotImage({ fromChunk: 4 })).toThrow(RangeError);
  });

  it("from the chunk count: nothing emitted, the source starts after the slot image, finish() checks the rest", async () => {
    const r = new BundleReader(streamOf(bundle.subarray(0, slotOffset + 1000)), {
      trustedKeys: trusted,
    });
    await r.open();
    const tail = bundle.subarray(r.layout.slotOffset + slotBytes.length);
    const parts: Buffer[] = [];
    for await (const c of r.slotImage({ fromChunk: 3, source: streamOf(tail) })) parts.push(c);
    await r.finish();
    expect(parts).toEqual([]);
    // data after the end of the archive is still found there
    const r2 = new BundleReader(streamOf(bundle), { trustedKeys: trusted });
    await r2.open();
    const extra = Buffer.concat([tail, Buffer.alloc(512, 0x41)]);
    for await (const _ of r2.slotChunks({ fromChunk: 3, source: streamOf(extra) })) {
      // nothing to consume
    }
    expectCode(await r2.finish().catch((e) => e), "BUNDLE_MALFORMED");
  });

  it("onBytes sees every byte it consumes in file order, across a resume source too", async () => {
    const seen: { at: number; bytes: Buffer }[] = [];
    const onBytes = (b: Uint8Array, at: number) => seen.push({ at, bytes: Buffer.from(b) });
    // one stream: the whole file, contiguous, nothing more and nothing twice
    const r = new BundleReader(streamOf(bundle, 7777), { trustedKeys: trusted, onBytes });
    await r.open();
    // open() consumed exactly the head: up to the slot image's first byte
    expect(Buffer.concat(seen.map((s) => s.bytes)).equals(bundle.subarray(0, slotOffset))).toBe(
      true,
    );
    for await (const c of r.slotChunks()) c.release();
    await r.finish();
    let at = 0;
    for (const s of seen) {
      expect(s.at).toBe(at);
      at += s.bytes.length;
    }
    expect(Buffer.concat(seen.map((s) => s.bytes)).equals(bundle)).toBe(true);
    // a resume: the head, then the second stream's bytes at their offsets in the file
    seen.length = 0;
    const r2 = new BundleReader(streamOf(bundle.subarray(0, slotOffset + 9000)), {
      trustedKeys: trusted,
      onBytes,
    });
    await r2.open();
    const from = slotOffset + 2 * CHUNK_SIZE;
    for await (const c of r2.slotChunks({ fromChunk: 2, source: streamOf(bundle.subarray(from)) }))
      c.release();
    await r2.finish();
    expect(seen.filter((s) => s.at < slotOffset).reduce((n, s) => n + s.bytes.length, 0)).toBe(
      slotOffset,
    );
    const rest = seen.filter((s) => s.at >= slotOffset);
    expect(rest[0]?.at).toBe(from);
    expect(Buffer.concat(rest.map((s) => s.bytes)).equals(bundle.subarray(from))).toBe(true);
  });

  it("still verifies each chunk of the second stream", async () => {
    const r = new BundleReader(streamOf(bundle), { trustedKeys: trusted });
    await r.open();
    const bad = flip(bundle, slotOffset + 2 * CHUNK_SIZE + 1);
    const parts: Buffer[] = [];
    const err = await (async () => {
      for await (const c of r.slotImage({
        fromChunk: 1,
        source: streamOf(bad.subarray(slotOffset + CHUNK_SIZE)),
      }))
        parts.push(c);
    })().catch((e) => e);
    expect(expectCode(err, "BUNDLE_BAD_HASH").details.chunk).toBe(2);
    expect(Buffer.concat(parts).equals(slotBytes.subarray(CHUNK_SIZE, 2 * CHUNK_SIZE))).toBe(true);
  });

  it("skips (but verifies) chunks before n on the same stream, for a server that ignored Range", async () => {
    const r = new BundleReader(streamOf(bundle), { trustedKeys: trusted });
    await r.open();
    const parts: Buffer[] = [];
    for await (const c of r.slotImage({ fromChunk: 2 })) parts.push(c);
    await r.finish();
    expect(Buffer.concat(parts).equals(slotBytes.subarray(2 * CHUNK_SIZE))).toBe(true);
    const r2 = new BundleReader(streamOf(flip(bundle, slotOffset + 5)), { trustedKeys: trusted });
    await r2.open();
    const err = await Readable.from(r2.slotImage({ fromChunk: 2 }))
      .toArray()
      .catch((e) => e);
    expect(expectCode(err, "BUNDLE_BAD_HASH").details.chunk).toBe(0);
  });
});

describe("ChunkVerifier", () => {
  it("hands out the same verified chunks however the bytes are split", () => {
    fc.assert(
      fc.property(
        fc.array(fc.integer({ min: 1, max: 3 * CHUNK_SIZE }), { maxLength: 6 }),
        (cuts) => {
          const v = new ChunkVerifier(manifest.slotImage);
          const points = [...new Set(cuts.filter((c) => c < slotBytes.length))].sort(
            (a, b) => a - b,
          );
          const out: number[] = [];
          let prev = 0;
          for (const p of [...points, slotBytes.length]) {
            for (const c of v.update(slotBytes.subarray(prev, p))) {
              expect(
                c.bytes.equals(
                  slotBytes.subarray(c.index * CHUNK_SIZE, c.index * CHUNK_SIZE + c.bytes.length),
                ),
              ).toBe(true);
              out.push(c.index);
            }
            prev = p;
          }
          v.end();
          expect(out).toEqual([0, 1, 2]);
          expect(v.done).toBe(true);
        },
      ),
      { numRuns: 50 },
    );
  });

  it("checks the whole-image sha256 before the last chunk, from chunk 0 only", () => {
    const wrong = { ...manifest.slotImage, sha256: "0".repeat(64) };
    const v = new ChunkVerifier(wrong);
    expect(v.update(slotBytes.subarray(0, 2 * CHUNK_SIZE)).length).toBe(2);
    expect(
      expectCode(
        caught(() => v.update(slotBytes.subarray(2 * CHUNK_SIZE))),
        "BUNDLE_BAD_HASH",
      ).message,
    ).toMatch(/slot image sha256 is/);
    const resumed = new ChunkVerifier(wrong, { fromChunk: 1 });
    expect(resumed.update(slotBytes.subarray(CHUNK_SIZE)).map((c) => c.index)).toEqual([1, 2]);
  });

  it("keeps its own copy: a chunk does not change when the fed buffer does", () => {
    const v = new ChunkVerifier(manifest.slotImage);
    const fed = Buffer.from(slotBytes.subarray(0, CHUNK_SIZE));
    const [c] = v.update(fed);
    fed.fill(0);
    expect(c?.bytes.equals(slotBytes.subarray(0, CHUNK_SIZE))).toBe(true);
  });

  it("without reuseBuffers, release() keeps each chunk's buffer its own", () => {
    const v = new ChunkVerifier(manifest.slotImage);
    const chunks = v.update(slotBytes);
    for (const c of chunks) c.release();
    expect(new Set(chunks.map((c) => c.bytes.buffer)).size).toBe(3);
    expect(Buffer.concat(chunks.map((c) => c.bytes)).equals(slotBytes)).toBe(true);
  });

  it("refuses too many and too few bytes", () => {
    const v = new ChunkVerifier(manifest.slotImage, { fromChunk: 2 });
    expectCode(
      caught(() => v.update(Buffer.alloc(slotBytes.length))),
      "BUNDLE_MALFORMED",
    );
    const w = new ChunkVerifier(manifest.slotImage, { fromChunk: 2 });
    w.update(slotBytes.subarray(2 * CHUNK_SIZE, 2 * CHUNK_SIZE + 10));
    expectCode(
      caught(() => w.end()),
      "BUNDLE_TRUNCATED",
    );
    expect(() => new ChunkVerifier(manifest.slotImage, { fromChunk: 4 })).toThrow(RangeError);
  });

  it("refuses chunks whose hashes are listed in another order", () => {
    const chunks = [...manifest.slotImage.chunks].reverse();
    const v = new ChunkVerifier({ ...manifest.slotImage, chunks });
    expect(
      expectCode(
        caught(() => v.update(slotBytes)),
        "BUNDLE_BAD_HASH",
      ).details.chunk,
    ).toBe(0);
  });
});
