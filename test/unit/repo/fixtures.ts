/** Keys, bundles and repositories for the repo tests. */
import { generateKeyPairSync, type KeyObject, sign } from "node:crypto";
import { createWriteStream } from "node:fs";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { pipeline } from "node:stream/promises";
import tar from "tar-stream";

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
  slotBytes?: Uint8Array;
}

/** A bundle: tar of manifest.json, manifest.sig and the slot image. */
export async function makeBundle(path: string, key: TestKey, b: TestBundle): Promise<void> {
  const slot = b.slotBytes ?? new Uint8Array(8192).fill(0x5a);
  const manifest = Buffer.from(
    JSON.stringify({
      formatVersion: 1,
      name: b.name ?? "demo",
      compatible: b.compatible ?? "demo-x86_64",
      version: b.version,
      createdAt: "2026-01-01T00:00:00.000Z",
    }),
  );
  const pack = tar.pack();
  const entry = (name: string, data: Uint8Array) =>
    pack.entry({ name, size: data.length, mtime: new Date(0), mode: 0o644 }, Buffer.from(data));
  entry("manifest.json", manifest);
  entry("manifest.sig", sign(null, manifest, key.privateKey));
  entry("slot.img", slot);
  pack.finalize();
  await pipeline(pack, createWriteStream(path));
}
