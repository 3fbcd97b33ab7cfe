/**
 * Applying a spec's rootfs layers, in order, to a staging directory
 * (README.md, "Layers"). Nothing is written outside that directory; each
 * refusal is a LAYER_UNSAFE error naming the layer and the entry.
 */
import { lstatSync, readdirSync, readlinkSync, realpathSync, statSync } from "node:fs";
import { basename, join } from "node:path";
import { run } from "../exec.ts";
import type { Logger } from "../log.ts";
import { debootstrapInto } from "./debootstrap.ts";
import { BuildError } from "./errors.ts";
import type {
  DebootstrapLayer,
  DirLayer,
  FilesLayer,
  HostBinariesLayer,
  LayerSpec,
} from "./spec/index.ts";
import { resolveHostBinary } from "./spec/index.ts";
import { entryComponents, type PseudoFile, StagingTree } from "./staging.ts";
import { applyOciLayout, applyTarFile } from "./tar-extract.ts";

export interface ApplyLayersOptions {
  log?: Logger;
  /** Also write the mksquashfs pseudo file here once every layer is applied. */
  pseudoFilePath?: string;
  /** The build cache; a debootstrap layer keeps its result there (debootstrap.ts). */
  cacheDir?: string;
  /**
   * Go on with this tree (of `rootDir`), as layers `firstIndex` onwards: the
   * pipeline applies the spec's layers, looks at what they made (the init),
   * then applies its own into the same tree.
   */
  tree?: StagingTree;
  firstIndex?: number;
}

export interface LayersResult {
  /**
   * The staging tree with its ownership/mode/device metadata. Files added
   * later (kernel, initramfs) are covered by `tree.writePseudoFile()` too,
   * owned by root with their on-disk modes.
   */
  tree: StagingTree;
  pseudoFile?: PseudoFile;
}

/** The x86-64 dynamic loader every dynamically linked host binary needs. */
export const DYNAMIC_LOADER = "/lib64/ld-linux-x86-64.so.2";

export function describeLayer(layer: LayerSpec, index: number): string {
  const o = layer.origin;
  return `rootfs.layers[${index}] (${o.label}, ${o.file}:${o.line})`;
}

/** Apply every layer of the spec into rootDir (created if missing; debootstrap needs it empty). */
export async function applyLayers(
  spec: { rootfs: { layers: readonly LayerSpec[] } },
  rootDir: string,
  options: ApplyLayersOptions = {},
): Promise<LayersResult> {
  const tree = options.tree ?? new StagingTree(rootDir);
  const log = options.log;
  for (const [j, layer] of spec.rootfs.layers.entries()) {
    const i = j + (options.firstIndex ?? 0);
    const what = describeLayer(layer, i);
    const started = Date.now();
    try {
      await applyLayer(tree, layer, i, options);
    } catch (err) {
      if (err instanceof BuildError) {
        throw new BuildError(err.code, `${what}: ${err.message}`, {
          cause: err,
          details: { ...err.details, layer: i, source: layer.origin },
        });
      }
      throw new BuildError("LAYER_FAILED", `${what}: ${(err as Error).message}`, {
        cause: err,
        details: { layer: i, source: layer.origin },
      });
    }
    log?.info({ layer: i, source: layer.origin.label, ms: Date.now() - started }, "layer applied");
  }
  const result: LayersResult = { tree };
  if (options.pseudoFilePath)
    result.pseudoFile = await tree.writePseudoFile(options.pseudoFilePath);
  return result;
}

async function applyLayer(
  tree: StagingTree,
  layer: LayerSpec,
  index: number,
  options: ApplyLayersOptions,
): Promise<void> {
  switch (layer.kind) {
    case "tar":
      if (statSync(layer.path).isDirectory()) {
        await applyOciLayout(tree, layer.path, { allowDevices: layer.allowDevices });
      } else {
        await applyTarFile(tree, layer.path, { allowDevices: layer.allowDevices });
      }
      return;
    case "dir":
      await applyDir(tree, layer);
      return;
    case "files":
      await applyFiles(tree, layer);
      return;
    case "host-binaries":
      await applyHostBinaries(tree, layer, options.log);
      return;
    case "debootstrap":
      await applyDebootstrap(tree, layer, index, options);
      return;
  }
}

