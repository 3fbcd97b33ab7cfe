/**
 * The rootfs staging tree: a directory that layers write into, and the
 * metadata that an unprivileged build cannot put on disk (README.md,
 * "Staging and ownership").
 *
 * Every write resolves its path one component at a time, following
 * symlinks the way the kernel would inside a chroot of the staging
 * directory (absolute targets start at the rootfs root), and refuses a path
 * that would climb above that root. So nothing is ever written outside the
 * staging directory, whatever symlinks earlier layers left behind.
 *
 * Ownership, modes and device nodes live in `meta` and `virtual`; they reach
 * the squashfs through a mksquashfs pseudo file (`writePseudoFile`).
 */
import {
  chmodSync,
  closeSync,
  constants,
  createWriteStream,
  fchmodSync,
  linkSync,
  lstatSync,
  mkdirSync,
  openSync,
  readdirSync,
  readlinkSync,
  rmSync,
  type Stats,
  symlinkSync,
  type WriteStream,
} from "node:fs";
import { copyFile } from "node:fs/promises";
import { join } from "node:path";
import { pipeline } from "node:stream/promises";
import { writeAtSync } from "../fileio.ts";
import { BuildError } from "./errors.ts";

/** Owner and permission bits (including setuid, setgid, sticky) of one entry. */
export interface EntryMeta {
  mode: number;
  uid: number;
  gid: number;
}

/** An entry that exists only in the metadata: device nodes and FIFOs. */
export type VirtualEntry = EntryMeta &
  ({ type: "char" | "block"; major: number; minor: number } | { type: "fifo" });

const MAX_SYMLINKS = 40; // Linux's MAXSYMLINKS
const ROOT_META: EntryMeta = { mode: 0o755, uid: 0, gid: 0 };

function unsafe(message: string, details: Record<string, unknown> = {}): BuildError {
  return new BuildError("LAYER_UNSAFE", message, { details });
}

function lstatOrUndefined(path: string): Stats | undefined {
  try {
    return lstatSync(path);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "ENOENT") return undefined;
    throw err;
  }
}

/**
 * Split an entry name into rootfs components: `./` prefixes and `.`
 * components are dropped; absolute names, `..` components and names a
 * pseudo file cannot express (newline) are refused.
 */
export function entryComponents(name: string): string[] {
  if (name.startsWith("/")) throw unsafe(`${JSON.stringify(name)} is an absolute name`);
  if (/[\n\r\0]/.test(name)) throw unsafe(`${JSON.stringify(name)} contains a newline or NUL`);
  const parts = name.split("/").filter((p) => p !== "" && p !== ".");
  if (parts.includes("..")) throw unsafe(`${JSON.stringify(name)} contains a .. component`);
  return parts;
}

export class StagingTree {
  readonly rootDir: string;
  /** Recorded owner and mode of entries on disk, by rootfs-relative path ("" is the root). */
  readonly meta = new Map<string, EntryMeta>();
  /** Device nodes and FIFOs, by rootfs-relative path; nothing is on disk for them. */
  readonly virtual = new Map<string, VirtualEntry>();
  /** Paths known to be real directories (a cache of lstat results). */
  private readonly dirs = new Set<string>([""]);

  constructor(rootDir: string) {
    this.rootDir = rootDir;
    mkdirSync(rootDir, { recursive: true });
  }

  abs(rel: string): string {
    return rel === "" ? this.rootDir : join(this.rootDir, rel);
  }

