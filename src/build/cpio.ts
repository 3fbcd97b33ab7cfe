/**
 * A deterministic cpio "newc" (SVR4, magic 070701) writer, the format the
 * Linux kernel unpacks as an initramfs. See README.md, "cpio newc".
 *
 * The format code is pure: `cpioHeader` encodes one header, `cpioChunks`
 * yields the archive as chunks (file contents may stream from disk), so an
 * archive of any size never sits in memory whole. Determinism: entries are
 * sorted by path, inode numbers are sequential from 1, owner is 0:0 and every
 * mtime is the one given (0 or SOURCE_DATE_EPOCH).
 */
import { createReadStream } from "node:fs";
import { lstat, readdir, readlink } from "node:fs/promises";
import { join } from "node:path";
import { BuildError } from "./errors.ts";

export const CPIO_MAGIC = "070701";
export const CPIO_HEADER_SIZE = 110;
export const CPIO_TRAILER = "TRAILER!!!";

/** File-type bits of st_mode (octal), as the kernel's init/initramfs.c expects. */
export const S_IFMT = 0o170000;
export const S_IFDIR = 0o040000;
export const S_IFREG = 0o100000;
export const S_IFLNK = 0o120000;
export const S_IFCHR = 0o020000;
export const S_IFBLK = 0o060000;

/** File contents: bytes in memory, or a source read once while the archive streams. */
export type CpioData = Uint8Array | (() => AsyncIterable<Uint8Array>);

export type CpioEntry =
  | { type: "dir"; path: string; mode?: number }
  | { type: "file"; path: string; mode?: number; size: number; data: CpioData }
  | { type: "symlink"; path: string; target: string }
  | { type: "chardev" | "blockdev"; path: string; mode?: number; major: number; minor: number };

export interface CpioOptions {
  /** mtime of every entry, seconds since the epoch (default 0). */
  mtime?: number;
}

/** The fields of one newc header (README.md, table "newc header"). */
export interface CpioHeaderFields {
  ino: number;
  mode: number;
  uid: number;
  gid: number;
  nlink: number;
  mtime: number;
  fileSize: number;
  devMajor: number;
  devMinor: number;
  rdevMajor: number;
  rdevMinor: number;
  name: string;
}

const encoder = new TextEncoder();

function pad4(n: number): number {
  return (4 - (n % 4)) % 4;
}

function hex8(value: number, field: string, name: string): string {
  if (!Number.isInteger(value) || value < 0 || value > 0xffffffff) {
    throw new BuildError(
      "CPIO_BAD_ENTRY",
      `cpio entry ${name}: ${field} ${value} does not fit the 8 hex digits of a newc header`,
      { details: { path: name, field, value } },
    );
  }
  return value.toString(16).toUpperCase().padStart(8, "0");
}

/** Header + NUL-terminated name + padding to a multiple of 4 bytes. */
export function cpioHeader(h: CpioHeaderFields): Uint8Array {
  const name = encoder.encode(h.name);
  const nameSize = name.length + 1;
  const fields = [
    h.ino,
    h.mode,
    h.uid,
    h.gid,
    h.nlink,
    h.mtime,
    h.fileSize,
    h.devMajor,
    h.devMinor,
    h.rdevMajor,
    h.rdevMinor,
    nameSize,
    0, // check: only used by the "crc" format 070702
  ];
  const labels = [
    "ino",
    "mode",
    "uid",
    "gid",
    "nlink",
    "mtime",
    "filesize",
    "devmajor",
    "devminor",
    "rdevmajor",
    "rdevminor",
    "namesize",
    "check",
  ];
  const text = CPIO_MAGIC + fields.map((v, i) => hex8(v, labels[i]!, h.name)).join("");
  const total = CPIO_HEADER_SIZE + nameSize + pad4(CPIO_HEADER_SIZE + nameSize);
  const out = new Uint8Array(total);
  out.set(encoder.encode(text), 0);
  out.set(name, CPIO_HEADER_SIZE);
  return out;
}

/**
 * The canonical archive path: relative, no `.`/`..`/empty components.
 * `./a//b/` → `a/b`. Throws CPIO_BAD_ENTRY for a path that escapes or is empty.
 */
export function normalizeCpioPath(path: string): string {
  const parts: string[] = [];
  for (const part of path.split("/")) {
    if (part === "" || part === ".") continue;
    if (part === "..") {
      throw new BuildError("CPIO_BAD_ENTRY", `cpio entry ${path}: ".." is not allowed in a path`, {
        details: { path },
      });
    }
    parts.push(part);
  }
  if (parts.length === 0) {
    throw new BuildError("CPIO_BAD_ENTRY", `cpio entry "${path}": empty path`, {
      details: { path },
    });
  }
  return parts.join("/");
}

function compareBytes(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a), Buffer.from(b));
}

/**
 * Entries in archive order: normalized, sorted by path bytes (so a directory
 * precedes its contents), duplicates refused.
 */
