/**
 * The spec's `rootfs:` section: the squashfs compression and the layers, in
 * order (src/build/README.md, "The spec"). A layer is exactly one of tar,
 * dir, files, host-binaries, debootstrap.
 */
import { describe, get, type Loc, type MapNode, type YNode } from "../../image/index.ts";
import { DEB_PACKAGE_RE, hostPath, type Section } from "./fields.ts";
import type {
  Compression,
  DebootstrapLayer,
  FileEntry,
  HostBinary,
  LayerOrigin,
  LayerSpec,
} from "./types.ts";

/** The `rootfs` section; undefined when any of it is invalid (every problem recorded). */
export function parseRootfs(
  s: Section,
  root: MapNode | undefined,
  at: Loc,
): { compression: Compression; layers: LayerSpec[] } | undefined {
  const { c } = s;
  const issues = c.issues;
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
    const layer = parseLayer(s, node, `rootfs.layers[${i}]`);
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
  return compression !== undefined && layersOk ? { compression, layers } : undefined;
}

const LAYER_KINDS = ["tar", "dir", "files", "host-binaries", "debootstrap"] as const;

function parseLayer(s: Section, node: YNode, field: string): LayerSpec | undefined {
  const { c, references, hostBinaries } = s;
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
