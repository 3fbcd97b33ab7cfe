/**
 * The debootstrap layer's cache and scrub (src/build/README.md, "The
 * debootstrap cache", "What an image never holds"). debootstrap itself needs
 * a Debian mirror and minutes, so here a program of that name on PATH plays
 * it: it writes the kind of tree debootstrap leaves (host keys, a machine id,
 * apt lists, logs, a device node, files of other owners) and counts its runs.
 * The QEMU fixtures build images/host.yaml with the real one.
 */
import { execFileSync } from "node:child_process";
import {
  chmodSync,
  existsSync,
  lstatSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import {
  debootstrapKey,
  hostSpecificEntries,
  scrubHostState,
} from "../../../src/build/debootstrap.ts";
import { applyLayers } from "../../../src/build/layers.ts";
import type { DebootstrapLayer } from "../../../src/build/spec/index.ts";
import { tempDir } from "../../helpers/tmp.ts";

const work = tempDir();
let counter = 0;
const isRoot = process.getuid?.() === 0;

const layer = (packages: string[] = ["openssh-server", "podman"]): DebootstrapLayer => ({
  kind: "debootstrap",
  suite: "bookworm",
  variant: "minbase",
  packages,
  mirror: "http://mirror.invalid/debian",
  origin: { file: "host.yaml", line: 1, col: 1, label: "debootstrap bookworm" },
});

/** A `debootstrap` on PATH that writes a small Debian-like tree into its target and counts its runs. */
function fakeDebootstrap(): { bin: string; runs: () => number } {
  const bin = join(work, `bin-${++counter}`);
  mkdirSync(bin);
  const count = join(bin, "runs");
  writeFileSync(count, "");
  writeFileSync(
    join(bin, "debootstrap"),
    `#!/bin/sh
set -e
echo run >>${count}
for a in "$@"; do case "$a" in --cache-dir=*) echo "$a" >>${count} ;; esac; done
eval "root=\\\${$(($# - 1))}"
mkdir -p "$root/etc/ssh" "$root/var/log/apt" "$root/var/lib/apt/lists/partial" "$root/var/cache/apt/archives" \\
  "$root/var/lib/dpkg" "$root/usr/bin" "$root/dev" "$root/tmp" "$root/var/lib/systemd"
echo "host key" >"$root/etc/ssh/ssh_host_ed25519_key"
echo "pub" >"$root/etc/ssh/ssh_host_ed25519_key.pub"
echo "config" >"$root/etc/ssh/sshd_config"
echo 3ce8dc422f614062a4182c4adda9334d >"$root/etc/machine-id"
echo buildhost >"$root/etc/hostname"
echo "nameserver 10.0.0.1" >"$root/etc/resolv.conf"
echo list >"$root/var/lib/apt/lists/deb.debian.org_debian_dists_bookworm_InRelease"
: >"$root/var/lib/apt/lists/lock"
echo cache >"$root/var/cache/apt/pkgcache.bin"
echo log >"$root/var/log/apt/history.log"
: >"$root/var/log/empty.log"
ln -s ../../usr/share/doc/systemd/README.logs "$root/var/log/README"
echo seed >"$root/var/lib/systemd/random-seed"
echo status >"$root/var/lib/dpkg/status"
echo old >"$root/var/lib/dpkg/status-old"
echo scratch >"$root/tmp/scratch"
echo su >"$root/usr/bin/su"
chmod 4755 "$root/usr/bin/su"
echo games >"$root/usr/bin/games-file"
chown 5:60 "$root/usr/bin/games-file"
mknod -m 0666 "$root/dev/null" c 1 3
`,
  );
  chmodSync(join(bin, "debootstrap"), 0o755);
  return {
    bin,
    runs: () =>
      readFileSync(count, "utf8")
        .split("\n")
        .filter((l) => l === "run").length,
  };
}

async function withPath<T>(bin: string, fn: () => Promise<T>): Promise<T> {
  const saved = process.env.PATH;
  process.env.PATH = `${bin}:${saved}`;
  try {
    return await fn();
  } finally {
    process.env.PATH = saved;
  }
}

/** Every entry under root with its type, mode and owner: what the squashfs would get. */
function listing(root: string): string[] {
  return execFileSync("find", [root, "-printf", "%P %y %m %U:%G %s\n"], { encoding: "utf8" })
    .split("\n")
    .filter(Boolean)
    .sort();
}

describe("debootstrap cache key", () => {
  it("is what went in: suite, variant, the package set (any order), the mirror", () => {
    const a = debootstrapKey(layer(["a", "b"]), "http://m/debian");
    expect(debootstrapKey(layer(["b", "a", "a"]), "http://m/debian/")).toBe(a);
    expect(debootstrapKey(layer(["a"]), "http://m/debian")).not.toBe(a);
    expect(debootstrapKey(layer(["a", "b"]), "http://other/debian")).not.toBe(a);
    expect(debootstrapKey({ ...layer(["a", "b"]), suite: "trixie" }, "http://m/debian")).not.toBe(
      a,
    );
    expect(debootstrapKey({ ...layer(["a", "b"]), variant: "buildd" }, "http://m/debian")).not.toBe(
      a,
    );
  });
});

describe("what an image never holds", () => {
  it("finds host keys, a machine id, apt lists and caches, logs, the random seed; not the harmless", () => {
    const root = join(work, `tree-${++counter}`);
    mkdirSync(join(root, "etc/ssh"), { recursive: true });
    mkdirSync(join(root, "var/log"), { recursive: true });
    writeFileSync(join(root, "etc/ssh/ssh_host_rsa_key"), "k");
    writeFileSync(join(root, "etc/ssh/sshd_config"), "c");
    writeFileSync(join(root, "etc/machine-id"), "");
    writeFileSync(join(root, "var/log/empty"), "");
    symlinkSync("/usr/share/doc/README", join(root, "var/log/README"));
    expect(hostSpecificEntries(root)).toEqual(["etc/ssh/ssh_host_rsa_key"]);
    writeFileSync(join(root, "etc/machine-id"), "uninitialized\n");
    expect(hostSpecificEntries(root)).toEqual(["etc/ssh/ssh_host_rsa_key"]);
    writeFileSync(join(root, "etc/machine-id"), "3ce8dc422f614062a4182c4adda9334d\n");
    writeFileSync(join(root, "var/log/syslog"), "x");
    expect(hostSpecificEntries(root)).toEqual([
      "etc/machine-id",
      "etc/ssh/ssh_host_rsa_key",
      "var/log/syslog",
    ]);
  });

  it("never reads through a symlinked directory into the build machine", () => {
    const root = join(work, `tree-${++counter}`);
    mkdirSync(join(root, "var"), { recursive: true });
    const elsewhere = join(work, `elsewhere-${++counter}`);
    mkdirSync(join(elsewhere, "log"), { recursive: true });
    writeFileSync(join(elsewhere, "log", "syslog"), "the build machine's");
    symlinkSync(elsewhere, join(root, "var", "x"));
    symlinkSync(join(elsewhere, "log"), join(root, "var", "log"));
    expect(hostSpecificEntries(root)).toEqual([]);
  });

  it("scrub leaves an empty machine id and none of the rest, and keeps the host's config", async () => {
    const root = join(work, `tree-${++counter}`);
    mkdirSync(join(root, "etc/ssh"), { recursive: true });
    mkdirSync(join(root, "var/lib/apt/lists/partial"), { recursive: true });
    writeFileSync(join(root, "etc/ssh/ssh_host_ecdsa_key.pub"), "k");
    writeFileSync(join(root, "etc/ssh/sshd_config"), "c");
    writeFileSync(join(root, "etc/machine-id"), "3ce8dc422f614062a4182c4adda9334d\n");
    writeFileSync(join(root, "var/lib/apt/lists/lock"), "");
    writeFileSync(join(root, "var/lib/apt/lists/x_Packages"), "p");
    await scrubHostState(root);
    expect(hostSpecificEntries(root)).toEqual([]);
    expect(readFileSync(join(root, "etc/machine-id"), "utf8")).toBe("");
    expect(readFileSync(join(root, "etc/ssh/sshd_config"), "utf8")).toBe("c");
    expect(readdirSync(join(root, "var/lib/apt/lists")).sort()).toEqual(["lock", "partial"]);
  });
});

describe.runIf(isRoot)("debootstrap layer with the build cache (as root)", () => {
  it("runs debootstrap once, scrubs, and later builds start from the cached bytes with owners and devices", async () => {
    const fake = fakeDebootstrap();
    const cacheDir = join(work, `cache-${++counter}`);
    const apply = (root: string, l = layer()) =>
      withPath(fake.bin, () => applyLayers({ rootfs: { layers: [l] } }, root, { cacheDir }));

    const first = join(work, `root-${++counter}`);
    const t1 = await apply(first);
    expect(fake.runs()).toBe(1);
    // scrubbed before it was cached
    expect(hostSpecificEntries(first)).toEqual([]);
    expect(readFileSync(join(first, "etc/machine-id"), "utf8")).toBe("");
    for (const gone of [
      "etc/hostname",
      "etc/resolv.conf",
      "tmp/scratch",
      "var/lib/dpkg/status-old",
    ])
      expect(existsSync(join(first, gone)), gone).toBe(false);
    expect(readFileSync(join(first, "var/lib/dpkg/status"), "utf8")).toBe("status\n");
    // the fetched packages are shared by every entry of the mirror
    expect(readFileSync(join(fake.bin, "runs"), "utf8")).toContain(
      `--cache-dir=${join(cacheDir, "debootstrap", "debs")}`,
    );

    const second = join(work, `root-${++counter}`);
    const t2 = await apply(second);
    expect(fake.runs()).toBe(1);
    expect(listing(second)).toEqual(listing(first));
    expect(t2.tree.meta.get("usr/bin/games-file")).toEqual({ mode: 0o644, uid: 5, gid: 60 });
    expect(t2.tree.meta.get("usr/bin/su")).toEqual(t1.tree.meta.get("usr/bin/su"));
    expect(t2.tree.virtual.get("dev/null")).toEqual({
      mode: 0o666,
      uid: 0,
      gid: 0,
      type: "char",
      major: 1,
      minor: 3,
    });

    // another package list is another entry: debootstrap runs again
    await apply(join(work, `root-${++counter}`), layer(["openssh-server"]));
    expect(fake.runs()).toBe(2);

    // a damaged entry is rebuilt, never half used
    const entry = join(
      cacheDir,
      "debootstrap",
      `${debootstrapKey(layer(), "http://mirror.invalid/debian")}.tar`,
    );
    writeFileSync(entry, "not a tar");
    const fourth = join(work, `root-${++counter}`);
    await apply(fourth);
    expect(fake.runs()).toBe(3);
    expect(listing(fourth)).toEqual(listing(first));
    expect(lstatSync(entry).size).toBeGreaterThan(10_000);
  });
});
