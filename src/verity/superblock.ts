/**
 * The 512-byte dm-verity superblock that veritysetup writes at the hash
 * offset (README.md, "Superblock"). Little-endian; every byte that is not a
 * field is zero, and the decoder insists on it.
 */
import { VerityError } from "./errors.ts";
import {
  checkBlockSize,
  checkSalt,
  type HashAlgorithm,
  isHashAlgorithm,
  MAX_BLOCK_SIZE,
  MAX_SALT_SIZE,
  MIN_BLOCK_SIZE,
  SUPERBLOCK_SIZE,
} from "./layout.ts";

export const SIGNATURE = Uint8Array.from([0x76, 0x65, 0x72, 0x69, 0x74, 0x79, 0, 0]); // "verity\0\0"

/** Byte offsets of the fields (README.md table). */
export const SB = {
  signature: 0,
  version: 8,
  hashType: 12,
  uuid: 16,
  algorithm: 32,
  dataBlockSize: 64,
  hashBlockSize: 68,
  dataBlocks: 72,
  saltSize: 80,
  pad1: 82,
  salt: 88,
  pad2: 344,
  end: 512,
} as const;

const ALGORITHM_FIELD = 32;

export interface Superblock {
  /** Lower-case 8-4-4-4-12 form. */
  uuid: string;
  hashAlgorithm: HashAlgorithm;
  dataBlockSize: number;
  hashBlockSize: number;
  dataBlocks: number;
  salt: Uint8Array;
}

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

export function checkUuid(uuid: string): string {
  if (!UUID_RE.test(uuid)) {
    throw new VerityError(
      "VERITY_BAD_PARAMS",
      `UUID "${uuid}" is not of the form 8-4-4-4-12 hex digits`,
      {
        details: { field: "uuid", value: uuid },
      },
    );
  }
  return uuid.toLowerCase();
}

export function uuidToBytes(uuid: string): Uint8Array {
  return Uint8Array.from(Buffer.from(checkUuid(uuid).replaceAll("-", ""), "hex"));
}

