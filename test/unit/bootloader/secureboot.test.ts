/** Secure Boot pieces: src/bootloader/README.md, "Secure Boot" and "OpenPGP packets". */
import { execFileSync } from "node:child_process";
import { createHash, createPublicKey, generateKeyPairSync, verify } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import {
  detachedSignature,
  grubConfig,
  loadSecureBootKeys,
  openPgpKey,
  openPgpSign,
  slotBootFile,
} from "../../../src/bootloader/index.ts";
import { rejection } from "../../helpers/errors.ts";
import { secureBootKeyFiles, selfSignedCert } from "../../helpers/secure-boot.ts";
import { tempDir } from "../../helpers/tmp.ts";

const dir = tempDir("abforge-secureboot-");
const { keyPath, certPath, ...rsa } = secureBootKeyFiles(dir);
/** A self-signed certificate of `keyPath` (openssl, as an operator makes one). */
const certFor = (key: string, name: string) => selfSignedCert(key, join(dir, `${name}.pem`));

/** The fields of a signature packet as RFC 4880 5.2.3 lays them out. */
function parseSignature(sig: Uint8Array) {
  const b = Buffer.from(sig);
  expect(b[0]).toBe(0x89); // old format, tag 2, two-byte length
  expect(b.readUInt16BE(1)).toBe(b.length - 3);
  const body = b.subarray(3);
  const hashedLen = body.readUInt16BE(4);
  const hashed = body.subarray(0, 6 + hashedLen);
  const unhashedLen = body.readUInt16BE(6 + hashedLen);
  const unhashed = body.subarray(8 + hashedLen, 8 + hashedLen + unhashedLen);
  const rest = body.subarray(8 + hashedLen + unhashedLen);
  const bits = rest.readUInt16BE(2);
  const value = rest.subarray(4);
  expect(value.length).toBe(Math.ceil(bits / 8));
  return { hashed, unhashed, left16: rest.subarray(0, 2), value };
}

describe("OpenPGP packets", () => {
  it("a public key packet whose key ID is the tail of its v4 fingerprint", () => {
    const k = openPgpKey(rsa.privateKey);
    const p = Buffer.from(k.packet);
    expect(p[0]).toBe(0x99);
    const body = p.subarray(3);
    expect([body[0], body.readUInt32BE(1), body[5]]).toEqual([4, 0, 1]);
    const fp = createHash("sha1").update(p).digest();
    expect(Buffer.from(k.fingerprint)).toEqual(fp);
    expect(Buffer.from(k.keyId)).toEqual(fp.subarray(12));
    // n: the key's modulus as an MPI
    const n = Buffer.from(rsa.publicKey.export({ format: "jwk" }).n!, "base64url");
    expect(body.readUInt16BE(6)).toBe(2048);
    expect(body.subarray(8, 8 + 256)).toEqual(n);
  });

  it("a v4 binary signature that verifies over the file, the hashed part and the trailer", () => {
    const k = openPgpKey(rsa.privateKey);
    const data = new TextEncoder().encode("set abforge_roothash=...\n");
    const sig = parseSignature(openPgpSign(data, rsa.privateKey, k));
    expect([...sig.hashed.subarray(0, 4)]).toEqual([4, 0, 1, 8]);
    expect([...sig.unhashed.subarray(0, 2)]).toEqual([9, 16]);
    expect(Buffer.from(sig.unhashed.subarray(2))).toEqual(Buffer.from(k.keyId));
    const trailer = Buffer.concat([Buffer.of(4, 0xff), Buffer.alloc(4)]);
    trailer.writeUInt32BE(sig.hashed.length, 2);
    const signed = Buffer.concat([data, sig.hashed, trailer]);
    expect(sig.left16).toEqual(createHash("sha256").update(signed).digest().subarray(0, 2));
    const value = Buffer.concat([Buffer.alloc(256 - sig.value.length), sig.value]);
    expect(verify("sha256", signed, rsa.publicKey, value)).toBe(true);
    const changed = Buffer.from(signed);
    changed[0] = changed[0]! ^ 1;
    expect(verify("sha256", changed, rsa.publicKey, value)).toBe(false);
  });

  it("gpg reads both packets as written", () => {
    const k = openPgpKey(rsa.privateKey);
    const pub = join(dir, "k.gpg");
    const sig = join(dir, "f.sig");
    writeFileSync(pub, k.packet);
    writeFileSync(sig, openPgpSign(Buffer.from("x"), rsa.privateKey, k));
    const env = { ...process.env, GNUPGHOME: tempDir("abforge-gnupg-") };
    const keyId = Buffer.from(k.keyId).toString("hex").toUpperCase();
    const listed = (f: string) =>
      execFileSync("gpg", ["--list-packets", f], { env, stdio: ["ignore", "pipe", "ignore"] })
        .toString()
        .replace(/\t/g, " ");
    expect(listed(pub)).toMatch(new RegExp(`public key packet:[\\s\\S]*keyid: ${keyId}`));
    expect(listed(sig)).toMatch(
      new RegExp(`signature packet: algo 1, keyid ${keyId}[\\s\\S]*digest algo 8`),
    );
  });
});

