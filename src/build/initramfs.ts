/**
 * The initramfs: busybox (applet links made here), dmsetup with its shared
 * libraries, the kernel modules in load order and the abforge /init, as a
 * deterministic gzip-compressed cpio newc archive. See README.md,
 * "initramfs" and "initramfs /init".
 */

import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { createReadStream, createWriteStream } from "node:fs";
import { chmod, mkdir, readFile, realpath, rename, rm, stat, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { Readable, Transform } from "node:stream";
import { pipeline } from "node:stream/promises";
import { createGzip, gunzipSync } from "node:zlib";
import { requireTool, run } from "../exec.ts";
import { logger } from "../log.ts";
import { type CpioEntry, cpioChunks, normalizeCpioPath } from "./cpio.ts";
import { BuildError } from "./errors.ts";
import { BOOT_MODULES, type KernelModule, type KernelTree, resolveModules } from "./kernel.ts";

const ASSETS = new URL("./assets/", import.meta.url);

/** The /init script (busybox sh) of every abforge initramfs. */
export async function initScript(): Promise<string> {
  return readFile(new URL("init.sh", ASSETS), "utf8");
}

/** One file the image's root filesystem needs for the boot flow after switch_root. */
export interface RootfsFile {
  path: string;
  mode: number;
  data: Uint8Array;
}

/**
 * Directories the /init mounts onto inside the read-only root: they must
 * exist in every image's root filesystem.
 */
export const ROOTFS_MOUNT_POINTS: readonly string[] = [
  "dev",
  "proc",
  "sys",
  "run",
  "var",
  "etc",
  "tmp",
];

/**
 * The files busybox init needs in the root filesystem: `/etc/inittab`,
 * `/etc/init.d/rcS` (mounts, the `abforge: booted slot ...` banner, services)
 * `/etc/init.d/rcK` (shutdown) and `/etc/profile` (the `abforge:/# ` prompt). README.md, "After switch_root".
 */
export async function rootfsBootFiles(): Promise<RootfsFile[]> {
  const file = async (asset: string, path: string, mode: number): Promise<RootfsFile> => ({
    path,
    mode,
    data: await readFile(new URL(asset, ASSETS)),
  });
  return [
    await file("inittab", "etc/inittab", 0o644),
    await file("rcS", "etc/init.d/rcS", 0o755),
    await file("rcK", "etc/init.d/rcK", 0o755),
    await file("profile", "etc/profile", 0o644),
  ];
}

/** Write `rootfsBootFiles()` and the mount points into a root filesystem tree. */
export async function installRootfsBootFiles(rootDir: string): Promise<void> {
  for (const d of ROOTFS_MOUNT_POINTS) await mkdir(join(rootDir, d), { recursive: true });
  for (const f of await rootfsBootFiles()) {
    const dest = join(rootDir, f.path);
    await mkdir(dirname(dest), { recursive: true });
    await writeFile(dest, f.data);
    await chmod(dest, f.mode);
  }
}

export interface InitramfsOptions {
  kernelTree: KernelTree;
  /** Modules to load, by name; BOOT_MODULES are always added; dependencies are resolved. */
  modules: readonly string[];
  outPath: string;
  /** mtime of every archive entry (default: SOURCE_DATE_EPOCH, else 0). */
  mtime?: number;
}

export interface InitramfsResult {
  path: string;
  bytes: number;
  sha256: string;
  /** Modules in the order /init loads them. */
  modules: string[];
}

/** Seconds since the epoch from SOURCE_DATE_EPOCH, or 0. */
export function sourceDateEpoch(env: NodeJS.ProcessEnv = process.env): number {
  const v = env.SOURCE_DATE_EPOCH;
  if (v === undefined || v === "") return 0;
  if (!/^\d+$/.test(v)) {
    throw new BuildError("BUILD_FAILED", `SOURCE_DATE_EPOCH="${v}": expected seconds since 1970`, {
      details: { SOURCE_DATE_EPOCH: v },
    });
  }
  return Number(v);
}

/** The shared libraries of a dynamic executable, as `ldd` lists them (absolute paths). */
export function parseLdd(output: string): string[] {
  const libs: string[] = [];
  for (const line of output.split("\n")) {
    const m = /=>\s*(\/\S+)/.exec(line) ?? /^\s*(\/\S+)\s+\(0x/.exec(line);
    if (m) libs.push(m[1]!);
  }
  return libs;
}

async function hostFile(path: string, archivePath: string, mode = 0o755): Promise<CpioEntry> {
  const real = await realpath(path);
  const st = await stat(real);
  return {
    type: "file",
    path: archivePath,
    mode,
    size: st.size,
    data: () => createReadStream(real),
  };
}

function parentDirs(paths: Iterable<string>): CpioEntry[] {
  const dirs = new Set<string>();
  for (const p of paths) {
    const parts = normalizeCpioPath(p).split("/");
    for (let i = 1; i < parts.length; i++) dirs.add(parts.slice(0, i).join("/"));
  }
  return [...dirs].map((path) => ({ type: "dir", path, mode: 0o755 }));
}

async function moduleEntry(m: KernelModule, version: string): Promise<CpioEntry> {
  const path = `lib/modules/${version}/${m.relPath.replace(/\.(xz|gz|zst)$/, "")}`;
  if (m.path.endsWith(".ko")) return hostFile(m.path, path, 0o644);
  let data: Uint8Array;
  if (m.path.endsWith(".gz")) data = gunzipSync(await readFile(m.path));
  else if (m.path.endsWith(".xz")) {
    const r = spawnSync(requireTool("xz"), ["-dc", m.path], { maxBuffer: 256 << 20 });
    if (r.status !== 0) {
      throw new BuildError("BUILD_FAILED", `module ${m.path}: xz -d failed: ${r.stderr}`, {
        cause: r.error,
        details: { module: m.path },
      });
    }
    data = r.stdout;
  } else {
    throw new BuildError(
      "BUILD_FAILED",
      `module ${m.path}: zstd-compressed modules are not supported; use a kernel with .ko or .ko.xz modules`,
      { details: { module: m.path } },
    );
  }
  return { type: "file", path, mode: 0o644, size: data.length, data };
}

/**
 * Every entry of the initramfs archive (unsorted; the cpio writer sorts).
 * Exposed for tests and for `abforge build --explain`-style listings.
 */
export async function initramfsEntries(
  o: Pick<InitramfsOptions, "kernelTree" | "modules">,
): Promise<{ entries: CpioEntry[]; modules: KernelModule[] }> {
  const entries: CpioEntry[] = [];
  const busybox = requireTool("busybox");
  entries.push(await hostFile(busybox, "bin/busybox"));
  const applets = (await run(busybox, ["--list-full"])).stdout.split("\n").filter(Boolean);
  for (const applet of applets) {
    const path = normalizeCpioPath(applet);
    if (path === "bin/busybox") continue;
    const depth = path.split("/").length - 1;
    entries.push({ type: "symlink", path, target: `${"../".repeat(depth)}bin/busybox` });
  }

  const dmsetup = requireTool("dmsetup");
  entries.push(await hostFile(dmsetup, "sbin/dmsetup"));
  const ldd = await run("ldd", [dmsetup]).catch((cause: unknown) => {
    throw new BuildError("BUILD_FAILED", `ldd ${dmsetup} failed: cannot list its libraries`, {
      cause,
    });
  });
  for (const lib of parseLdd(ldd.stdout)) entries.push(await hostFile(lib, lib));

  const modules = await resolveModules(o.kernelTree, [...BOOT_MODULES, ...o.modules]);
  const v = o.kernelTree.version;
  for (const m of modules) entries.push(await moduleEntry(m, v));
  const list = modules.map((m) => `${v}/${m.relPath.replace(/\.(xz|gz|zst)$/, "")}\n`).join("");
  const text = new TextEncoder();
  const listBytes = text.encode(list);
  entries.push({
    type: "file",
    path: "etc/abforge-modules",
    mode: 0o644,
    size: listBytes.length,
    data: listBytes,
  });

  const init = text.encode(await initScript());
  entries.push({ type: "file", path: "init", mode: 0o755, size: init.length, data: init });
  entries.push({ type: "chardev", path: "dev/console", mode: 0o600, major: 5, minor: 1 });
  entries.push({ type: "chardev", path: "dev/null", mode: 0o666, major: 1, minor: 3 });
  for (const d of ["proc", "sys", "dev", "newroot", "run", "tmp"]) {
    entries.push({ type: "dir", path: d, mode: 0o755 });
  }

  const have = new Set(entries.map((e) => normalizeCpioPath(e.path)));
  for (const d of parentDirs(entries.map((e) => e.path))) {
    if (!have.has(d.path)) {
      have.add(d.path);
      entries.push(d);
    }
  }
  return { entries, modules };
}

/** Build the initramfs: cpio newc, gzip (fixed header), written to a temp file then renamed. */
export async function buildInitramfs(o: InitramfsOptions): Promise<InitramfsResult> {
  const started = Date.now();
  const { entries, modules } = await initramfsEntries(o);
  const mtime = o.mtime ?? sourceDateEpoch();
  await mkdir(dirname(o.outPath), { recursive: true });
  const tmp = `${o.outPath}.tmp-${process.pid}`;
  const hash = createHash("sha256");
  let bytes = 0;
  const tap = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      hash.update(chunk);
      bytes += chunk.length;
      cb(null, chunk);
    },
  });
  try {
    // Node's gzip header has mtime 0 and OS 3: the output depends on the input only.
    await pipeline(
      Readable.from(cpioChunks(entries, { mtime })),
      createGzip({ level: 6 }),
      tap,
      createWriteStream(tmp),
    );
    await rename(tmp, o.outPath);
  } catch (cause) {
    await rm(tmp, { force: true });
    throw cause;
  }
  const result = {
    path: o.outPath,
    bytes,
    sha256: hash.digest("hex"),
    modules: modules.map((m) => m.name),
  };
  logger()
    .child({ module: "build", step: "initramfs" })
    .info({ ...result, entries: entries.length, ms: Date.now() - started }, "initramfs built");
  return result;
}