  /**
   * Resolve components to a physical rootfs-relative path, following
   * symlinks inside the rootfs. The last component is followed only when
   * `followLast`. Missing intermediate directories are created (owned by
   * root, 0755) when `create`, else the result is undefined.
   */
  resolve(
    parts: readonly string[],
    o: { followLast: boolean; create: boolean },
  ): string | undefined {
    let cur: string[] = [];
    const queue = [...parts];
    let links = 0;
    while (queue.length > 0) {
      const c = queue.shift()!;
      if (c === "" || c === ".") continue;
      if (c === "..") {
        if (cur.length === 0) {
          throw unsafe(
            `${parts.join("/")} resolves through a symlink that points outside the rootfs`,
          );
        }
        cur.pop();
        continue;
      }
      const next = [...cur, c];
      const rel = next.join("/");
      const last = queue.length === 0;
      if (last && !o.followLast) return rel;
      if (this.dirs.has(rel)) {
        cur = next;
        continue;
      }
      if (this.virtual.has(rel)) {
        if (last) return rel;
        throw unsafe(`${parts.join("/")}: ${rel} is a device node or FIFO, not a directory`);
      }
      const st = lstatOrUndefined(this.abs(rel));
      if (st?.isSymbolicLink()) {
        if (++links > MAX_SYMLINKS) throw unsafe(`${parts.join("/")}: too many levels of symlinks`);
        const target = readlinkSync(this.abs(rel));
        if (target.startsWith("/")) cur = [];
        queue.unshift(...target.split("/"));
        continue;
      }
      if (!st) {
        if (last) return rel;
        if (!o.create) return undefined;
        mkdirSync(this.abs(rel), { mode: 0o755 });
        this.meta.set(rel, { ...ROOT_META });
        this.dirs.add(rel);
      } else if (st.isDirectory()) {
        this.dirs.add(rel);
      } else if (!last) {
        throw unsafe(`${parts.join("/")}: ${rel} is not a directory`);
      }
      cur = next;
    }
    return cur.join("/");
  }

  /** Resolve the parent of an entry (creating it) and return the entry's physical path. */
  private place(parts: readonly string[]): string {
    if (parts.length === 0) return "";
    return this.resolve(parts, { followLast: false, create: true })!;
  }

  /** Remove whatever is at a physical path (never following a final symlink). */
  removePhysical(rel: string): void {
    if (rel === "") throw unsafe("refusing to remove the rootfs root");
    const prefix = `${rel}/`;
    for (const map of [this.meta, this.virtual]) {
      for (const k of map.keys()) if (k === rel || k.startsWith(prefix)) map.delete(k);
    }
    for (const k of this.dirs) if (k === rel || k.startsWith(prefix)) this.dirs.delete(k);
    rmSync(this.abs(rel), { recursive: true, force: true });
  }

  /** Remove a path, resolving its parents inside the rootfs; a missing path is no error. */
  remove(parts: readonly string[]): string | undefined {
    const rel = this.resolve(parts, { followLast: false, create: false });
    if (rel === undefined || rel === "") return undefined;
    if (this.virtual.has(rel) || lstatOrUndefined(this.abs(rel))) this.removePhysical(rel);
    return rel;
  }

  /** Make room for a new non-directory entry at a physical path. */
  private clear(rel: string): void {
    if (this.virtual.has(rel) || lstatOrUndefined(this.abs(rel))) this.removePhysical(rel);
  }

  /**
   * A directory. An existing directory is kept; an existing symlink that
   * resolves to a directory inside the rootfs is kept too (like GNU tar's
   * --keep-directory-symlink, so a usr-merged /lib stays a symlink).
   */
  mkdir(parts: readonly string[], meta: EntryMeta): string {
    const rel = this.place(parts);
    if (rel === "") {
      this.meta.set("", { ...meta });
      return rel;
    }
    const st = this.virtual.has(rel) ? undefined : lstatOrUndefined(this.abs(rel));
    if (st?.isDirectory()) {
      this.meta.set(rel, { ...meta });
      this.dirs.add(rel);
      return rel;
    }
    if (st?.isSymbolicLink()) {
      const target = this.resolve(parts, { followLast: true, create: false });
      if (target !== undefined && lstatOrUndefined(this.abs(target))?.isDirectory()) return target;
    }
    this.clear(rel);
    mkdirSync(this.abs(rel), { mode: 0o755 });
    this.meta.set(rel, { ...meta });
    this.dirs.add(rel);
    return rel;
  }

