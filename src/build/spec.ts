/**
 * The image spec: a YAML file, validated once at load into a typed
 * `ImageSpec` with units in the names (README.md, "The spec").
 *
 * Validation collects every problem before throwing one `SPEC_INVALID`
 * (or `SPEC_NOT_FOUND` when every problem is a missing file, `LAYER_UNSAFE`
 * when every problem is an unsafe tar entry), each naming
 * the file, line, column and field. `parseSpec` is pure (the texts of
 * extended bases are passed in); `loadSpec` reads the files and checks that
 * every referenced file exists.
 */
import { accessSync, constants } from "node:fs";
import { readFile, stat } from "node:fs/promises";
import { dirname, isAbsolute, posix, resolve } from "node:path";
import semver from "semver";
import { isAlias, isMap, isScalar, isSeq, LineCounter, type Node, parseDocument } from "yaml";
import { findTool } from "../exec.ts";
import {
  CHANNEL_NAME,
  CHANNEL_NAME_RULE,
  CMDLINE_PREFIX,
  COMPATIBLE_NAME,
  COMPATIBLE_NAME_RULE,
  type ConfirmPolicy,
  DEFAULT_GOOD_TRIES,
  MAX_TRIES,
  repoUrlProblem,
} from "../image/index.ts";
import { BuildError } from "./errors.ts";
import { unsafeTarEntries } from "./tar-extract.ts";

export type Compression = "gzip" | "xz";

const CONFIRM_RE = /^(started|healthy)$/;

/** Where a value was written: file (as the caller named it), 1-based line and column. */
export interface SpecOrigin {
  file: string;
  line: number;
  col: number;
}

export interface LayerOrigin extends SpecOrigin {
  /** The layer as written, for messages: `tar base.tar.gz`, `dir overlay/`, `files (2)`. */
  label: string;
}

export interface TarLayer {
  kind: "tar";
  /** Absolute path: a tar file (plain or gzip) or an OCI image layout directory. */
  path: string;
  allowDevices: boolean;
  origin: LayerOrigin;
}
export interface DirLayer {
  kind: "dir";
  /** Absolute path of a directory copied into the rootfs, owned by root. */
  path: string;
  origin: LayerOrigin;
}
export interface FileEntry {
  /** Absolute path inside the rootfs. */
  path: string;
  mode: number;
  uid: number;
  gid: number;
  /** Exactly one of content and source (an absolute host path). */
  content?: string;
  source?: string;
}
export interface FilesLayer {
  kind: "files";
  files: FileEntry[];
  origin: LayerOrigin;
}
export interface HostBinary {
  /** A program name looked up on PATH, or an absolute host path. */
  binary: string;
  /** Absolute path inside the rootfs; default: the path the binary was found at. */
  to?: string;
}
export interface HostBinariesLayer {
  kind: "host-binaries";
  binaries: HostBinary[];
  origin: LayerOrigin;
}
export interface DebootstrapLayer {
  kind: "debootstrap";
  suite: string;
  variant: string;
  packages: string[];
  /** Default: the first Debian mirror configured for the host's apt. */
  mirror?: string;
  origin: LayerOrigin;
}
export type LayerSpec = TarLayer | DirLayer | FilesLayer | HostBinariesLayer | DebootstrapLayer;

export interface HealthCheck {
  /** For logs; default: the command. */
  name?: string;
  /** Run with /bin/sh -c; healthy when it exits 0 within timeoutMs. */
  command: string;
  timeoutMs: number;
}

export interface ImageSpec {
  /** The spec file as the caller named it. */
  file: string;
  /** Every spec file that contributed, the farthest base first, `file` last. */
  specFiles: string[];
  name: string;
  version: string;
  compatible: string;
  kernel: {
    /** Exactly one of package (a Debian package) and path (absolute: boot/vmlinuz-*, lib/modules/*). */
    package?: string;
    path?: string;
    cmdline: string;
    modules: string[];
  };
  rootfs: { compression: Compression; layers: LayerSpec[] };
  disk: { espSizeBytes: number; slotSizeBytes: number; stateSizeBytes: number };
  update: {
    channel: string;
    repo: string;
    tries: number;
    /** Unconfirmed boots of a good slot before GRUB falls back to the other good slot (1-9). */
    goodSlotTries: number;
    /** When the agent confirms a boot of a good slot: once it started, or once the health checks pass. */
    confirm: ConfirmPolicy;
    /**
     * Absolute paths of public keys the image trusts besides the build's own
     * signing key (which the pipeline adds); may be empty.
     */
    keys: string[];
    healthChecks: HealthCheck[];
    pollIntervalMs: number;
  };
}

export interface SpecIssue extends SpecOrigin {
  field: string;
  message: string;
  /** "not-found": a referenced file is missing; "invalid": anything else. */
  /** `unsafe`: a tar layer entry that the layer step would refuse (LAYER_UNSAFE). */
  kind: "invalid" | "not-found" | "unsafe";
}

