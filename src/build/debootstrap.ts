/**
 * The debootstrap layer (README.md, "Layers", 5, and "The debootstrap
 * cache"): a Debian base system from the host's configured apt mirror,
 * stripped of what would make every host of the image share one identity,
 * and kept in a cache keyed by what went into it, so that the next version
 * of an image starts from the same bytes in seconds instead of minutes.
 */
import { createHash } from "node:crypto";
import { lstatSync, readdirSync, readFileSync } from "node:fs";
import { mkdir, mkdtemp, readdir, readFile, rename, rm, stat, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { run } from "../exec.ts";
import type { Logger } from "../log.ts";
import { BuildError } from "./errors.ts";
import type { DebootstrapLayer } from "./spec/index.ts";
import type { StagingTree } from "./staging.ts";

/** Bumped whenever what a cache entry holds changes (the scrub list, the tar flags). */
const CACHE_FORMAT = 1;

/** The first mirror the host's apt is configured with for `suite` (sources.list and deb822 .sources). */
export async function hostAptMirror(suite: string, etc = "/etc/apt"): Promise<string | undefined> {
  const found: { uri: string; suites: string[] }[] = [];
  const read = async (p: string) => readFile(p, "utf8").catch(() => "");
  const oneLine = (text: string) => {
    for (const line of text.split("\n")) {
      const m = /^\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)/.exec(line);
      if (m) found.push({ uri: m[1]!, suites: [m[2]!] });
    }
  };
  oneLine(await read(join(etc, "sources.list")));
  const dir = join(etc, "sources.list.d");
  const names = (await readdir(dir).catch(() => [] as string[])).sort();
  for (const name of names) {
    const text = await read(join(dir, name));
    if (name.endsWith(".list")) oneLine(text);
    else if (name.endsWith(".sources")) {
      for (const stanza of text.split(/\n\s*\n/)) {
        const field = (f: string) => new RegExp(`^${f}:\\s*(.+)$`, "mi").exec(stanza)?.[1]?.trim();
        if (!(field("Types") ?? "deb").split(/\s+/).includes("deb")) continue;
        const uris = field("URIs")?.split(/\s+/) ?? [];
        const suites = field("Suites")?.split(/\s+/) ?? [];
        for (const uri of uris) found.push({ uri, suites });
      }
    }
  }
  return (found.find((f) => f.suites.includes(suite)) ?? found.find((f) => /^https?:/.test(f.uri)))
    ?.uri;
}

/** What a debootstrap result depends on; its sha256 names the cache entry. */
export function debootstrapKey(layer: DebootstrapLayer, mirror: string): string {
  const inputs = {
    format: CACHE_FORMAT,
    suite: layer.suite,
    variant: layer.variant,
    packages: [...new Set(layer.packages)].sort(),
    mirror: mirror.replace(/\/+$/, ""),
    arch: "amd64",
  };
  return createHash("sha256").update(JSON.stringify(inputs)).digest("hex");
}

export interface DebootstrapOptions {
  log?: Logger;
  /** The build cache (`defaultCacheDir()`); undefined: no cache, debootstrap every time. */
  cacheDir?: string;
}

/** Run (or reuse) debootstrap into the empty staging directory; the caller records ownership. */
export async function debootstrapInto(
  tree: StagingTree,
  layer: DebootstrapLayer,
  o: DebootstrapOptions = {},
): Promise<{ cached: boolean; key: string }> {
  if (process.getuid?.() !== 0) {
    throw new BuildError(
      "LAYER_FAILED",
      "debootstrap needs root (it runs chroot and mknod); run the build as root",
    );
  }
  const mirror =
    layer.mirror ?? (await hostAptMirror(layer.suite)) ?? "http://deb.debian.org/debian";
  const key = debootstrapKey(layer, mirror);
  const base = o.cacheDir ? join(o.cacheDir, "debootstrap") : undefined;
  const entry = base ? join(base, `${key}.tar`) : undefined;
  if (entry && (await stat(entry).catch(() => undefined))?.isFile()) {
    const r = await run("tar", ["--numeric-owner", "-xpf", entry, "-C", tree.rootDir], {
      allowFailure: true,
    });
    if (r.code === 0) {
      o.log?.info(
        { suite: layer.suite, key: key.slice(0, 12) },
        "debootstrap: reused the cached result",
      );
      return { cached: true, key };
    }
    // A damaged entry is rebuilt, never half used.
    o.log?.warn(
      { entry, stderr: r.stderr.slice(-500) },
      "debootstrap: cached result unreadable, rebuilding",
    );
    await rm(entry, { force: true });
    for (const name of readdirSync(tree.rootDir)) {
      await rm(join(tree.rootDir, name), { recursive: true, force: true });
    }
  }

  const args = [`--variant=${layer.variant}`];
  if (layer.packages.length > 0) args.push(`--include=${layer.packages.join(",")}`);
  if (base) {
    // The fetched .deb files, shared by every entry of this mirror: a new
    // package list downloads only the packages it adds.
    const debs = join(base, "debs");
    await mkdir(debs, { recursive: true });
    args.push(`--cache-dir=${debs}`);
  }
  // debootstrap's work files go to a sibling temp dir only when it fails; its target is the staging dir.
  const workDir = await mkdtemp(join(dirname(tree.rootDir), ".debootstrap-"));
  try {
    o.log?.info({ suite: layer.suite, mirror, packages: layer.packages.length }, "debootstrap");
    await run("debootstrap", [...args, layer.suite, tree.rootDir, mirror], {
      env: { ...process.env, TMPDIR: workDir, DEBIAN_FRONTEND: "noninteractive" },
    });
  } finally {
    await rm(workDir, { recursive: true, force: true });
  }
  const scrubbed = await scrubHostState(tree.rootDir);
  o.log?.info({ scrubbed: scrubbed.length }, "debootstrap: host-specific state removed");
  if (base && entry) {
    await mkdir(base, { recursive: true });
    const tmp = `${entry}.${process.pid}.tmp`;
    try {
      await run("tar", ["--numeric-owner", "--sort=name", "-cf", tmp, "-C", tree.rootDir, "."]);
      await writeFile(
        join(base, `${key}.json`),
        `${JSON.stringify({ suite: layer.suite, variant: layer.variant, packages: layer.packages, mirror }, null, 2)}\n`,
      );
      await rename(tmp, entry);
    } finally {
      await rm(tmp, { force: true });
    }
  }
  return { cached: false, key };
}

