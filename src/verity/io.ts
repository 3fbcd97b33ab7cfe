/**
 * The small file layer under format/verify: open a data or hash file (regular
 * file or block device), its size, whether two descriptors are the same file,
 * positioned reads and writes. Failures are IO_ERROR naming the file.
 */
import {
  closeSync,
  constants,
  fstatSync,
  fsyncSync,
  openSync,
  readFileSync,
  readSync,
  writeSync,
} from "node:fs";
import { ToolError } from "../errors.ts";

export interface OpenFile {
  fd: number;
  path: string;
  /** "data file" or "hash file", for messages. */
  role: string;
  size: number;
  isBlockDevice: boolean;
  dev: bigint;
  ino: bigint;
  rdev: bigint;
}

function ioError(f: { role: string; path: string }, what: string, cause: unknown): ToolError {
  const reason = cause instanceof Error ? cause.message : String(cause);
  return new ToolError("IO_ERROR", `${f.role} ${f.path}: ${what}: ${reason}`, {
    cause,
    details: { path: f.path, role: f.role },
  });
}

/** Size of a block device from sysfs (fstat reports 0 for them). */
function blockDeviceSize(rdev: bigint): number {
  const major = ((rdev >> 8n) & 0xfffn) | ((rdev >> 32n) & ~0xfffn);
  const minor = (rdev & 0xffn) | ((rdev >> 12n) & ~0xffn);
  const sectors = readFileSync(`/sys/dev/block/${major}:${minor}/size`, "utf8").trim();
  return Number(sectors) * 512;
}

export function openFile(path: string, role: string, mode: "read" | "write"): OpenFile {
  const f = { path, role };
  let fd: number;
  try {
    fd = openSync(
      path,
      mode === "read" ? constants.O_RDONLY : constants.O_RDWR | constants.O_CREAT,
      0o644,
    );
  } catch (err) {
    throw ioError(f, "cannot open", err);
  }
  try {
    const st = fstatSync(fd, { bigint: true });
    const isBlockDevice = st.isBlockDevice();
    const size = isBlockDevice ? blockDeviceSize(st.rdev) : Number(st.size);
    return { fd, path, role, size, isBlockDevice, dev: st.dev, ino: st.ino, rdev: st.rdev };
  } catch (err) {
    closeSync(fd);
    throw ioError(f, "cannot stat", err);
  }
}

export function closeFile(f: OpenFile | undefined): void {
  if (!f) return;
  try {
    closeSync(f.fd);
  } catch {
    // closing a descriptor we opened; nothing to recover
  }
}

export function sameFile(a: OpenFile, b: OpenFile): boolean {
  if (a.isBlockDevice && b.isBlockDevice) return a.rdev === b.rdev;
  return a.dev === b.dev && a.ino === b.ino;
}

export function readAt(f: OpenFile, length: number, position: number): Uint8Array {
  const buf = new Uint8Array(length);
  let done = 0;
  try {
    while (done < length) {
      const n = readSync(f.fd, buf, done, length - done, position + done);
      if (n === 0) break;
      done += n;
    }
  } catch (err) {
    throw ioError(f, `cannot read ${length} bytes at byte ${position}`, err);
  }
  if (done < length) {
    throw ioError(f, `cannot read ${length} bytes at byte ${position}`, new Error("end of file"));
  }
  return buf;
}

export function writeAt(f: OpenFile, buf: Uint8Array, position: number): void {
  let done = 0;
  try {
    while (done < buf.length)
      done += writeSync(f.fd, buf, done, buf.length - done, position + done);
  } catch (err) {
    throw ioError(f, `cannot write ${buf.length} bytes at byte ${position}`, err);
  }
}

export function syncFile(f: OpenFile): void {
  try {
    fsyncSync(f.fd);
  } catch (err) {
    throw ioError(f, "cannot fsync", err);
  }
}

export { ioError };
