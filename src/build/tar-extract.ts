/**
 * Applying tar layers to the staging tree, streaming (README.md, "Tar
 * layers"): plain or gzip tars (detected by their magic bytes), one after
 * the other for an OCI image layout, with OCI whiteouts.
 */
import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { open, readFile, stat } from "node:fs/promises";
import { join } from "node:path";
import { type PassThrough, type Readable, Transform } from "node:stream";
import { pipeline } from "node:stream/promises";
import { createGunzip } from "node:zlib";
import tarStream, { type Header } from "tar-stream";
import { BuildError } from "./errors.ts";
import { entryComponents, type StagingTree } from "./staging.ts";

export interface TarApplyOptions {
  /** Device nodes are refused unless allowed. */
  allowDevices: boolean;
}

const WHITEOUT_PREFIX = ".wh.";
const OPAQUE = ".wh..wh..opq";

export type Compression = "none" | "gzip";

/** What the first bytes of a layer say it is; anything but plain or gzip is refused. */
export function detectCompression(head: Uint8Array, what: string): Compression {
  const starts = (...bytes: number[]) => bytes.every((b, i) => head[i] === b);
  if (starts(0x1f, 0x8b)) return "gzip";
  const other: [string, number[]][] = [
    ["xz", [0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]],
    ["zstd", [0x28, 0xb5, 0x2f, 0xfd]],
    ["bzip2", [0x42, 0x5a, 0x68]],
  ];
  for (const [name, magic] of other) {
    if (starts(...magic)) {
      throw new BuildError(
        "LAYER_FAILED",
        `${what} is ${name}-compressed: tar layers must be plain or gzip-compressed`,
      );
    }
  }
  return "none";
}

async function readHead(path: string): Promise<Uint8Array> {
  const fh = await open(path, "r");
  try {
    const buf = new Uint8Array(6);
    const { bytesRead } = await fh.read(buf, 0, 6, 0);
    return buf.subarray(0, bytesRead);
  } finally {
    await fh.close();
  }
}

/** Apply a tar file (plain or gzip) to the tree. Returns the number of entries. */
export async function applyTarFile(
  tree: StagingTree,
  path: string,
  options: TarApplyOptions,
  verify?: { digest: string },
): Promise<number> {
  const compression = detectCompression(await readHead(path), path);
  const hash = verify ? createHash(verify.digest.split(":")[0]!) : undefined;
  const source = createReadStream(path, { highWaterMark: 1 << 20 });
  const stages: (Readable | Transform)[] = [source];
  if (hash) {
    stages.push(
      new Transform({
        transform(chunk: Buffer, _enc, cb) {
          hash.update(chunk);
          cb(null, chunk);
        },
      }),
    );
  }
  if (compression === "gzip") stages.push(createGunzip({ chunkSize: 1 << 20 }));
  const n = await applyTarStream(tree, stages, options);
  if (hash && verify) {
    const got = `${verify.digest.split(":")[0]}:${hash.digest("hex")}`;
    if (got !== verify.digest) {
      throw new BuildError(
        "LAYER_FAILED",
        `${path}: digest is ${got}, the manifest says ${verify.digest}`,
      );
    }
  }
  return n;
}

/**
 * Apply an uncompressed tar stream (given as pipeline stages ending in tar
 * bytes) to the tree. Entries apply in order; whiteouts delete what lower
 * layers put there, never what this layer wrote.
 */
export async function applyTarStream(
  tree: StagingTree,
  stages: (Readable | Transform)[],
  options: TarApplyOptions,
): Promise<number> {
  const extract = tarStream.extract();
  const feed = pipeline([...stages, extract] as unknown as [Readable, PassThrough]);
  let feedError: unknown;
  feed.catch((err: unknown) => {
    feedError = err;
  });
  const written = new Set<string>();
  let count = 0;
  try {
    for await (const entry of extract) {
      count++;
      try {
        await applyEntry(tree, entry, options, written);
      } catch (err) {
        entry.resume();
        if (err instanceof BuildError) {
          throw new BuildError(
            err.code,
            `entry ${JSON.stringify(entry.header.name)}: ${err.message}`,
            {
              cause: err,
              details: { ...err.details, entry: entry.header.name },
            },
          );
        }
        throw err;
      }
    }
  } catch (err) {
    if (err instanceof BuildError) throw err;
    throw new BuildError("LAYER_FAILED", `not a valid tar: ${(err as Error).message}`, {
      cause: err,
    });
  }
  await feed.catch(() => undefined);
  if (feedError) {
    throw new BuildError("LAYER_FAILED", `not a valid tar: ${(feedError as Error).message}`, {
      cause: feedError,
    });
  }
  return count;
}

