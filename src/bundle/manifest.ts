/**
 * The bundle manifest (README.md, "Manifest"): its schema, its one canonical
 * encoding, and a decoder that validates every field and reports all invalid
 * fields at once. Pure: bytes in, values out.
 */
import { createHash } from "node:crypto";
import semver from "semver";
import { COMPATIBLE_NAME } from "../image/index.ts";
import type { VerityParams } from "../verity/index.ts";
import { type CdcParams, cdcParamsIssues } from "./cdc.ts";
import { BundleError } from "./errors.ts";

/** The slot image is hashed in chunks of this many bytes (the last chunk may be shorter). */
export const CHUNK_SIZE = 1048576;
/** decodeManifest refuses larger input: 2 MiB holds the chunk list of a ~30 GiB slot image. */
export const MAX_MANIFEST_BYTES = 2 * 1024 * 1024;
/** The format versions this abforge reads (README.md, "Format versions"). */
export const MANIFEST_FORMAT_VERSIONS = [1, 2] as const;
export type ManifestFormatVersion = (typeof MANIFEST_FORMAT_VERSIONS)[number];
/** What the writer makes unless told otherwise (README.md, "Format versions", why). */
export const DEFAULT_FORMAT_VERSION: ManifestFormatVersion = 1;

/** One content-defined chunk: offset (bytes), length (bytes), sha256 (hex). */
export type CdcEntry = [offset: number, length: number, sha256: string];

/** Format 2: the slot image cut by content (README.md, "Content-defined chunks"). */
export interface CdcInfo extends CdcParams {
  /** In order, from offset 0, each starting where the last ended, up to slotImage.size. */
  chunks: CdcEntry[];
}

export interface SlotImageInfo {
  /** Bytes. */
  size: number;
  /** sha256 of the whole slot image, lowercase hex. */
  sha256: string;
  chunkSize: typeof CHUNK_SIZE;
  /** sha256 of each chunk, lowercase hex; ceil(size / chunkSize) entries. */
  chunks: string[];
  /** Format 2 only (and required there): the content-defined chunks. */
  cdc?: CdcInfo;
}

export interface Manifest {
  formatVersion: ManifestFormatVersion;
  /** Product name, e.g. "demo". */
  name: string;
  /** Which hosts may install it (compared for equality by the updater), e.g. "x86_64-efi-demo". */
  compatible: string;
  /** Semantic version, strict (no leading "v"). */
  version: string;
  /** ISO 8601 UTC with second precision, e.g. "2026-05-01T12:00:00Z". Also the tar mtime. */
  createdAt: string;
  /** keyId() of the key that signed this manifest: a hint that tells "unknown key" from "bad signature". */
  keyId: string;
  slotImage: SlotImageInfo;
  verity: VerityParams;
  /** Secure Boot images only: the slot's signed boot file and its signature, base64 (src/bootloader/README.md, "Secure Boot"). */
  secureBoot?: SecureBootPieces;
}

export interface SecureBootPieces {
  /** `/SLOTX` for the ESP, at most MAX_SLOT_FILE_BYTES. */
  slotFile: string;
  /** `/SLOTX.SIG`, at most MAX_SLOT_SIG_BYTES. */
  slotSig: string;
}

export const MAX_SLOT_FILE_BYTES = 4096;
export const MAX_SLOT_SIG_BYTES = 2048;

/** A manifest before signing: writeBundle fills in keyId from the signing key. */
export type UnsignedManifest = Omit<Manifest, "keyId"> & { keyId?: string };

export interface ManifestIssue {
  /** Dotted path of the field, e.g. "verity.salt" or "slotImage.chunks[3]". */
  field: string;
  problem: string;
}

const TOP_KEYS = [
  "formatVersion",
  "name",
  "compatible",
  "version",
  "createdAt",
  "keyId",
  "slotImage",
  "verity",
  "secureBoot",
] as const;
const SECURE_BOOT_KEYS = ["slotFile", "slotSig"] as const;
const SLOT_KEYS = ["size", "sha256", "chunkSize", "chunks"] as const;
const SLOT_KEYS_2 = [...SLOT_KEYS, "cdc"] as const;
const CDC_KEYS = ["minSize", "avgSize", "maxSize", "chunks"] as const;
const VERITY_KEYS = [
  "hashAlgorithm",
  "dataBlockSize",
  "hashBlockSize",
  "dataBlocks",
  "salt",
  "uuid",
  "superblock",
  "hashOffset",
  "hashStartBlock",
  "hashAreaSize",
  "rootHash",
] as const;

