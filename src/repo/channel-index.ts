/**
 * The signed channel index (README.md, "Index schema" and "Checks an agent
 * makes"). Pure: bytes in, values out; no I/O and no clock — the caller passes
 * `now`.
 */
import { createHash, type KeyObject } from "node:crypto";
import semver from "semver";
import { keyId, signBytes, verifySignature } from "../bundle/index.ts";
import { CHANNEL_NAME } from "../image/index.ts";
import { RepoError } from "./errors.ts";
import { type Wave, wavesProblems } from "./waves.ts";

export const INDEX_TYPE = "abforge-channel-index";
/**
 * The format `publish` writes (README.md, "Format versions"): 2 commits to
 * the bundle's manifest (`latest.manifestSha256`). `decodeIndex` reads 1 too
 * (a publish continues its serial); `verifyIndex` refuses it.
 */
export const INDEX_FORMAT_VERSION = 2;
/** Format versions `decodeIndex` reads. */
export const INDEX_FORMAT_VERSIONS: readonly number[] = [1, 2];

export interface IndexLatest {
  /** semver of the bundle. */
  version: string;
  /** Bundle location relative to the index URL (README.md, "Bundle path"). */
  bundle: string;
  /** Bundle file size in bytes. */
  size: number;
  /** sha256 of the whole bundle file, lowercase hex. */
  sha256: string;
  /** Byte offset of the slot image's data inside the bundle file. */
  slotDataOffset: number;
  /**
   * sha256 of the bundle's `manifest.json` bytes (src/bundle `manifestDigest`):
   * the signed release the index names. Format 2 and later; absent in format 1.
   */
  manifestSha256?: string;
  /** Oldest running version that may install this bundle ("0.0.0": any). */
  minUpdateFrom: string;
}

export interface IndexRollout {
  /** Share of hosts (0-100) that take this version; see `rolloutBucket`. 100 when `waves` are given. */
  percent: number;
  /** Staged waves (waves.ts, README.md "Waves"); absent: every host in `percent` at once. */
  waves?: Wave[];
}

export interface IndexSigned {
  type: typeof INDEX_TYPE;
  /** 2 when written by this version; 1 only in indexes read from an older publisher. */
  formatVersion: 1 | 2;
  channel: string;
  name: string;
  compatible: string;
  serial: number;
  issuedAt: string;
  expiresAt: string;
  latest: IndexLatest;
  rollout: IndexRollout;
}

export interface IndexSignature {
  /** keyId() of the public key, as in bundles. */
  keyid: string;
  /** base64 ed25519 signature over canonicalJson(signed). */
  sig: string;
}

export interface ChannelIndex {
  signed: IndexSigned;
  signatures: IndexSignature[];
}

const SEGMENT = /^[A-Za-z0-9._+~-]+$/;
const ISO_TIME = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,3})?Z$/;
const HEX64 = /^[0-9a-f]{64}$/;
const BASE64 = /^[A-Za-z0-9+/]+={0,2}$/;
const TAR_BLOCK = 512;

/**
 * Canonical JSON (README.md, "Signature"): object keys sorted by UTF-16 code
 * units, no whitespace, strings and integers as JSON.stringify writes them.
 * Only what an index can hold is accepted: objects, arrays, strings, safe
 * integers, booleans, null.
 */
export function canonicalJson(value: unknown): string {
  if (value === null || typeof value === "boolean") return JSON.stringify(value);
  if (typeof value === "string") return JSON.stringify(value);
  if (typeof value === "number") {
    if (!Number.isSafeInteger(value))
      throw new TypeError(`canonical JSON holds only safe integers, got ${value}`);
    return JSON.stringify(value);
  }
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(",")}]`;
  if (typeof value === "object") {
    const entries = Object.entries(value as Record<string, unknown>)
      .filter(([, v]) => v !== undefined)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(",")}}`;
  }
  throw new TypeError(`canonical JSON cannot hold a ${typeof value}`);
}

