/**
 * The semaphore's keys and value, locksmith's format (README.md, "Key" and
 * "Value"): pure functions over bytes, no I/O.
 */
import { LockError } from "./errors.ts";

export const KEY_PREFIX = "coreos.com/updateengine/rebootlock";

/** The semaphore as locksmith reads it: free places, places, holders (machine ids). */
export interface Semaphore {
  semaphore: number;
  max: number;
  holders: string[];
}

/**
 * The whole value: locksmith's three fields and ours, `leased`: the holders
 * that took their place with a leased record (README.md, "Holder records").
 */
export interface SemaphoreValue extends Semaphore {
  leased: string[];
}

/**
 * The semaphore key of a group, locksmith's: the group name query-escaped
 * as Go's url.QueryEscape does; null or "" is the default semaphore.
 */
export function semaphoreKey(group: string | null): string {
  if (group === null || group === "") return `${KEY_PREFIX}/semaphore`;
  return `${KEY_PREFIX}/groups/${queryEscape(group)}/semaphore`;
}

/** Where holder records live: under the semaphore key (README.md, "Holder records"). */
export function recordPrefix(key: string): string {
  return `${key}/holders/`;
}

export function recordKey(key: string, id: string): string {
  return `${recordPrefix(key)}${queryEscape(id)}`;
}

/** Go's url.QueryEscape: every UTF-8 byte but A-Z a-z 0-9 - _ . ~ as %XX, space as +. */
export function queryEscape(s: string): string {
  let out = "";
  for (const byte of new TextEncoder().encode(s)) {
    const c = String.fromCharCode(byte);
    if (/[A-Za-z0-9\-_.~]/.test(c)) out += c;
    else if (c === " ") out += "+";
    else out += `%${byte.toString(16).toUpperCase().padStart(2, "0")}`;
  }
  return out;
}

/** Why a holder id cannot be used, or undefined: a machine id is 32 hex digits; anything printable up to 256 characters is taken. */
export function holderIdProblem(id: string): string | undefined {
  if (id.length === 0) return "a holder id must not be empty";
  if (id.length > 256) return `a holder id has at most 256 characters, got ${id.length}`;
  // biome-ignore lint/suspicious/noControlCharactersInRegex: control characters are what is refused
  if (/[\u0000-\u001f\u007f\u2028\u2029]/.test(id))
    return "a holder id must not contain control characters";
  return undefined;
}

/** The value locksmith creates for a missing key, with `max` places. */
export function initialSemaphore(max = 1): SemaphoreValue {
  return { semaphore: max, max, holders: [], leased: [] };
}

/** Go's sort.Strings order: by UTF-8 bytes. locksmith finds holders by binary search in it. */
export function compareHolders(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a, "utf8"), Buffer.from(b, "utf8"));
}

/**
 * Parse a semaphore value; every problem is collected before one
 * REBOOT_LOCK_BAD_VALUE is thrown. `where` names the key (and endpoint) for the message.
 */
export function decodeSemaphore(bytes: Uint8Array, where: { key: string }): SemaphoreValue {
  let doc: unknown;
  try {
    doc = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch (err) {
    throw badValue(where.key, bytes, ["not UTF-8 JSON"], err);
  }
  const problems: string[] = [];
  if (typeof doc !== "object" || doc === null || Array.isArray(doc)) {
    throw badValue(where.key, bytes, ["not a JSON object"]);
  }
  const o = doc as Record<string, unknown>;
  const semaphore = o.semaphore;
  const max = o.max;
  if (!Number.isSafeInteger(semaphore)) problems.push("semaphore is not an integer");
  if (!Number.isSafeInteger(max) || (max as number) < 0)
    problems.push("max is not an integer of 0 or more");
  const holders = stringList(o.holders, "holders", problems, { nullable: true, required: true });
  const leasedRaw = stringList(o.leased, "leased", problems, { nullable: false, required: false });
  if (problems.length === 0 && semaphore !== (max as number) - holders.length) {
    problems.push(
      `semaphore ${semaphore} is not max ${max} minus ${holders.length} holder(s) (abforge lock set-max rewrites it)`,
    );
  }
  if (problems.length > 0) throw badValue(where.key, bytes, problems);
  const held = new Set(holders);
  // `leased` only ever names holders (README.md); anything else grants nothing and is dropped.
  const leased = [...new Set(leasedRaw)].filter((h) => held.has(h)).sort(compareHolders);
  return { semaphore: semaphore as number, max: max as number, holders, leased };
}

function stringList(
  v: unknown,
  name: string,
  problems: string[],
  o: { nullable: boolean; required: boolean },
): string[] {
  if (v === undefined) {
    if (o.required) problems.push(`${name} is missing`);
    return [];
  }
  if (v === null && o.nullable) return []; // Go writes a nil slice as null
  if (!Array.isArray(v)) {
    problems.push(`${name} is not a list`);
    return [];
  }
  const out: string[] = [];
  for (const [i, h] of v.entries()) {
    if (typeof h !== "string" || h === "") problems.push(`${name}[${i}] is not a non-empty string`);
    else out.push(h);
  }
  if (new Set(out).size !== out.length) problems.push(`${name} has duplicates`);
  return out;
}

function badValue(key: string, bytes: Uint8Array, problems: string[], cause?: unknown): LockError {
  const shown = Buffer.from(bytes.subarray(0, 200)).toString("utf8");
  return new LockError(
    "REBOOT_LOCK_BAD_VALUE",
    `the reboot semaphore ${key} holds a bad value (${problems.join("; ")}): ${JSON.stringify(shown)}${bytes.length > 200 ? "…" : ""}`,
    { cause, details: { key, problems, value: shown } },
  );
}

/**
 * The bytes locksmith's Go code writes (encoding/json: fields in this order,
 * no spaces, <>& and U+2028/U+2029 escaped), holders in Go's sort order;
 * `leased` follows only when it has entries, so a value without leased
 * holders is byte for byte locksmith's.
 */
export function encodeSemaphore(v: SemaphoreValue): Uint8Array {
  const holders = [...v.holders].sort(compareHolders);
  const held = new Set(holders);
  const leased = [...new Set(v.leased)].filter((h) => held.has(h)).sort(compareHolders);
  const doc: Record<string, unknown> = { semaphore: v.semaphore, max: v.max, holders };
  if (leased.length > 0) doc.leased = leased;
  const text = JSON.stringify(doc).replace(
    /[<>&\u2028\u2029]/g,
    (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`,
  );
  return new TextEncoder().encode(text);
}

/** The public view: locksmith's three fields. */
export function publicSemaphore(v: SemaphoreValue): Semaphore {
  return { semaphore: v.semaphore, max: v.max, holders: [...v.holders] };
}

/**
 * What `set-max` keeps of a bad value: the holders it can still read (a list
 * of non-empty strings, deduplicated), else none.
 */
export function salvageHolders(bytes: Uint8Array): string[] {
  try {
    const doc = JSON.parse(Buffer.from(bytes).toString("utf8")) as { holders?: unknown };
    if (!Array.isArray(doc?.holders)) return [];
    const ok = doc.holders.filter((h): h is string => typeof h === "string" && h !== "");
    return [...new Set(ok)].sort(compareHolders);
  } catch {
    return [];
  }
}
