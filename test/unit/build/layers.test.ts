/**
 * Rootfs layers (src/build/README.md, "Layers"): safe extraction, whiteouts,
 * gzip detection, dir/files/host-binaries layers, and the metadata that
 * reaches mksquashfs through the pseudo file.
 */
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import {
  existsSync,
  lstatSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  realpathSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { join } from "node:path";
import { gzipSync } from "node:zlib";
import tarStream from "tar-stream";
import { describe, expect, it } from "vitest";
import { hostAptMirror } from "../../../src/build/debootstrap.ts";
import { BuildError } from "../../../src/build/errors.ts";
import {
  applyLayers,
  DYNAMIC_LOADER,
  parseLdd,
  recordNativeTree,
} from "../../../src/build/layers.ts";
import type { LayerSpec } from "../../../src/build/spec/index.ts";
import { entryComponents, pseudoName, StagingTree } from "../../../src/build/staging.ts";
import { detectCompression } from "../../../src/build/tar-extract.ts";
import { tempDir } from "../../helpers/tmp.ts";

const work = tempDir("abforge-layers-");
let counter = 0;

interface TarEntry {
  name: string;
  type?: "file" | "directory" | "symlink" | "link" | "character-device" | "block-device" | "fifo";
  content?: string;
  linkname?: string;
  mode?: number;
  uid?: number;
  gid?: number;
  devmajor?: number;
  devminor?: number;
}

/** A tar built with tar-stream, the way `docker export` or an OCI layer would hold it. */
async function tarBytes(entries: TarEntry[]): Promise<Buffer> {
  const pack = tarStream.pack();
  for (const e of entries) {
    const type = e.type ?? "file";
    const header = {
      name: e.name,
      type,
      mode: e.mode ?? (type === "directory" ? 0o755 : 0o644),
      uid: e.uid ?? 0,
      gid: e.gid ?? 0,
      linkname: e.linkname,
      devmajor: e.devmajor,
      devminor: e.devminor,
    };
    if (type === "file") pack.entry(header, e.content ?? "");
    else pack.entry(header);
  }
  pack.finalize();
  const chunks: Buffer[] = [];
  for await (const c of pack) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

async function tarFile(entries: TarEntry[], o: { gzip?: boolean } = {}): Promise<string> {
  const bytes = await tarBytes(entries);
  const path = join(work, `layer-${++counter}.tar${o.gzip ? ".gz" : ""}`);
  writeFileSync(path, o.gzip ? gzipSync(bytes) : bytes);
  return path;
}

function origin(label: string) {
  return { file: "/specs/test.yaml", line: 7, col: 7, label };
}

function tarLayer(path: string, allowDevices = false): LayerSpec {
  return { kind: "tar", path, allowDevices, origin: origin(`tar ${path}`) };
}

/** A fresh staging dir inside its own parent, so a test can see anything landing beside it. */
function staging(): { parent: string; root: string } {
  const parent = join(work, `stage-${++counter}`);
  mkdirSync(parent);
  return { parent, root: join(parent, "rootfs") };
}

async function refused(layers: LayerSpec[], code = "LAYER_UNSAFE"): Promise<BuildError> {
  const { parent, root } = staging();
  let err: unknown;
  try {
    await applyLayers({ rootfs: { layers } }, root);
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(BuildError);
  expect((err as BuildError).code).toBe(code);
  // Failure leaves no output outside the staging dir.
  expect(readdirSync(parent)).toEqual(["rootfs"]);
  return err as BuildError;
}

describe("tar layers: contents, modes and owners", () => {
  it("extracts files, dirs, symlinks and hard links, keeping modes and owners in the metadata", async () => {
    const path = await tarFile([
      { name: "./", type: "directory", mode: 0o755 },
      { name: "./etc/", type: "directory", mode: 0o755 },
      { name: "./etc/passwd", content: "root:x:0:0::/root:/bin/sh\n", mode: 0o644 },
      { name: "./usr/bin/su", content: "#!su", mode: 0o4755 },
      { name: "home/user/", type: "directory", mode: 0o700, uid: 1000, gid: 1000 },
      { name: "home/user/.profile", content: "x", mode: 0o600, uid: 1000, gid: 1000 },
      { name: "bin", type: "symlink", linkname: "usr/bin" },
      { name: "usr/bin/su2", type: "link", linkname: "./usr/bin/su" },
      { name: "tmp/", type: "directory", mode: 0o1777 },
      { name: "run/initctl", type: "fifo", mode: 0o600 },
    ]);
    const { root } = staging();
    const { tree } = await applyLayers({ rootfs: { layers: [tarLayer(path)] } }, root);
    expect(readFileSync(join(root, "etc/passwd"), "utf8")).toContain("root:x:0:0");
    expect(readlinkSync(join(root, "bin"))).toBe("usr/bin");
    expect(statSync(join(root, "usr/bin/su2")).ino).toBe(statSync(join(root, "usr/bin/su")).ino);
    expect(readFileSync(join(root, "bin/su"), "utf8")).toBe("#!su");
    expect(tree.meta.get("usr/bin/su")).toEqual({ mode: 0o4755, uid: 0, gid: 0 });
    expect(tree.meta.get("usr/bin/su2")).toEqual({ mode: 0o4755, uid: 0, gid: 0 });
    expect(tree.meta.get("home/user")).toEqual({ mode: 0o700, uid: 1000, gid: 1000 });
    expect(tree.meta.get("home/user/.profile")).toEqual({ mode: 0o600, uid: 1000, gid: 1000 });
    expect(tree.meta.get("tmp")).toEqual({ mode: 0o1777, uid: 0, gid: 0 });
    // implicit parents are root-owned 0755
    expect(tree.meta.get("usr")).toEqual({ mode: 0o755, uid: 0, gid: 0 });
    // a FIFO is not put on disk but recorded for mksquashfs
    expect(existsSync(join(root, "run/initctl"))).toBe(false);
    expect(tree.virtual.get("run/initctl")).toEqual({ mode: 0o600, uid: 0, gid: 0, type: "fifo" });

    const pf = await tree.writePseudoFile(join(root, "..", "pseudo"));
    const lines = readFileSync(pf.path, "utf8").trim().split("\n");
    expect(lines).toContain("usr/bin/su m 4755 0 0");
    expect(lines).toContain("home/user m 0700 1000 1000");
    expect(lines).toContain("tmp m 1777 0 0");
    expect(lines).toContain("run/initctl i 0600 0 0 f");
    expect(lines).toContain("bin m 0777 0 0");
    expect(pf.lines).toBe(lines.length);
    expect(pf.mksquashfsArgs).toEqual([
      "-pf",
      pf.path,
      "-root-mode",
      "0755",
      "-root-uid",
      "0",
      "-root-gid",
      "0",
    ]);
  });

  it("detects gzip by its magic bytes, whatever the file is called", async () => {
    const gz = await tarFile([{ name: "a", content: "zipped" }], { gzip: true });
    const plain = await tarFile([{ name: "b", content: "plain" }]);
    const { root } = staging();
    await applyLayers({ rootfs: { layers: [tarLayer(gz), tarLayer(plain)] } }, root);
    expect(readFileSync(join(root, "a"), "utf8")).toBe("zipped");
    expect(readFileSync(join(root, "b"), "utf8")).toBe("plain");
  });

  it("refuses xz, zstd and bzip2 tars with a clear reason", async () => {
    expect(() =>
      detectCompression(Uint8Array.of(0xfd, 0x37, 0x7a, 0x58, 0x5a, 0), "x.tar.xz"),
    ).toThrow(/x.tar.xz is xz-compressed: tar layers must be plain or gzip-compressed/);
    expect(() => detectCompression(Uint8Array.of(0x28, 0xb5, 0x2f, 0xfd), "z")).toThrow(/zstd/);
    expect(() => detectCompression(Uint8Array.of(0x42, 0x5a, 0x68), "b")).toThrow(/bzip2/);
    const path = join(work, "fake.tar");
    writeFileSync(path, Uint8Array.of(0xfd, 0x37, 0x7a, 0x58, 0x5a, 0, 1, 2));
    const err = await refused([tarLayer(path)], "LAYER_FAILED");
    expect(err.message).toMatch(
      /^rootfs\.layers\[0\] \(tar .*fake.tar, \/specs\/test.yaml:7\): .*xz-compressed/,
    );
  });

  it("reports a corrupt tar as LAYER_FAILED", async () => {
    const path = join(work, "garbage.tar");
    writeFileSync(path, Buffer.alloc(1024, 0x41));
    const err = await refused([tarLayer(path)], "LAYER_FAILED");
    expect(err.message).toMatch(/not a valid tar/);
  });

  it("later layers replace files, dirs and symlinks of earlier ones", async () => {
    const l1 = await tarFile([
      { name: "x", content: "file" },
      { name: "d/", type: "directory" },
      { name: "d/inner", content: "i" },
      { name: "s", type: "symlink", linkname: "x" },
    ]);
    const l2 = await tarFile([
      { name: "x/", type: "directory" },
      { name: "d", content: "now a file" },
      { name: "s", content: "not a link", mode: 0o600 },
    ]);
    const { root } = staging();
    const { tree } = await applyLayers({ rootfs: { layers: [tarLayer(l1), tarLayer(l2)] } }, root);
    expect(statSync(join(root, "x")).isDirectory()).toBe(true);
    expect(readFileSync(join(root, "d"), "utf8")).toBe("now a file");
    expect(tree.meta.has("d/inner")).toBe(false);
    expect(lstatSync(join(root, "s")).isSymbolicLink()).toBe(false);
    expect(readFileSync(join(root, "x/../s"), "utf8")).toBe("not a link");
  });

  it("keeps a directory symlink when a later layer has that directory (usr-merge)", async () => {
    const l1 = await tarFile([
      { name: "usr/lib/", type: "directory" },
      { name: "lib", type: "symlink", linkname: "usr/lib" },
    ]);
    const l2 = await tarFile([
      { name: "lib/", type: "directory" },
      { name: "lib/libx.so", content: "elf" },
    ]);
    const { root } = staging();
    await applyLayers({ rootfs: { layers: [tarLayer(l1), tarLayer(l2)] } }, root);
    expect(readlinkSync(join(root, "lib"))).toBe("usr/lib");
    expect(readFileSync(join(root, "usr/lib/libx.so"), "utf8")).toBe("elf");
  });
});

describe("tar layers: nothing lands outside the rootfs", () => {
  it("refuses a .. component, naming the layer and the entry", async () => {
    const path = await tarFile([
      { name: "ok", content: "x" },
      { name: "a/../../evil", content: "x" },
    ]);
    const err = await refused([tarLayer(path)]);
    expect(err.message).toMatch(
      /^rootfs\.layers\[0\] \(tar .*, \/specs\/test.yaml:7\): entry "a\/..\/..\/evil": .*\.\. component/,
    );
    expect(err.details).toMatchObject({ layer: 0, entry: "a/../../evil" });
  });

  it("refuses absolute names and accepts ./ prefixes", async () => {
    const abs = await tarFile([{ name: "/etc/evil", content: "x" }]);
    const err = await refused([tarLayer(abs)]);
    expect(err.message).toMatch(/entry "\/etc\/evil": .*absolute name/);
    const dot = await tarFile([{ name: "././etc/./ok", content: "x" }]);
    const { root } = staging();
    await applyLayers({ rootfs: { layers: [tarLayer(dot)] } }, root);
    expect(readFileSync(join(root, "etc/ok"), "utf8")).toBe("x");
  });

  it("refuses a symlink whose target climbs out of the rootfs", async () => {
    for (const target of ["../../../../tmp", "a/../../x", "../"]) {
      const path = await tarFile([{ name: "evil", type: "symlink", linkname: target }]);
      const err = await refused([tarLayer(path)]);
      expect(err.message).toMatch(/entry "evil": symlink evil -> .* points outside the rootfs/);
    }
    // deeper links may go up as far as the root, and absolute targets are rootfs paths
    const ok = await tarFile([
      { name: "a/b/up", type: "symlink", linkname: "../../etc" },
      { name: "a/abs", type: "symlink", linkname: "/usr/bin/x" },
    ]);
    const { root } = staging();
    await applyLayers({ rootfs: { layers: [tarLayer(ok)] } }, root);
    expect(readlinkSync(join(root, "a/abs"))).toBe("/usr/bin/x");
  });

  it("writes through an absolute symlink inside the rootfs, never to the host path", async () => {
    const outside = join(work, `outside-${++counter}`);
    mkdirSync(outside);
    const path = await tarFile([
      { name: "evil", type: "symlink", linkname: outside },
      { name: "evil/planted", content: "pwned" },
      { name: "hop", type: "symlink", linkname: "/" },
      { name: "hop/hop/again", content: "inside" },
    ]);
    const { parent, root } = staging();
    await applyLayers({ rootfs: { layers: [tarLayer(path)] } }, root);
    expect(readdirSync(outside)).toEqual([]);
    expect(readFileSync(join(root, outside, "planted"), "utf8")).toBe("pwned");
    expect(readFileSync(join(root, "again"), "utf8")).toBe("inside");
    expect(readdirSync(parent)).toEqual(["rootfs"]);
  });

  it("never follows a symlink from an earlier layer out of the rootfs (chroot resolution)", async () => {
    // A symlink that escapes cannot be created, so plant one on disk as if a
    // buggy tool had, and check that writing through it is refused.
    const { parent, root } = staging();
    mkdirSync(root);
    symlinkSync("../..", join(root, "up"));
    const path = await tarFile([{ name: "up/escaped", content: "x" }]);
    let err: unknown;
    try {
      await applyLayers({ rootfs: { layers: [tarLayer(path)] } }, root);
    } catch (e) {
      err = e;
    }
    expect((err as BuildError).code).toBe("LAYER_UNSAFE");
    expect((err as BuildError).message).toMatch(/entry "up\/escaped": .*outside the rootfs/);
    expect(readdirSync(parent)).toEqual(["rootfs"]);
    expect(existsSync(join(work, "escaped"))).toBe(false);
  });

  it("refuses hard links out of the rootfs", async () => {
    const up = await tarFile([{ name: "l", type: "link", linkname: "../../etc/passwd" }]);
    expect((await refused([tarLayer(up)])).message).toMatch(/entry "l": .*\.\. component/);
    const abs = await tarFile([{ name: "l", type: "link", linkname: "/etc/passwd" }]);
    expect((await refused([tarLayer(abs)])).message).toMatch(/entry "l": .*absolute name/);
    // through a symlink: /etc here is the rootfs's /etc, where there is no passwd
    const via = await tarFile([
      { name: "hostetc", type: "symlink", linkname: "/etc" },
      { name: "l", type: "link", linkname: "hostetc/passwd" },
    ]);
    expect((await refused([tarLayer(via)])).message).toMatch(
      /entry "l": hard link l -> hostetc\/passwd: the target does not exist/,
    );
    const dir = await tarFile([
      { name: "d/", type: "directory" },
      { name: "l", type: "link", linkname: "d" },
    ]);
    expect((await refused([tarLayer(dir)])).message).toMatch(/the target is a directory/);
  });

  it("refuses device nodes unless the layer allows them", async () => {
    const path = await tarFile([
      { name: "dev/", type: "directory" },
      { name: "dev/null", type: "character-device", mode: 0o666, devmajor: 1, devminor: 3 },
      { name: "dev/sda", type: "block-device", mode: 0o660, gid: 6, devmajor: 8, devminor: 0 },
    ]);
    const err = await refused([tarLayer(path, false)]);
    expect(err.message).toMatch(
      /entry "dev\/null": char device 1:3: device nodes are refused unless the layer sets allowDevices: true/,
    );
    const { root } = staging();
    const { tree } = await applyLayers({ rootfs: { layers: [tarLayer(path, true)] } }, root);
    expect(readdirSync(join(root, "dev"))).toEqual([]);
    const pf = await tree.writePseudoFile(join(root, "..", "pseudo"));
    const lines = readFileSync(pf.path, "utf8").split("\n");
    expect(lines).toContain("dev/null c 0666 0 0 1 3");
    expect(lines).toContain("dev/sda b 0660 0 6 8 0");
  });

  it("entryComponents is the single gate for names", () => {
    expect(entryComponents("./a//b/./c/")).toEqual(["a", "b", "c"]);
    expect(entryComponents("./")).toEqual([]);
    expect(() => entryComponents("a/..")).toThrow(/\.\. component/);
    expect(() => entryComponents("/a")).toThrow(/absolute/);
    expect(() => entryComponents("a\nb")).toThrow(/newline/);
  });
});

describe("whiteouts", () => {
  it("deletes with .wh.NAME and empties a dir with .wh..wh..opq, sparing this layer's own entries", async () => {
    const lower = await tarFile([
      { name: "a/x", content: "x" },
      { name: "a/y", content: "y" },
      { name: "a/sub/deep", content: "d" },
      { name: "b/old1", content: "1" },
      { name: "b/old2/inner", content: "2" },
      { name: "c/keep", content: "k" },
      { name: "dev/", type: "directory" },
      { name: "dev/null", type: "character-device", devmajor: 1, devminor: 3 },
    ]);
    const upper = await tarFile([
      { name: "a/.wh.x" },
      { name: "a/.wh.sub" },
      { name: "a/.wh.never-existed" },
      { name: "b/new", content: "before the marker" },
      { name: "b/.wh..wh..opq" },
      { name: "b/old2/fresh", content: "after the marker" },
      { name: "dev/.wh.null" },
    ]);
    const { root } = staging();
    const { tree } = await applyLayers(
      { rootfs: { layers: [tarLayer(lower, true), tarLayer(upper)] } },
      root,
    );
    expect(readdirSync(join(root, "a")).sort()).toEqual(["y"]);
    expect(tree.meta.has("a/sub/deep")).toBe(false);
    expect(readdirSync(join(root, "b")).sort()).toEqual(["new", "old2"]);
    expect(readdirSync(join(root, "b/old2"))).toEqual(["fresh"]);
    expect(readdirSync(join(root, "c"))).toEqual(["keep"]);
    expect(tree.virtual.has("dev/null")).toBe(false);
    // whiteout markers are never materialized
    expect(existsSync(join(root, "a/.wh.x"))).toBe(false);
    expect(existsSync(join(root, "b/.wh..wh..opq"))).toBe(false);
  });

  it("applies an OCI image layout's layers in order, checking each blob's digest", async () => {
    const layout = join(work, `oci-${++counter}`);
    mkdirSync(join(layout, "blobs/sha256"), { recursive: true });
    const blob = (bytes: Buffer | string): string => {
      const hex = createHash("sha256").update(bytes).digest("hex");
      writeFileSync(join(layout, "blobs/sha256", hex), bytes);
      return `sha256:${hex}`;
    };
    const l1 = blob(
      gzipSync(
        await tarBytes([
          { name: "etc/os-release", content: "ID=test\n" },
          { name: "etc/gone", content: "x" },
        ]),
      ),
    );
    const l2 = blob(
      await tarBytes([
        { name: "etc/.wh.gone" },
        { name: "app/run", content: "#!/bin/sh", mode: 0o755 },
      ]),
    );
    const manifest = blob(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: "application/vnd.oci.image.manifest.v1+json",
        config: { mediaType: "application/vnd.oci.image.config.v1+json", digest: l1, size: 1 },
        layers: [
          { mediaType: "application/vnd.oci.image.layer.v1.tar+gzip", digest: l1 },
          { mediaType: "application/vnd.oci.image.layer.v1.tar", digest: l2 },
        ],
      }),
    );
    writeFileSync(join(layout, "oci-layout"), '{"imageLayoutVersion":"1.0.0"}');
    writeFileSync(
      join(layout, "index.json"),
      JSON.stringify({
        schemaVersion: 2,
        manifests: [
          {
            mediaType: "application/vnd.oci.image.manifest.v1+json",
            digest: manifest,
            platform: { os: "linux", architecture: "amd64" },
          },
          {
            mediaType: "application/vnd.oci.image.manifest.v1+json",
            digest: manifest,
            platform: { os: "linux", architecture: "arm64" },
          },
        ],
      }),
    );
    const { root } = staging();
    const { tree } = await applyLayers({ rootfs: { layers: [tarLayer(layout)] } }, root);
    expect(readFileSync(join(root, "etc/os-release"), "utf8")).toBe("ID=test\n");
    expect(existsSync(join(root, "etc/gone"))).toBe(false);
    expect(tree.meta.get("app/run")?.mode).toBe(0o755);

    // a blob that does not match its digest
    const hex = l2.slice("sha256:".length);
    writeFileSync(
      join(layout, "blobs/sha256", hex),
      await tarBytes([{ name: "tampered", content: "x" }]),
    );
    const err = await refused([tarLayer(layout)], "LAYER_FAILED");
    expect(err.message).toMatch(
      new RegExp(`blob ${l2}: .*digest is sha256:[0-9a-f]{64}, the manifest says ${l2}`),
    );
  });
});

describe("dir and files layers", () => {
  it("copies a host directory with its modes, owned by root, keeping hard links", async () => {
    const src = join(work, `overlay-${++counter}`);
    mkdirSync(join(src, "etc/app"), { recursive: true });
    writeFileSync(join(src, "etc/app/conf"), "conf", { mode: 0o640 });
    writeFileSync(join(src, "etc/app/run"), "#!/bin/sh\n", { mode: 0o755 });
    execFileSync("ln", [join(src, "etc/app/run"), join(src, "etc/app/run2")]);
    symlinkSync("/etc/app/conf", join(src, "conf-link"));
    const { root } = staging();
    const { tree } = await applyLayers(
      { rootfs: { layers: [{ kind: "dir", path: src, origin: origin("dir overlay/") }] } },
      root,
    );
    expect(readFileSync(join(root, "etc/app/conf"), "utf8")).toBe("conf");
    expect(tree.meta.get("etc/app/conf")).toEqual({ mode: 0o640, uid: 0, gid: 0 });
    expect(tree.meta.get("etc/app/run")).toEqual({ mode: 0o755, uid: 0, gid: 0 });
    expect(statSync(join(root, "etc/app/run2")).ino).toBe(statSync(join(root, "etc/app/run")).ino);
    expect(readlinkSync(join(root, "conf-link"))).toBe("/etc/app/conf");
  });

  it("refuses a symlink out of the rootfs in a dir layer", async () => {
    const src = join(work, `overlay-${++counter}`);
    mkdirSync(src);
    symlinkSync("../../../../etc/shadow", join(src, "shadow"));
    const err = await refused([{ kind: "dir", path: src, origin: origin("dir evil/") }]);
    expect(err.message).toMatch(
      /^rootfs\.layers\[0\] \(dir evil\/, \/specs\/test.yaml:7\): entry "shadow": symlink shadow -> .* points outside/,
    );
  });

  it("writes files from content or a source file, with mode and owner", async () => {
    const source = join(work, "source.txt");
    writeFileSync(source, "from a file\n");
    const { root } = staging();
    const { tree } = await applyLayers(
      {
        rootfs: {
          layers: [
            {
              kind: "files",
              files: [
                { path: "/etc/motd", content: "hello\n", mode: 0o644, uid: 0, gid: 0 },
                { path: "/etc/secret/key", source, mode: 0o400, uid: 100, gid: 101 },
              ],
              origin: origin("files (2)"),
            },
          ],
        },
      },
      root,
    );
    expect(readFileSync(join(root, "etc/motd"), "utf8")).toBe("hello\n");
    expect(readFileSync(join(root, "etc/secret/key"), "utf8")).toBe("from a file\n");
    expect(tree.meta.get("etc/secret/key")).toEqual({ mode: 0o400, uid: 100, gid: 101 });
  });

  it("a files layer writes through a symlink of an earlier layer only inside the rootfs", async () => {
    const outside = join(work, `outside-${++counter}`);
    mkdirSync(outside);
    const l1 = await tarFile([{ name: "etc", type: "symlink", linkname: outside }]);
    const { root } = staging();
    await applyLayers(
      {
        rootfs: {
          layers: [
            tarLayer(l1),
            {
              kind: "files",
              files: [{ path: "/etc/motd", content: "m", mode: 0o644, uid: 0, gid: 0 }],
              origin: origin("files (1)"),
            },
          ],
        },
      },
      root,
    );
    expect(readdirSync(outside)).toEqual([]);
    expect(readFileSync(join(root, outside, "motd"), "utf8")).toBe("m");
  });
});

describe("host-binaries", () => {
  it("parses ldd output, refusing a missing library", () => {
    const out = `\tlinux-vdso.so.1 (0x00007ffd)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n`;
    expect(parseLdd(out, "/bin/x")).toEqual([
      "/lib/x86_64-linux-gnu/libc.so.6",
      "/lib64/ld-linux-x86-64.so.2",
    ]);
    expect(parseLdd("\tnot a dynamic executable\n", "/bin/busybox")).toEqual([]);
    expect(() => parseLdd("\tlibgone.so.1 => not found\n", "/bin/x")).toThrow(
      /\/bin\/x: ldd cannot find the library libgone.so.1/,
    );
  });

  it("copies /bin/ls with every library ldd lists and the dynamic loader, at their host paths", async () => {
    const { root } = staging();
    const { tree } = await applyLayers(
      {
        rootfs: {
          layers: [
            {
              kind: "host-binaries",
              binaries: [{ binary: "/bin/ls" }],
              origin: origin("host-binaries ls"),
            },
          ],
        },
      },
      root,
    );
    const libs = parseLdd(execFileSync("ldd", ["/bin/ls"], { encoding: "utf8" }), "/bin/ls");
    expect(libs).toContain(DYNAMIC_LOADER);
    expect(libs.length).toBeGreaterThan(1);
    for (const p of ["/bin/ls", ...libs]) {
      const staged = join(root, p);
      expect(lstatSync(staged).isFile()).toBe(true);
      expect(readFileSync(staged).equals(readFileSync(realpathSync(p)))).toBe(true);
    }
    expect(tree.meta.get("bin/ls")).toEqual({
      mode: statSync("/bin/ls").mode & 0o7777,
      uid: 0,
      gid: 0,
    });
    // the staged copy runs with the staged loader and libraries only
    const lib = [...new Set(libs.map((l) => join(root, l, "..")))].join(":");
    const out = execFileSync(
      join(root, DYNAMIC_LOADER),
      ["--library-path", lib, join(root, "bin/ls"), "/"],
      {
        encoding: "utf8",
      },
    );
    expect(out).toContain("usr");
  });

  it("installs busybox with its applet symlinks, leaving existing files alone", async () => {
    const existing = await tarFile([{ name: "bin/sh", content: "#!real shell" }]);
    const { root } = staging();
    await applyLayers(
      {
        rootfs: {
          layers: [
            tarLayer(existing),
            {
              kind: "host-binaries",
              binaries: [{ binary: "busybox", to: "/bin/busybox" }],
              origin: origin("host-binaries busybox"),
            },
          ],
        },
      },
      root,
    );
    expect(
      readFileSync(join(root, "bin/busybox")).equals(
        readFileSync(realpathSync("/usr/bin/busybox")),
      ),
    ).toBe(true);
    const applets = execFileSync("busybox", ["--list-full"], { encoding: "utf8" })
      .trim()
      .split("\n");
    expect(applets.length).toBeGreaterThan(100);
    for (const a of applets) {
      if (a === "bin/sh" || a === "bin/busybox") continue;
      expect(readlinkSync(join(root, a))).toBe("/bin/busybox");
    }
    expect(readFileSync(join(root, "bin/sh"), "utf8")).toBe("#!real shell");
    // busybox-static: no libraries, no loader
    expect(existsSync(join(root, DYNAMIC_LOADER))).toBe(false);
    const ver = execFileSync(join(root, "bin/busybox"), ["true"], { encoding: "utf8" });
    expect(ver).toBe("");
  });
});

describe("pseudo file names", () => {
  it("escapes spaces, tabs, quotes and backslashes", () => {
    expect(pseudoName('a b\t"c\\d')).toBe('a\\ b\\\t\\"c\\\\d');
  });
});

describe("debootstrap", () => {
  it("finds the host apt's mirror for a suite in sources.list and deb822 .sources files", async () => {
    const etc = join(work, `apt-${++counter}`);
    mkdirSync(join(etc, "sources.list.d"), { recursive: true });
    writeFileSync(
      join(etc, "sources.list"),
      "# none\ndeb-src http://src.example/debian bookworm main\n",
    );
    writeFileSync(
      join(etc, "sources.list.d/debian.sources"),
      "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\n" +
        "Types: deb\nURIs: http://security.example/debian-security\nSuites: bookworm-security\n",
    );
    writeFileSync(
      join(etc, "sources.list.d/extra.list"),
      "deb [arch=amd64] http://trixie.example/debian trixie main\n",
    );
    expect(await hostAptMirror("bookworm", etc)).toBe("http://mirror.example/debian");
    expect(await hostAptMirror("trixie", etc)).toBe("http://trixie.example/debian");
    expect(await hostAptMirror("sid", etc)).toBe("http://mirror.example/debian");
    expect(await hostAptMirror("bookworm", join(work, "no-apt"))).toBeUndefined();
  });

  it("must be the first layer", async () => {
    const first = await tarFile([{ name: "a", content: "x" }]);
    const err = await refused(
      [
        tarLayer(first),
        {
          kind: "debootstrap",
          suite: "bookworm",
          variant: "minbase",
          packages: [],
          origin: origin("debootstrap bookworm"),
        },
      ],
      "LAYER_FAILED",
    );
    expect(err.message).toMatch(
      /^rootfs\.layers\[1\] \(debootstrap bookworm, .*\): debootstrap creates the rootfs: it must be the first layer/,
    );
  });

  it("records what a privileged tool left on disk and turns FIFOs into pseudo entries", async () => {
    const { root } = staging();
    mkdirSync(join(root, "usr/bin"), { recursive: true, mode: 0o755 });
    writeFileSync(join(root, "usr/bin/su"), "su", { mode: 0o755 });
    execFileSync("chmod", ["4755", join(root, "usr/bin/su")]);
    execFileSync("mkfifo", ["-m", "0600", join(root, "usr/fifo")]);
    const tree = new StagingTree(root);
    recordNativeTree(tree);
    const uid = process.getuid!();
    const gid = process.getgid!();
    expect(tree.meta.get("usr/bin/su")).toEqual({ mode: 0o4755, uid, gid });
    expect(existsSync(join(root, "usr/fifo"))).toBe(false);
    expect(tree.virtual.get("usr/fifo")).toEqual({ mode: 0o600, uid, gid, type: "fifo" });
  });
});
