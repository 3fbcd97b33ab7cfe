/**
 * The small file layer under format/verify: open a data or hash file (regular
 * file or block device), its size, whether two descriptors are the same file,
 * positioned reads and writes. Failures are IO_ERROR naming the file.
 */
import { closeSync, constants, fstatSync, fsyncSync, openSync, readFileSync } from "node:fs";
import { ToolError } from "../errors.ts";
import { errnoOf, ioCodeFor, readAtSync, writeAtSync } from "../fileio.ts";

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
  const errno = errnoOf(cause);
  return new ToolError(ioCodeFor(errno), `${f.role} ${f.path}: ${what}: ${reason}`, {
    cause,
    details: { path: f.path, role: f.role, errno },
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
    done = readAtSync(f.fd, buf, position);
  } catch (err) {
    throw ioError(f, `cannot read ${length} bytes at byte ${position}`, err);
  }
  if (done < length) {
    throw ioError(f, `cannot read ${length} bytes at byte ${position}`, new Error("end of file"));
  }
  return buf;
}

export function writeAt(f: OpenFile, buf: Uint8Array, position: number): void {
  try {
    writeAtSync(f.fd, buf, position);
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