export function uuidFromBytes(b: Uint8Array): string {
  const h = Buffer.from(b).toString("hex");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20, 32)}`;
}

export function encodeSuperblock(sb: Superblock): Uint8Array {
  checkBlockSize("dataBlockSize", sb.dataBlockSize);
  checkBlockSize("hashBlockSize", sb.hashBlockSize);
  checkSalt(sb.salt);
  if (!isHashAlgorithm(sb.hashAlgorithm)) {
    throw new VerityError(
      "VERITY_BAD_PARAMS",
      `hash algorithm "${sb.hashAlgorithm}" is not supported`,
      {
        details: { field: "hashAlgorithm", value: sb.hashAlgorithm },
      },
    );
  }
  if (!Number.isSafeInteger(sb.dataBlocks) || sb.dataBlocks < 1) {
    throw new VerityError("VERITY_BAD_PARAMS", `data blocks ${sb.dataBlocks} must be at least 1`, {
      details: { field: "dataBlocks", value: sb.dataBlocks },
    });
  }
  const out = new Uint8Array(SUPERBLOCK_SIZE);
  const view = new DataView(out.buffer);
  out.set(SIGNATURE, SB.signature);
  view.setUint32(SB.version, 1, true);
  view.setUint32(SB.hashType, 1, true);
  out.set(uuidToBytes(sb.uuid), SB.uuid);
  out.set(new TextEncoder().encode(sb.hashAlgorithm), SB.algorithm);
  view.setUint32(SB.dataBlockSize, sb.dataBlockSize, true);
  view.setUint32(SB.hashBlockSize, sb.hashBlockSize, true);
  view.setBigUint64(SB.dataBlocks, BigInt(sb.dataBlocks), true);
  view.setUint16(SB.saltSize, sb.salt.length, true);
  out.set(sb.salt, SB.salt);
  return out;
}

function bad(where: string, field: string, offset: number, what: string): VerityError {
  return new VerityError("VERITY_BAD_SUPERBLOCK", `${where}: superblock ${what}`, {
    details: { area: "superblock", field, offset },
  });
}

function firstNonZero(b: Uint8Array, from: number, to: number): number {
  for (let i = from; i < to; i++) if (b[i] !== 0) return i;
  return -1;
}

/**
 * Decode and check a superblock. `where` names it in messages, e.g.
 * "hash file h.img at byte 0". Offsets in details are relative to the superblock.
 */
export function decodeSuperblock(b: Uint8Array, where = "superblock"): Superblock {
  if (b.length < SUPERBLOCK_SIZE) {
    throw bad(where, "size", b.length, `is ${b.length} bytes, not ${SUPERBLOCK_SIZE}`);
  }
  const view = new DataView(b.buffer, b.byteOffset, SUPERBLOCK_SIZE);
  for (let i = 0; i < SIGNATURE.length; i++) {
    if (b[i] !== SIGNATURE[i]) throw bad(where, "signature", i, `has no "verity" signature`);
  }
  const version = view.getUint32(SB.version, true);
  if (version !== 1) throw bad(where, "version", SB.version, `version ${version} is not 1`);
  const hashType = view.getUint32(SB.hashType, true);
  if (hashType !== 1) {
    throw bad(
      where,
      "hashType",
      SB.hashType,
      `hash type ${hashType} is not supported (only format 1)`,
    );
  }
  const algField = b.subarray(SB.algorithm, SB.algorithm + ALGORITHM_FIELD);
  const nul = algField.indexOf(0);
  const name = new TextDecoder().decode(algField.subarray(0, nul < 0 ? ALGORITHM_FIELD : nul));
  if (!isHashAlgorithm(name)) {
    throw bad(where, "algorithm", SB.algorithm, `hash algorithm "${name}" is not supported`);
  }
  const algPad = firstNonZero(b, SB.algorithm + name.length, SB.algorithm + ALGORITHM_FIELD);
  if (algPad >= 0)
    throw bad(where, "algorithm", algPad, `algorithm name has a non-zero byte after it`);
  const sizes = [
    ["dataBlockSize", SB.dataBlockSize],
    ["hashBlockSize", SB.hashBlockSize],
  ] as const;
  for (const [field, off] of sizes) {
    const n = view.getUint32(off, true);
    if (n < MIN_BLOCK_SIZE || n > MAX_BLOCK_SIZE || (n & (n - 1)) !== 0) {
      throw bad(where, field, off, `${field} ${n} is not a power of two from 512 to 4096`);
    }
  }
  const dataBlocks = view.getBigUint64(SB.dataBlocks, true);
  if (dataBlocks < 1n || dataBlocks > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw bad(where, "dataBlocks", SB.dataBlocks, `data block count ${dataBlocks} is out of range`);
  }
  const saltSize = view.getUint16(SB.saltSize, true);
  if (saltSize > MAX_SALT_SIZE) {
    throw bad(
      where,
      "saltSize",
      SB.saltSize,
      `salt size ${saltSize} is more than ${MAX_SALT_SIZE}`,
    );
  }
  const zeroRanges = [
    ["pad1", SB.pad1, SB.salt],
    ["salt", SB.salt + saltSize, SB.pad2],
    ["pad2", SB.pad2, SB.end],
  ] as const;
  for (const [field, from, to] of zeroRanges) {
    const at = firstNonZero(b, from, to);
    if (at >= 0)
      throw bad(where, field, at, `has a non-zero byte at offset ${at}, which must be zero`);
  }
  return {
    uuid: uuidFromBytes(b.subarray(SB.uuid, SB.uuid + 16)),
    hashAlgorithm: name,
    dataBlockSize: view.getUint32(SB.dataBlockSize, true),
    hashBlockSize: view.getUint32(SB.hashBlockSize, true),
    dataBlocks: Number(dataBlocks),
    salt: new Uint8Array(b.subarray(SB.salt, SB.salt + saltSize)),
  };
}
