/**
 * The spec's `kernel:` and `disk:` sections (src/build/README.md, "The
 * spec"): where the kernel comes from and its command line; the partition
 * sizes.
 */
import { CMDLINE_PREFIX, get, type Loc, type MapNode, MIB } from "../../image/index.ts";
import { DEB_PACKAGE_RE, hostPath, MODULE_RE, type Section } from "./fields.ts";
import type { ImageSpec } from "./types.ts";

/** The `kernel` section; undefined when any of it is invalid (every problem recorded). */
export function parseKernel(
  s: Section,
  root: MapNode | undefined,
  at: Loc,
): ImageSpec["kernel"] | undefined {
  const { c, references } = s;
  const issues = c.issues;
  const k = c.map(
    get(root, "kernel"),
    "kernel",
    ["package", "path", "cmdline", "modules", "rootfsModules"],
    [],
    at,
  );
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
    const rmNode = get(k, "rootfsModules");
    const rootfsModules = rmNode ? c.boolean(rmNode, "kernel.rootfsModules") : false;
    if (cmdline !== undefined && modules && rootfsModules !== undefined) {
      kernel = { cmdline, modules, rootfsModules };
      if (pkg !== undefined) kernel.package = pkg;
      if (kp !== undefined) kernel.path = kp;
    }
  }
  return kernel;
}

/** The `disk` section; undefined when any of it is invalid (every problem recorded). */
export function parseDisk(
  s: Section,
  root: MapNode | undefined,
  at: Loc,
): ImageSpec["disk"] | undefined {
  const { c } = s;
  const issues = c.issues;
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
  const { espSize, slotSize, stateSize } = sizes;
  if (espSize === undefined || slotSize === undefined || stateSize === undefined) return undefined;
  return { espSizeBytes: espSize, slotSizeBytes: slotSize, stateSizeBytes: stateSize };
}