describe("loadSecureBootKeys", () => {
  it("loads a matching key and certificate", async () => {
    const keys = await loadSecureBootKeys(keyPath, certPath);
    expect(Buffer.from(keys.pgp.packet)).toEqual(Buffer.from(openPgpKey(rsa.publicKey).packet));
    const sig = parseSignature(detachedSignature(Buffer.from("a"), keys));
    expect(sig.value.length).toBeGreaterThan(250);
  });

  it("refuses an encrypted key, naming the field and the file, never the key", async () => {
    const enc = join(dir, "enc.key");
    writeFileSync(
      enc,
      rsa.privateKey.export({
        type: "pkcs8",
        format: "pem",
        cipher: "aes-256-cbc",
        passphrase: "x",
      }),
    );
    const err = await rejection(loadSecureBootKeys(enc, certPath));
    expect(err.code).toBe("SECURE_BOOT_KEY_BAD");
    expect(err.message).toContain(`secureBoot.key ${enc}: the private key is encrypted`);
    expect(err.message).not.toContain("BEGIN");
  });

  it("refuses a certificate of another key, a non-RSA key, and a missing file", async () => {
    const other = join(dir, "other.key");
    writeFileSync(
      other,
      generateKeyPairSync("rsa", { modulusLength: 2048 }).privateKey.export({
        type: "pkcs8",
        format: "pem",
      }),
    );
    const mismatch = await rejection(loadSecureBootKeys(keyPath, certFor(other, "other")));
    expect(mismatch.message).toMatch(/secureBoot\.cert .*: its public key is not the one of/);
    const ec = join(dir, "ec.key");
    writeFileSync(
      ec,
      generateKeyPairSync("ec", { namedCurve: "P-256" }).privateKey.export({
        type: "pkcs8",
        format: "pem",
      }),
    );
    expect((await rejection(loadSecureBootKeys(ec, certPath))).message).toMatch(
      /secureBoot\.key .*: a ec key; .* need RSA/,
    );
    const missing = await rejection(loadSecureBootKeys(join(dir, "nope.key"), certPath));
    expect(missing.code).toBe("SECURE_BOOT_KEY_BAD");
    expect(missing.message).toContain("cannot read it (ENOENT)");
    expect(createPublicKey(readFileSync(certPath)).asymmetricKeyType).toBe("rsa");
  });
});

describe("grubConfig with secureBoot", () => {
  const sb = grubConfig({ cmdline: "console=ttyS0", secureBoot: true });

  it("loads only the counters and the order from /GRUBENV, without its signature", () => {
    const load = sb.split("\n").find((l) => l.startsWith("load_env "))!;
    expect(load).toMatch(/^load_env --skip-sig --file "\$abforge_env" order good_tries /);
    expect(load).not.toMatch(/roothash|verity|version/);
    for (const v of ["A_tries", "A_good", "A_boots", "B_tries", "B_good", "B_boots"])
      expect(load.split(" ")).toContain(v);
  });

  it("takes the root hash from the slot's signed boot file and checks the initrd before the kernel", () => {
    for (const slot of ["A", "B"] as const) {
      const f = sb.slice(sb.indexOf(`function abforge_try_${slot} {`));
      const source = f.indexOf(`source "($abforge_esp)/SLOT${slot}"`);
      const check = f.indexOf("verify_detached ");
      const linux = f.indexOf("linux ");
      expect(source).toBeGreaterThan(0);
      expect(check).toBeGreaterThan(source);
      expect(linux).toBeGreaterThan(check);
      const line = f.slice(linux, f.indexOf("\n", linux));
      expect(line).toContain('"abforge.roothash=$abforge_roothash"');
      expect(line).not.toContain(`$${slot}_roothash`);
    }
  });

  it("leaves the plain script as it was", () => {
    const plain = grubConfig({ cmdline: "console=ttyS0" });
    expect(plain).not.toMatch(/verify_detached|source |--skip-sig/);
    expect(plain).toContain('"abforge.roothash=$A_roothash"');
  });
});

describe("slotBootFile", () => {
  it("sets the three variables and nothing else", () => {
    const f = slotBootFile({ rootHash: "a".repeat(64), verity: "10:11:ff", version: "1.2.3" });
    expect(f).toBe(
      `set abforge_roothash=${"a".repeat(64)}\nset abforge_verity=10:11:ff\nset abforge_version=1.2.3\n`,
    );
  });
});