export interface ParseSpecOptions {
  /** Texts of the extended bases, by absolute path (`path.resolve`). */
  bases?: ReadonlyMap<string, string>;
  /** Overrides `version` (the CLI's --version). */
  version?: string;
}

export const MIB = 1024 * 1024;
const UNITS: Record<string, number> = {
  B: 1,
  KiB: 1024,
  MiB: MIB,
  GiB: 1024 * MIB,
  TiB: 1024 * 1024 * MIB,
};
const NAME_RE = /^[a-z0-9-]+$/;
const MODULE_RE = /^[A-Za-z0-9_-]+$/;
const DEB_PACKAGE_RE = /^[a-z0-9][a-z0-9+.-]+$/;

// ---------------------------------------------------------------------------
// A YAML tree that remembers where each value came from, so that values
// merged from several files (extends) still point at their own line.

interface Loc {
  file: string;
  line: number;
  col: number;
}
interface MapNode {
  kind: "map";
  entries: Map<string, { key: Loc; value: SNode }>;
  loc: Loc;
}
interface SeqNode {
  kind: "seq";
  items: SNode[];
  loc: Loc;
}
interface ScalarNode {
  kind: "scalar";
  value: unknown;
  /** The scalar as written in the file (for octal modes). */
  raw: string;
  loc: Loc;
}
type SNode = MapNode | SeqNode | ScalarNode;

class Issues {
  readonly list: SpecIssue[] = [];
  add(loc: Loc, field: string, message: string, kind: SpecIssue["kind"] = "invalid"): void {
    this.list.push({ ...loc, field, message, kind });
  }
}

function toTree(text: string, file: string, issues: Issues): SNode | undefined {
  const lc = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lc, uniqueKeys: true, prettyErrors: true });
  const locOf = (offset: number): Loc => {
    const p = lc.linePos(offset);
    return { file, line: p.line, col: p.col };
  };
  for (const err of doc.errors) {
    const pos = err.linePos?.[0] ?? { line: 1, col: 1 };
    issues.add(
      { file, line: pos.line, col: pos.col },
      "(yaml)",
      (err.message.split("\n")[0] ?? err.code).replace(/ at line \d+, column \d+:?$/, ""),
    );
  }
  if (doc.errors.length > 0) return undefined;
  const convert = (node: unknown, depth: number): SNode => {
    const n = (isAlias(node) ? node.resolve(doc) : node) as Node | null | undefined;
    const start = n?.range?.[0] ?? 0;
    const loc = locOf(start);
    if (depth > 64) {
      issues.add(loc, "(yaml)", "nested too deeply");
      return { kind: "scalar", value: null, raw: "", loc };
    }
    if (isMap(n)) {
      const entries = new Map<string, { key: Loc; value: SNode }>();
      for (const pair of n.items) {
        const keyNode = pair.key as Node | null;
        const keyLoc = locOf(keyNode?.range?.[0] ?? start);
        const key = isScalar(keyNode) ? keyNode.value : undefined;
        if (typeof key !== "string") {
          issues.add(keyLoc, "(yaml)", "keys must be plain strings");
          continue;
        }
        const value = pair.value
          ? convert(pair.value, depth + 1)
          : { kind: "scalar" as const, value: null, raw: "", loc: keyLoc };
        entries.set(key, { key: keyLoc, value });
      }
      return { kind: "map", entries, loc };
    }
    if (isSeq(n)) return { kind: "seq", items: n.items.map((i) => convert(i, depth + 1)), loc };
    if (isScalar(n)) {
      const raw = n.range ? text.slice(n.range[0], n.range[1]) : String(n.value);
      return { kind: "scalar", value: n.value, raw, loc };
    }
    return { kind: "scalar", value: null, raw: "", loc };
  };
  return convert(doc.contents, 0);
}

/**
 * Merge a spec over its base: mappings merge key by key, `rootfs.layers`
 * appends, anything else the child sets replaces the base's value. Setting
 * one of kernel.package / kernel.path drops the other from the base.
 */
function merge(base: SNode, over: SNode, path: string): SNode {
  if (base.kind !== "map" || over.kind !== "map") {
    if (path === "rootfs.layers" && base.kind === "seq" && over.kind === "seq") {
      return { kind: "seq", items: [...base.items, ...over.items], loc: over.loc };
    }
    return over;
  }
  const entries = new Map(base.entries);
  if (path === "kernel" && (over.entries.has("package") || over.entries.has("path"))) {
    entries.delete("package");
    entries.delete("path");
  }
  for (const [k, v] of over.entries) {
    const b = entries.get(k);
    entries.set(
      k,
      b ? { key: v.key, value: merge(b.value, v.value, path ? `${path}.${k}` : k) } : v,
    );
  }
  return { kind: "map", entries, loc: over.loc };
}

// ---------------------------------------------------------------------------
// Field checks. Each returns undefined (and records an issue) when invalid.

function describe(n: SNode): string {
  if (n.kind === "map") return "a mapping";
  if (n.kind === "seq") return "a list";
  if (n.value === null) return "empty";
  return `${typeof n.value} ${JSON.stringify(n.value)}`;
}