const DIGEST_HEX_LENGTH: Record<string, number> = { sha1: 40, sha256: 64, sha512: 128 };
const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$/;
const CREATED_RE = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$/;
const SHA256_RE = /^[0-9a-f]{64}$/;
const KEY_ID_RE = /^[0-9a-f]{16}$/;
const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const HEX_RE = /^(?:[0-9a-f]{2})*$/;
/** veritysetup accepts at most 256 bytes of salt. */
const MAX_SALT_HEX = 512;
/** Only the first few bad chunk hashes are named; the rest are counted. */
const MAX_CHUNK_ISSUES = 5;

/** Number of chunks a slot image of `size` bytes has. */
export function chunkCount(size: number): number {
  return Math.ceil(size / CHUNK_SIZE);
}

/**
 * The canonical bytes of a manifest: JSON with keys in schema order and no
 * whitespace, a newline, then spaces up to the smallest length of the form
 * 4096k + 2048 bytes. With the bundle's three 512-byte tar headers and the
 * 512-byte block of manifest.sig, the slot image then starts on a 4096-byte
 * boundary (README.md, "Tar layout"), where a dm-verity tree can be checked
 * in place and chunk n lies at a page-aligned offset. Refuses an invalid
 * manifest.
 */
export function encodeManifest(m: Manifest): Uint8Array {
  const issues = validateManifest(m);
  if (issues.length > 0) throw badManifest("manifest to encode", issues);
  return new TextEncoder().encode(canonicalText(m));
}

/**
 * sha256 (hex) of a manifest's canonical bytes, which are exactly the bytes
 * of `manifest.json` in its bundle: the identity of a signed release that
 * the channel index commits to (src/repo README.md, "Index schema").
 */
export function manifestDigest(m: Manifest): string {
  return createHash("sha256").update(encodeManifest(m)).digest("hex");
}

/** Length of manifest.json for `n` bytes of JSON and newline: 4096k + 2048, at least n. */
export function paddedManifestLength(n: number): number {
  return Math.max(0, Math.ceil((n - 2048) / 4096)) * 4096 + 2048;
}

/**
 * Parse and validate manifest bytes. Every invalid field is listed in one
 * BUNDLE_BAD_MANIFEST error; bytes that are valid but not in canonical form
 * (whitespace, key order, duplicate keys) are refused too, so that the
 * signed bytes have exactly one meaning.
 */
export function decodeManifest(bytes: Uint8Array, where = "manifest"): Manifest {
  if (bytes.length > MAX_MANIFEST_BYTES) {
    throw new BundleError(
      "BUNDLE_BAD_MANIFEST",
      `${where}: ${bytes.length} bytes is over the limit of ${MAX_MANIFEST_BYTES}`,
      { details: { size: bytes.length, limit: MAX_MANIFEST_BYTES } },
    );
  }
  let text: string;
  let value: unknown;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
    value = JSON.parse(text);
  } catch (cause) {
    throw new BundleError(
      "BUNDLE_BAD_MANIFEST",
      `${where}: not UTF-8 JSON (${(cause as Error).message})`,
      { cause },
    );
  }
  checkFormatVersion(value, where);
  const issues = validateManifest(value);
  if (issues.length > 0) throw badManifest(where, issues);
  const m = value as Manifest;
  if (canonicalText(m) !== text) {
    throw new BundleError(
      "BUNDLE_BAD_MANIFEST",
      `${where}: not in canonical form (key order, whitespace, padding or duplicate keys differ from the encoder's)`,
    );
  }
  return m;
}

/**
 * A manifest of a format this abforge does not know gets one line that says
 * so (instead of a list of fields that a later format added), with the
 * versions it reads: the fix is a newer agent, not another bundle.
 */
function checkFormatVersion(value: unknown, where: string): void {
  if (!isObject(value)) return;
  const v = value.formatVersion;
  if (!Number.isSafeInteger(v) || MANIFEST_FORMAT_VERSIONS.includes(v as ManifestFormatVersion))
    return;
  throw new BundleError(
    "BUNDLE_BAD_MANIFEST",
    `${where}: bundle format version ${v} is not one this abforge reads (${MANIFEST_FORMAT_VERSIONS.join(", ")}); update the agent with a bundle of format ${MANIFEST_FORMAT_VERSIONS.join(" or ")} first`,
    { details: { formatVersion: v, supported: [...MANIFEST_FORMAT_VERSIONS] } },
  );
}

function badManifest(where: string, issues: ManifestIssue[]): BundleError {
  const list = issues.map((i) => `${i.field} ${i.problem}`).join("; ");
  return new BundleError(
    "BUNDLE_BAD_MANIFEST",
    `${where}: ${issues.length} invalid field${issues.length === 1 ? "" : "s"}: ${list}`,
    { details: { issues } },
  );
}