/** The bytes that are signed: canonicalJson(signed) as UTF-8. */
export function signedBytes(signed: IndexSigned): Uint8Array {
  return new TextEncoder().encode(canonicalJson(signed));
}

/** sha256 (hex) of the signed bytes: identifies an index's content. */
export function indexDigest(signed: IndexSigned): string {
  return createHash("sha256").update(signedBytes(signed)).digest("hex");
}

/**
 * Where a bundle path points, as a path from the repository root, given that
 * the index is `channels/<channel>.json`. Returns undefined when the path is
 * absolute, not plain (percent signs, `?`, `#`, backslashes, empty or odd
 * segments) or climbs above the repository root.
 */
export function bundlePathFromRoot(bundle: string): string | undefined {
  if (bundle.length === 0 || bundle.length > 1024 || bundle.startsWith("/")) return undefined;
  const stack = ["channels"];
  const segments = bundle.split("/");
  for (const segment of segments) {
    if (!SEGMENT.test(segment)) return undefined;
    if (segment === ".") continue;
    if (segment === "..") {
      if (stack.length === 0) return undefined;
      stack.pop();
      continue;
    }
    stack.push(segment);
  }
  const last = segments[segments.length - 1];
  if (stack.length === 0 || last === "." || last === "..") return undefined;
  return stack.join("/");
}

/** The bundle URL: the bundle path resolved against the index URL. */
export function resolveBundleUrl(indexUrl: string | URL, bundle: string): URL {
  if (bundlePathFromRoot(bundle) === undefined)
    throw new RepoError("REPO_BAD_INDEX", `bundle path "${bundle}" escapes the repository`, {
      details: { bundle },
    });
  return new URL(bundle, indexUrl);
}

/**
 * A host's rollout bucket (0-99) for a version: the first four bytes of
 * sha256("<version>\n<machineId>") modulo 100. A host takes the version when
 * its bucket is below `rollout.percent`; a new version reshuffles the order.
 */
export function rolloutBucket(machineId: string, version: string): number {
  const h = createHash("sha256").update(`${version}\n${machineId}`).digest();
  return h.readUInt32BE(0) % 100;
}

type Obj = Record<string, unknown>;