class Checker {
  readonly issues: Issues;
  constructor(issues: Issues) {
    this.issues = issues;
  }

  map(
    n: SNode | undefined,
    field: string,
    known: readonly string[],
    required: readonly string[],
    parentLoc: Loc,
  ): MapNode | undefined {
    if (!n) {
      this.issues.add(parentLoc, field, "is required");
      return undefined;
    }
    if (n.kind !== "map") {
      this.issues.add(n.loc, field, `must be a mapping (got ${describe(n)})`);
      return undefined;
    }
    for (const [k, v] of n.entries) {
      if (!known.includes(k)) {
        this.issues.add(
          v.key,
          field ? `${field}.${k}` : k,
          `unknown field "${k}" (known: ${known.join(", ")})`,
        );
      }
    }
    for (const r of required) {
      if (!n.entries.has(r)) this.issues.add(n.loc, field ? `${field}.${r}` : r, "is required");
    }
    return n;
  }

  string(n: SNode | undefined, field: string, re?: RegExp, what?: string): string | undefined {
    if (!n) return undefined;
    if (n.kind !== "scalar" || typeof n.value !== "string") {
      this.issues.add(n.loc, field, `must be a string (got ${describe(n)})`);
      return undefined;
    }
    if (re && !re.test(n.value)) {
      this.issues.add(
        n.loc,
        field,
        `${JSON.stringify(n.value)} is not ${what ?? `matching ${re}`}`,
      );
      return undefined;
    }
    return n.value;
  }

  integer(n: SNode | undefined, field: string, min: number, max: number): number | undefined {
    if (!n) return undefined;
    if (n.kind !== "scalar" || typeof n.value !== "number" || !Number.isSafeInteger(n.value)) {
      this.issues.add(n.loc, field, `must be an integer (got ${describe(n)})`);
      return undefined;
    }
    if (n.value < min || n.value > max) {
      this.issues.add(n.loc, field, `must be between ${min} and ${max} (got ${n.value})`);
      return undefined;
    }
    return n.value;
  }

  boolean(n: SNode | undefined, field: string): boolean | undefined {
    if (!n) return undefined;
    if (n.kind !== "scalar" || typeof n.value !== "boolean") {
      this.issues.add(n.loc, field, `must be true or false (got ${describe(n)})`);
      return undefined;
    }
    return n.value;
  }

  list(n: SNode | undefined, field: string): SNode[] | undefined {
    if (!n) return undefined;
    if (n.kind !== "seq") {
      this.issues.add(n.loc, field, `must be a list (got ${describe(n)})`);
      return undefined;
    }
    return n.items;
  }

  strings(n: SNode | undefined, field: string, re?: RegExp, what?: string): string[] | undefined {
    const items = this.list(n, field);
    if (!items) return undefined;
    const out: string[] = [];
    let ok = true;
    items.forEach((item, i) => {
      const s = this.string(item, `${field}[${i}]`, re, what);
      if (s === undefined) ok = false;
      else out.push(s);
    });
    return ok ? out : undefined;
  }

  /** A size with a unit (KiB, MiB, GiB, TiB) or a plain byte count. */
  size(n: SNode | undefined, field: string): number | undefined {
    if (!n) return undefined;
    let bytes: number | undefined;
    if (n.kind === "scalar" && typeof n.value === "number") {
      bytes = n.value;
    } else if (n.kind === "scalar" && typeof n.value === "string") {
      const m = /^(\d+)\s*(B|KiB|MiB|GiB|TiB)?$/.exec(n.value.trim());
      if (m) bytes = Number(m[1]) * UNITS[m[2] ?? "B"]!;
    }
    if (bytes === undefined) {
      this.issues.add(
        n.loc,
        field,
        `${describe(n)} is not a size: write a byte count or a number with KiB, MiB, GiB or TiB (powers of 1024), e.g. 512MiB`,
      );
      return undefined;
    }
    if (!Number.isSafeInteger(bytes) || bytes <= 0) {
      this.issues.add(n.loc, field, `must be a positive size (got ${describe(n)})`);
      return undefined;
    }
    return bytes;
  }

  /** A rootfs path: absolute, no `..` and no empty components. */
  rootfsPath(n: SNode | undefined, field: string): string | undefined {
    const s = this.string(n, field);
    if (s === undefined || !n) return undefined;
    const parts = s.split("/").slice(1);
    if (
      !s.startsWith("/") ||
      parts.some((p) => p === ".." || p === ".") ||
      s.includes("\0") ||
      posix.normalize(s) === "/"
    ) {
      this.issues.add(
        n.loc,
        field,
        `${JSON.stringify(s)} must be an absolute path to a file in the rootfs, without . or .. components`,
      );
      return undefined;
    }
    return posix.normalize(s).replace(/\/$/, "");
  }