function canonicalText(m: Manifest): string {
  const line = `${canonicalJson(m)}\n`;
  return line + " ".repeat(paddedManifestLength(line.length) - line.length);
}

function canonicalJson(m: Manifest): string {
  const ordered = {
    ...pick(m, TOP_KEYS),
    slotImage:
      m.formatVersion === 2 && m.slotImage.cdc
        ? { ...pick(m.slotImage, SLOT_KEYS), cdc: pick(m.slotImage.cdc, CDC_KEYS) }
        : pick(m.slotImage, SLOT_KEYS),
    verity: pick(m.verity, VERITY_KEYS),
    ...(m.secureBoot ? { secureBoot: pick(m.secureBoot, SECURE_BOOT_KEYS) } : {}),
  };
  return JSON.stringify(ordered);
}

function pick<T extends object>(o: T, keys: readonly string[]): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const k of keys) out[k] = (o as Record<string, unknown>)[k];
  return out;
}

/** Every problem with a would-be manifest; empty when it is valid. */
export function validateManifest(value: unknown): ManifestIssue[] {
  const issues: ManifestIssue[] = [];
  const add = (field: string, problem: string) => issues.push({ field, problem });
  if (!isObject(value)) {
    add("(manifest)", "must be a JSON object");
    return issues;
  }
  checkKeys(value, TOP_KEYS, "", add);

  const format = MANIFEST_FORMAT_VERSIONS.includes(value.formatVersion as ManifestFormatVersion)
    ? (value.formatVersion as ManifestFormatVersion)
    : undefined;
  if (format === undefined)
    add(
      "formatVersion",
      `must be ${MANIFEST_FORMAT_VERSIONS.join(" or ")}, got ${show(value.formatVersion)}`,
    );
  if (!matches(value.name, NAME_RE))
    add("name", `must match ${NAME_RE.source}, got ${show(value.name)}`);
  if (!matches(value.compatible, COMPATIBLE_NAME))
    add("compatible", `must match ${COMPATIBLE_NAME.source}, got ${show(value.compatible)}`);
  if (!isStrictSemver(value.version))
    add("version", `must be a strict semantic version, got ${show(value.version)}`);
  if (!isTimestamp(value.createdAt))
    add(
      "createdAt",
      `must be an ISO 8601 UTC time like 2026-05-01T12:00:00Z, got ${show(value.createdAt)}`,
    );
  if (!matches(value.keyId, KEY_ID_RE))
    add("keyId", `must be 16 lowercase hex digits, got ${show(value.keyId)}`);

  const size = checkSlotImage(value.slotImage, format, add);
  checkVerity(value.verity, size, add);
  if (value.secureBoot !== undefined) checkSecureBoot(value.secureBoot, add);
  return issues;
}

function checkSecureBoot(v: unknown, add: Add): void {
  if (!isObject(v)) {
    add("secureBoot", "must be an object");
    return;
  }
  checkKeys(v, SECURE_BOOT_KEYS, "secureBoot.", add);
  for (const [f, max] of [
    ["slotFile", MAX_SLOT_FILE_BYTES],
    ["slotSig", MAX_SLOT_SIG_BYTES],
  ] as const) {
    const s = v[f];
    const n = typeof s === "string" && s.length <= 2 * max ? Buffer.from(s, "base64") : undefined;
    if (!n || n.length === 0 || n.length > max || n.toString("base64") !== s)
      add(`secureBoot.${f}`, `must be canonical base64 of 1 to ${max} bytes, got ${show(s)}`);
  }
}

type Add = (field: string, problem: string) => void;

