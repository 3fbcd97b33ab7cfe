// qemu/oci.ts's OCI archive, read by the real tool (skopeo, the same
// containers/image code podman load runs) and taken apart by hand.
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { gunzipSync } from "node:zlib";
import tar from "tar-stream";
import { describe, expect, it } from "vitest";
import { BUSYBOX, MEDIA_TYPES, ociArchive } from "../../../qemu/oci.ts";
import { tempDir } from "../../helpers/tmp.ts";

const dir = tempDir("abforge-oci-");
const CMD = ["/bin/httpd", "-f", "-p", "8080", "-h", "/www"];
const OPTIONS = {
  name: "localhost/httpd",
  tag: "1",
  cmd: CMD,
  files: { "www/index.html": "hello from abforge\n" },
  exposedPorts: [8080],
};

function sha256(data: Uint8Array): string {
  return `sha256:${createHash("sha256").update(data).digest("hex")}`;
}

interface Entry {
  name: string;
  type: string;
  mode: number;
  mtime: number;
  linkname: string | null;
  data: Buffer;
}

async function untar(data: Buffer): Promise<Entry[]> {
  const extract = tar.extract();
  const entries: Entry[] = [];
  extract.on("entry", (h, stream, next) => {
    const chunks: Buffer[] = [];
    stream.on("data", (c) => chunks.push(c as Buffer));
    stream.on("end", () => {
      entries.push({
        name: h.name,
        type: h.type ?? "file",
        mode: h.mode ?? 0,
        mtime: h.mtime?.getTime() ?? -1,
        linkname: h.linkname ?? null,
        data: Buffer.concat(chunks),
      });
      next();
    });
  });
  const done = new Promise<void>((resolve, reject) => {
    extract.on("finish", () => resolve());
    extract.on("error", reject);
  });
  extract.end(data);
  await done;
  return entries;
}

function skopeo(...args: string[]): string {
  return execFileSync("skopeo", ["--insecure-policy", ...args], { encoding: "utf8" });
}