  /** An octal mode: a string "0644" or an unquoted 0644 (read as written, not as decimal). */
  mode(n: SNode | undefined, field: string): number | undefined {
    if (!n) return undefined;
    const raw =
      n.kind === "scalar" && typeof n.value === "string"
        ? n.value
        : n.kind === "scalar" && typeof n.value === "number"
          ? n.raw.replace(/^0o/, "")
          : undefined;
    if (raw === undefined || !/^[0-7]{3,4}$/.test(raw)) {
      this.issues.add(n.loc, field, `must be an octal mode like "0644" (got ${describe(n)})`);
      return undefined;
    }
    return Number.parseInt(raw, 8);
  }
}

/** A host path relative to the spec file that wrote it. */
function hostPath(n: SNode, value: string): string {
  return isAbsolute(value) ? value : resolve(dirname(n.loc.file), value);
}

interface Reference {
  loc: Loc;
  field: string;
  path: string;
  type: "file" | "dir" | "file-or-dir";
  /** A tar layer: its entry names are checked too (step 4). */
  tar?: true;
}

interface Parsed {
  spec: ImageSpec | undefined;
  issues: SpecIssue[];
  references: Reference[];
  hostBinaries: { loc: Loc; field: string; binary: string }[];
}

/** Read the `extends` value of a parsed spec tree, if any. */
function extendsOf(tree: SNode | undefined): { loc: Loc; value: unknown } | undefined {
  if (tree?.kind !== "map") return undefined;
  const e = tree.entries.get("extends");
  if (!e) return undefined;
  return { loc: e.value.loc, value: e.value.kind === "scalar" ? e.value.value : undefined };
}

