/**
 * The kernel of an image: fetched as a Debian package (or taken from a
 * directory), its modules resolved with their dependencies in load order.
 * See README.md, "Kernel and modules".
 */
import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { copyFile, mkdir, readdir, readFile, rename, rm, stat, writeFile } from "node:fs/promises";
import { join, relative } from "node:path";
import { gunzipSync } from "node:zlib";
import { run } from "../exec.ts";
import { logger } from "../log.ts";
import { BuildError } from "./errors.ts";

/** A kernel tree: `boot/vmlinuz-<version>` and `lib/modules/<version>/` under `root`. */
export interface KernelTree {
  root: string;
  version: string;
  /** Absolute path of the kernel image. */
  vmlinuz: string;
  /** Absolute path of `lib/modules/<version>`. */
  modulesDir: string;
  /** The Debian package it came from, with its version; null for a `path` source. */
  package: { name: string; version: string } | null;
}

export type KernelSource = { package: string } | { path: string };

export type FetchKernelOptions = KernelSource & {
  /** Where downloaded packages and their extracted trees are kept and reused. */
  cacheDir: string;
};

/** A kernel module file and the module names it needs before it. */
export interface KernelModule {
  /** Canonical name: `-` written as `_` (what the kernel and /proc/modules call it). */
  name: string;
  /** Absolute path of the .ko (possibly .ko.xz / .ko.gz / .ko.zst). */
  path: string;
  /** Path relative to the modules directory, e.g. `kernel/drivers/md/dm-verity.ko`. */
  relPath: string;
  depends: string[];
}

/**
 * The modules the abforge /init needs to reach a verity root from a virtio
 * disk (README.md, "Kernel and modules"); an image spec adds its own.
 */
export const BOOT_MODULES: readonly string[] = [
  "virtio_pci",
  "virtio_blk",
  "dm-verity",
  "squashfs",
  "overlay",
];

const PACKAGE_NAME = /^[a-z0-9][a-z0-9+.-]+$/;
const log = () => logger().child({ module: "build", step: "kernel" });

/** Module names compare with `-` and `_` as the same character, as the kernel does. */
export function canonicalModuleName(name: string): string {
  return name.replace(/\.ko(\.(xz|gz|zst))?$/, "").replaceAll("-", "_");
}

/**
 * The package that holds the kernel image: a Debian metapackage such as
 * `linux-image-cloud-amd64` depends on exactly one `linux-image-<abi>-<flavour>`;
 * any other name is taken as is.
 */
export function realKernelPackage(name: string, aptCacheDepends: string): string {
  const deps = [...aptCacheDepends.matchAll(/^\s*\|?Depends:\s*(\S+)/gm)].map((m) => m[1]!);
  const real = deps.find((d) => /^linux-image-\d/.test(d));
  return real ?? name;
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}

