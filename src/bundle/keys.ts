/**
 * ed25519 signing keys (README.md, "Signature"): key files, key ids, and
 * signing and verifying the manifest's exact bytes with node's crypto.
 */
import {
  createHash,
  createPrivateKey,
  createPublicKey,
  generateKeyPairSync,
  type KeyObject,
  sign,
  verify,
} from "node:crypto";
import { link, lstat, mkdir, open, readFile, rm } from "node:fs/promises";
import { dirname, join } from "node:path";
import { ToolError } from "../errors.ts";
import { BundleError } from "./errors.ts";
import { fsyncDir, ioStep, pathExists } from "./io.ts";

export type { KeyObject };

export const PRIVATE_KEY_FILE = "signing.key";
export const PUBLIC_KEY_FILE = "signing.pub";
/** An ed25519 signature is always 64 bytes. */
export const SIGNATURE_BYTES = 64;

export interface KeyPairPaths {
  privateKeyPath: string;
  publicKeyPath: string;
  keyId: string;
}

/**
 * Make a new ed25519 key pair in `dir`: `signing.key` (PKCS#8 PEM, mode
 * 0600) and `signing.pub` (SPKI PEM, mode 0644). Refuses (KEY_EXISTS) when
 * either file exists; each file appears whole or not at all.
 */
export async function generateKeyPair(dir: string): Promise<KeyPairPaths> {
  const privateKeyPath = join(dir, PRIVATE_KEY_FILE);
  const publicKeyPath = join(dir, PUBLIC_KEY_FILE);
  const existing = await ioStep(`look at ${dir}`, () =>
    lstat(dir).catch((err: NodeJS.ErrnoException) => {
      if (err.code === "ENOENT") return undefined;
      throw err;
    }),
  );
  if (existing && !existing.isDirectory()) {
    throw new BundleError(
      "KEY_EXISTS",
      `key directory ${dir} is an existing file, not a directory: the key pair goes into a directory as ${PRIVATE_KEY_FILE} and ${PUBLIC_KEY_FILE} (nothing was written)`,
      { details: { path: dir } },
    );
  }
  await ioStep(`create key directory ${dir}`, () => mkdir(dir, { recursive: true }));
  for (const p of [privateKeyPath, publicKeyPath]) {
    if (await pathExists(p))
      throw new BundleError("KEY_EXISTS", `key file ${p} already exists; not overwriting it`, {
        details: { path: p },
      });
  }
  const { privateKey, publicKey } = generateKeyPairSync("ed25519");
  const privatePem = privateKey.export({ type: "pkcs8", format: "pem" }) as string;
  const publicPem = publicKey.export({ type: "spki", format: "pem" }) as string;
  await writeNoClobber(privateKeyPath, privatePem, 0o600);
  await writeNoClobber(publicKeyPath, publicPem, 0o644);
  await fsyncDir(dir);
  return { privateKeyPath, publicKeyPath, keyId: keyId(publicKey) };
}

/** A private ed25519 key from a PKCS#8 PEM file (KEY_BAD otherwise). */
export async function loadPrivateKey(path: string): Promise<KeyObject> {
  const pem = await readKeyFile(path);
  let key: KeyObject;
  try {
    key = createPrivateKey({ key: pem, format: "pem" });
  } catch (cause) {
    throw new BundleError("KEY_BAD", `key file ${path}: not a readable private key PEM`, {
      cause,
      details: { path },
    });
  }
  return requireEd25519(key, path);
}

/** A public ed25519 key from an SPKI PEM file (KEY_BAD otherwise, also for a private key). */
export async function loadPublicKey(path: string): Promise<KeyObject> {
  const pem = await readKeyFile(path);
  if (!pem.includes("-----BEGIN PUBLIC KEY-----"))
    throw new BundleError("KEY_BAD", `key file ${path}: not a public key PEM (BEGIN PUBLIC KEY)`, {
      details: { path },
    });
  let key: KeyObject;
  try {
    key = createPublicKey({ key: pem, format: "pem" });
  } catch (cause) {
    throw new BundleError("KEY_BAD", `key file ${path}: not a readable public key PEM`, {
      cause,
      details: { path },
    });
  }
  return requireEd25519(key, path);
}

export function publicKeyFromPrivate(key: KeyObject): KeyObject {
  return createPublicKey(key);
}