// ---------------------------------------------------------------------------
// dir: a host directory, copied with its modes, owned by root.

async function applyDir(tree: StagingTree, layer: DirLayer): Promise<void> {
  const inodes = new Map<string, string[]>();
  const walk = async (hostDir: string, parts: string[]): Promise<void> => {
    for (const name of readdirSync(hostDir).sort()) {
      const host = join(hostDir, name);
      const child = [...parts, name];
      const entry = child.join("/");
      const st = lstatSync(host);
      const meta = { mode: st.mode & 0o7777, uid: 0, gid: 0 };
      try {
        entryComponents(entry);
        if (st.isDirectory()) {
          tree.mkdir(child, meta);
          await walk(host, child);
        } else if (st.isSymbolicLink()) {
          tree.symlink(child, readlinkSync(host), meta);
        } else if (st.isFile()) {
          const key = `${st.dev}:${st.ino}`;
          const first = st.nlink > 1 ? inodes.get(key) : undefined;
          if (first) tree.link(child, first);
          else {
            await tree.copyFile(child, meta, host);
            if (st.nlink > 1) inodes.set(key, child);
          }
        } else {
          throw new BuildError(
            "LAYER_UNSAFE",
            "is a device node, FIFO or socket: dir layers copy regular files, directories and symlinks",
          );
        }
      } catch (err) {
        if (err instanceof BuildError) {
          throw new BuildError(err.code, `entry ${JSON.stringify(entry)}: ${err.message}`, {
            cause: err,
            details: { ...err.details, entry },
          });
        }
        throw err;
      }
    }
  };
  await walk(layer.path, []);
}

// ---------------------------------------------------------------------------
// files: inline content or a host file, at an absolute rootfs path.

async function applyFiles(tree: StagingTree, layer: FilesLayer): Promise<void> {
  for (const f of layer.files) {
    const parts = entryComponents(f.path.replace(/^\/+/, ""));
    const meta = { mode: f.mode, uid: f.uid, gid: f.gid };
    try {
      if (f.content !== undefined)
        await tree.writeFile(parts, meta, Buffer.from(f.content, "utf8"));
      else await tree.copyFile(parts, meta, f.source!);
    } catch (err) {
      if (err instanceof BuildError) {
        throw new BuildError(err.code, `${f.path}: ${err.message}`, {
          cause: err,
          details: err.details,
        });
      }
      throw err;
    }
  }
}

// ---------------------------------------------------------------------------
// host-binaries: a host program and every shared library ldd lists, each at
// the path ldd names (contents copied through symlinks), plus busybox's
// applet symlinks.

/** Parse `ldd` output into absolute library paths; a missing library is an error. */
export function parseLdd(output: string, binary: string): string[] {
  const libs: string[] = [];
  for (const raw of output.split("\n")) {
    const line = raw.trim();
    if (!line || /not a dynamic executable|statically linked/.test(line)) continue;
    const missing = /^(\S+) => not found/.exec(line);
    if (missing) {
      throw new BuildError("LAYER_FAILED", `${binary}: ldd cannot find the library ${missing[1]}`);
    }
    const m = /=>\s*(\/\S+)/.exec(line) ?? /^(\/\S+)/.exec(line);
    if (m) libs.push(m[1]!);
  }
  return libs;
}

async function copyHostFile(tree: StagingTree, hostPath: string, to: string): Promise<void> {
  const real = realpathSync(hostPath);
  const st = statSync(real);
  if (!st.isFile()) throw new BuildError("LAYER_FAILED", `${hostPath} is not a regular file`);
  await tree.copyFile(
    entryComponents(to.replace(/^\/+/, "")),
    { mode: st.mode & 0o7777, uid: 0, gid: 0 },
    real,
  );
}