/** Fetch (or reuse from the cache) and extract a kernel; or open a kernel tree on disk. */
export async function fetchKernel(o: FetchKernelOptions): Promise<KernelTree> {
  if ("path" in o) return openKernelTree(o.path, null);
  const started = Date.now();
  if (!PACKAGE_NAME.test(o.package)) {
    throw new BuildError("KERNEL_NOT_FOUND", `kernel package "${o.package}": not a package name`, {
      details: { package: o.package },
    });
  }
  const depends = await run("apt-cache", ["depends", o.package]).catch((cause: unknown) => {
    throw new BuildError(
      "KERNEL_NOT_FOUND",
      `kernel package ${o.package}: apt does not know it (run scripts/setup.sh for the package lists)`,
      { cause, details: { package: o.package } },
    );
  });
  const name = realKernelPackage(o.package, depends.stdout);
  const show = await run("apt-cache", ["show", "--no-all-versions", name]);
  const version = /^Version:\s*(\S+)/m.exec(show.stdout)?.[1];
  if (!version) {
    throw new BuildError("KERNEL_NOT_FOUND", `kernel package ${name}: apt shows no version`, {
      details: { package: name },
    });
  }
  const base = join(o.cacheDir, "kernel");
  const tree = join(base, `${name}_${version}`);
  const done = join(tree, ".abforge-complete");
  if (await exists(done)) {
    log().info({ package: name, version, tree }, "kernel: reusing cached tree");
    return openKernelTree(tree, { name, version });
  }
  const debDir = join(base, "debs");
  await mkdir(debDir, { recursive: true });
  const debName = `${name}_${version.replace(/^\d+:/, "")}_amd64.deb`;
  const deb = join(debDir, debName);
  // apt checks what it downloads; a cached .deb is checked against apt's record too.
  const want = /^SHA256:\s*([0-9a-f]{64})/m.exec(show.stdout)?.[1];
  if (want && (await exists(deb)) && (await sha256File(deb)) !== want) {
    log().warn({ deb }, "kernel: cached package does not match apt's sha256; downloading it again");
    await rm(deb, { force: true });
  }
  if (!(await exists(deb))) {
    log().info({ package: name, version }, "kernel: apt-get download");
    const tmp = join(debDir, `.download-${process.pid}`);
    await rm(tmp, { recursive: true, force: true });
    await mkdir(tmp);
    await run("apt-get", ["download", "-q", `${name}=${version}`], { cwd: tmp }).catch(
      (cause: unknown) => {
        throw new BuildError(
          "KERNEL_NOT_FOUND",
          `kernel package ${name}=${version}: download failed`,
          {
            cause,
            details: { package: name, version },
          },
        );
      },
    );
    const got = (await readdir(tmp)).filter((f) => f.endsWith(".deb"));
    if (got.length !== 1) {
      throw new BuildError(
        "KERNEL_NOT_FOUND",
        `kernel package ${name}: apt-get download gave ${got.length} files`,
        {
          details: { package: name, files: got },
        },
      );
    }
    await rename(join(tmp, got[0]!), deb);
    await rm(tmp, { recursive: true, force: true });
  }
  const have = await sha256File(deb);
  if (want && have !== want) {
    await rm(deb, { force: true });
    throw new BuildError(
      "KERNEL_NOT_FOUND",
      `kernel package ${deb}: sha256 ${have} is not apt's ${want} (removed)`,
      { details: { deb, sha256: have, expected: want } },
    );
  }
  // Extract next to the final place and rename, so a concurrent build never
  // sees a half-extracted tree.
  const tmpTree = `${tree}.tmp-${process.pid}`;
  await rm(tmpTree, { recursive: true, force: true });
  await mkdir(tmpTree, { recursive: true });
  await run("dpkg-deb", ["-x", deb, tmpTree]);
  await openKernelTree(tmpTree, { name, version });
  await writeFile(join(tmpTree, ".abforge-complete"), `${name} ${version}\n`);
  if (await exists(done)) {
    await rm(tmpTree, { recursive: true, force: true }); // another build finished first
  } else {
    await rm(tree, { recursive: true, force: true });
    await rename(tmpTree, tree);
  }
  const result = await openKernelTree(tree, { name, version });
  log().info(
    { package: name, version, deb, bytes: (await stat(deb)).size, ms: Date.now() - started },
    "kernel: fetched and extracted",
  );
  return result;
}

async function sha256File(path: string): Promise<string> {
  const hash = createHash("sha256");
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest("hex");
}

/** A directory with `boot/vmlinuz-<v>` and `lib/modules/<v>` (or `usr/lib/modules/<v>`). */
export async function openKernelTree(
  root: string,
  pkg: KernelTree["package"],
): Promise<KernelTree> {
  const candidates = [join(root, "lib/modules"), join(root, "usr/lib/modules")];
  const versions: { version: string; modulesDir: string }[] = [];
  for (const dir of candidates) {
    const names = await readdir(dir).catch(() => [] as string[]);
    for (const v of names.sort()) versions.push({ version: v, modulesDir: join(dir, v) });
  }
  const withImage: (typeof versions)[number][] = [];
  for (const v of versions) {
    if (await exists(join(root, "boot", `vmlinuz-${v.version}`))) withImage.push(v);
  }
  if (withImage.length !== 1) {
    throw new BuildError(
      "KERNEL_NOT_FOUND",
      withImage.length === 0
        ? `kernel tree ${root}: no boot/vmlinuz-<version> with a matching lib/modules/<version>`
        : `kernel tree ${root}: several kernels (${withImage.map((v) => v.version).join(", ")}); keep one`,
      { details: { root, versions: versions.map((v) => v.version) } },
    );
  }
  const { version, modulesDir } = withImage[0]!;
  return {
    root,
    version,
    vmlinuz: join(root, "boot", `vmlinuz-${version}`),
    modulesDir,
    package: pkg,
  };
}

/** Every module file of the tree, by canonical name. */
async function moduleIndex(tree: KernelTree): Promise<Map<string, string>> {
  const index = new Map<string, string>();
  async function walk(dir: string): Promise<void> {
    for (const entry of await readdir(dir, { withFileTypes: true })) {
      const p = join(dir, entry.name);
      if (entry.isDirectory()) await walk(p);
      else if (/\.ko(\.(xz|gz|zst))?$/.test(entry.name)) {
        const name = canonicalModuleName(entry.name);
        if (!index.has(name)) index.set(name, p);
      }
    }
  }
  await walk(tree.modulesDir);
  return index;
}

/** Names of the modules built into the kernel (`modules.builtin`). */
async function builtinModules(tree: KernelTree): Promise<Set<string>> {
  const text = await readFile(join(tree.modulesDir, "modules.builtin"), "utf8").catch(() => "");
  return new Set(
    text
      .split("\n")
      .filter(Boolean)
      .map((l) => canonicalModuleName(l.split("/").pop()!)),
  );
}

/**
 * The `key=value` strings of a module's `.modinfo` ELF section (what
 * `modinfo` prints). Pure: takes the (uncompressed) ELF64 little-endian bytes.
 */
