/**
 * A tiny container image for the container host's tests, demo and bench,
 * written as an OCI image archive (`podman load -i`, `skopeo ...
 * oci-archive:FILE`): one gzip layer holding Debian's static busybox
 * (busybox-static) as /bin/busybox with applet symlinks, a /www directory
 * and any files the caller adds; a config whose Cmd the caller gives.
 * Byte-identical from run to run (fixed mtimes, owners and order; no
 * timestamp in the gzip header).
 *
 * Archive layout (OCI image layout spec, in a tar):
 *   oci-layout                  {"imageLayoutVersion":"1.0.0"}
 *   index.json                  one manifest, annotated with the image's full name
 *   blobs/sha256/<hex>          the layer (tar+gzip), the config, the manifest
 *
 * podman names a loaded oci-archive image after the manifest's
 * `org.opencontainers.image.ref.name` annotation (or containerd's
 * `io.containerd.image.name`): both hold NAME:TAG.
 */
import { createHash } from "node:crypto";
import { createWriteStream, readFileSync } from "node:fs";
import { pipeline } from "node:stream/promises";
import { gzipSync } from "node:zlib";
import tar from "tar-stream";

export const BUSYBOX = "/bin/busybox";
export const DEFAULT_APPLETS = [
  "sh",
  "httpd",
  "mkdir",
  "echo",
  "cat",
  "ls",
  "sleep",
  "wget",
  "env",
  "rm",
  "touch",
  "hostname",
] as const;

export const MEDIA_TYPES = {
  index: "application/vnd.oci.image.index.v1+json",
  manifest: "application/vnd.oci.image.manifest.v1+json",
  config: "application/vnd.oci.image.config.v1+json",
  layer: "application/vnd.oci.image.layer.v1.tar+gzip",
} as const;

export interface OciImageOptions {
  /** Repository name with its registry, e.g. `localhost/httpd`. */
  name: string;
  tag: string;
  /** The config's Cmd, e.g. `["/bin/httpd", "-f", "-p", "8080", "-h", "/www"]`. */
  cmd: readonly string[];
  /** Applets linked to /bin/busybox (default DEFAULT_APPLETS). */
  applets?: readonly string[];
  /** More files in the layer, path (no leading /) → content; parents are made. */
  files?: Readonly<Record<string, string | Uint8Array>>;
  /** TCP ports recorded as ExposedPorts (documentation only, as in any image). */
  exposedPorts?: readonly number[];
  /** Timestamp of the layer's entries and the config, seconds (default 0). */
  mtime?: number;
}

export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
}

export interface OciArchive {
  path: string;
  /** `name:tag`, as podman lists it after loading. */
  ref: string;
  manifest: Descriptor;
  config: Descriptor;
  layer: Descriptor;
  /** sha256 of the uncompressed layer tar (the config's rootfs.diff_ids). */
  diffId: string;
}

const NAME = /^[a-z0-9]+([._-][a-z0-9]+)*(\.[a-z0-9]+)*(:\d+)?(\/[a-z0-9]+([._-][a-z0-9]+)*)*$/;
const TAG = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/;

function sha256(data: Uint8Array): string {
  return `sha256:${createHash("sha256").update(data).digest("hex")}`;
}

function descriptor(mediaType: string, data: Uint8Array): Descriptor {
  return { mediaType, digest: sha256(data), size: data.length };
}

async function packToBuffer(fill: (pack: tar.Pack) => void): Promise<Buffer> {
  const pack = tar.pack();
  const chunks: Buffer[] = [];
  pack.on("data", (c) => chunks.push(c as Buffer));
  const done = new Promise<void>((resolve, reject) => {
    pack.on("end", () => resolve());
    pack.on("error", reject);
  });
  fill(pack);
  pack.finalize();
  await done;
  return Buffer.concat(chunks);
}