async function applyHostBinaries(
  tree: StagingTree,
  layer: HostBinariesLayer,
  log?: Logger,
): Promise<void> {
  for (const b of layer.binaries) {
    const hostPath = resolveHostBinary(b.binary);
    if (!hostPath) {
      throw new BuildError("LAYER_FAILED", `${b.binary} not found on PATH or not executable`);
    }
    const to = b.to ?? hostPath;
    await copyHostFile(tree, hostPath, to);
    const ldd = await run("ldd", [hostPath], { allowFailure: true });
    const libs = parseLdd(ldd.stdout + ldd.stderr, hostPath);
    if (libs.length > 0 && !libs.includes(DYNAMIC_LOADER)) libs.push(DYNAMIC_LOADER);
    for (const lib of libs) await copyHostFile(tree, lib, lib);
    log?.debug({ binary: hostPath, to, libs }, "host binary copied");
    if (basename(realpathSync(hostPath)) === "busybox" || basename(hostPath) === "busybox") {
      await busyboxApplets(tree, hostPath, to);
    }
  }
}

/**
 * After switch_root onto a read-only squashfs, `busybox --install` cannot
 * create the applet links, so they are made now: one symlink per applet at
 * the path `busybox --list-full` names, unless something is already there.
 */
async function busyboxApplets(tree: StagingTree, hostPath: string, to: string): Promise<void> {
  const list = await run(hostPath, ["--list-full"]);
  const self = to.replace(/^\/+/, "");
  for (const line of list.stdout.split("\n")) {
    const applet = line.trim().replace(/^\/+/, "");
    if (!applet || applet === self) continue;
    const parts = entryComponents(applet);
    const rel = tree.resolve(parts, { followLast: false, create: true });
    if (rel !== undefined && tree.exists(rel)) continue;
    tree.symlink(parts, to, { mode: 0o777, uid: 0, gid: 0 });
  }
}

// ---------------------------------------------------------------------------
// debootstrap: a Debian base system (debootstrap.ts), then its owners recorded.

async function applyDebootstrap(
  tree: StagingTree,
  layer: DebootstrapLayer,
  index: number,
  options: ApplyLayersOptions,
): Promise<void> {
  if (index !== 0 || readdirSync(tree.rootDir).length > 0) {
    throw new BuildError(
      "LAYER_FAILED",
      "debootstrap creates the rootfs: it must be the first layer, into an empty staging directory",
    );
  }
  await debootstrapInto(tree, layer, {
    ...(options.log ? { log: options.log } : {}),
    ...(options.cacheDir ? { cacheDir: options.cacheDir } : {}),
  });
  recordNativeTree(tree);
}

/**
 * Record the owner and mode of everything a privileged tool (debootstrap)
 * created in the staging directory, and turn its device nodes, FIFOs and
 * sockets into pseudo-file entries (removed from disk).
 */
export function recordNativeTree(tree: StagingTree): void {
  const rootSt = lstatSync(tree.rootDir);
  tree.meta.set("", { mode: rootSt.mode & 0o7777, uid: rootSt.uid, gid: rootSt.gid });
  const walk = (rel: string): void => {
    for (const name of readdirSync(tree.abs(rel))) {
      const child = rel === "" ? name : `${rel}/${name}`;
      const st = lstatSync(tree.abs(child));
      const meta = { mode: st.mode & 0o7777, uid: st.uid, gid: st.gid };
      if (st.isCharacterDevice() || st.isBlockDevice()) {
        const major = Math.floor(st.rdev / 256) & 0xfff;
        const minor = (st.rdev & 0xff) | ((st.rdev >> 12) & 0xfff00);
        tree.removePhysical(child);
        tree.virtual.set(child, {
          ...meta,
          type: st.isCharacterDevice() ? "char" : "block",
          major,
          minor,
        });
      } else if (st.isFIFO()) {
        tree.removePhysical(child);
        tree.virtual.set(child, { ...meta, type: "fifo" });
      } else if (st.isSocket()) {
        tree.removePhysical(child);
      } else {
        tree.meta.set(child, meta);
        if (st.isDirectory()) walk(child);
      }
    }
  };
  walk("");
}