  /** Make room for a new regular file: its physical path, parents created, the old entry gone. */
  private placeFile(parts: readonly string[]): string {
    const rel = this.place(parts);
    if (rel === "") throw unsafe("a file cannot replace the rootfs root");
    this.clear(rel);
    return rel;
  }

  /** A regular file from a stream or bytes; an existing entry at that path is replaced. */
  async writeFile(
    parts: readonly string[],
    meta: EntryMeta,
    content: AsyncIterable<Uint8Array> | Uint8Array,
  ): Promise<string> {
    const rel = this.placeFile(parts);
    // O_EXCL|O_NOFOLLOW: the path was just cleared; never write through a link.
    const fd = openSync(
      this.abs(rel),
      constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW,
      0o600,
    );
    let out: WriteStream | undefined;
    try {
      fchmodSync(fd, (meta.mode & 0o777) | 0o600);
      if (content instanceof Uint8Array) {
        // Small inline content: plain writes, no stream machinery per file.
        writeAtSync(fd, content, 0);
        closeSync(fd);
      } else {
        out = createWriteStream("", { fd, autoClose: true });
        await pipeline(content, out);
      }
    } catch (err) {
      if (!out) closeSync(fd);
      throw err;
    }
    this.meta.set(rel, { ...meta });
    return rel;
  }

  /**
   * A regular file with the content of a host file (read through symlinks);
   * an existing entry at that path is replaced. The kernel copies the bytes
   * (copy_file_range), and COPYFILE_EXCL creates the file O_CREAT|O_EXCL,
   * which never follows a symlink at the final component.
   */
  async copyFile(parts: readonly string[], meta: EntryMeta, hostPath: string): Promise<string> {
    const rel = this.placeFile(parts);
    const abs = this.abs(rel);
    await copyFile(hostPath, abs, constants.COPYFILE_EXCL);
    chmodSync(abs, (meta.mode & 0o777) | 0o600);
    this.meta.set(rel, { ...meta });
    return rel;
  }

  /**
   * A symlink. Its target, resolved from the link's directory (or from the
   * rootfs root when absolute), must stay inside the rootfs.
   */
  symlink(parts: readonly string[], target: string, meta: EntryMeta): string {
    const rel = this.place(parts);
    if (rel === "") throw unsafe("a symlink cannot replace the rootfs root");
    if (target === "" || /[\n\r\0]/.test(target)) {
      throw unsafe(`symlink ${rel} has an empty target or one with a newline`);
    }
    const stack = target.startsWith("/") ? [] : rel.split("/").slice(0, -1);
    for (const c of target.split("/")) {
      if (c === "" || c === ".") continue;
      if (c === "..") {
        if (stack.length === 0) {
          throw unsafe(`symlink ${rel} -> ${target} points outside the rootfs`, { target });
        }
        stack.pop();
      } else stack.push(c);
    }
    this.clear(rel);
    symlinkSync(target, this.abs(rel));
    this.meta.set(rel, { ...meta, mode: 0o777 });
    return rel;
  }

  /** A hard link to an existing non-directory entry inside the rootfs. */
  link(parts: readonly string[], targetParts: readonly string[]): string {
    const target = this.resolve(targetParts, { followLast: false, create: false });
    const name = targetParts.join("/");
    if (target === undefined || target === "") {
      throw unsafe(
        `hard link ${parts.join("/")} -> ${name}: the target does not exist in the rootfs`,
      );
    }
    const rel = this.place(parts);
    if (rel === target) return rel;
    const v = this.virtual.get(target);
    if (v) {
      this.clear(rel);
      this.virtual.set(rel, { ...v });
      return rel;
    }
    const st = lstatOrUndefined(this.abs(target));
    if (!st) {
      throw unsafe(`hard link ${rel} -> ${name}: the target does not exist in the rootfs`);
    }
    if (st.isDirectory()) throw unsafe(`hard link ${rel} -> ${name}: the target is a directory`);
    this.clear(rel);
    linkSync(this.abs(target), this.abs(rel));
    const m = this.meta.get(target);
    if (m) this.meta.set(rel, { ...m });
    return rel;
  }

