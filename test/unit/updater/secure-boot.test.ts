// Updating a Secure Boot image (src/bootloader/README.md, "Secure Boot", "Updates"): the
// bundle's signed manifest carries the slot's signed boot file, and the agent writes it into
// the target's /SLOTX and /SLOTX.SIG on the ESP before the boot state names the slot. Real
// GPT disk images with a FAT32 ESP (mtools), real squashfs + verity slots, real bundles.
import { createHash, verify, X509Certificate } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import {
  BootDisk,
  EMPTY_SLOT_BOOT_FILE,
  formatSlotVerity,
  loadSecureBootKeys,
  type SecureBootKeys,
  SLOT_BOOT_FILE_BYTES,
  signedSlotBootFile,
  slotBootFile,
  slotSignatureBytes,
} from "../../../src/bootloader/index.ts";
import {
  decodeManifest,
  encodeManifest,
  hashSlotImage,
  type Manifest,
  writeBundle,
} from "../../../src/bundle/index.ts";
import { rejection } from "../../helpers/errors.ts";
import {
  type BundleFixture,
  type DiskFixture,
  makeUpdateWorld,
  readRange,
  tool,
  type UpdateWorld,
} from "../../helpers/fixtures.ts";
import { secureBootKeyFiles } from "../../helpers/secure-boot.ts";
import { tempDir } from "../../helpers/tmp.ts";
import { REBOOT_OFF, readBoot, testAgent } from "./harness.ts";

let w: UpdateWorld;
let keys: SecureBootKeys;
let certPath: string;
/** 2.0.0 built with secureBoot: its bundle carries its signed boot file. */
let sbBundle: { path: string; manifest: Manifest; file: Uint8Array; sig: Uint8Array };

const digest = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");

beforeAll(async () => {
  w = await makeUpdateWorld(tempDir(), { versions: ["2.0.0"] });
  const made = secureBootKeyFiles(w.dir);
  certPath = made.certPath;
  keys = await loadSecureBootKeys(made.keyPath, certPath);
  // what the build does (src/build/pipeline.ts, "esp" and "bundle")
  const plain = w.bundles["2.0.0"] as BundleFixture;
  const v = plain.manifest.verity;
  const { file, sig } = signedSlotBootFile(
    slotBootFile({ rootHash: v.rootHash, verity: formatSlotVerity(v), version: "2.0.0" }),
    keys,
  );
  const path = join(w.dir, "demo-2.0.0-sb.bundle");
  const written = await writeBundle({
    outPath: path,
    key: w.key.privateKey,
    slotImagePath: plain.slot.path,
    manifest: {
      formatVersion: 1,
      name: "demo",
      compatible: plain.manifest.compatible,
      version: "2.0.0",
      createdAt: plain.manifest.createdAt,
      slotImage: await hashSlotImage(plain.slot.path),
      verity: v,
      secureBoot: {
        slotFile: Buffer.from(file).toString("base64"),
        slotSig: Buffer.from(sig).toString("base64"),
      },
    },
  });
  sbBundle = { path, manifest: written.manifest, file, sig };
});

/** The 1.0.0 disk as a Secure Boot build leaves it: /SLOTA signed for 1.0.0, /SLOTB a signed placeholder. */
async function secureBootDisk(name: string, o: { slotB?: boolean } = {}): Promise<DiskFixture> {
  const d = await w.freshDisk(name);
  const s = (await readBoot(d.path)).slots.A;
  const files: [string, { file: Uint8Array; sig: Uint8Array }][] = [
    [
      "SLOTA",
      signedSlotBootFile(
        slotBootFile({ rootHash: s.rootHash, verity: s.verity, version: s.version }),
        keys,
      ),
    ],
  ];
  if (o.slotB !== false) files.push(["SLOTB", signedSlotBootFile(EMPTY_SLOT_BOOT_FILE, keys)]);
  for (const [n, f] of files)
    for (const [suffix, bytes] of [
      ["", f.file],
      [".SIG", f.sig],
    ] as const) {
      const tmp = join(w.dir, `${name}-${n}${suffix}`);
      writeFileSync(tmp, bytes);
      await tool("mcopy", ["-i", `${d.path}@@${d.esp.offset}`, tmp, `::/${n}${suffix}`]);
    }
  return d;
}

async function espFile(disk: string, name: "SLOTA" | "SLOTB") {
  const d = await BootDisk.open(disk, { readOnly: true });
  try {
    const r = d.slotBootFileRanges(
      name === "SLOTA" ? "A" : "B",
      SLOT_BOOT_FILE_BYTES,
      slotSignatureBytes(keys),
    );
    return { file: await readRange(disk, r.file), sig: await readRange(disk, r.sig) };
  } finally {
    await d.close();
  }
}

/** GRUB's check of a detached OpenPGP signature (RFC 4880 5.2.4), against the certificate's key. */
function pgpVerifies(data: Uint8Array, sig: Uint8Array): boolean {
  const body = Buffer.from(sig).subarray(3);
  const hashed = body.subarray(0, 6 + body.readUInt16BE(4));
  const unhashedLen = body.readUInt16BE(hashed.length);
  const value = body.subarray(hashed.length + 2 + unhashedLen + 4);
  const trailer = Buffer.alloc(6);
  trailer[0] = 4;
  trailer[1] = 0xff;
  trailer.writeUInt32BE(hashed.length, 2);
  const cert = new X509Certificate(readFileSync(certPath));
  return verify("sha256", Buffer.concat([data, hashed, trailer]), cert.publicKey, value);
}