/**
 * The entries of a tar layer (a tar file, plain or gzip, or every layer of an
 * OCI image layout) whose names the layer step would refuse as unsafe: an
 * absolute name, a `..` component, a newline; the same for a hard link's
 * target. Reads the headers only (the data is skipped, a gzip layer is
 * inflated); at most `limit` problems. A layer that cannot be read is left
 * to the layer step, which says why.
 */
export async function unsafeTarEntries(path: string, limit = 5): Promise<string[]> {
  const problems: string[] = [];
  const check = async (file: string, label: string): Promise<void> => {
    const stages: (Readable | Transform)[] = [createReadStream(file, { highWaterMark: 1 << 20 })];
    if (detectCompression(await readHead(file), file) === "gzip") stages.push(createGunzip());
    const extract = tarStream.extract();
    const feed = pipeline([...stages, extract] as unknown as [Readable, PassThrough]);
    feed.catch(() => undefined);
    for await (const entry of extract as AsyncIterable<TarEntry>) {
      const h = entry.header;
      entry.resume();
      const names = [h.name, ...(h.type === "link" ? [h.linkname ?? ""] : [])];
      for (const name of names) {
        try {
          entryComponents(name);
        } catch (err) {
          if (!(err instanceof BuildError)) throw err;
          problems.push(`${label}entry ${JSON.stringify(h.name)}: ${err.message}`);
        }
      }
      if (problems.length >= limit) {
        extract.destroy();
        break;
      }
    }
  };
  try {
    if ((await stat(path)).isDirectory()) {
      for (const layer of await ociLayers(path)) {
        if (problems.length >= limit) break;
        await check(blobPath(path, layer.digest), `blob ${layer.digest}: `);
      }
    } else await check(path, "");
  } catch (err) {
    if (!(err instanceof BuildError) && !isFormatError(err)) throw err;
  }
  return problems.slice(0, limit);
}

/**
 * A layer that is not a tar or gzip stream (tar-stream throws a plain Error,
 * zlib a Z_ code) or cannot be read (an errno code): the layer step reports
 * it with its context. A TypeError or the like is a bug and is not one.
 */
function isFormatError(err: unknown): boolean {
  if (!(err instanceof Error)) return false;
  const code = (err as NodeJS.ErrnoException).code;
  if (code === undefined) return err.constructor === Error;
  return code.startsWith("Z_") || /^E[A-Z]+$/.test(code);
}

/** One entry as tar-stream yields it: the header and a stream of its data. */
type TarEntry = AsyncIterable<unknown> & { header: Header; resume(): unknown };

async function applyEntry(
  tree: StagingTree,
  entry: TarEntry,
  options: TarApplyOptions,
  written: Set<string>,
): Promise<void> {
  const h = entry.header;
  const parts = entryComponents(h.name);
  const meta = { mode: (h.mode ?? 0o644) & 0o7777, uid: h.uid ?? 0, gid: h.gid ?? 0 };
  const base = parts.at(-1) ?? "";

  // OCI whiteouts (image-spec layer.md): applied against lower layers only.
  if (base === OPAQUE) {
    entry.resume();
    const dir = tree.resolve(parts.slice(0, -1), { followLast: true, create: false });
    if (dir !== undefined && tree.isDirectory(dir)) opaque(tree, dir, written);
    return;
  }
  if (base.startsWith(WHITEOUT_PREFIX)) {
    entry.resume();
    const victim = [...parts.slice(0, -1), base.slice(WHITEOUT_PREFIX.length)];
    const rel = tree.resolve(victim, { followLast: false, create: false });
    if (rel !== undefined && !written.has(rel)) tree.remove(victim);
    return;
  }

  switch (h.type) {
    case "file":
    case "contiguous-file":
      mark(written, await tree.writeFile(parts, meta, entry as AsyncIterable<Uint8Array>));
      return;
    case "directory":
      entry.resume();
      mark(written, tree.mkdir(parts, meta));
      return;
    case "symlink":
      entry.resume();
      mark(written, tree.symlink(parts, h.linkname ?? "", meta));
      return;
    case "link": {
      entry.resume();
      const target = entryComponents(h.linkname ?? "");
      mark(written, tree.link(parts, target));
      return;
    }
    case "character-device":
    case "block-device": {
      entry.resume();
      const type = h.type === "character-device" ? "char" : "block";
      const dev = `${type} device ${h.devmajor ?? 0}:${h.devminor ?? 0}`;
      if (!options.allowDevices) {
        throw new BuildError(
          "LAYER_UNSAFE",
          `${dev}: device nodes are refused unless the layer sets allowDevices: true`,
        );
      }
      mark(
        written,
        tree.special(parts, { ...meta, type, major: h.devmajor ?? 0, minor: h.devminor ?? 0 }),
      );
      return;
    }
    case "fifo":
      entry.resume();
      mark(written, tree.special(parts, { ...meta, type: "fifo" }));
      return;
    default:
      entry.resume();
      throw new BuildError("LAYER_FAILED", `unsupported tar entry type ${h.type}`);
  }
}