  /** A device node or FIFO: recorded only, created by mksquashfs from the pseudo file. */
  special(parts: readonly string[], entry: VirtualEntry): string {
    const rel = this.place(parts);
    if (rel === "") throw unsafe("a device node cannot replace the rootfs root");
    this.clear(rel);
    this.virtual.set(rel, { ...entry });
    return rel;
  }

  /** Names in a physical directory, virtual entries included. */
  children(rel: string): string[] {
    const names = new Set<string>();
    const st = lstatOrUndefined(this.abs(rel));
    if (st?.isDirectory()) for (const n of readdirSync(this.abs(rel))) names.add(n);
    const prefix = rel === "" ? "" : `${rel}/`;
    for (const k of this.virtual.keys()) {
      if (k.startsWith(prefix) && !k.slice(prefix.length).includes("/")) {
        names.add(k.slice(prefix.length));
      }
    }
    return [...names].sort();
  }

  isDirectory(rel: string): boolean {
    return !this.virtual.has(rel) && Boolean(lstatOrUndefined(this.abs(rel))?.isDirectory());
  }

  exists(rel: string): boolean {
    return this.virtual.has(rel) || lstatOrUndefined(this.abs(rel)) !== undefined;
  }

  /**
   * Write the mksquashfs pseudo file for everything now in the staging
   * directory: an `m` line per entry (recorded owner and mode, or root and
   * the on-disk mode for entries the layers did not record, such as files
   * the pipeline adds later), and `c`/`b`/`i` lines creating the device nodes
   * and FIFOs. The root directory's attributes go to -root-mode/-root-uid/
   * -root-gid (mksquashfs ignores pseudo definitions for the root).
   */
  async writePseudoFile(outPath: string): Promise<PseudoFile> {
    const out = createWriteStream(outPath, { mode: 0o644 });
    const done = new Promise<void>((res, rej) => {
      out.on("error", rej);
      out.on("finish", () => res());
    });
    let lines = 0;
    const write = async (line: string): Promise<void> => {
      lines++;
      if (!out.write(`${line}\n`)) await new Promise<void>((r) => out.once("drain", () => r()));
    };
    const walk = async (rel: string): Promise<void> => {
      for (const name of this.children(rel)) {
        const child = rel === "" ? name : `${rel}/${name}`;
        const v = this.virtual.get(child);
        if (v) {
          const attrs = `${octal(v.mode)} ${v.uid} ${v.gid}`;
          if (v.type === "fifo") await write(`${pseudoName(child)} i ${attrs} f`);
          else
            await write(
              `${pseudoName(child)} ${v.type === "char" ? "c" : "b"} ${attrs} ${v.major} ${v.minor}`,
            );
          continue;
        }
        const st = lstatSync(this.abs(child));
        const m = this.meta.get(child) ?? { mode: st.mode & 0o7777, uid: 0, gid: 0 };
        await write(`${pseudoName(child)} m ${octal(m.mode)} ${m.uid} ${m.gid}`);
        if (st.isDirectory()) await walk(child);
      }
    };
    try {
      await walk("");
    } finally {
      out.end();
    }
    await done;
    const root = this.meta.get("") ?? ROOT_META;
    return {
      path: outPath,
      lines,
      root: { ...root },
      mksquashfsArgs: [
        "-pf",
        outPath,
        "-root-mode",
        octal(root.mode),
        "-root-uid",
        String(root.uid),
        "-root-gid",
        String(root.gid),
      ],
    };
  }
}

export interface PseudoFile {
  path: string;
  /** Number of definitions written. */
  lines: number;
  root: EntryMeta;
  /** Arguments to pass to mksquashfs: the pseudo file and the root directory's attributes. */
  mksquashfsArgs: string[];
}

function octal(mode: number): string {
  return (mode & 0o7777).toString(8).padStart(4, "0");
}

/** A pseudo file name: spaces, tabs, quotes and backslashes backslash-escaped. */
export function pseudoName(rel: string): string {
  return rel.replace(/[\\ \t"]/g, (c) => `\\${c}`);
}
