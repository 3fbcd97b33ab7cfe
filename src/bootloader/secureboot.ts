/**
 * Secure Boot for abforge disks (README.md, "Secure Boot"): the build's key
 * and certificate, the firmware signature of the GRUB image (`sbsign`), the
 * OpenPGP signatures GRUB checks for everything it reads after that, and the
 * signed per-slot boot file that carries a slot's root hash. The private key
 * is only read here, in the build: nothing derived from it but signatures
 * and the public key is written anywhere.
 */
import { createPrivateKey, createPublicKey, type KeyObject, X509Certificate } from "node:crypto";
import { readFile } from "node:fs/promises";
import { run } from "../exec.ts";
import { BootloaderError } from "./errors.ts";
import { type OpenPgpKey, openPgpKey, openPgpSign } from "./openpgp.ts";
import type { SlotName } from "./state.ts";

export interface SecureBootKeys {
  keyPath: string;
  certPath: string;
  privateKey: KeyObject;
  /** The certificate's key in OpenPGP form, embedded in the GRUB image. */
  pgp: OpenPgpKey;
}

/** The signed boot file of each slot in the ESP's root directory, and its signature (`NAME.SIG`). */
export const SLOT_BOOT_FILES: Record<SlotName, string> = { A: "SLOTA", B: "SLOTB" };

/**
 * The signature of the initrd's uncompressed cpio, beside it in /boot:
 * `verify_detached` (which checks the initrd before the kernel is loaded)
 * reads files through GRUB's gzip filter, while the `initrd` command's own
 * check reads the raw bytes (`initrd.img.sig`).
 */
export const INITRD_CPIO_SIGNATURE = "initrd.img.cpio.sig";

/** The detached signature's name GRUB looks for beside a file it opens (its `pgp` verifier). */
export function signatureName(file: string): string {
  return `${file}.sig`;
}

function keyBad(what: string, path: string, problem: string, cause?: unknown): BootloaderError {
  return new BootloaderError("SECURE_BOOT_KEY_BAD", `secureBoot.${what} ${path}: ${problem}`, {
    ...(cause ? { cause } : {}),
    details: { field: `secureBoot.${what}`, path },
  });
}

async function readPem(what: string, path: string): Promise<string> {
  try {
    return await readFile(path, "utf8");
  } catch (cause) {
    throw keyBad(what, path, `cannot read it (${(cause as NodeJS.ErrnoException).code})`, cause);
  }
}

/**
 * Read and check the spec's `secureBoot` key and certificate: an
 * unencrypted RSA private key PEM (sbsign cannot ask for a passphrase in a
 * build, GRUB 2.06 checks RSA) and the X.509 certificate of its public key.
 * Throws SECURE_BOOT_KEY_BAD naming the file; never the key's bytes.
 */
export async function loadSecureBootKeys(
  keyPath: string,
  certPath: string,
): Promise<SecureBootKeys> {
  const keyPem = await readPem("key", keyPath);
  if (keyPem.includes("ENCRYPTED"))
    throw keyBad(
      "key",
      keyPath,
      "the private key is encrypted; the build signs unattended and needs it unencrypted (openssl pkey -in KEY -out PLAIN), kept where only the build reads it",
    );
  let privateKey: KeyObject;
  try {
    privateKey = createPrivateKey({ key: keyPem, format: "pem" });
  } catch (cause) {
    throw keyBad("key", keyPath, "not a readable private key PEM", cause);
  }
  if (privateKey.asymmetricKeyType !== "rsa")
    throw keyBad(
      "key",
      keyPath,
      `a ${privateKey.asymmetricKeyType} key; Secure Boot and GRUB's signature check need RSA`,
    );
  const certPem = await readPem("cert", certPath);
  let cert: X509Certificate;
  try {
    cert = new X509Certificate(certPem);
  } catch (cause) {
    throw keyBad("cert", certPath, "not a readable X.509 certificate PEM", cause);
  }
  const spki = (k: KeyObject) => k.export({ type: "spki", format: "der" }).toString("hex");
  if (spki(cert.publicKey) !== spki(createPublicKey(privateKey)))
    throw keyBad("cert", certPath, `its public key is not the one of secureBoot.key ${keyPath}`);
  return { keyPath, certPath, privateKey, pgp: openPgpKey(privateKey) };
}

/** GRUB's detached signature of `data` (what `NAME.sig` beside the file holds). */
export function detachedSignature(data: Uint8Array, keys: SecureBootKeys): Uint8Array {
  return openPgpSign(data, keys.privateKey, keys.pgp);
}

/** Sign an EFI binary for the firmware's db check (Authenticode, `sbsign`). */
export async function sbsignEfi(
  inPath: string,
  outPath: string,
  keys: SecureBootKeys,
): Promise<void> {
  await run("sbsign", [
    "--key",
    keys.keyPath,
    "--cert",
    keys.certPath,
    "--output",
    outPath,
    inPath,
  ]);
}

/**
 * A slot's signed boot file (README.md, "Secure Boot", link 3): GRUB script
 * that only sets the image's root hash, verity parameters and version. It
 * names no slot, so the same file and signature serve the image in either
 * slot. Pure.
 */
export function slotBootFile(o: { rootHash: string; verity: string; version: string }): string {
  if (!/^[0-9a-f]{64}$/.test(o.rootHash) || !/^[0-9]+:[0-9]+:[0-9a-f]*$/.test(o.verity))
    throw new BootloaderError("BOOT_STATE_INVALID", "slot boot file: bad root hash or verity", {
      details: o,
    });
  if (!/^[0-9A-Za-z.+-]+$/.test(o.version))
    throw new BootloaderError("BOOT_STATE_INVALID", `slot boot file: bad version ${o.version}`, {
      details: o,
    });
  return `set abforge_roothash=${o.rootHash}\nset abforge_verity=${o.verity}\nset abforge_version=${o.version}\n`;
}
