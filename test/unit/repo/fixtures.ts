/**
 * Keys, slot images and bundles for the repo tests, made with the real
 * bundle writer and `veritysetup format` (deterministic salt and UUID, so
 * the same arguments give the same bundle bytes).
 */
import { createHash, generateKeyPairSync, type KeyObject } from "node:crypto";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { hashSlotImage, writeBundle } from "../../../src/bundle/index.ts";
import { run } from "../../../src/exec.ts";

export interface TestKey {
  privateKey: KeyObject;
  publicKey: KeyObject;
  privatePath: string;
  publicPath: string;
}

export async function makeKey(dir: string, name = "signing"): Promise<TestKey> {
  const { privateKey, publicKey } = generateKeyPairSync("ed25519");
  const privatePath = join(dir, `${name}.key`);
  const publicPath = join(dir, `${name}.pub`);
  await writeFile(privatePath, privateKey.export({ type: "pkcs8", format: "pem" }));
  await writeFile(publicPath, publicKey.export({ type: "spki", format: "pem" }));
  return { privateKey, publicKey, privatePath, publicPath };
}

export interface TestBundle {
  name?: string;
  version: string;
  compatible?: string;
  /** The slot image's data area is this byte repeated (default 0x5a). */
  fill?: number;
  /** Data area size, a multiple of 4096 (default 16 KiB). */
  dataBytes?: number;
}

/** A real bundle: slot image = fill bytes + veritysetup superblock and tree. */
export async function makeBundle(path: string, key: TestKey, b: TestBundle): Promise<void> {
  const fill = b.fill ?? 0x5a;
  const dataBytes = b.dataBytes ?? 16384;
  const slot = `${path}.slot`;
  await writeFile(slot, new Uint8Array(dataBytes).fill(fill));
  const seed = createHash("sha256").update(`${b.version}/${fill}/${dataBytes}`).digest("hex");
  const uuid = `${seed.slice(0, 8)}-${seed.slice(8, 12)}-4${seed.slice(13, 16)}-8${seed.slice(17, 20)}-${seed.slice(20, 32)}`;
  const r = await run("veritysetup", [
    "format",
    slot,
    slot,
    `--hash-offset=${dataBytes}`,
    `--salt=${seed}`,
    `--uuid=${uuid}`,
  ]);
  const rootHash = /^Root hash:\s*([0-9a-f]+)/m.exec(r.stdout)?.[1];
  if (!rootHash) throw new Error(`veritysetup printed no root hash: ${r.stdout}`);
  const slotImage = await hashSlotImage(slot);
  await writeBundle({
    outPath: path,
    key: key.privateKey,
    slotImagePath: slot,
    manifest: {
      formatVersion: 1,
      name: b.name ?? "demo",
      compatible: b.compatible ?? "demo-x86_64",
      version: b.version,
      createdAt: "2026-01-01T00:00:00Z",
      slotImage,
      verity: {
        hashAlgorithm: "sha256",
        dataBlockSize: 4096,
        hashBlockSize: 4096,
        dataBlocks: dataBytes / 4096,
        salt: seed,
        uuid,
        superblock: true,
        hashOffset: dataBytes,
        hashStartBlock: dataBytes / 4096 + 1,
        hashAreaSize: slotImage.size - dataBytes,
        rootHash,
      },
    },
  });
}