function isObj(v: unknown): v is Obj {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function checkKeys(o: Obj, where: string, allowed: readonly string[], problems: string[]): void {
  for (const k of Object.keys(o))
    if (!allowed.includes(k)) problems.push(`${where}.${k}: unknown field`);
  for (const k of allowed) if (!(k in o)) problems.push(`${where}.${k}: missing`);
}

function str(
  o: Obj,
  k: string,
  where: string,
  problems: string[],
  re?: RegExp,
): string | undefined {
  const v = o[k];
  if (!(k in o)) return undefined;
  if (typeof v !== "string" || v.length === 0) {
    problems.push(`${where}.${k}: must be a non-empty string, got ${JSON.stringify(v)}`);
    return undefined;
  }
  if (re && !re.test(v)) {
    problems.push(`${where}.${k}: "${v}" does not match ${re}`);
    return undefined;
  }
  return v;
}

function int(o: Obj, k: string, where: string, problems: string[], min: number, max?: number) {
  const v = o[k];
  if (!(k in o)) return undefined;
  if (
    typeof v !== "number" ||
    !Number.isSafeInteger(v) ||
    v < min ||
    (max !== undefined && v > max)
  ) {
    const range = max === undefined ? `>= ${min}` : `${min}-${max}`;
    problems.push(`${where}.${k}: must be an integer ${range}, got ${JSON.stringify(v)}`);
    return undefined;
  }
  return v;
}

function time(o: Obj, k: string, where: string, problems: string[]): number | undefined {
  const v = str(o, k, where, problems);
  if (v === undefined) return undefined;
  const t = Date.parse(v);
  if (!ISO_TIME.test(v) || Number.isNaN(t)) {
    problems.push(`${where}.${k}: "${v}" is not an ISO 8601 UTC time (YYYY-MM-DDTHH:MM:SS[.sss]Z)`);
    return undefined;
  }
  return t;
}

function version(o: Obj, k: string, where: string, problems: string[]): string | undefined {
  const v = str(o, k, where, problems);
  if (v === undefined) return undefined;
  if (semver.valid(v) !== v) {
    problems.push(`${where}.${k}: "${v}" is not a semantic version`);
    return undefined;
  }
  return v;
}

/** Every problem of a `signed` object (README.md, "Index schema"); empty when valid. */
export function validateSigned(signed: unknown): string[] {
  const problems: string[] = [];
  const w = "signed";
  if (!isObj(signed)) return [`${w}: must be an object`];
  checkKeys(
    signed,
    w,
    [
      "type",
      "formatVersion",
      "channel",
      "name",
      "compatible",
      "serial",
      "issuedAt",
      "expiresAt",
      "latest",
      "rollout",
    ],
    problems,
  );
  if ("type" in signed && signed.type !== INDEX_TYPE)
    problems.push(`${w}.type: must be "${INDEX_TYPE}", got ${JSON.stringify(signed.type)}`);
  const format = signed.formatVersion;
  if ("formatVersion" in signed && !INDEX_FORMAT_VERSIONS.includes(format as number))
    problems.push(
      `${w}.formatVersion: must be ${INDEX_FORMAT_VERSIONS.join(" or ")}, got ${JSON.stringify(format)}`,
    );
  str(signed, "channel", w, problems, CHANNEL_NAME);
  str(signed, "name", w, problems);
  str(signed, "compatible", w, problems);
  int(signed, "serial", w, problems, 1);
  const issued = time(signed, "issuedAt", w, problems);
  const expires = time(signed, "expiresAt", w, problems);
  if (issued !== undefined && expires !== undefined && expires <= issued)
    problems.push(`${w}.expiresAt: must be later than issuedAt`);

  const l = signed.latest;
  const lw = `${w}.latest`;
  if ("latest" in signed && !isObj(l)) problems.push(`${lw}: must be an object`);
  if (isObj(l)) {
    // format 1 has no manifestSha256; 2 (and an unknown version, reported above) has it
    const latestKeys = ["version", "bundle", "size", "sha256", "slotDataOffset", "minUpdateFrom"];
    checkKeys(l, lw, format === 1 ? latestKeys : [...latestKeys, "manifestSha256"], problems);
    const v = version(l, "version", lw, problems);
    const min = version(l, "minUpdateFrom", lw, problems);
    if (v !== undefined && min !== undefined && semver.gt(min, v))
      problems.push(`${lw}.minUpdateFrom: ${min} is later than the version ${v} itself`);
    const bundle = str(l, "bundle", lw, problems);
    if (bundle !== undefined && bundlePathFromRoot(bundle) === undefined)
      problems.push(
        `${lw}.bundle: "${bundle}" must be a plain relative path that stays inside the repository`,
      );
    const size = int(l, "size", lw, problems, 1);
    str(l, "sha256", lw, problems, HEX64);
    str(l, "manifestSha256", lw, problems, HEX64);
    const offset = int(l, "slotDataOffset", lw, problems, 0);
    if (offset !== undefined && offset % TAR_BLOCK !== 0)
      problems.push(`${lw}.slotDataOffset: ${offset} is not a multiple of ${TAR_BLOCK}`);
    if (offset !== undefined && size !== undefined && offset >= size)
      problems.push(`${lw}.slotDataOffset: ${offset} is not inside the bundle (size ${size})`);
  }

  const r = signed.rollout;
  const rw = `${w}.rollout`;
  if ("rollout" in signed && !isObj(r)) problems.push(`${rw}: must be an object`);
  if (isObj(r)) {
    checkKeys(r, rw, "waves" in r ? ["percent", "waves"] : ["percent"], problems);
    const percent = int(r, "percent", rw, problems, 0, 100);
    if ("waves" in r) {
      problems.push(...wavesProblems(r.waves, `${rw}.waves`));
      // one way to stage a version at a time: waves replace the percent
      if (percent !== undefined && percent !== 100)
        problems.push(
          `${rw}.percent: must be 100 with waves (got ${percent}): the waves say who takes it when`,
        );
    }
  }
  return problems;
}

function validateSignatures(signatures: unknown): string[] {
  if (!Array.isArray(signatures)) return ["signatures: must be an array"];
  if (signatures.length === 0) return ["signatures: must hold at least one signature"];
  const problems: string[] = [];
  signatures.forEach((s, i) => {
    const w = `signatures[${i}]`;
    if (!isObj(s)) {
      problems.push(`${w}: must be an object`);
      return;
    }
    checkKeys(s, w, ["keyid", "sig"], problems);
    str(s, "keyid", w, problems, /^[0-9a-f]{8,128}$/);
    const sig = str(s, "sig", w, problems, BASE64);
    if (sig !== undefined && Buffer.from(sig, "base64").length !== 64)
      problems.push(`${w}.sig: must be a 64-byte ed25519 signature`);
  });
  return problems;
}

function badIndex(problems: string[], cause?: unknown): RepoError {
  return new RepoError("REPO_BAD_INDEX", `channel index is invalid: ${problems.join("; ")}`, {
    cause,
    details: { problems },
  });
}

/** Parse and validate an index file, listing every bad field (REPO_BAD_INDEX). */
export function decodeIndex(bytes: Uint8Array): ChannelIndex {
  let doc: unknown;
  try {
    doc = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch (cause) {
    throw badIndex([`not UTF-8 JSON (${(cause as Error).message})`], cause);
  }
  if (!isObj(doc)) throw badIndex(["top level: must be an object"]);
  const problems: string[] = [];
  checkKeys(doc, "index", ["signed", "signatures"], problems);
  if ("signed" in doc) problems.push(...validateSigned(doc.signed));
  if ("signatures" in doc) problems.push(...validateSignatures(doc.signatures));
  if (problems.length > 0) throw badIndex(problems);
  return doc as unknown as ChannelIndex;
}

/** The index file's bytes (validated first): two-space JSON and a newline. */
export function encodeIndex(index: ChannelIndex): Uint8Array {
  const problems = [...validateSigned(index.signed), ...validateSignatures(index.signatures)];
  if (problems.length > 0) throw badIndex(problems);
  const ordered = { signed: index.signed, signatures: index.signatures };
  return new TextEncoder().encode(`${JSON.stringify(ordered, null, 2)}\n`);
}

/** Sign `signed` with one or more private keys (several during a key rotation). */
export function signIndex(
  signed: IndexSigned,
  keys: KeyObject | readonly KeyObject[],
): ChannelIndex {
  const problems = validateSigned(signed);
  if (problems.length > 0) throw badIndex(problems);
  const bytes = signedBytes(signed);
  const list = Array.isArray(keys) ? keys : [keys as KeyObject];
  const signatures = list.map((key) => ({
    keyid: keyId(key),
    sig: Buffer.from(signBytes(bytes, key)).toString("base64"),
  }));
  return { signed, signatures };
}

export interface VerifyIndexOptions {
  /** The channel the agent asked for. */
  channel: string;
  /** Public keys the agent trusts; any one valid signature suffices. */
  trustedKeys: readonly KeyObject[];
  /** The current time (never read inside). */
  now: Date;
  /** Highest serial seen so far (0 when none). */
  minSerial: number;
  /** indexDigest() of the index seen at minSerial: equal serial, other content → refused. */
  minSerialDigest?: string;
}

export interface VerifiedIndex {
  index: ChannelIndex;
  signed: IndexSigned;
  /** keyid of the trusted key whose signature verified. */
  keyId: string;
  /** indexDigest(signed), to store with the serial. */
  digest: string;
  /** `latest.manifestSha256`: the release the index commits to (always there once verified). */
  manifestSha256: string;
}

/**
 * The checks an agent makes on an index it downloaded, in the order of
 * README.md, "Checks an agent makes".
 */
export function verifyIndex(bytes: Uint8Array, o: VerifyIndexOptions): VerifiedIndex {
  if (!(o.now instanceof Date) || Number.isNaN(o.now.getTime()))
    throw new TypeError("verifyIndex: now must be a valid Date");
  // 1-2: well-formed, every field valid, type and format version known
  const index = decodeIndex(bytes);
  const { signed } = index;
  // 3: signed by a trusted key
  const keyId = checkSignature(index, o.trustedKeys);
  // 4: the channel asked for
  if (signed.channel !== o.channel)
    throw new RepoError(
      "REPO_BAD_INDEX",
      `channel index is for channel "${signed.channel}", not the requested "${o.channel}"`,
      { details: { reason: "wrong-channel", channel: signed.channel, expected: o.channel } },
    );
  // 4b: it commits to the bundle it names (format 2): format 1 names a path and a hash
  // of the file, but not the release, so it cannot be the whole truth
  if (signed.formatVersion < INDEX_FORMAT_VERSION || signed.latest.manifestSha256 === undefined)
    throw new RepoError(
      "REPO_BAD_INDEX",
      `channel index "${signed.channel}" (serial ${signed.serial}) is format ${signed.formatVersion}, which does not commit to the bundle's manifest; publish it again with this abforge (\`abforge repo publish\` writes format ${INDEX_FORMAT_VERSION})`,
      {
        details: {
          reason: "old-format",
          formatVersion: signed.formatVersion,
          required: INDEX_FORMAT_VERSION,
        },
      },
    );
  // 5: not expired
  if (o.now.getTime() >= Date.parse(signed.expiresAt))
    throw new RepoError(
      "REPO_INDEX_EXPIRED",
      `channel index "${signed.channel}" (serial ${signed.serial}) expired at ${signed.expiresAt} (now ${o.now.toISOString()})`,
      { details: { expiresAt: signed.expiresAt, now: o.now.toISOString(), serial: signed.serial } },
    );
  // 6: serial not lower than seen; equal serial only with the same content
  const digest = indexDigest(signed);
  if (signed.serial < o.minSerial)
    throw new RepoError(
      "REPO_INDEX_REPLAYED",
      `channel index "${signed.channel}" has serial ${signed.serial}, lower than ${o.minSerial} already seen (replayed or rolled back)`,
      { details: { serial: signed.serial, minSerial: o.minSerial } },
    );
  if (
    signed.serial === o.minSerial &&
    o.minSerialDigest !== undefined &&
    o.minSerialDigest !== digest
  )
    throw new RepoError(
      "REPO_INDEX_REPLAYED",
      `channel index "${signed.channel}" serial ${signed.serial} differs from the index seen with the same serial`,
      { details: { serial: signed.serial, digest, seenDigest: o.minSerialDigest } },
    );
  // 7: the bundle path stays inside the repository (checked by decodeIndex, step 2)
  return { index, signed, keyId, digest, manifestSha256: signed.latest.manifestSha256 };
}

function checkSignature(index: ChannelIndex, trustedKeys: readonly KeyObject[]): string {
  const bytes = signedBytes(index.signed);
  const trusted = new Map(trustedKeys.map((k) => [keyId(k), k]));
  let matched = false;
  let lastCause: unknown;
  for (const s of index.signatures) {
    const key = trusted.get(s.keyid);
    if (key === undefined) continue;
    matched = true;
    try {
      verifySignature(bytes, Buffer.from(s.sig, "base64"), [key]);
      return s.keyid;
    } catch (cause) {
      lastCause = cause;
    }
  }
  const keyids = index.signatures.map((s) => s.keyid);
  const details = { keyids, trusted: [...trusted.keys()] };
  if (!matched)
    throw new RepoError(
      "REPO_UNTRUSTED",
      `channel index "${index.signed.channel}" is signed by key(s) ${keyids.join(", ")}, none of which is trusted (trusted: ${[...trusted.keys()].join(", ") || "none"})`,
      { details: { ...details, reason: "unknown-key" } },
    );
  throw new RepoError(
    "REPO_UNTRUSTED",
    `channel index "${index.signed.channel}": the signature by a trusted key does not verify (content altered?)`,
    { cause: lastCause, details: { ...details, reason: "bad-signature" } },
  );
}
