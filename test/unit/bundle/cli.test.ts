/** `abforge keygen`, `abforge bundle inspect|verify`, run as an operator does. */
import { readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import {
  inspectBundleFile,
  loadPrivateKey,
  signBytes,
  writeBundle,
} from "../../../src/bundle/index.ts";
import { EXIT_CODES } from "../../../src/cli/exit-codes.ts";
import { abforge } from "../../helpers/cli.ts";
import { tempDir } from "../../helpers/tmp.ts";
import { makeManifest, makeSlotImage, makeTar, patchHeader } from "./fixtures.ts";

const dir = tempDir("abforge-bundle-cli-");
let good: string;
let pub: string;
let otherPub: string;
let bytes: Buffer;
let badVerity: string;

beforeAll(async () => {
  expect((await abforge(["keygen", "--out", join(dir, "keys")])).code).toBe(0);
  expect((await abforge(["keygen", "--out", join(dir, "other")])).code).toBe(0);
  pub = join(dir, "keys", "signing.pub");
  otherPub = join(dir, "other", "signing.pub");
  const slot = await makeSlotImage(dir, "slot.img", 1024 * 1024 + 8192);
  good = join(dir, "good.bundle");
  const key = await loadPrivateKey(join(dir, "keys", "signing.key"));
  const manifest = await makeManifest(slot);
  await writeBundle({ outPath: good, manifest, key, slotImagePath: slot.path });
  badVerity = join(dir, "bad-verity.bundle");
  const verity = { ...manifest.verity, salt: "00" };
  await writeBundle({
    outPath: badVerity,
    manifest: { ...manifest, verity },
    key,
    slotImagePath: slot.path,
  });
  bytes = readFileSync(good);
});

function variant(name: string, b: Uint8Array): string {
  const p = join(dir, name);
  writeFileSync(p, b);
  return p;
}

describe("abforge keygen", () => {
  it("makes a key pair, prints its id, refuses to overwrite it", async () => {
    const out = join(dir, "k");
    const r = await abforge(["keygen", "--out", out, "--json"]);
    expect(r.code).toBe(0);
    const j = JSON.parse(r.stdout);
    expect(j.privateKeyPath).toBe(join(out, "signing.key"));
    expect(j.keyId).toMatch(/^[0-9a-f]{16}$/);
    expect(statSync(j.privateKeyPath).mode & 0o777).toBe(0o600);
    const again = await abforge(["keygen", "--out", out]);
    expect(again.code).toBe(EXIT_CODES.KEY_EXISTS);
    expect(again.stderr).toBe(
      `abforge: key file ${out}/signing.key already exists; not overwriting it\n`,
    );
  });
});

describe("abforge keygen --out FILE", () => {
  it("refuses an existing file as the key directory, says so and writes nothing", async () => {
    const file = variant("not-a-dir", Buffer.from("mine\n"));
    const r = await abforge(["keygen", "--out", file]);
    expect(r.code).toBe(EXIT_CODES.KEY_EXISTS);
    expect(r.stderr).toBe(
      `abforge: key directory ${file} is an existing file, not a directory: the key pair goes into a directory as signing.key and signing.pub (nothing was written)\n`,
    );
    expect(readFileSync(file, "utf8")).toBe("mine\n");
  });
});

describe("abforge bundle inspect on a bad file", () => {
  it("a bundle cut inside the slot image is truncated (it reads only the head, but checks the size)", async () => {
    const cut = bytes.length - 5000;
    const r = await abforge(["bundle", "inspect", variant("cut.bundle", bytes.subarray(0, cut))]);
    expect(r.code).toBe(EXIT_CODES.BUNDLE_TRUNCATED);
    expect(r.stdout).toBe("");
    expect(r.stderr).toMatch(
      new RegExp(
        `^abforge: bundle \\S+cut\\.bundle: truncated, ends at byte ${cut}, inside slot\\.img \\(bytes \\d+-\\d+\\); the archive is ${bytes.length} bytes\n$`,
      ),
    );
  });

  it("a bundle cut in its head is truncated, and an empty one is empty", async () => {
    const head = await abforge([
      "bundle",
      "inspect",
      variant("head.bundle", bytes.subarray(0, 700)),
    ]);
    expect(head.code).toBe(EXIT_CODES.BUNDLE_TRUNCATED);
    expect(head.stderr).toMatch(/: truncated, ends at byte 700, inside manifest\.json\n$/);
    for (const cmd of [["inspect"], ["verify", "--pubkey", pub]]) {
      const empty = await abforge(["bundle", ...cmd, variant("empty.bundle", Buffer.alloc(0))]);
      expect(empty.code).toBe(EXIT_CODES.BUNDLE_TRUNCATED);
      expect(empty.stderr).toMatch(
        /^abforge: bundle \S+empty\.bundle: empty \(0 bytes\), not a bundle\n$/,
      );
    }
  });
});

describe("abforge bundle inspect", () => {
  it("shows the manifest and each entry's offsets", async () => {
    const r = await abforge(["bundle", "inspect", good, "--json"]);
    expect(r.code).toBe(0);
    const j = JSON.parse(r.stdout);
    expect(j.signatureVerified).toBe(false);
    expect(j.manifest.version).toBe("1.2.3");
    expect(j.signature).toMatch(/^[0-9a-f]{128}$/);
    expect(j.entries.map((e: { name: string }) => e.name)).toEqual([
      "manifest.json",
      "manifest.sig",
      "slot.img",
    ]);
    expect(j.slotOffset).toBe(j.entries[2].dataOffset);
    expect(j.slotOffset % 4096).toBe(0);
    expect(j.archiveSize).toBe(bytes.length);
    const text = await abforge(["bundle", "inspect", good]);
    expect(text.code).toBe(0);
    expect(text.stdout).toContain(`signed by     key ${j.keyId}`);
    expect(text.stdout).toMatch(
      new RegExp(`\\n  ${j.slotOffset - 512} +${j.slotOffset} +\\d+ +slot\\.img\\n`),
    );
  });
});

describe("abforge bundle verify", () => {
  it("exits 0 when everything checks, with several trusted keys", async () => {
    const r = await abforge([
      "bundle",
      "verify",
      good,
      "--pubkey",
      otherPub,
      "--pubkey",
      pub,
      "--json",
    ]);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    const j = JSON.parse(r.stdout);
    expect(j.ok).toBe(true);
    expect(j.keyId).toBe((await inspectBundleFile(good)).manifest.keyId);
    const text = await abforge(["bundle", "verify", good, "--pubkey", pub]);
    expect(text.stdout).toMatch(
      /^bundle .*: OK — demo 1\.2\.3 \(x86_64-efi-demo\) signed by key [0-9a-f]{16};/,
    );
  });

  it("gives each failure its own exit code and one line naming the file", async () => {
    const manifestLen = (await inspectBundleFile(good)).manifestBytes.length;
    const sigAt = 1024 + manifestLen;
    const flip = (at: number) => {
      const b = Buffer.from(bytes);
      b[at]! ^= 1;
      return b;
    };
    const key = await loadPrivateKey(join(dir, "keys", "signing.key"));
    const notAManifest = new TextEncoder().encode('{"formatVersion":1}');
    const badManifest = await makeTar([
      { name: "manifest.json", data: notAManifest },
      { name: "manifest.sig", data: signBytes(notAManifest, key) },
      { name: "slot.img", data: new Uint8Array(10) },
    ]);
    const extra = await makeTar([{ name: "x", data: new Uint8Array(1) }]);
    const cases: [string, string, number, RegExp][] = [
      [
        "untrusted",
        good,
        EXIT_CODES.BUNDLE_UNTRUSTED_KEY,
        /signed by key \w+, which is not trusted/,
      ],
      [
        "bad-sig",
        variant("bad-sig.bundle", flip(sigAt)),
        EXIT_CODES.BUNDLE_BAD_SIGNATURE,
        /does not verify/,
      ],
      [
        "bad-hash",
        variant("bad-hash.bundle", flip(bytes.length - 2000)),
        EXIT_CODES.BUNDLE_BAD_HASH,
        /slot image chunk 1 /,
      ],
      [
        "extra",
        variant("extra.bundle", Buffer.concat([bytes.subarray(0, -1024), extra])),
        EXIT_CODES.BUNDLE_MALFORMED,
        /extra entry "x"/,
      ],
      [
        "truncated",
        variant("short.bundle", bytes.subarray(0, bytes.length - 5000)),
        EXIT_CODES.BUNDLE_TRUNCATED,
        /ends at byte/,
      ],
      [
        "bad-manifest",
        variant("bad-manifest.bundle", badManifest),
        EXIT_CODES.BUNDLE_BAD_MANIFEST,
        /invalid fields/,
      ],
      [
        "too-large",
        variant("big.bundle", patchHeader(bytes, 0, { size: 3 << 20 }).subarray(0, 512)),
        EXIT_CODES.BUNDLE_TOO_LARGE,
        /over the limit/,
      ],
      ["bad-verity", badVerity, EXIT_CODES.BUNDLE_BAD_VERITY, /dm-verity tree does not check/],
      ["missing", join(dir, "nope.bundle"), EXIT_CODES.IO_ERROR, /cannot open bundle/],
    ];
    for (const [what, path, code, re] of cases) {
      const keys = what === "untrusted" ? otherPub : pub;
      const r = await abforge(["bundle", "verify", path, "--pubkey", keys]);
      expect(r.code, what).toBe(code);
      expect(r.stderr, what).toMatch(re);
      expect(r.stderr, what).toContain(path);
      expect(r.stderr.trimEnd().split("\n"), what).toHaveLength(1);
      expect(r.stdout, what).toBe("");
    }
    const j = await abforge([
      "bundle",
      "verify",
      variant("j.bundle", flip(sigAt)),
      "--pubkey",
      pub,
      "--json",
    ]);
    expect(JSON.parse(j.stdout).error.code).toBe("BUNDLE_BAD_SIGNATURE");
    const badKey = await abforge([
      "bundle",
      "verify",
      good,
      "--pubkey",
      join(dir, "keys", "signing.key"),
    ]);
    expect(badKey.code).toBe(EXIT_CODES.KEY_BAD);
  });
});
