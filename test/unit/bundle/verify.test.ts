/** verifyBundleFile (src/bundle/README.md, "Verifying a bundle file"), verity trees made by veritysetup. */
import { generateKeyPairSync } from "node:crypto";
import { copyFileSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import {
  CHUNK_SIZE,
  checkBundleFile,
  hashSlotImage,
  inspectBundleFile,
  keyId,
  type UnsignedManifest,
  verifyBundleFile,
  writeBundle,
} from "../../../src/bundle/index.ts";
import { ToolError } from "../../../src/errors.ts";
import { tempDir } from "../../helpers/tmp.ts";
import { expectCode, makeManifest, makeSlotImage, type SlotFixture } from "./fixtures.ts";

const dir = tempDir("abforge-verify-");
const key = generateKeyPairSync("ed25519");
let slot: SlotFixture;
let manifest: UnsignedManifest;

beforeAll(async () => {
  slot = await makeSlotImage(dir, "slot.img", CHUNK_SIZE + 64 * 1024);
  manifest = await makeManifest(slot);
});

async function bundleOf(name: string, m: UnsignedManifest, slotPath = slot.path): Promise<string> {
  const out = join(dir, name);
  await writeBundle({ outPath: out, manifest: m, key: key.privateKey, slotImagePath: slotPath });
  return out;
}

const catchOf = (p: Promise<unknown>) =>
  p.then(
    () => undefined,
    (e: unknown) => e,
  );

describe("verifyBundleFile", () => {
  it("checks a good bundle, verity tree included, and says who signed it", async () => {
    const path = await bundleOf("good.bundle", manifest);
    const r = await checkBundleFile(path, [key.publicKey]);
    expect(r.keyId).toBe(keyId(key.publicKey));
    expect(r.layout.slotOffset % 4096).toBe(0);
    expect(await verifyBundleFile(path, [key.publicKey])).toEqual(r.manifest);
    const head = await inspectBundleFile(path);
    expect(head.manifest).toEqual(r.manifest);
    expect(head.layout).toEqual(r.layout);
  });

  it("refuses a signed manifest whose root hash or salt does not match the tree", async () => {
    const v = slot.verity;
    const wrongRoot = await bundleOf("root.bundle", {
      ...manifest,
      verity: {
        ...v,
        rootHash: `${v.rootHash.slice(0, -1)}${v.rootHash.endsWith("0") ? "1" : "0"}`,
      },
    });
    const e = expectCode(
      await catchOf(verifyBundleFile(wrongRoot, [key.publicKey])),
      "BUNDLE_BAD_VERITY",
    );
    expect(e.message).toMatch(
      new RegExp(`^bundle ${wrongRoot}: the slot image's dm-verity tree does not check`),
    );
    const wrongSalt = await bundleOf("salt.bundle", {
      ...manifest,
      verity: { ...v, salt: "00".repeat(32) },
    });
    expectCode(await catchOf(verifyBundleFile(wrongSalt, [key.publicKey])), "BUNDLE_BAD_VERITY");
  });

  it("refuses a slot image changed after its tree was made, even with matching chunk hashes", async () => {
    const changed = join(dir, "changed.img");
    copyFileSync(slot.path, changed);
    const b = readFileSync(changed);
    b[5 * 4096 + 1]! ^= 0xff; // data block 5
    writeFileSync(changed, b);
    const path = await bundleOf(
      "stale-tree.bundle",
      { ...manifest, slotImage: await hashSlotImage(changed) },
      changed,
    );
    const e = expectCode(
      await catchOf(verifyBundleFile(path, [key.publicKey])),
      "BUNDLE_BAD_VERITY",
    );
    expect(e.details.area).toBe("data");
    expect(e.details.block).toBe(5);
  });

  it("reports a tampered slot byte as BAD_HASH and a missing file as IO_ERROR", async () => {
    const path = await bundleOf("tampered.bundle", manifest);
    const b = readFileSync(path);
    b[b.length - 1024 - 10]! ^= 1;
    writeFileSync(path, b);
    const e = expectCode(await catchOf(verifyBundleFile(path, [key.publicKey])), "BUNDLE_BAD_HASH");
    expect(e.message).toMatch(new RegExp(`^bundle ${path}: slot image chunk 1 `));
    const missing = await catchOf(verifyBundleFile(join(dir, "nope.bundle"), [key.publicKey]));
    expect(missing).toBeInstanceOf(ToolError);
    expect((missing as ToolError).code).toBe("IO_ERROR");
  });
});
