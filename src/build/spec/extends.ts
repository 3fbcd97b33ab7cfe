/**
 * `extends`: a spec over its base specs (src/build/README.md, "The spec").
 * Each file is parsed on its own, so merged values keep their own file and
 * line; then they merge, the farthest base first.
 */
import { dirname, isAbsolute, posix, resolve } from "node:path";
import {
  describe,
  type Issues,
  type Loc,
  type MapNode,
  parseYaml,
  type YNode,
} from "../../image/index.ts";
import type { ParseSpecOptions, SpecIssueKind } from "./types.ts";

/** The path an `extends` names, relative to the spec that names it. */
export function basePath(specFile: string, value: string): string {
  return isAbsolute(value) ? value : posix.join(dirname(specFile), value);
}

/** Read the `extends` value of a parsed spec tree, if any. */
export function extendsOf(tree: YNode | undefined): { loc: Loc; value: unknown } | undefined {
  if (tree?.kind !== "map") return undefined;
  const e = tree.entries.get("extends");
  if (!e) return undefined;
  return { loc: e.value.loc, value: e.value.kind === "scalar" ? e.value.value : undefined };
}

/** The layer node's debootstrap mapping, when it is a debootstrap layer. */
function debootstrapOf(layer: YNode): YNode | undefined {
  if (layer.kind !== "map" || layer.entries.size !== 1) return undefined;
  return layer.entries.get("debootstrap")?.value;
}

/**
 * Merge a spec over its base: mappings merge key by key, `rootfs.layers`
 * appends (except that a debootstrap layer first in both lists is one layer:
 * the child's fields replace the base's and its packages are appended),
 * anything else the child sets replaces the base's value. Setting
 * one of kernel.package / kernel.path drops the other from the base.
 */
export function merge(base: YNode, over: YNode, path: string): YNode {
  if (base.kind !== "map" || over.kind !== "map") {
    if (path === "rootfs.layers" && base.kind === "seq" && over.kind === "seq") {
      const [b0, ...bRest] = base.items;
      const [o0, ...oRest] = over.items;
      // A child's debootstrap layer extends the base's (one Debian system,
      // more packages) instead of adding a second one.
      if (b0 && o0 && debootstrapOf(b0) && debootstrapOf(o0)) {
        const first = merge(b0, o0, "rootfs.layers[0]");
        return { kind: "seq", items: [first, ...bRest, ...oRest], loc: over.loc };
      }
      return { kind: "seq", items: [...base.items, ...over.items], loc: over.loc };
    }
    if (
      path === "rootfs.layers[0].debootstrap.packages" &&
      base.kind === "seq" &&
      over.kind === "seq"
    ) {
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

/**
 * The spec merged over its bases (steps 1-2), with every file of the chain
 * (the farthest base first) and the spec's own root; undefined after
 * recording why not (a syntax error, a missing base, a cycle).
 */
export function resolveExtends(
  text: string,
  file: string,
  options: ParseSpecOptions,
  issues: Issues<SpecIssueKind>,
): { merged: MapNode; files: string[]; at: Loc } | undefined {
  // 1. The extends chain, the spec itself first.
  const chain: { file: string; tree: MapNode }[] = [];
  const seen = [resolve(file)];
  let current: { file: string; text: string } | undefined = { file, text };
  while (current) {
    const tree = parseYaml(current.text, current.file, issues);
    if (!tree) return undefined;
    if (tree.kind !== "map") {
      issues.add(tree.loc, "(spec)", `must be a mapping of fields (got ${describe(tree)})`);
      return undefined;
    }
    chain.push({ file: current.file, tree });
    const ext = extendsOf(tree);
    current = undefined;
    if (!ext) break;
    if (typeof ext.value !== "string" || ext.value === "") {
      issues.add(ext.loc, "extends", "must be the path of another spec file");
      return undefined;
    }
    const baseFile = basePath(chain.at(-1)!.file, ext.value);
    const key = resolve(baseFile);
    if (seen.includes(key)) {
      issues.add(ext.loc, "extends", `cycle: ${[...seen, key].join(" -> ")}`);
      return undefined;
    }
    seen.push(key);
    const baseText = options.bases?.get(key);
    if (baseText === undefined) {
      issues.add(ext.loc, "extends", `${baseFile} not found`, "not-found");
      return undefined;
    }
    current = { file: baseFile, text: baseText };
  }
  const at = chain[0]!.tree.loc;

  // 2. Merge, the farthest base first.
  chain.reverse();
  let merged: YNode = chain[0]!.tree;
  for (const c of chain.slice(1)) merged = merge(merged, c.tree, "");
  const top = merged as MapNode;
  top.entries.delete("extends");
  return { merged: top, files: chain.map((x) => x.file), at };
}
