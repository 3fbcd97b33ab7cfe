/**
 * GUIDs as GPT stores them (README.md, "GUIDs"): the text form
 * `AABBCCDD-EEFF-GGHH-IIJJ-KKLLMMNNOOPP` is stored with its first three
 * fields little-endian and the last two as they read, so
 * `C12A7328-F81F-11D2-BA4B-00A0C93EC93B` is on disk
 * `28 73 2A C1 1F F8 D2 11 BA 4B 00 A0 C9 3E C9 3B`.
 * We hold GUIDs as uppercase strings in that text form.
 */
import { createHash, randomBytes } from "node:crypto";
import { GptError } from "./errors.ts";

export const ZERO_GUID = "00000000-0000-0000-0000-000000000000";

const GUID_RE = /^[0-9A-F]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12}$/i;

/** Check a GUID string and return it uppercase; GPT_BAD_INPUT when it is not one. */
export function normalizeGuid(guid: string, what = "GUID"): string {
  if (typeof guid !== "string" || !GUID_RE.test(guid)) {
    throw new GptError(
      "GPT_BAD_INPUT",
      `${what} "${String(guid)}" is not a GUID (8-4-4-4-12 hex)`,
      {
        details: { guid },
      },
    );
  }
  return guid.toUpperCase();
}

export function isGuid(s: string): boolean {
  return GUID_RE.test(s);
}

/** Byte positions, in the 16 on-disk bytes, of each hex pair of the text form. */
const TEXT_ORDER = [3, 2, 1, 0, 5, 4, 7, 6, 8, 9, 10, 11, 12, 13, 14, 15];

/** Write a GUID into `out` at `offset`, mixed-endian. */
export function writeGuid(out: Uint8Array, offset: number, guid: string): void {
  const hex = normalizeGuid(guid).replaceAll("-", "");
  for (let i = 0; i < 16; i++) {
    out[offset + TEXT_ORDER[i]!] = Number.parseInt(hex.slice(i * 2, i * 2 + 2), 16);
  }
}

/** Read the 16 mixed-endian bytes at `offset` as an uppercase GUID string. */
export function readGuid(bytes: Uint8Array, offset: number): string {
  let hex = "";
  for (let i = 0; i < 16; i++) {
    hex += (bytes[offset + TEXT_ORDER[i]!] ?? 0).toString(16).padStart(2, "0");
  }
  return textFromHex(hex);
}

function textFromHex(hex: string): string {
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`.toUpperCase();
}

/** A GUID (RFC 9562 version 4 layout) from 16 bytes in text order. */
function v4FromBytes(b: Uint8Array): string {
  const bytes = Uint8Array.from(b.subarray(0, 16));
  bytes[6] = (bytes[6]! & 0x0f) | 0x40; // version 4
  bytes[8] = (bytes[8]! & 0x3f) | 0x80; // variant 10xx
  return textFromHex(Buffer.from(bytes).toString("hex"));
}

/** A random version-4 GUID. `random` is the randomness source (tests pass their own). */
export function randomGuid(random: (n: number) => Uint8Array = randomBytes): string {
  return v4FromBytes(random(16));
}

/**
 * A version-4-shaped GUID derived from a seed: the first 16 bytes of
 * sha256(seed) with the version and variant bits set. The same seed always
 * gives the same GUID, so a build from the same inputs makes the same disk.
 */
export function guidFromSeed(seed: string): string {
  return v4FromBytes(createHash("sha256").update(seed, "utf8").digest());
}