/** The layer tar (uncompressed): /bin/busybox, its applets, /www, the caller's files. */
export function layerTar(o: OciImageOptions): Promise<Buffer> {
  const mtime = new Date((o.mtime ?? 0) * 1000);
  const own = { uid: 0, gid: 0, uname: "root", gname: "root", mtime };
  const busybox = readFileSync(BUSYBOX);
  const extra = Object.entries(o.files ?? {}).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  const dirs = new Set(["bin", "www"]);
  for (const [path] of extra) {
    if (path.startsWith("/") || path.split("/").some((p) => p === "" || p === "." || p === "..")) {
      throw new Error(`ociArchive: file path "${path}" must be relative, without . or .. parts`);
    }
    const parts = path.split("/");
    for (let i = 1; i < parts.length; i++) dirs.add(parts.slice(0, i).join("/"));
  }
  return packToBuffer((pack) => {
    for (const d of [...dirs].sort())
      pack.entry({ ...own, name: `${d}/`, type: "directory", mode: 0o755 });
    pack.entry({ ...own, name: "bin/busybox", mode: 0o755, size: busybox.length }, busybox);
    for (const applet of [...new Set(o.applets ?? DEFAULT_APPLETS)].sort()) {
      if (applet === "busybox") continue;
      pack.entry({
        ...own,
        name: `bin/${applet}`,
        type: "symlink",
        linkname: "busybox",
        mode: 0o777,
      });
    }
    for (const [path, content] of extra) {
      const data = typeof content === "string" ? Buffer.from(content) : Buffer.from(content);
      pack.entry({ ...own, name: path, mode: 0o644, size: data.length }, data);
    }
  });
}

/** Write the image as an OCI archive at `outPath`. */
export async function ociArchive(outPath: string, o: OciImageOptions): Promise<OciArchive> {
  if (!NAME.test(o.name))
    throw new Error(`ociArchive: "${o.name}" is not an image name (e.g. localhost/httpd)`);
  if (!TAG.test(o.tag)) throw new Error(`ociArchive: "${o.tag}" is not an image tag`);
  if (o.cmd.length === 0) throw new Error("ociArchive: cmd must name a program");
  const ref = `${o.name}:${o.tag}`;
  const created = new Date((o.mtime ?? 0) * 1000).toISOString().replace(/\.000Z$/, "Z");
  const layerRaw = await layerTar(o);
  const layerGz = gzipSync(layerRaw, { level: 9 });
  const diffId = sha256(layerRaw);
  const layer = descriptor(MEDIA_TYPES.layer, layerGz);
  const configBytes = Buffer.from(
    JSON.stringify({
      created,
      architecture: "amd64",
      os: "linux",
      config: {
        Env: ["PATH=/bin"],
        Cmd: [...o.cmd],
        WorkingDir: "/",
        ...(o.exposedPorts?.length
          ? { ExposedPorts: Object.fromEntries(o.exposedPorts.map((p) => [`${p}/tcp`, {}])) }
          : {}),
      },
      rootfs: { type: "layers", diff_ids: [diffId] },
      history: [{ created, created_by: "abforge test helper: busybox-static layer" }],
    }),
  );
  const config = descriptor(MEDIA_TYPES.config, configBytes);
  const manifestBytes = Buffer.from(
    JSON.stringify({ schemaVersion: 2, mediaType: MEDIA_TYPES.manifest, config, layers: [layer] }),
  );
  const manifest = descriptor(MEDIA_TYPES.manifest, manifestBytes);
  const index = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: MEDIA_TYPES.index,
      manifests: [
        {
          ...manifest,
          annotations: {
            "org.opencontainers.image.ref.name": ref,
            "io.containerd.image.name": ref,
          },
        },
      ],
    }),
  );
  const layout = Buffer.from(JSON.stringify({ imageLayoutVersion: "1.0.0" }));
  const own = { uid: 0, gid: 0, mtime: new Date(0) };
  const pack = tar.pack();
  const written = pipeline(pack, createWriteStream(outPath));
  pack.entry({ ...own, name: "oci-layout", mode: 0o644 }, layout);
  pack.entry({ ...own, name: "index.json", mode: 0o644 }, index);
  pack.entry({ ...own, name: "blobs/", type: "directory", mode: 0o755 });
  pack.entry({ ...own, name: "blobs/sha256/", type: "directory", mode: 0o755 });
  for (const [d, data] of [
    [layer, layerGz],
    [config, configBytes],
    [manifest, manifestBytes],
  ] as const) {
    pack.entry({ ...own, name: `blobs/sha256/${d.digest.slice(7)}`, mode: 0o644 }, data);
  }
  pack.finalize();
  await written;
  return { path: outPath, ref, manifest, config, layer, diffId };
}