describe("ociArchive", () => {
  it("skopeo inspects it: its name, Cmd, one layer with the digest we wrote", async () => {
    const path = join(dir, "httpd.oci.tar");
    const a = await ociArchive(path, OPTIONS);
    expect(a.ref).toBe("localhost/httpd:1");
    const info = JSON.parse(skopeo("inspect", `oci-archive:${path}`)) as {
      Digest: string;
      Layers: string[];
      Architecture: string;
      Os: string;
    };
    expect(info.Digest).toBe(a.manifest.digest);
    expect(info.Layers).toEqual([a.layer.digest]);
    expect([info.Architecture, info.Os]).toEqual(["amd64", "linux"]);
    const config = JSON.parse(skopeo("inspect", "--config", `oci-archive:${path}`)) as {
      config: { Cmd: string[]; ExposedPorts: Record<string, unknown> };
      rootfs: { diff_ids: string[] };
    };
    expect(config.config.Cmd).toEqual(CMD);
    expect(Object.keys(config.config.ExposedPorts)).toEqual(["8080/tcp"]);
    expect(config.rootfs.diff_ids).toEqual([a.diffId]);
  });

  it("skopeo copies it out, and the copied layer and config hash to their digests", async () => {
    const path = join(dir, "copy.oci.tar");
    const a = await ociArchive(path, OPTIONS);
    const out = join(dir, "copied");
    skopeo("copy", "--quiet", `oci-archive:${path}`, `dir:${out}`);
    const manifest = JSON.parse(readFileSync(join(out, "manifest.json"), "utf8")) as {
      config: { digest: string };
      layers: { digest: string; size: number }[];
    };
    expect(manifest.config.digest).toBe(a.config.digest);
    expect(manifest.layers.map((l) => l.digest)).toEqual([a.layer.digest]);
    const layer = readFileSync(join(out, a.layer.digest.slice(7)));
    expect(sha256(layer)).toBe(a.layer.digest);
    expect(sha256(gunzipSync(layer))).toBe(a.diffId);
    expect(sha256(readFileSync(join(out, a.config.digest.slice(7))))).toBe(a.config.digest);
  });

  it("podman load takes it and names it after the annotation", async () => {
    const a = await ociArchive(join(dir, "load.oci.tar"), OPTIONS);
    const store = tempDir("abforge-oci-podman-");
    const podman = (...args: string[]) =>
      execFileSync(
        "podman",
        [
          "--root",
          join(store, "root"),
          "--runroot",
          join(store, "run"),
          "--storage-driver",
          "vfs",
          "--events-backend",
          "none",
          ...args,
        ],
        { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] },
      );
    expect(podman("load", "-q", "-i", a.path)).toMatch(/^Loaded image: localhost\/httpd:1$/m);
    const [inspected] = JSON.parse(podman("image", "inspect", a.ref)) as {
      Digest: string;
      Config: { Cmd: string[] };
      RootFS: { Layers: string[] };
    }[];
    expect(inspected!.Digest).toBe(a.manifest.digest);
    expect(inspected!.Config.Cmd).toEqual(CMD);
    expect(inspected!.RootFS.Layers).toEqual([a.diffId]);
  });

  it("has the OCI layout and a layer holding busybox, its applets and /www, byte-identical each run", async () => {
    const a = await ociArchive(join(dir, "one.tar"), OPTIONS);
    const b = await ociArchive(join(dir, "two.tar"), OPTIONS);
    const bytes = readFileSync(a.path);
    expect(bytes.equals(readFileSync(b.path))).toBe(true);
    const outer = await untar(bytes);
    const byName = new Map(outer.map((e) => [e.name, e]));
    expect(JSON.parse(byName.get("oci-layout")!.data.toString())).toEqual({
      imageLayoutVersion: "1.0.0",
    });
    const index = JSON.parse(byName.get("index.json")!.data.toString()) as {
      manifests: { digest: string; mediaType: string; annotations: Record<string, string> }[];
    };
    expect(index.manifests).toHaveLength(1);
    expect(index.manifests[0]!.mediaType).toBe(MEDIA_TYPES.manifest);
    expect(index.manifests[0]!.annotations["org.opencontainers.image.ref.name"]).toBe(
      "localhost/httpd:1",
    );
    for (const d of [a.manifest, a.config, a.layer]) {
      const blob = byName.get(`blobs/sha256/${d.digest.slice(7)}`)!.data;
      expect(sha256(blob)).toBe(d.digest);
      expect(blob.length).toBe(d.size);
    }
    const layer = await untar(
      gunzipSync(byName.get(`blobs/sha256/${a.layer.digest.slice(7)}`)!.data),
    );
    const files = new Map(layer.map((e) => [e.name, e]));
    expect(files.get("bin/busybox")!.data.equals(readFileSync(BUSYBOX))).toBe(true);
    expect(files.get("bin/busybox")!.mode).toBe(0o755);
    for (const applet of ["sh", "httpd", "mkdir", "echo", "cat", "ls"]) {
      expect(files.get(`bin/${applet}`), applet).toMatchObject({
        type: "symlink",
        linkname: "busybox",
      });
    }
    expect(files.get("www/")!.type).toBe("directory");
    expect(files.get("www/index.html")!.data.toString()).toBe("hello from abforge\n");
    expect(new Set(layer.map((e) => e.mtime))).toEqual(new Set([0]));
  });

  it("refuses a bad name, tag or file path", async () => {
    await expect(ociArchive(join(dir, "x"), { ...OPTIONS, name: "Local/HTTPD" })).rejects.toThrow(
      /"Local\/HTTPD" is not an image name/,
    );
    await expect(ociArchive(join(dir, "x"), { ...OPTIONS, tag: ":1" })).rejects.toThrow(
      /is not an image tag/,
    );
    await expect(
      ociArchive(join(dir, "x"), { ...OPTIONS, files: { "../etc/passwd": "x" } }),
    ).rejects.toThrow(/must be relative/);
  });
});