/**
 * Remove from a freshly bootstrapped root what belongs to one machine or to
 * the build machine, not to an image (README.md, "What an image never
 * holds"): SSH host keys, the machine id (left empty: systemd's first-boot
 * marker), apt's lists and caches, logs, the random seed, debootstrap's copy
 * of the build machine's hostname and resolver. Returns the entries it
 * touched, rootfs-relative.
 */
export async function scrubHostState(rootDir: string): Promise<string[]> {
  const touched: string[] = [];
  const remove = async (rel: string) => {
    await rm(join(rootDir, rel), { recursive: true, force: true });
    touched.push(rel);
  };
  for (const rel of hostSpecificEntries(rootDir)) {
    if (rel === "etc/machine-id") {
      await writeFile(join(rootDir, rel), "");
      touched.push(rel);
    } else await remove(rel);
  }
  for (const rel of ["etc/hostname", "etc/resolv.conf"]) {
    const st = lstatInRoot(rootDir, rel);
    if (st?.isFile()) await remove(rel);
  }
  for (const rel of listFiles(rootDir, "tmp")) await remove(rel);
  for (const rel of ["var/cache/debconf", "var/lib/dpkg"]) {
    for (const name of listFiles(rootDir, rel, false))
      if (name.endsWith("-old")) await remove(name);
  }
  return touched;
}

/**
 * Entries of the root filesystem at `rootDir` that would give every host of
 * the image one identity or carry the build machine's state: SSH host keys, a
 * machine id with content, apt lists and caches, non-empty logs, a random
 * seed. The build refuses an image with any (README.md, "What an image never
 * holds"). Rootfs-relative, sorted.
 */
export function hostSpecificEntries(rootDir: string): string[] {
  const found: string[] = [];
  for (const rel of listFiles(rootDir, "etc/ssh", false)) {
    if (/^etc\/ssh\/ssh_host_.*_key(\.pub)?$/.test(rel)) found.push(rel);
  }
  for (const rel of ["etc/machine-id", "var/lib/dbus/machine-id"]) {
    const st = lstatInRoot(rootDir, rel);
    if (st?.isFile() && st.size > 0) {
      const text = readFileSync(join(rootDir, rel), "utf8").trim();
      if (text !== "" && text !== "uninitialized") found.push(rel);
    }
  }
  for (const rel of listFiles(rootDir, "var/lib/apt/lists")) {
    if (rel !== "var/lib/apt/lists/lock") found.push(rel);
  }
  for (const rel of listFiles(rootDir, "var/cache/apt")) {
    if (rel.endsWith(".bin") || rel.endsWith(".deb")) found.push(rel);
  }
  for (const rel of listFiles(rootDir, "var/log")) {
    const st = lstatInRoot(rootDir, rel);
    if (st?.isFile() && st.size > 0) found.push(rel);
  }
  for (const rel of ["var/lib/systemd/random-seed", "var/cache/ldconfig/aux-cache"]) {
    if (lstatInRoot(rootDir, rel)?.isFile()) found.push(rel);
  }
  return found.sort();
}

/**
 * lstat of rootDir/rel, or undefined when it is missing or a parent
 * component is a symlink (which a chroot would follow elsewhere: never read
 * the build machine's files for the image's).
 */
function lstatInRoot(rootDir: string, rel: string) {
  try {
    const parts = rel.split("/");
    for (let i = 1; i < parts.length; i++) {
      if (!lstatSync(join(rootDir, ...parts.slice(0, i))).isDirectory()) return undefined;
    }
    return lstatSync(join(rootDir, rel));
  } catch {
    return undefined;
  }
}

/** Regular files (and symlinks) under rootDir/rel, rootfs-relative; `deep` descends. */
function listFiles(rootDir: string, rel: string, deep = true): string[] {
  const out: string[] = [];
  const walk = (r: string) => {
    let names: string[];
    try {
      names = readdirSync(join(rootDir, r)).sort();
    } catch {
      return;
    }
    for (const name of names) {
      const child = `${r}/${name}`;
      const st = lstatSync(join(rootDir, child));
      if (st.isDirectory()) {
        if (deep) walk(child);
      } else out.push(child);
    }
  };
  const top = lstatInRoot(rootDir, rel);
  if (top?.isDirectory()) walk(rel);
  return out;
}
