/**
 * The spec's optional `secureBoot:` section (src/build/README.md, "The
 * spec"; the chain: src/bootloader/README.md, "Secure Boot"): the PEM key
 * and certificate the build signs the boot chain with. The key is only read
 * by the build's signing steps; no output holds it.
 */
import { get, type Loc, type MapNode } from "../../image/index.ts";
import { hostPath, type Section } from "./fields.ts";
import type { ImageSpec } from "./types.ts";

/** The `secureBoot` section: absent → null; undefined when any of it is invalid (every problem recorded). */
export function parseSecureBoot(
  s: Section,
  root: MapNode | undefined,
  at: Loc,
): ImageSpec["secureBoot"] | undefined {
  const node = get(root, "secureBoot");
  if (!node) return null;
  const { c, references } = s;
  const m = c.map(node, "secureBoot", ["key", "cert"], ["key", "cert"], at);
  if (!m) return undefined;
  const paths: Record<"key" | "cert", string | undefined> = { key: undefined, cert: undefined };
  for (const f of ["key", "cert"] as const) {
    const n = get(m, f);
    const v = c.string(n, `secureBoot.${f}`);
    if (v === undefined || !n) continue;
    const p = hostPath(n, v);
    references.push({ loc: n.loc, field: `secureBoot.${f}`, path: p, type: "file" });
    paths[f] = p;
  }
  if (!paths.key || !paths.cert) return undefined;
  return { keyPath: paths.key, certPath: paths.cert };
}
