/**
 * What the repository needs from bundles and keys, in one place: key loading,
 * key ids, ed25519 signing, and "is this bundle signed by this key, what is it,
 * and where does its slot data start".
 */
import {
  createHash,
  createPrivateKey,
  createPublicKey,
  type KeyObject,
  sign,
  verify,
} from "node:crypto";
import { open, readFile } from "node:fs/promises";
import { RepoError } from "./errors.ts";

function publicOf(key: KeyObject): KeyObject {
  return key.type === "private" ? createPublicKey(key) : key;
}

export function keyIdOf(key: KeyObject): string {
  const der = publicOf(key).export({ type: "spki", format: "der" });
  return createHash("sha256").update(der).digest("hex").slice(0, 16);
}

export function signWith(bytes: Uint8Array, key: KeyObject): Uint8Array {
  return sign(null, bytes, key);
}

export function verifyWith(bytes: Uint8Array, sig: Uint8Array, key: KeyObject): boolean {
  return verify(null, bytes, key, sig);
}

export async function loadSigningKey(path: string): Promise<KeyObject> {
  try {
    return createPrivateKey(await readFile(path));
  } catch (cause) {
    throw new RepoError("REPO_PUBLISH_REFUSED", `key ${path}: ${(cause as Error).message}`, {
      cause,
      details: { path },
    });
  }
}

export function publicKeyOf(key: KeyObject): KeyObject {
  return publicOf(key);
}

export interface BundleFacts {
  name: string;
  version: string;
  compatible: string;
  slotDataOffset: number;
}

/** Verify the bundle at `path` against `publicKey`; its identity and slot data offset. */
export async function inspectBundle(path: string, publicKey: KeyObject): Promise<BundleFacts> {
  const fh = await open(path, "r");
  try {
    const entries: { name: string; offset: number; size: number }[] = [];
    let pos = 0;
    while (entries.length < 3) {
      const header = Buffer.alloc(512);
      const { bytesRead } = await fh.read(header, 0, 512, pos);
      if (bytesRead < 512) break;
      const name = header.subarray(0, 100).toString("utf8").replace(/\0.*$/s, "");
      const size = Number.parseInt(header.subarray(124, 136).toString("ascii").trim() || "0", 8);
      entries.push({ name, offset: pos + 512, size });
      pos += 512 + Math.ceil(size / 512) * 512;
    }
    const [m, s, slot] = entries;
    if (m?.name !== "manifest.json" || s?.name !== "manifest.sig" || slot === undefined)
      throw new RepoError("REPO_PUBLISH_REFUSED", `${path} is not a bundle`, { details: { path } });
    const manifest = Buffer.alloc(m.size);
    await fh.read(manifest, 0, m.size, m.offset);
    const sig = Buffer.alloc(s.size);
    await fh.read(sig, 0, s.size, s.offset);
    if (!verify(null, manifest, publicKey, sig))
      throw new RepoError("REPO_PUBLISH_REFUSED", `${path}: signature does not verify`, {
        details: { path },
      });
    const parsed = JSON.parse(manifest.toString("utf8")) as BundleFacts;
    return {
      name: parsed.name,
      version: parsed.version,
      compatible: parsed.compatible,
      slotDataOffset: slot.offset,
    };
  } finally {
    await fh.close();
  }
}