export function parseModinfo(elf: Uint8Array, where = "module"): Map<string, string[]> {
  const bad = (why: string) =>
    new BuildError("BUILD_FAILED", `${where}: not a kernel module (${why})`, {
      details: { module: where },
    });
  const view = new DataView(elf.buffer, elf.byteOffset, elf.byteLength);
  if (elf.length < 64 || view.getUint32(0) !== 0x7f454c46) throw bad("no ELF magic");
  if (elf[4] !== 2 || elf[5] !== 1) throw bad("not ELF64 little-endian");
  const shoff = Number(view.getBigUint64(0x28, true));
  const shentsize = view.getUint16(0x3a, true);
  const shnum = view.getUint16(0x3c, true);
  const shstrndx = view.getUint16(0x3e, true);
  if (shentsize < 64 || shoff + shnum * shentsize > elf.length || shstrndx >= shnum) {
    throw bad("section headers out of range");
  }
  const section = (i: number) => {
    const base = shoff + i * shentsize;
    return {
      name: view.getUint32(base, true),
      offset: Number(view.getBigUint64(base + 0x18, true)),
      size: Number(view.getBigUint64(base + 0x20, true)),
    };
  };
  const strtab = section(shstrndx);
  const decoder = new TextDecoder();
  const cString = (start: number) => {
    let end = start;
    while (end < elf.length && elf[end] !== 0) end++;
    return decoder.decode(elf.subarray(start, end));
  };
  const info = new Map<string, string[]>();
  for (let i = 0; i < shnum; i++) {
    const s = section(i);
    if (cString(strtab.offset + s.name) !== ".modinfo") continue;
    if (s.offset + s.size > elf.length) throw bad(".modinfo out of range");
    for (const entry of decoder.decode(elf.subarray(s.offset, s.offset + s.size)).split("\0")) {
      const eq = entry.indexOf("=");
      if (eq <= 0) continue;
      const key = entry.slice(0, eq);
      info.set(key, [...(info.get(key) ?? []), entry.slice(eq + 1)]);
    }
    return info;
  }
  throw bad("no .modinfo section");
}

/** Dependencies of one module file, from its `.modinfo` section (`depends=`). */
async function moduleDepends(path: string): Promise<string[]> {
  let bytes: Uint8Array = await readFile(path);
  if (path.endsWith(".gz")) bytes = gunzipSync(bytes);
  else if (!path.endsWith(".ko")) {
    // .ko.xz / .ko.zst: ask modinfo, which decompresses them itself.
    const r = await run("modinfo", ["-F", "depends", path]);
    return splitDepends(r.stdout);
  }
  return splitDepends(parseModinfo(bytes, path).get("depends")?.[0] ?? "");
}

function splitDepends(text: string): string[] {
  return text
    .trim()
    .split(",")
    .map((s) => s.trim())
    .filter(Boolean)
    .map(canonicalModuleName);
}

/**
 * The modules to load for `names`, dependencies first (load order), each once.
 * Modules built into the kernel are skipped; a name that is neither a module
 * file nor built in is MODULE_NOT_FOUND naming it.
 */
export async function resolveModules(
  tree: KernelTree,
  names: readonly string[],
): Promise<KernelModule[]> {
  const index = await moduleIndex(tree);
  const builtin = await builtinModules(tree);
  const order: KernelModule[] = [];
  const state = new Map<string, "visiting" | "done">();
  async function visit(name: string, chain: string[]): Promise<void> {
    const s = state.get(name);
    if (s === "done") return;
    if (s === "visiting") {
      throw new BuildError(
        "MODULE_NOT_FOUND",
        `kernel ${tree.version}: module dependency cycle ${[...chain, name].join(" → ")}`,
        {
          details: { chain: [...chain, name] },
        },
      );
    }
    const path = index.get(name);
    if (!path) {
      if (builtin.has(name)) {
        state.set(name, "done");
        return;
      }
      const via = chain.length ? ` (needed by ${chain.join(" → ")})` : "";
      throw new BuildError(
        "MODULE_NOT_FOUND",
        `kernel ${tree.version}: no module ${name}${via} in ${tree.modulesDir}`,
        { details: { module: name, chain, modulesDir: tree.modulesDir } },
      );
    }
    state.set(name, "visiting");
    const depends = await moduleDepends(path);
    for (const d of depends) await visit(d, [...chain, name]);
    state.set(name, "done");
    order.push({ name, path, relPath: relative(tree.modulesDir, path), depends });
  }
  for (const n of names) await visit(canonicalModuleName(n), []);
  log().debug({ requested: names, order: order.map((m) => m.name) }, "kernel: modules resolved");
  return order;
}

/** Put the kernel image at `/boot/vmlinuz` of a root filesystem tree. */
export async function installKernel(tree: KernelTree, rootDir: string): Promise<string> {
  const dest = join(rootDir, "boot", "vmlinuz");
  await mkdir(join(rootDir, "boot"), { recursive: true });
  await copyFile(tree.vmlinuz, dest);
  return dest;
}