/** The first 16 hex digits of the sha256 of the public key's SPKI DER encoding. */
export function keyId(key: KeyObject): string {
  const pub = key.type === "private" ? createPublicKey(key) : key;
  const der = pub.export({ type: "spki", format: "der" });
  return createHash("sha256").update(der).digest("hex").slice(0, 16);
}

/** ed25519 signature (64 bytes) over exactly `bytes`. */
export function signBytes(bytes: Uint8Array, key: KeyObject): Uint8Array {
  if (key.type !== "private" || key.asymmetricKeyType !== "ed25519")
    throw new BundleError("KEY_BAD", "signing needs a private ed25519 key");
  return new Uint8Array(sign(null, bytes, key));
}

export interface VerifyOptions {
  /** The key id the signed data claims (Manifest.keyId): tells an unknown key from a bad signature. */
  keyIdHint?: string;
  /** For messages, e.g. "bundle /srv/demo-1.2.0.bundle". */
  where?: string;
}

/**
 * The trusted key whose signature `sig` is over `bytes`. Each trusted key is
 * tried, so a host that trusts the old and the new key accepts both during
 * a rotation. No key verifies: BUNDLE_UNTRUSTED_KEY when the claimed key id
 * is not trusted, otherwise BUNDLE_BAD_SIGNATURE.
 */
export function verifySignature(
  bytes: Uint8Array,
  sig: Uint8Array,
  trusted: readonly KeyObject[],
  o: VerifyOptions = {},
): KeyObject {
  const where = o.where ?? "signature";
  if (sig.length !== SIGNATURE_BYTES)
    throw new BundleError(
      "BUNDLE_BAD_SIGNATURE",
      `${where}: signature is ${sig.length} bytes, an ed25519 signature is ${SIGNATURE_BYTES}`,
      { details: { size: sig.length } },
    );
  for (const key of trusted) {
    if (verify(null, bytes, key, sig)) return key;
  }
  const ids = trusted.map(keyId);
  if (o.keyIdHint !== undefined && !ids.includes(o.keyIdHint))
    throw new BundleError(
      "BUNDLE_UNTRUSTED_KEY",
      `${where}: signed by key ${o.keyIdHint}, which is not trusted (trusted: ${ids.join(", ") || "none"})`,
      { details: { keyId: o.keyIdHint, trusted: ids } },
    );
  throw new BundleError(
    "BUNDLE_BAD_SIGNATURE",
    `${where}: the signature does not verify with any trusted key (${ids.join(", ") || "none"})`,
    { details: { keyId: o.keyIdHint, trusted: ids } },
  );
}

function requireEd25519(key: KeyObject, path: string): KeyObject {
  if (key.asymmetricKeyType !== "ed25519")
    throw new BundleError(
      "KEY_BAD",
      `key file ${path}: a ${key.asymmetricKeyType} key, abforge signs with ed25519`,
      { details: { path, type: key.asymmetricKeyType } },
    );
  return key;
}

async function readKeyFile(path: string): Promise<string> {
  try {
    return await readFile(path, "utf8");
  } catch (cause) {
    throw new BundleError(
      "KEY_BAD",
      `key file ${path}: cannot read it (${(cause as NodeJS.ErrnoException).code ?? cause})`,
      { cause, details: { path } },
    );
  }
}

/**
 * Write a file under a temporary name, fsync it, then link(2) it to its
 * name: link never replaces an existing file, and the file is whole when
 * it appears.
 */
async function writeNoClobber(path: string, text: string, mode: number): Promise<void> {
  const tmp = join(dirname(path), `.${process.pid}.${Date.now()}.tmp`);
  try {
    await ioStep(`write ${tmp}`, async () => {
      const f = await open(tmp, "wx", mode);
      try {
        await f.chmod(mode); // the umask must not widen or narrow it
        await f.writeFile(text);
        await f.sync();
      } finally {
        await f.close();
      }
    });
    try {
      await link(tmp, path);
    } catch (cause) {
      if ((cause as NodeJS.ErrnoException).code === "EEXIST")
        throw new BundleError("KEY_EXISTS", `key file ${path} already exists; not overwriting it`, {
          cause,
          details: { path },
        });
      throw new ToolError("IO_ERROR", `cannot create ${path}: ${(cause as Error).message}`, {
        cause,
      });
    }
  } finally {
    await rm(tmp, { force: true });
  }
}
