/**
 * The two OpenPGP packets GRUB's `pgp` verifier reads (RFC 4880), made from
 * the RSA key of the spec's `secureBoot:` section: the public key embedded
 * in the GRUB image (`grub-mkimage --pubkey`) and detached signatures of the
 * files GRUB opens under Secure Boot. Pure over node:crypto key objects.
 * Format: src/bootloader/README.md, "Secure Boot", "OpenPGP packets".
 */
import { createHash, createPublicKey, type KeyObject, sign } from "node:crypto";

const TAG_SIGNATURE = 2;
const TAG_PUBLIC_KEY = 6;
const ALGO_RSA = 1;
const HASH_SHA256 = 8;
const SUBPACKET_CREATED = 2;
const SUBPACKET_ISSUER = 16;

/** An old-format packet header with a two-byte length (RFC 4880 4.2.1), as gpg writes keys. */
function packet(tag: number, body: Uint8Array): Uint8Array {
  if (body.length > 0xffff) throw new Error(`OpenPGP packet body too long: ${body.length}`);
  const out = new Uint8Array(3 + body.length);
  out[0] = 0x80 | (tag << 2) | 1;
  out[1] = body.length >> 8;
  out[2] = body.length & 0xff;
  out.set(body, 3);
  return out;
}

/** A multiprecision integer (RFC 4880 3.2): bit count, then the bytes without leading zeros. */
function mpi(bytes: Uint8Array): Uint8Array {
  let i = 0;
  while (i < bytes.length - 1 && bytes[i] === 0) i++;
  const v = bytes.subarray(i);
  const bits = v.length === 0 ? 0 : (v.length - 1) * 8 + (32 - Math.clz32(v[0]!));
  const out = new Uint8Array(2 + v.length);
  out[0] = bits >> 8;
  out[1] = bits & 0xff;
  out.set(v, 2);
  return out;
}

function u32(n: number): Uint8Array {
  const out = new Uint8Array(4);
  new DataView(out.buffer).setUint32(0, n >>> 0);
  return out;
}

/** The parts one after the other, in a new array. */
export function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

function rsaComponents(key: KeyObject): { n: Uint8Array; e: Uint8Array } {
  if (key.asymmetricKeyType !== "rsa")
    throw new Error(`OpenPGP: an RSA key is needed, not ${key.asymmetricKeyType}`);
  const jwk = key.export({ format: "jwk" });
  return { n: Buffer.from(jwk.n!, "base64url"), e: Buffer.from(jwk.e!, "base64url") };
}

/** The public key packet body (version 4, RSA) at creation time `created` (Unix seconds). */
function publicKeyBody(key: KeyObject, created: number): Uint8Array {
  const { n, e } = rsaComponents(key);
  return concat(Uint8Array.of(4), u32(created), Uint8Array.of(ALGO_RSA), mpi(n), mpi(e));
}

export interface OpenPgpKey {
  /** The transferable public key: one public key packet (what `--pubkey` reads). */
  packet: Uint8Array;
  /** v4 fingerprint, 20 bytes: SHA-1 of 0x99, the body's length and the body (RFC 4880 12.2). */
  fingerprint: Uint8Array;
  /** The key ID: the fingerprint's last 8 bytes. */
  keyId: Uint8Array;
  created: number;
}

/** The OpenPGP form of an RSA public (or private) key. Pure. */
export function openPgpKey(key: KeyObject, created = 0): OpenPgpKey {
  const pub = key.type === "private" ? createPublicKey(key) : key;
  const body = publicKeyBody(pub, created);
  const fingerprint = createHash("sha1")
    .update(Uint8Array.of(0x99, body.length >> 8, body.length & 0xff))
    .update(body)
    .digest();
  return {
    packet: packet(TAG_PUBLIC_KEY, body),
    fingerprint: new Uint8Array(fingerprint),
    keyId: new Uint8Array(fingerprint.subarray(12)),
    created,
  };
}

/**
 * A detached binary signature (version 4, type 0x00, RSA, SHA-256) of
 * `data` by `privateKey`, issued by `pgpKey` (RFC 4880 5.2.3, 5.2.4): the
 * hashed part holds the creation time, the unhashed part the issuer key ID.
 */
export function openPgpSign(
  data: Uint8Array,
  privateKey: KeyObject,
  pgpKey: OpenPgpKey,
  created = pgpKey.created,
): Uint8Array {
  const hashedSub = concat(Uint8Array.of(5, SUBPACKET_CREATED), u32(created));
  const hashed = concat(
    Uint8Array.of(4, 0x00, ALGO_RSA, HASH_SHA256, hashedSub.length >> 8, hashedSub.length & 0xff),
    hashedSub,
  );
  const trailer = concat(Uint8Array.of(4, 0xff), u32(hashed.length));
  const digest = createHash("sha256").update(data).update(hashed).update(trailer).digest();
  const signature = sign("sha256", concat(data, hashed, trailer), privateKey);
  const unhashedSub = concat(Uint8Array.of(9, SUBPACKET_ISSUER), pgpKey.keyId);
  const body = concat(
    hashed,
    Uint8Array.of(unhashedSub.length >> 8, unhashedSub.length & 0xff),
    unhashedSub,
    digest.subarray(0, 2),
    mpi(signature),
  );
  return packet(TAG_SIGNATURE, body);
}