/** Returns the slot image size when it is valid (for the cross-field checks). */
function checkSlotImage(
  v: unknown,
  format: ManifestFormatVersion | undefined,
  add: Add,
): number | undefined {
  if (!isObject(v)) {
    add("slotImage", "must be an object");
    return undefined;
  }
  checkKeys(v, format === 2 ? SLOT_KEYS_2 : SLOT_KEYS, "slotImage.", add);
  const size = isPositiveInt(v.size) ? v.size : undefined;
  if (size === undefined)
    add("slotImage.size", `must be a positive integer (bytes), got ${show(v.size)}`);
  if (!matches(v.sha256, SHA256_RE))
    add("slotImage.sha256", `must be 64 lowercase hex digits, got ${show(v.sha256)}`);
  if (v.chunkSize !== CHUNK_SIZE)
    add("slotImage.chunkSize", `must be ${CHUNK_SIZE}, got ${show(v.chunkSize)}`);
  if (!Array.isArray(v.chunks)) {
    add("slotImage.chunks", "must be an array of sha256 hex strings");
  } else {
    if (size !== undefined && v.chunks.length !== chunkCount(size))
      add(
        "slotImage.chunks",
        `must have ${chunkCount(size)} entries for ${size} bytes, has ${v.chunks.length}`,
      );
    const bad = v.chunks.flatMap((c, i) => (matches(c, SHA256_RE) ? [] : [i]));
    for (const i of bad.slice(0, MAX_CHUNK_ISSUES))
      add(`slotImage.chunks[${i}]`, `must be 64 lowercase hex digits, got ${show(v.chunks[i])}`);
    if (bad.length > MAX_CHUNK_ISSUES)
      add("slotImage.chunks", `has ${bad.length - MAX_CHUNK_ISSUES} more invalid entries`);
  }
  if (format === 2) checkCdc(v.cdc, size, add);
  return size;
}

/** Format 2's chunk list: valid params, entries that tile the image in order within the bounds. */
function checkCdc(v: unknown, size: number | undefined, add: Add): void {
  if (!isObject(v)) {
    add("slotImage.cdc", "must be an object (format 2)");
    return;
  }
  checkKeys(v, CDC_KEYS, "slotImage.cdc.", add);
  const p = { minSize: v.minSize, avgSize: v.avgSize, maxSize: v.maxSize } as CdcParams;
  const paramIssues = cdcParamsIssues(p);
  for (const problem of paramIssues) add("slotImage.cdc", problem);
  if (!Array.isArray(v.chunks)) {
    add("slotImage.cdc.chunks", "must be an array of [offset, length, sha256]");
    return;
  }
  const list = v.chunks as unknown[];
  let bad = 0;
  let next = 0;
  list.forEach((e, i) => {
    const problem = cdcEntryProblem(
      e,
      next,
      i === list.length - 1,
      paramIssues.length ? undefined : p,
    );
    if (problem === undefined) next += (e as CdcEntry)[1];
    else if (bad++ < MAX_CHUNK_ISSUES) add(`slotImage.cdc.chunks[${i}]`, problem);
    if (
      problem !== undefined &&
      Array.isArray(e) &&
      Number.isSafeInteger(e[0]) &&
      Number.isSafeInteger(e[1])
    )
      next = (e[0] as number) + (e[1] as number);
  });
  if (bad > MAX_CHUNK_ISSUES)
    add("slotImage.cdc.chunks", `has ${bad - MAX_CHUNK_ISSUES} more invalid entries`);
  if (bad === 0 && size !== undefined && next !== size)
    add("slotImage.cdc.chunks", `must cover the slot image's ${size} bytes, ends at ${next}`);
}

function cdcEntryProblem(
  e: unknown,
  offset: number,
  last: boolean,
  p: CdcParams | undefined,
): string | undefined {
  if (!Array.isArray(e) || e.length !== 3)
    return `must be [offset, length, sha256], got ${show(e)}`;
  const [o, l, h] = e as unknown[];
  if (o !== offset) return `offset must be ${offset} (where the chunk before ends), got ${show(o)}`;
  if (!isPositiveInt(l)) return `length must be a positive integer (bytes), got ${show(l)}`;
  if (p && (l > p.maxSize || (!last && l <= p.minSize)))
    return `length ${l} is outside ${p.minSize + 1}..${p.maxSize}`;
  if (!matches(h, SHA256_RE)) return `sha256 must be 64 lowercase hex digits, got ${show(h)}`;
  return undefined;
}

