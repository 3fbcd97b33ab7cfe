/** Keys and signatures (src/bundle/README.md, "Signature"). */
import { createHash, generateKeyPairSync } from "node:crypto";
import { mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import {
  generateKeyPair,
  keyId,
  loadPrivateKey,
  loadPublicKey,
  publicKeyFromPrivate,
  signBytes,
  verifySignature,
} from "../../../src/bundle/index.ts";
import { caught } from "../../helpers/errors.ts";
import { tempDir } from "../../helpers/tmp.ts";
import { expectCode } from "./fixtures.ts";

const dir = tempDir("abforge-keys-");

async function catchOf(p: Promise<unknown> | (() => unknown)): Promise<unknown> {
  try {
    if (typeof p === "function") p();
    else await p;
  } catch (e) {
    return e;
  }
  return undefined;
}

describe("keygen", () => {
  it("writes signing.key (PKCS#8 PEM, 0600) and signing.pub (SPKI PEM) that load and match", async () => {
    const old = process.umask(0o000); // a permissive umask must not widen the private key
    let r: Awaited<ReturnType<typeof generateKeyPair>>;
    try {
      r = await generateKeyPair(join(dir, "k1"));
    } finally {
      process.umask(old);
    }
    expect(r.privateKeyPath).toBe(join(dir, "k1", "signing.key"));
    expect(r.publicKeyPath).toBe(join(dir, "k1", "signing.pub"));
    expect(statSync(r.privateKeyPath).mode & 0o777).toBe(0o600);
    expect(statSync(r.publicKeyPath).mode & 0o777).toBe(0o644);
    expect(readFileSync(r.privateKeyPath, "utf8")).toMatch(/^-----BEGIN PRIVATE KEY-----\n/);
    expect(readFileSync(r.publicKeyPath, "utf8")).toMatch(/^-----BEGIN PUBLIC KEY-----\n/);
    const priv = await loadPrivateKey(r.privateKeyPath);
    const pub = await loadPublicKey(r.publicKeyPath);
    expect(priv.asymmetricKeyType).toBe("ed25519");
    expect(keyId(publicKeyFromPrivate(priv))).toBe(keyId(pub));
    expect(r.keyId).toBe(keyId(pub));
    expect(readdirSync(join(dir, "k1")).sort()).toEqual(["signing.key", "signing.pub"]);
  });

  it("refuses to overwrite either key file and leaves them as they were", async () => {
    const d = join(dir, "k2");
    const first = await generateKeyPair(d);
    const before = readFileSync(first.privateKeyPath);
    const e = expectCode(await catchOf(generateKeyPair(d)), "KEY_EXISTS");
    expect(e.message).toBe(`key file ${first.privateKeyPath} already exists; not overwriting it`);
    expect(readFileSync(first.privateKeyPath)).toEqual(before);

    const onlyPub = join(dir, "k3");
    mkdirSync(onlyPub);
    writeFileSync(join(onlyPub, "signing.pub"), "keep me");
    expectCode(await catchOf(generateKeyPair(onlyPub)), "KEY_EXISTS");
    expect(readdirSync(onlyPub)).toEqual(["signing.pub"]);
    expect(readFileSync(join(onlyPub, "signing.pub"), "utf8")).toBe("keep me");
  });

  it("key id = first 16 hex digits of sha256 over the SPKI DER", async () => {
    const { publicKey, privateKey } = generateKeyPairSync("ed25519");
    const der = publicKey.export({ type: "spki", format: "der" });
    const expected = createHash("sha256").update(der).digest("hex").slice(0, 16);
    expect(keyId(publicKey)).toBe(expected);
    expect(keyId(privateKey)).toBe(expected);
  });
});

describe("key files", () => {
  it("refuses missing, garbled, wrong-kind and non-ed25519 keys with KEY_BAD naming the file", async () => {
    const rsa = generateKeyPairSync("rsa", { modulusLength: 1024 });
    const ed = generateKeyPairSync("ed25519");
    const files: Record<string, string> = {
      garbage: "not a key",
      rsaPriv: rsa.privateKey.export({ type: "pkcs8", format: "pem" }) as string,
      rsaPub: rsa.publicKey.export({ type: "spki", format: "pem" }) as string,
      edPriv: ed.privateKey.export({ type: "pkcs8", format: "pem" }) as string,
    };
    for (const [n, t] of Object.entries(files)) writeFileSync(join(dir, n), t);
    const p = (n: string) => join(dir, n);
    for (const [what, load] of [
      ["missing private", () => loadPrivateKey(p("nope"))],
      ["missing public", () => loadPublicKey(p("nope"))],
      ["garbage private", () => loadPrivateKey(p("garbage"))],
      ["garbage public", () => loadPublicKey(p("garbage"))],
      ["rsa private", () => loadPrivateKey(p("rsaPriv"))],
      ["rsa public", () => loadPublicKey(p("rsaPub"))],
      ["private key given as trusted key", () => loadPublicKey(p("edPriv"))],
    ] as const) {
      const e = expectCode(await catchOf(load()), "KEY_BAD");
      expect(e.message, what).toMatch(new RegExp(`^key file ${dir}/\\w+: `));
    }
  });
});

describe("signatures", () => {
  const oldKey = generateKeyPairSync("ed25519");
  const newKey = generateKeyPairSync("ed25519");
  const otherKey = generateKeyPairSync("ed25519");
  const data = new TextEncoder().encode("manifest bytes");

  it("signs with 64 bytes that verify; a rotation list accepts either key and says which", () => {
    const sigOld = signBytes(data, oldKey.privateKey);
    const sigNew = signBytes(data, newKey.privateKey);
    expect(sigOld.length).toBe(64);
    const trusted = [oldKey.publicKey, newKey.publicKey];
    expect(keyId(verifySignature(data, sigOld, trusted))).toBe(keyId(oldKey.publicKey));
    expect(keyId(verifySignature(data, sigNew, trusted))).toBe(keyId(newKey.publicKey));
    // After the rotation, the old key is no longer trusted.
    const e = expectCode(
      caught(() =>
        verifySignature(data, sigOld, [newKey.publicKey], {
          keyIdHint: keyId(oldKey.publicKey),
          where: "bundle b",
        }),
      ),
      "BUNDLE_UNTRUSTED_KEY",
    );
    expect(e.message).toBe(
      `bundle b: signed by key ${keyId(oldKey.publicKey)}, which is not trusted (trusted: ${keyId(newKey.publicKey)})`,
    );
  });

  it("tells a garbled, short or misplaced signature (BAD_SIGNATURE) from an unknown key", () => {
    const sig = signBytes(data, oldKey.privateKey);
    const trusted = [oldKey.publicKey];
    const hint = { keyIdHint: keyId(oldKey.publicKey) };
    const flipped = Uint8Array.from(sig);
    flipped[10]! ^= 1;
    expectCode(
      caught(() => verifySignature(data, flipped, trusted, hint)),
      "BUNDLE_BAD_SIGNATURE",
    );
    expectCode(
      caught(() => verifySignature(data, sig.subarray(0, 63), trusted, hint)),
      "BUNDLE_BAD_SIGNATURE",
    );
    expectCode(
      caught(() => verifySignature(data, new Uint8Array(0), trusted, hint)),
      "BUNDLE_BAD_SIGNATURE",
    );
    const changed = Uint8Array.from(data);
    changed[0]! ^= 1;
    expectCode(
      caught(() => verifySignature(changed, sig, trusted, hint)),
      "BUNDLE_BAD_SIGNATURE",
    );
    // Signed by a key nobody trusts, and the signed data says so.
    const foreign = signBytes(data, otherKey.privateKey);
    expectCode(
      caught(() =>
        verifySignature(data, foreign, trusted, { keyIdHint: keyId(otherKey.publicKey) }),
      ),
      "BUNDLE_UNTRUSTED_KEY",
    );
    // Without a hint, or with no trusted keys at all.
    expectCode(
      caught(() => verifySignature(data, foreign, trusted)),
      "BUNDLE_BAD_SIGNATURE",
    );
    expectCode(
      caught(() => verifySignature(data, sig, [], hint)),
      "BUNDLE_UNTRUSTED_KEY",
    );
  });

  it("refuses to sign with a public key", () => {
    expectCode(
      caught(() => signBytes(data, oldKey.publicKey)),
      "KEY_BAD",
    );
  });
});
