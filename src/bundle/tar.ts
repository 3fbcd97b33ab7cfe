/**
 * The strict ustar subset a bundle uses (README.md, "Tar layout"). Pure:
 * decodes one 512-byte header block and computes entry offsets. The writer
 * produces these headers with tar-stream; the reader accepts nothing else
 * (no pax or GNU extension headers, no links or directories), because an
 * extension header could rename an entry or change its size and would move
 * the slot data away from the offset the layout promises.
 */
import { BundleError } from "./errors.ts";

export const BLOCK = 512;
/** Two zero blocks end the archive. */
export const END_OF_ARCHIVE = 2 * BLOCK;

export interface TarHeader {
  name: string;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  /** Seconds since the epoch. */
  mtime: number;
  uname: string;
  gname: string;
}

/** Bytes of zero padding after `size` bytes of entry data. */
export function padding(size: number): number {
  return (BLOCK - (size % BLOCK)) % BLOCK;
}

/**
 * Byte offset of the slot image's data in a bundle whose manifest.json is
 * `manifestBytes` long and manifest.sig `sigBytes` long: three headers and
 * the first two entries, each padded to 512 bytes.
 */
export function slotDataOffset(manifestBytes: number, sigBytes = 64): number {
  return (
    BLOCK + manifestBytes + padding(manifestBytes) + BLOCK + sigBytes + padding(sigBytes) + BLOCK
  );
}

export function isZeroBlock(block: Uint8Array): boolean {
  for (const b of block) if (b !== 0) return false;
  return true;
}

/**
 * Decode a header block. `where` names the block in messages
 * ("bundle x.bundle: entry 2 at byte 1536"). Throws BUNDLE_MALFORMED for
 * anything but a checksummed POSIX ustar header of a regular file with a
 * safe relative name.
 */
export function decodeTarHeader(block: Uint8Array, where: string): TarHeader {
  if (block.length !== BLOCK)
    throw malformed(where, `a tar header is ${BLOCK} bytes, got ${block.length}`);
  const stored = parseOctal(block.subarray(148, 156));
  if (stored === undefined || stored !== checksum(block))
    throw malformed(where, "tar header checksum does not match (not a tar header, or corrupted)");
  if (ascii(block, 257, 6) !== "ustar\0" || ascii(block, 263, 2) !== "00")
    throw malformed(where, "not a POSIX ustar header");
  const type = block[156];
  if (type !== 0x30 && type !== 0)
    throw malformed(
      where,
      `entry type ${JSON.stringify(String.fromCharCode(type ?? 0))} is not a regular file (no extension headers, links or directories)`,
    );
  const base = cString(block, 0, 100);
  const prefix = cString(block, 345, 155);
  const name = prefix ? `${prefix}/${base}` : base;
  checkName(name, where);
  const size = parseSize(block.subarray(124, 136));
  if (size === undefined) throw malformed(where, "tar header size field is not a number");
  const num = (off: number, len: number, field: string) => {
    const v = parseOctal(block.subarray(off, off + len));
    if (v === undefined) throw malformed(where, `tar header ${field} field is not octal`);
    return v;
  };
  return {
    name,
    mode: num(100, 8, "mode"),
    uid: num(108, 8, "uid"),
    gid: num(116, 8, "gid"),
    size,
    mtime: num(136, 12, "mtime"),
    uname: cString(block, 265, 32),
    gname: cString(block, 297, 32),
  };
}

function checkName(name: string, where: string): void {
  if (name === "") throw malformed(where, "entry has an empty name");
  if (!/^[\x21-\x7e]+$/.test(name))
    throw malformed(
      where,
      `entry name ${JSON.stringify(name)} has characters outside printable ASCII`,
    );
  if (name.startsWith("/"))
    throw malformed(where, `entry name ${JSON.stringify(name)} is absolute`);
  if (name.split("/").includes(".."))
    throw malformed(where, `entry name ${JSON.stringify(name)} contains ".."`);
}

/** Sum of the header bytes with the checksum field counted as spaces. */
function checksum(block: Uint8Array): number {
  let sum = 8 * 0x20;
  for (let i = 0; i < BLOCK; i++) if (i < 148 || i >= 156) sum += block[i] ?? 0;
  return sum;
}

/** Octal digits, optionally led by spaces or zeros and ended by a space or NUL. */
function parseOctal(field: Uint8Array): number | undefined {
  const text = ascii(field, 0, field.length);
  const m = /^ *([0-7]+)[ \0]*$/.exec(text);
  if (!m?.[1]) return undefined;
  const v = Number.parseInt(m[1], 8);
  return Number.isSafeInteger(v) ? v : undefined;
}

/** The size field: octal, or GNU base-256 (first byte 0x80) for entries of 8 GiB and more. */
function parseSize(field: Uint8Array): number | undefined {
  if (field[0] !== 0x80) return parseOctal(field);
  let v = 0;
  for (let i = 1; i < field.length; i++) v = v * 256 + (field[i] ?? 0);
  return Number.isSafeInteger(v) ? v : undefined;
}

function ascii(b: Uint8Array, off: number, len: number): string {
  return String.fromCharCode(...b.subarray(off, off + len));
}

function cString(b: Uint8Array, off: number, len: number): string {
  const field = b.subarray(off, off + len);
  const end = field.indexOf(0);
  return ascii(field, 0, end === -1 ? len : end);
}

export function malformed(where: string, problem: string, details: Record<string, unknown> = {}) {
  return new BundleError("BUNDLE_MALFORMED", `${where}: ${problem}`, { details });
}