function checkVerity(v: unknown, slotSize: number | undefined, add: Add): void {
  if (!isObject(v)) {
    add("verity", "must be an object");
    return;
  }
  checkKeys(v, VERITY_KEYS, "verity.", add);
  const alg = typeof v.hashAlgorithm === "string" ? DIGEST_HEX_LENGTH[v.hashAlgorithm] : undefined;
  if (alg === undefined)
    add("verity.hashAlgorithm", `must be sha256, sha1 or sha512, got ${show(v.hashAlgorithm)}`);
  for (const f of ["dataBlockSize", "hashBlockSize"] as const) {
    if (!isBlockSize(v[f]))
      add(`verity.${f}`, `must be a power of two from 512 to 4096 (bytes), got ${show(v[f])}`);
  }
  if (!isPositiveInt(v.dataBlocks))
    add("verity.dataBlocks", `must be a positive integer, got ${show(v.dataBlocks)}`);
  if (typeof v.salt !== "string" || !HEX_RE.test(v.salt) || v.salt.length > MAX_SALT_HEX)
    add("verity.salt", `must be lowercase hex of at most 256 bytes, got ${show(v.salt)}`);
  if (v.uuid !== null && !matches(v.uuid, UUID_RE))
    add("verity.uuid", `must be null or a lowercase UUID, got ${show(v.uuid)}`);
  if (typeof v.superblock !== "boolean")
    add("verity.superblock", `must be true or false, got ${show(v.superblock)}`);
  const hashOffsetOk = isNonNegativeInt(v.hashOffset);
  if (!hashOffsetOk)
    add("verity.hashOffset", `must be a non-negative integer (bytes), got ${show(v.hashOffset)}`);
  if (!isNonNegativeInt(v.hashStartBlock))
    add("verity.hashStartBlock", `must be a non-negative integer, got ${show(v.hashStartBlock)}`);
  if (!isPositiveInt(v.hashAreaSize))
    add("verity.hashAreaSize", `must be a positive integer (bytes), got ${show(v.hashAreaSize)}`);
  if (
    alg !== undefined &&
    !(typeof v.rootHash === "string" && v.rootHash.length === alg && HEX_RE.test(v.rootHash))
  )
    add("verity.rootHash", `must be ${alg} lowercase hex digits, got ${show(v.rootHash)}`);

  // Cross-field checks, only between fields that are valid on their own.
  const hbs = isBlockSize(v.hashBlockSize) ? v.hashBlockSize : undefined;
  if (hbs !== undefined && hashOffsetOk) {
    const offset = v.hashOffset as number;
    if (offset % hbs !== 0)
      add("verity.hashOffset", `must be a multiple of hashBlockSize ${hbs}, got ${offset}`);
    else if (typeof v.superblock === "boolean" && isNonNegativeInt(v.hashStartBlock)) {
      const expected = offset / hbs + (v.superblock ? 1 : 0);
      if (v.hashStartBlock !== expected)
        add(
          "verity.hashStartBlock",
          `must be hashOffset/hashBlockSize${v.superblock ? " + 1 (superblock)" : ""} = ${expected}, got ${v.hashStartBlock}`,
        );
    }
  }
  if (isBlockSize(v.dataBlockSize) && isPositiveInt(v.dataBlocks) && hashOffsetOk) {
    const dataBytes = v.dataBlocks * v.dataBlockSize;
    if (dataBytes > (v.hashOffset as number))
      add(
        "verity.hashOffset",
        `must not be inside the data area (dataBlocks*dataBlockSize = ${dataBytes}), got ${v.hashOffset}`,
      );
  }
  if (slotSize !== undefined && hashOffsetOk && isPositiveInt(v.hashAreaSize)) {
    const end = (v.hashOffset as number) + v.hashAreaSize;
    if (end > slotSize)
      add("verity.hashAreaSize", `ends at byte ${end}, past the slot image's ${slotSize} bytes`);
  }
}

/** Unknown fields; a missing field is reported by its own check ("got nothing"). */
function checkKeys(o: Record<string, unknown>, keys: readonly string[], prefix: string, add: Add) {
  for (const k of Object.keys(o))
    if (!keys.includes(k)) add(`${prefix}${k}`, "is not a known field");
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function matches(v: unknown, re: RegExp): v is string {
  return typeof v === "string" && re.test(v);
}

function isPositiveInt(v: unknown): v is number {
  return Number.isSafeInteger(v) && (v as number) > 0;
}

function isNonNegativeInt(v: unknown): v is number {
  return Number.isSafeInteger(v) && (v as number) >= 0;
}

function isBlockSize(v: unknown): v is number {
  return isPositiveInt(v) && v >= 512 && v <= 4096 && (v & (v - 1)) === 0;
}

/** semver.parse accepts "v1.2.3" and " 1.2.3"; the manifest wants the canonical spelling only. */
function isStrictSemver(v: unknown): v is string {
  if (typeof v !== "string" || v.length > 256) return false;
  const p = semver.parse(v);
  return p !== null && v === (p.build.length > 0 ? `${p.version}+${p.build.join(".")}` : p.version);
}

function isTimestamp(v: unknown): v is string {
  if (!matches(v, CREATED_RE)) return false;
  const t = Date.parse(v);
  return Number.isFinite(t) && new Date(t).toISOString() === v.replace("Z", ".000Z");
}

/** A short, safe rendering of a bad value for a message. */
function show(v: unknown): string {
  if (v === undefined) return "nothing";
  const s = JSON.stringify(v) ?? String(v);
  return s.length > 40 ? `${s.slice(0, 37)}...` : s;
}