/** Record a path this layer wrote, and its parents (which the layer may have created implicitly). */
function mark(written: Set<string>, rel: string): void {
  const parts = rel.split("/");
  for (let i = 1; i <= parts.length; i++) written.add(parts.slice(0, i).join("/"));
}

/** `.wh..wh..opq`: empty a directory of everything lower layers put in it. */
function opaque(tree: StagingTree, dir: string, written: Set<string>): void {
  for (const name of tree.children(dir)) {
    const child = dir === "" ? name : `${dir}/${name}`;
    if (!written.has(child)) tree.removePhysical(child);
    else if (tree.isDirectory(child)) opaque(tree, child, written);
  }
}

// ---------------------------------------------------------------------------
// OCI image layout (image-spec image-layout.md): oci-layout, index.json,
// blobs/<alg>/<hex>; index -> (nested index ->) manifest -> layers in order.

const MT_INDEX = [
  "application/vnd.oci.image.index.v1+json",
  "application/vnd.docker.distribution.manifest.list.v2+json",
];
const MT_MANIFEST = [
  "application/vnd.oci.image.manifest.v1+json",
  "application/vnd.docker.distribution.manifest.v2+json",
];

interface Descriptor {
  mediaType?: string;
  digest: string;
  platform?: { os?: string; architecture?: string };
}

function blobPath(layout: string, digest: unknown): string {
  if (typeof digest !== "string" || !/^(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$/.test(digest)) {
    throw new BuildError("LAYER_FAILED", `${layout}: bad blob digest ${JSON.stringify(digest)}`);
  }
  const [alg, hex] = digest.split(":") as [string, string];
  return join(layout, "blobs", alg, hex);
}

async function readJson(path: string): Promise<Record<string, unknown>> {
  try {
    return JSON.parse(await readFile(path, "utf8")) as Record<string, unknown>;
  } catch (err) {
    throw new BuildError("LAYER_FAILED", `${path}: ${(err as Error).message}`, { cause: err });
  }
}

/** The layer descriptors of the (linux/amd64) image in an OCI image layout. */
export async function ociLayers(layout: string): Promise<Descriptor[]> {
  await readJson(join(layout, "oci-layout"));
  let doc = await readJson(join(layout, "index.json"));
  for (let depth = 0; depth < 4; depth++) {
    const manifests = (doc.manifests ?? []) as Descriptor[];
    const isManifest = doc.layers !== undefined;
    if (isManifest) {
      const layers = (doc.layers ?? []) as Descriptor[];
      for (const l of layers) {
        if (l.mediaType && /zstd/.test(l.mediaType)) {
          throw new BuildError(
            "LAYER_FAILED",
            `${layout}: layer ${l.digest} is zstd-compressed; only plain and gzip layers are read`,
          );
        }
        blobPath(layout, l.digest);
      }
      return layers;
    }
    const candidates = manifests.filter(
      (m) =>
        (!m.mediaType || MT_MANIFEST.includes(m.mediaType) || MT_INDEX.includes(m.mediaType)) &&
        (!m.platform || (m.platform.os === "linux" && m.platform.architecture === "amd64")),
    );
    if (candidates.length !== 1) {
      throw new BuildError(
        "LAYER_FAILED",
        `${layout}: expected one linux/amd64 image in the index, found ${candidates.length}`,
      );
    }
    doc = await readJson(blobPath(layout, candidates[0]!.digest));
  }
  throw new BuildError("LAYER_FAILED", `${layout}: indexes nested too deeply`);
}

/** Apply every layer of an OCI image layout, lowest first. Returns the number of entries. */
export async function applyOciLayout(
  tree: StagingTree,
  layout: string,
  options: TarApplyOptions,
): Promise<number> {
  let n = 0;
  for (const layer of await ociLayers(layout)) {
    const path = blobPath(layout, layer.digest);
    try {
      n += await applyTarFile(tree, path, options, { digest: layer.digest });
    } catch (err) {
      if (err instanceof BuildError) {
        throw new BuildError(err.code, `blob ${layer.digest}: ${err.message}`, {
          cause: err,
          details: err.details,
        });
      }
      throw err;
    }
  }
  return n;
}