export function sortCpioEntries(entries: Iterable<CpioEntry>): CpioEntry[] {
  const sorted = [...entries]
    .map((e) => ({ ...e, path: normalizeCpioPath(e.path) }))
    .sort((a, b) => compareBytes(a.path, b.path));
  for (let i = 1; i < sorted.length; i++) {
    if (sorted[i]!.path === sorted[i - 1]!.path) {
      throw new BuildError("CPIO_BAD_ENTRY", `cpio entry ${sorted[i]!.path}: listed twice`, {
        details: { path: sorted[i]!.path },
      });
    }
  }
  return sorted;
}

function modeOf(e: CpioEntry): number {
  switch (e.type) {
    case "dir":
      return S_IFDIR | ((e.mode ?? 0o755) & 0o7777);
    case "file":
      return S_IFREG | ((e.mode ?? 0o644) & 0o7777);
    case "symlink":
      return S_IFLNK | 0o777;
    case "chardev":
      return S_IFCHR | ((e.mode ?? 0o600) & 0o7777);
    case "blockdev":
      return S_IFBLK | ((e.mode ?? 0o600) & 0o7777);
  }
}

/**
 * The archive as a sequence of chunks: for each entry (sorted) its header,
 * its data and padding, then the trailer. Streamed file data is checked
 * against the declared size.
 */
export async function* cpioChunks(
  entries: Iterable<CpioEntry>,
  options: CpioOptions = {},
): AsyncGenerator<Uint8Array> {
  const mtime = options.mtime ?? 0;
  let ino = 0;
  for (const e of sortCpioEntries(entries)) {
    ino += 1;
    const target = e.type === "symlink" ? encoder.encode(e.target) : undefined;
    const size = e.type === "file" ? e.size : (target?.length ?? 0);
    const dev = e.type === "chardev" || e.type === "blockdev" ? e : undefined;
    yield cpioHeader({
      ino,
      mode: modeOf(e),
      uid: 0,
      gid: 0,
      nlink: e.type === "dir" ? 2 : 1,
      mtime,
      fileSize: size,
      devMajor: 0,
      devMinor: 0,
      rdevMajor: dev?.major ?? 0,
      rdevMinor: dev?.minor ?? 0,
      name: e.path,
    });
    if (target) yield target;
    if (e.type === "file") {
      let written = 0;
      if (e.data instanceof Uint8Array) {
        written = e.data.length;
        if (written === size) yield e.data;
      } else {
        for await (const chunk of e.data()) {
          written += chunk.length;
          if (written > size) break;
          yield chunk;
        }
      }
      if (written !== size) {
        throw new BuildError(
          "CPIO_BAD_ENTRY",
          `cpio entry ${e.path}: declared ${size} bytes but its data has ${written > size ? "more" : written}`,
          { details: { path: e.path, size, written } },
        );
      }
    }
    const padding = pad4(size);
    if (padding) yield new Uint8Array(padding);
  }
  yield cpioHeader({
    ino: 0,
    mode: 0,
    uid: 0,
    gid: 0,
    nlink: 1,
    mtime: 0,
    fileSize: 0,
    devMajor: 0,
    devMinor: 0,
    rdevMajor: 0,
    rdevMinor: 0,
    name: CPIO_TRAILER,
  });
}

/** The whole archive in memory (for small archives and tests). */
export async function encodeCpio(
  entries: Iterable<CpioEntry>,
  options: CpioOptions = {},
): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  for await (const chunk of cpioChunks(entries, options)) parts.push(chunk);
  return Buffer.concat(parts);
}

/**
 * The entries for a directory tree on disk (the directory itself excluded),
 * file contents streamed from disk when the archive is written. Owners and
 * times on disk are ignored (the archive has 0:0 and one mtime); permission
 * bits are kept. Sockets and FIFOs are refused.
 */
export async function cpioEntriesFromDir(root: string): Promise<CpioEntry[]> {
  const out: CpioEntry[] = [];
  async function walk(rel: string): Promise<void> {
    const names = (await readdir(join(root, rel))).sort(compareBytes);
    for (const name of names) {
      const relPath = rel ? `${rel}/${name}` : name;
      const abs = join(root, relPath);
      const st = await lstat(abs);
      const mode = st.mode & 0o7777;
      if (st.isDirectory()) {
        out.push({ type: "dir", path: relPath, mode });
        await walk(relPath);
      } else if (st.isFile()) {
        out.push({
          type: "file",
          path: relPath,
          mode,
          size: st.size,
          data: () => createReadStream(abs),
        });
      } else if (st.isSymbolicLink()) {
        out.push({ type: "symlink", path: relPath, target: await readlink(abs) });
      } else if (st.isCharacterDevice() || st.isBlockDevice()) {
        const rdev = st.rdev;
        out.push({
          type: st.isCharacterDevice() ? "chardev" : "blockdev",
          path: relPath,
          mode,
          major: Number((BigInt(rdev) >> 8n) & 0xfffn),
          minor: Number((BigInt(rdev) & 0xffn) | ((BigInt(rdev) >> 12n) & 0xfff00n)),
        });
      } else {
        throw new BuildError("CPIO_BAD_ENTRY", `${abs}: not a file, directory, link or device`, {
          details: { path: abs },
        });
      }
    }
  }
  await walk("");
  return out;
}
