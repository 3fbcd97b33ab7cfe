/** Secure Boot key material for tests, made as an operator makes it. */
import { execFileSync } from "node:child_process";
import { generateKeyPairSync, type KeyObject } from "node:crypto";
import { writeFileSync } from "node:fs";
import { join } from "node:path";

/** A self-signed certificate of `keyPath` in `out` (openssl req -x509), valid for a day. */
export function selfSignedCert(keyPath: string, out: string): string {
  const args = ["req", "-new", "-x509", "-key", keyPath, "-subj", "/CN=abforge test"];
  execFileSync("openssl", [...args, "-days", "1", "-out", out]);
  return out;
}

/** A new RSA-2048 key in DIR/NAME.key (PKCS#8 PEM) and its certificate in DIR/NAME.pem. */
export function secureBootKeyFiles(
  dir: string,
  name = "sb",
): { keyPath: string; certPath: string; privateKey: KeyObject; publicKey: KeyObject } {
  const { privateKey, publicKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
  const keyPath = join(dir, `${name}.key`);
  writeFileSync(keyPath, privateKey.export({ type: "pkcs8", format: "pem" }));
  return {
    keyPath,
    certPath: selfSignedCert(keyPath, join(dir, `${name}.pem`)),
    privateKey,
    publicKey,
  };
}