describe("the signed boot file in the bundle", () => {
  it("is padded to one size with a signature of the key's one length, and signs only what it says", () => {
    expect(sbBundle.file.length).toBe(SLOT_BOOT_FILE_BYTES);
    expect(sbBundle.sig.length).toBe(slotSignatureBytes(keys));
    expect(slotSignatureBytes(keys)).toBe(31 + 256);
    const text = Buffer.from(sbBundle.file).toString("latin1");
    expect(text.split("\n").filter((l) => l && !l.startsWith("#"))).toEqual([
      `set abforge_roothash=${sbBundle.manifest.verity.rootHash}`,
      `set abforge_verity=${formatSlotVerity(sbBundle.manifest.verity)}`,
      "set abforge_version=2.0.0",
    ]);
    expect(pgpVerifies(sbBundle.file, sbBundle.sig)).toBe(true);
    const changed = Uint8Array.from(sbBundle.file);
    changed[SLOT_BOOT_FILE_BYTES - 2] = 0x20;
    expect(pgpVerifies(changed, sbBundle.sig)).toBe(false);
    // a text that does not fit is refused, not cut
    expect(() => signedSlotBootFile(`# ${"x".repeat(SLOT_BOOT_FILE_BYTES)}\n`, keys)).toThrow(
      /do not fit/,
    );
  });

  it("round-trips through the manifest, which bounds and validates it; images without it are unchanged", () => {
    expect(decodeManifest(encodeManifest(sbBundle.manifest))).toEqual(sbBundle.manifest);
    const plain = (w.bundles["2.0.0"] as BundleFixture).manifest;
    expect(plain.secureBoot).toBeUndefined();
    expect(new TextDecoder().decode(encodeManifest(plain))).not.toContain("secureBoot");
    const bad = (secureBoot: unknown) => () =>
      encodeManifest({ ...sbBundle.manifest, secureBoot } as Manifest);
    expect(bad({ slotFile: "not base64!", slotSig: "AA==" })).toThrow(/secureBoot\.slotFile/);
    expect(bad({ slotFile: "AA==", slotSig: "A".repeat(4096) })).toThrow(
      /secureBoot\.slotSig must be canonical base64 of 1 to 2048 bytes/,
    );
    expect(bad({ slotFile: "AA==", slotSig: "AA==", extra: 1 })).toThrow(
      /secureBoot\.extra is not a known field/,
    );
  });
});

describe("install onto a Secure Boot disk", () => {
  it("writes the bundle's boot file and signature into /SLOTB and /SLOTB.SIG, then flips the order; /SLOTA is untouched", async () => {
    const d = await secureBootDisk("sb-ok");
    const slotA = await espFile(d.path, "SLOTA");
    const placeholder = await espFile(d.path, "SLOTB");
    expect(Buffer.from(placeholder.file).toString("latin1")).toMatch(/^# abforge: no image/);
    const t = await testAgent(d.path, { config: { reboot: REBOOT_OFF } });
    const r = await t.agent.install(sbBundle.path);
    expect(r).toMatchObject({ outcome: "installed", version: "2.0.0", slot: "B" });

    const b = await espFile(d.path, "SLOTB");
    expect(digest(b.file)).toBe(digest(sbBundle.file));
    expect(digest(b.sig)).toBe(digest(sbBundle.sig));
    expect(pgpVerifies(b.file, b.sig)).toBe(true);
    const a = await espFile(d.path, "SLOTA");
    expect(digest(a.file)).toBe(digest(slotA.file));
    expect(digest(a.sig)).toBe(digest(slotA.sig));

    const boot = await readBoot(d.path);
    expect(boot.order).toEqual(["B", "A"]);
    expect(boot.slots.B).toMatchObject({ version: "2.0.0", good: false, tries: 3 });
    expect(t.lines.some((l) => /signed boot file into \/SLOTB for slot B/.test(l.msg))).toBe(true);
  });

  it("refuses a bundle built without secureBoot: GRUB would refuse the slot", async () => {
    const d = await secureBootDisk("sb-plain-bundle");
    const before = digest(await readRange(d.path, d.esp));
    const t = await testAgent(d.path, { config: { reboot: REBOOT_OFF } });
    const err = await rejection(t.agent.install((w.bundles["2.0.0"] as BundleFixture).path));
    expect(err.code).toBe("UPDATE_REFUSED");
    expect(err.message).toMatch(
      /built without secureBoot.*boots under Secure Boot.*nothing written/,
    );
    expect(digest(await readRange(d.path, d.esp))).toBe(before);
    expect((await readBoot(d.path)).order).toEqual(["A", "B"]);
  });

  it("refuses a Secure Boot bundle on a disk without signed boot files, or without the target's", async () => {
    for (const [name, disk, why] of [
      ["sb-on-plain", () => w.freshDisk("sb-on-plain"), /has no signed boot files/],
      [
        "sb-no-slotb",
        () => secureBootDisk("sb-no-slotb", { slotB: false }),
        /cannot replace slot B's.*no file SLOTB in the root directory/,
      ],
    ] as const) {
      const d = await disk();
      const before = digest(await readRange(d.path, d.esp));
      const slotB = digest(await readRange(d.path, d.slots.B));
      const t = await testAgent(d.path, { config: { reboot: REBOOT_OFF } });
      const err = await rejection(t.agent.install(sbBundle.path));
      expect(err.code, name).toBe("UPDATE_REFUSED");
      expect(err.message, name).toMatch(why);
      // nothing written: not the ESP (boot state, boot files), not the idle slot
      expect(digest(await readRange(d.path, d.esp)), name).toBe(before);
      expect(digest(await readRange(d.path, d.slots.B)), name).toBe(slotB);
    }
  });
});