function parseInternal(text: string, file: string, options: ParseSpecOptions): Parsed {
  const issues = new Issues();
  const references: Reference[] = [];
  const hostBinaries: Parsed["hostBinaries"] = [];
  const fail = (): Parsed => ({ spec: undefined, issues: issues.list, references, hostBinaries });

  // 1. The extends chain, the spec itself first.
  const chain: { file: string; tree: SNode }[] = [];
  const seen = [resolve(file)];
  let current: { file: string; text: string } | undefined = { file, text };
  while (current) {
    const tree = toTree(current.text, current.file, issues);
    if (!tree) return fail();
    if (tree.kind !== "map") {
      issues.add(tree.loc, "(spec)", `must be a mapping of fields (got ${describe(tree)})`);
      return fail();
    }
    chain.push({ file: current.file, tree });
    const ext = extendsOf(tree);
    current = undefined;
    if (!ext) break;
    if (typeof ext.value !== "string" || ext.value === "") {
      issues.add(ext.loc, "extends", "must be the path of another spec file");
      return fail();
    }
    const baseFile = isAbsolute(ext.value)
      ? ext.value
      : posix.join(dirname(chain.at(-1)!.file), ext.value);
    const key = resolve(baseFile);
    if (seen.includes(key)) {
      issues.add(ext.loc, "extends", `cycle: ${[...seen, key].join(" -> ")}`);
      return fail();
    }
    seen.push(key);
    const baseText = options.bases?.get(key);
    if (baseText === undefined) {
      issues.add(ext.loc, "extends", `${baseFile} not found`, "not-found");
      return fail();
    }
    current = { file: baseFile, text: baseText };
  }

  // 2. Merge, the farthest base first.
  chain.reverse();
  let merged: SNode = chain[0]!.tree;
  for (const c of chain.slice(1)) merged = merge(merged, c.tree, "");
  const top = merged as MapNode;
  top.entries.delete("extends");

  // 3. Validate every field.
  const c = new Checker(issues);
  const at = chain.at(-1)!.tree.loc;
  const root = c.map(
    top,
    "",
    ["extends", "name", "version", "compatible", "kernel", "rootfs", "disk", "update"],
    ["name", "version", "compatible", "kernel", "rootfs", "disk", "update"],
    at,
  );
  const get = (m: MapNode | undefined, k: string): SNode | undefined => m?.entries.get(k)?.value;

  const name = c.string(get(root, "name"), "name", NAME_RE, "a valid name ([a-z0-9-]+)");
  let version: string | undefined;
  if (options.version !== undefined) {
    version = semver.valid(options.version) ?? undefined;
    if (!version) {
      issues.add(
        { file, line: 0, col: 0 },
        "version",
        `--version ${JSON.stringify(options.version)} is not a semver version like 1.2.3`,
      );
    }
  } else {
    const vNode = get(root, "version");
    if (vNode?.kind === "scalar" && typeof vNode.value === "number") {
      issues.add(
        vNode.loc,
        "version",
        `must be a semver version string like 1.0.0 (got the number ${vNode.raw}; quote it)`,
      );
    } else {
      const v = c.string(vNode, "version");
      if (v !== undefined) {
        version = semver.valid(v) ?? undefined;
        if (!version)
          issues.add(
            vNode!.loc,
            "version",
            `${JSON.stringify(v)} is not a semver version like 1.2.3`,
          );
      }
    }
  }
  const compatible = c.string(
    get(root, "compatible"),
    "compatible",
    COMPATIBLE_NAME,
    COMPATIBLE_NAME_RULE,
  );

  // kernel
  const k = c.map(get(root, "kernel"), "kernel", ["package", "path", "cmdline", "modules"], [], at);
  let kernel: ImageSpec["kernel"] | undefined;
  if (k) {
    const pkgNode = get(k, "package");
    const pathNode = get(k, "path");
    const pkg = c.string(pkgNode, "kernel.package", DEB_PACKAGE_RE, "a Debian package name");
    const kpath = c.string(pathNode, "kernel.path");
    if (pkgNode && pathNode) {
      issues.add(pathNode.loc, "kernel", "set exactly one of package and path (both are set)");
    } else if (!pkgNode && !pathNode) {
      issues.add(
        k.loc,
        "kernel",
        "set exactly one of package (a Debian kernel package) and path (a directory with boot/vmlinuz-* and lib/modules/*)",
      );
    }
    const cmdlineNode = get(k, "cmdline");
    const cmdline = cmdlineNode ? c.string(cmdlineNode, "kernel.cmdline") : "";
    if (cmdline !== undefined && cmdlineNode) {
      if (/[\n\r"]/.test(cmdline)) {
        issues.add(cmdlineNode.loc, "kernel.cmdline", "must be one line without double quotes");
      }
      const own = cmdline.split(/\s+/).find((t) => t.startsWith(CMDLINE_PREFIX));
      if (own) {
        issues.add(
          cmdlineNode.loc,
          "kernel.cmdline",
          `${own}: abforge.* parameters are set by the bootloader, not the spec`,
        );
      }
    }
    const modulesNode = get(k, "modules");
    const modules = modulesNode
      ? c.strings(modulesNode, "kernel.modules", MODULE_RE, "a kernel module name")
      : [];
    const kp = kpath !== undefined && pathNode ? hostPath(pathNode, kpath) : undefined;
    if (kp && pathNode)
      references.push({ loc: pathNode.loc, field: "kernel.path", path: kp, type: "dir" });
    if (cmdline !== undefined && modules) {
      kernel = { cmdline, modules };
      if (pkg !== undefined) kernel.package = pkg;
      if (kp !== undefined) kernel.path = kp;
    }
  }

  // rootfs
  const r = c.map(get(root, "rootfs"), "rootfs", ["compression", "layers"], ["layers"], at);
  let compression: Compression | undefined = "xz";
  const compNode = get(r, "compression");
  if (compNode) {
    const comp = c.string(compNode, "rootfs.compression");
    if (comp === "gzip" || comp === "xz") compression = comp;
    else {
      compression = undefined;
      if (comp !== undefined) {
        issues.add(
          compNode.loc,
          "rootfs.compression",
          `${JSON.stringify(comp)} is not supported: use gzip or xz, the only squashfs compressions GRUB 2.06 (Debian 12) can read, and GRUB reads the kernel from the slot's squashfs`,
        );
      }
    }
  }
  const layerNodes = c.list(get(r, "layers"), "rootfs.layers");
  const layers: LayerSpec[] = [];
  let layersOk = layerNodes !== undefined;
  if (layerNodes && layerNodes.length === 0 && r) {
    issues.add(get(r, "layers")!.loc, "rootfs.layers", "must list at least one layer");
    layersOk = false;
  }
  layerNodes?.forEach((node, i) => {
    const layer = parseLayer(c, node, `rootfs.layers[${i}]`, references, hostBinaries);
    if (layer?.kind === "debootstrap" && i > 0) {
      issues.add(
        node.loc,
        `rootfs.layers[${i}]`,
        "debootstrap creates the rootfs: it must be the first layer",
      );
      layersOk = false;
    } else if (layer) layers.push(layer);
    else layersOk = false;
  });

  // disk
  const d = c.map(
    get(root, "disk"),
    "disk",
    ["espSize", "slotSize", "stateSize"],
    ["espSize", "slotSize", "stateSize"],
    at,
  );
  const sizes: Record<string, number | undefined> = {};
  for (const f of ["espSize", "slotSize", "stateSize"]) {
    const n = get(d, f);
    const bytes = c.size(n, `disk.${f}`);
    if (bytes !== undefined && bytes % MIB !== 0) {
      issues.add(
        n!.loc,
        `disk.${f}`,
        `${bytes} bytes is not a multiple of 1 MiB (partitions are 1 MiB aligned)`,
      );
      sizes[f] = undefined;
    } else sizes[f] = bytes;
  }

  // update
  const u = c.map(
    get(root, "update"),
    "update",
    [
      "channel",
      "repo",
      "tries",
      "goodSlotTries",
      "confirm",
      "keys",
      "healthChecks",
      "pollIntervalMs",
    ],
    ["repo"],
    at,
  );
  const channelNode = get(u, "channel");
  const channel = channelNode
    ? c.string(channelNode, "update.channel", CHANNEL_NAME, CHANNEL_NAME_RULE)
    : "stable";
  const repoNode = get(u, "repo");
  const repo = c.string(repoNode, "update.repo");
  const repoProblem = repo === undefined ? undefined : repoUrlProblem(repo);
  if (repoProblem !== undefined) {
    issues.add(repoNode!.loc, "update.repo", `${JSON.stringify(repo)}: ${repoProblem}`);
  }
  const triesNode = get(u, "tries");
  // Tries left live in a one-digit GRUB env variable (contracts: X_tries 0-9).
  const tries = triesNode ? c.integer(triesNode, "update.tries", 1, MAX_TRIES) : 3;
  // So does the count of a good slot's unconfirmed boots (X_boots, good_tries).
  const goodTriesNode = get(u, "goodSlotTries");
  const goodSlotTries = goodTriesNode
    ? c.integer(goodTriesNode, "update.goodSlotTries", 1, MAX_TRIES)
    : DEFAULT_GOOD_TRIES;
  const confirmNode = get(u, "confirm");
  const confirm = confirmNode
    ? (c.string(confirmNode, "update.confirm", CONFIRM_RE, '"started" or "healthy"') as
        | ConfirmPolicy
        | undefined)
    : "started";
  const keysNode = get(u, "keys");
  const keyNames = keysNode ? c.strings(keysNode, "update.keys") : [];
  const keys = keyNames?.map((kname, i) => {
    const n = (keysNode as SeqNode).items[i]!;
    const p = hostPath(n, kname);
    references.push({ loc: n.loc, field: `update.keys[${i}]`, path: p, type: "file" });
    return p;
  });
  const hcNode = get(u, "healthChecks");
  const healthChecks: HealthCheck[] = [];
  let hcOk = true;
  c.list(hcNode, "update.healthChecks")?.forEach((n, i) => {
    const f = `update.healthChecks[${i}]`;
    const m = c.map(n, f, ["name", "command", "timeoutMs"], ["command"], n.loc);
    const hcName = get(m, "name")
      ? c.string(get(m, "name"), `${f}.name`, NAME_RE, "a valid name ([a-z0-9-]+)")
      : undefined;
    const command = c.string(get(m, "command"), `${f}.command`);
    if (command === "") issues.add(get(m, "command")!.loc, `${f}.command`, "must not be empty");
    const tNode = get(m, "timeoutMs");
    const timeoutMs = tNode ? c.integer(tNode, `${f}.timeoutMs`, 1, 3_600_000) : 10_000;
    if (command && timeoutMs !== undefined && (hcName !== undefined || !get(m, "name"))) {
      healthChecks.push(hcName ? { name: hcName, command, timeoutMs } : { command, timeoutMs });
    } else hcOk = false;
  });
  const pollNode = get(u, "pollIntervalMs");
  const pollIntervalMs = pollNode
    ? c.integer(pollNode, "update.pollIntervalMs", 1000, 31 * 24 * 3_600_000)
    : 300_000;

  if (issues.list.length > 0) return fail();
  const spec: ImageSpec = {
    file,
    specFiles: chain.map((x) => x.file),
    name: name!,
    version: version!,
    compatible: compatible!,
    kernel: kernel!,
    rootfs: { compression: compression!, layers },
    disk: {
      espSizeBytes: sizes.espSize!,
      slotSizeBytes: sizes.slotSize!,
      stateSizeBytes: sizes.stateSize!,
    },
    update: {
      channel: channel!,
      repo: repo!,
      tries: tries!,
      goodSlotTries: goodSlotTries!,
      confirm: confirm!,
      keys: keys!,
      healthChecks,
      pollIntervalMs: pollIntervalMs!,
    },
  };
  if (!layersOk || !hcOk) return fail();
  return { spec, issues: [], references, hostBinaries };
}

const LAYER_KINDS = ["tar", "dir", "files", "host-binaries", "debootstrap"] as const;

function parseLayer(
  c: Checker,
  node: SNode,
  field: string,
  references: Reference[],
  hostBinaries: Parsed["hostBinaries"],
): LayerSpec | undefined {
  const issues = c.issues;
  if (node.kind !== "map") {
    issues.add(
      node.loc,
      field,
      `must be a mapping with one of ${LAYER_KINDS.join(", ")} (got ${describe(node)})`,
    );
    return undefined;
  }
  const kinds = LAYER_KINDS.filter((k) => node.entries.has(k));
  if (kinds.length !== 1) {
    const unknown = [...node.entries.keys()].filter((k) => k !== "allowDevices");
    issues.add(
      node.loc,
      field,
      kinds.length === 0
        ? `must have one of ${LAYER_KINDS.join(", ")}${unknown.length > 0 ? ` (unknown: ${unknown.join(", ")})` : ""}`
        : `has ${kinds.join(" and ")}: a layer is exactly one of ${LAYER_KINDS.join(", ")}`,
    );
    return undefined;
  }
  const kind = kinds[0]!;
  const known = kind === "tar" ? ["tar", "allowDevices"] : [kind];
  c.map(node, field, known, [], node.loc);
  const value = node.entries.get(kind)!.value;
  const origin = (label: string): LayerOrigin => ({ ...node.loc, label });
  switch (kind) {
    case "tar": {
      const p = c.string(value, `${field}.tar`);
      const adNode = node.entries.get("allowDevices")?.value;
      const allowDevices = adNode ? c.boolean(adNode, `${field}.allowDevices`) : false;
      if (p === undefined || allowDevices === undefined) return undefined;
      const path = hostPath(value, p);
      references.push({
        loc: value.loc,
        field: `${field}.tar`,
        path,
        type: "file-or-dir",
        tar: true,
      });
      return { kind, path, allowDevices, origin: origin(`tar ${p}`) };
    }
    case "dir": {
      const p = c.string(value, `${field}.dir`);
      if (p === undefined) return undefined;
      const path = hostPath(value, p);
      references.push({ loc: value.loc, field: `${field}.dir`, path, type: "dir" });
      return { kind, path, origin: origin(`dir ${p}`) };
    }
    case "files": {
      const items = c.list(value, `${field}.files`);
      if (!items) return undefined;
      const files: FileEntry[] = [];
      let ok = true;
      items.forEach((item, i) => {
        const f = `${field}.files[${i}]`;
        const m = c.map(
          item,
          f,
          ["path", "content", "source", "mode", "uid", "gid"],
          ["path"],
          item.loc,
        );
        if (!m) {
          ok = false;
          return;
        }
        const get = (k: string) => m.entries.get(k)?.value;
        const path = c.rootfsPath(get("path"), `${f}.path`);
        const modeNode = get("mode");
        const mode = modeNode ? c.mode(modeNode, `${f}.mode`) : 0o644;
        const uid = get("uid") ? c.integer(get("uid"), `${f}.uid`, 0, 2 ** 32 - 2) : 0;
        const gid = get("gid") ? c.integer(get("gid"), `${f}.gid`, 0, 2 ** 32 - 2) : 0;
        const contentNode = get("content");
        const sourceNode = get("source");
        if (!contentNode === !sourceNode) {
          issues.add(m.loc, f, "set exactly one of content and source");
          ok = false;
          return;
        }
        const content = contentNode ? c.string(contentNode, `${f}.content`) : undefined;
        const source = sourceNode ? c.string(sourceNode, `${f}.source`) : undefined;
        if (path === undefined || mode === undefined || uid === undefined || gid === undefined) {
          ok = false;
          return;
        }
        const entry: FileEntry = { path, mode, uid, gid };
        if (content !== undefined) entry.content = content;
        else if (source !== undefined && sourceNode) {
          entry.source = hostPath(sourceNode, source);
          references.push({
            loc: sourceNode.loc,
            field: `${f}.source`,
            path: entry.source,
            type: "file",
          });
        } else {
          ok = false;
          return;
        }
        files.push(entry);
      });
      if (!ok) return undefined;
      return { kind, files, origin: origin(`files (${files.length})`) };
    }
    case "host-binaries": {
      const items = c.list(value, `${field}.host-binaries`);
      if (!items) return undefined;
      const binaries: HostBinary[] = [];
      let ok = true;
      items.forEach((item, i) => {
        const f = `${field}.host-binaries[${i}]`;
        let b: HostBinary | undefined;
        if (item.kind === "map") {
          const m = c.map(item, f, ["binary", "to"], ["binary"], item.loc);
          const binary = c.string(
            m?.entries.get("binary")?.value,
            `${f}.binary`,
            /^[^\s\0]+$/,
            "a program name or path",
          );
          const toNode = m?.entries.get("to")?.value;
          const to = toNode ? c.rootfsPath(toNode, `${f}.to`) : undefined;
          if (binary !== undefined && (to !== undefined || !toNode))
            b = to ? { binary, to } : { binary };
        } else {
          const binary = c.string(item, f, /^[^\s\0]+$/, "a program name or path");
          if (binary !== undefined) b = { binary };
        }
        if (b) {
          binaries.push(b);
          hostBinaries.push({ loc: item.loc, field: f, binary: b.binary });
        } else ok = false;
      });
      if (!ok) return undefined;
      return {
        kind,
        binaries,
        origin: origin(`host-binaries ${binaries.map((b) => b.binary).join(",")}`),
      };
    }
    case "debootstrap": {
      const f = `${field}.debootstrap`;
      const m = c.map(value, f, ["suite", "variant", "packages", "mirror"], ["suite"], value.loc);
      if (!m) return undefined;
      const get = (k: string) => m.entries.get(k)?.value;
      const suite = c.string(
        get("suite"),
        `${f}.suite`,
        /^[a-z][a-z0-9-]*$/,
        "a Debian suite name",
      );
      const variant = get("variant")
        ? c.string(
            get("variant"),
            `${f}.variant`,
            /^(minbase|buildd|fakechroot)$/,
            "one of minbase, buildd, fakechroot",
          )
        : "minbase";
      const packages = get("packages")
        ? c.strings(get("packages"), `${f}.packages`, DEB_PACKAGE_RE, "a Debian package name")
        : [];
      const mirror = get("mirror")
        ? c.string(get("mirror"), `${f}.mirror`, /^https?:\/\/\S+$/, "an http(s) URL")
        : undefined;
      if (suite === undefined || variant === undefined || packages === undefined) return undefined;
      if (get("mirror") && mirror === undefined) return undefined;
      const layer: DebootstrapLayer = {
        kind,
        suite,
        variant,
        packages,
        origin: origin(`debootstrap ${suite}`),
      };
      if (mirror) layer.mirror = mirror;
      return layer;
    }
  }
}

function specError(file: string, issues: SpecIssue[], cause?: unknown): BuildError {
  const only = (kind: SpecIssue["kind"]) => issues.every((i) => i.kind === kind);
  const code = only("not-found")
    ? "SPEC_NOT_FOUND"
    : only("unsafe")
      ? "LAYER_UNSAFE"
      : "SPEC_INVALID";
  issues.sort((a, b) =>
    a.file !== b.file ? (a.file < b.file ? -1 : 1) : a.line - b.line || a.col - b.col,
  );
  const lines = issues.map(
    (i) => `  ${i.line > 0 ? `${i.file}:${i.line}:${i.col}` : i.file}: ${i.field}: ${i.message}`,
  );
  const n = issues.length;
  return new BuildError(
    code,
    `spec ${file}: ${n} ${n === 1 ? "error" : "errors"}:\n${lines.join("\n")}`,
    { cause, details: { file, issues } },
  );
}

/**
 * Parse and validate a spec's text (pure: no file is read). `file` names the
 * spec in messages and anchors its relative paths. Throws one BuildError
 * listing every problem.
 */
export function parseSpec(text: string, file: string, options: ParseSpecOptions = {}): ImageSpec {
  const parsed = parseInternal(text, file, options);
  if (!parsed.spec) throw specError(file, parsed.issues);
  return parsed.spec;
}

async function readSpecText(path: string): Promise<string | undefined> {
  try {
    return await readFile(path, "utf8");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw new BuildError(
      "SPEC_NOT_FOUND",
      `spec ${path}: cannot read it: ${(err as Error).message}`,
      {
        cause: err,
        details: { file: path },
      },
    );
  }
}

/**
 * Load a spec file: read it and its bases, validate, and check that every
 * referenced file (tars, dirs, sources, keys, kernel path) and host binary
 * exists.
 */
export async function loadSpec(
  file: string,
  options: { version?: string } = {},
): Promise<ImageSpec> {
  const text = await readSpecText(file);
  if (text === undefined) {
    throw new BuildError("SPEC_NOT_FOUND", `spec ${file} not found`, { details: { file } });
  }
  // Read the extends chain up to a missing file or a cycle; parseSpec reports either.
  const bases = new Map<string, string>();
  const seen = new Set([resolve(file)]);
  let cur = { file, text };
  for (;;) {
    const ext = extendsOf(toTree(cur.text, cur.file, new Issues()));
    if (typeof ext?.value !== "string" || ext.value === "") break;
    const baseFile = isAbsolute(ext.value) ? ext.value : posix.join(dirname(cur.file), ext.value);
    const key = resolve(baseFile);
    if (seen.has(key)) break;
    seen.add(key);
    const baseText = await readSpecText(baseFile);
    if (baseText === undefined) break;
    bases.set(key, baseText);
    cur = { file: baseFile, text: baseText };
  }
  const parseOptions: ParseSpecOptions = { bases };
  if (options.version !== undefined) parseOptions.version = options.version;
  const parsed = parseInternal(text, file, parseOptions);
  const issues = new Issues();
  issues.list.push(...parsed.issues);
  await Promise.all(
    parsed.references.map(async (ref) => {
      try {
        const st = await stat(ref.path);
        if (ref.type === "file" && !st.isFile())
          issues.add(ref.loc, ref.field, `${ref.path} is not a regular file`);
        if (ref.type === "dir" && !st.isDirectory())
          issues.add(ref.loc, ref.field, `${ref.path} is not a directory`);
      } catch (err) {
        issues.add(
          ref.loc,
          ref.field,
          `${ref.path} not found (${(err as NodeJS.ErrnoException).code})`,
          "not-found",
        );
        return;
      }
      // Unsafe names fail here, before the kernel and initramfs steps, as in a files layer.
      if (ref.tar) {
        for (const problem of await unsafeTarEntries(ref.path)) {
          issues.add(ref.loc, ref.field, `${ref.path}: ${problem}`, "unsafe");
        }
      }
    }),
  );
  for (const hb of parsed.hostBinaries) {
    if (!resolveHostBinary(hb.binary)) {
      issues.add(hb.loc, hb.field, `${hb.binary} not found on PATH or not executable`, "not-found");
    }
  }
  if (!parsed.spec || issues.list.length > 0) throw specError(file, issues.list);
  return parsed.spec;
}

/** Absolute path of a host binary: as given when absolute, else found on PATH. */
export function resolveHostBinary(binary: string): string | undefined {
  if (!binary.includes("/")) return findTool(binary);
  if (!isAbsolute(binary)) return undefined;
  try {
    accessSync(binary, constants.X_OK);
    return binary;
  } catch {
    return undefined;
  }
}
