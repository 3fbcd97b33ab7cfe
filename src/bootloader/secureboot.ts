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

/**
 * Every slot boot file is this many bytes (README.md, "Secure Boot",
 * "Updates"): the build pads it with comment lines, so the agent can
 * rewrite a slot's file in place in the FAT, as it does /GRUBENV.
 */
export const SLOT_BOOT_FILE_BYTES = 1024;

/** What a slot boot file says in place of the three lines while its slot holds no image. */
export const EMPTY_SLOT_BOOT_FILE = "# abforge: no image in this slot\n";

/** The length of every OpenPGP signature by `keys` (openPgpSign with a modulus-long MPI). */
export function slotSignatureBytes(keys: SecureBootKeys): number {
  const bits = keys.privateKey.asymmetricKeyDetails?.modulusLength ?? 0;
  // packet header 3, hashed part 12, unhashed part 2 + 10, hash left 16 bits 2, MPI 2 + modulus
  return 31 + Math.ceil(bits / 8);
}

/**
 * `text` padded to SLOT_BOOT_FILE_BYTES with comment lines, and its
 * detached signature, exactly slotSignatureBytes long: an RSA signature
 * whose first byte is 0 is one byte shorter as an MPI, so the first
 * comment line counts up until it is not (1 try in 256 needs a second).
 */
export function signedSlotBootFile(
  text: string,
  keys: SecureBootKeys,
): { file: Uint8Array; sig: Uint8Array } {
  const sigBytes = slotSignatureBytes(keys);
  for (let n = 0; n < 4096; n++) {
    let padded = `${text}# ${n}\n`;
    while (padded.length < SLOT_BOOT_FILE_BYTES) {
      const room = SLOT_BOOT_FILE_BYTES - padded.length;
      padded += `${"#".repeat(Math.min(63, room - 1))}\n`;
    }
    if (padded.length !== SLOT_BOOT_FILE_BYTES || !/^[\x20-\x7e\n]*$/.test(text))
      throw new BootloaderError(
        "BOOT_STATE_INVALID",
        `slot boot file: ${text.length} bytes of text do not fit its ${SLOT_BOOT_FILE_BYTES} bytes`,
        { details: { textBytes: text.length } },
      );
    const file = new TextEncoder().encode(padded);
    const sig = detachedSignature(file, keys);
    if (sig.length === sigBytes) return { file, sig };
  }
  throw new BootloaderError("SECURE_BOOT_KEY_BAD", "slot boot file: no full-length signature");
}
