/**
 * What the spec's sections share: the spec's own readers (rootfs paths, octal
 * modes) over the located-YAML readers of src/image, host paths relative to
 * the file that wrote them, and what a section hands to the loader (files to
 * check, host binaries to find).
 */
import { dirname, isAbsolute, posix, resolve } from "node:path";
import { describe, Issues, type Loc, Reader, type YNode } from "../../image/index.ts";
import type { ImageSpec, SpecIssue, SpecIssueKind } from "./types.ts";

export const NAME_RE = /^[a-z0-9-]+$/;
export const NAME_RULE = "a valid name ([a-z0-9-]+)";
export const MODULE_RE = /^[A-Za-z0-9_-]+$/;
export const DEB_PACKAGE_RE = /^[a-z0-9][a-z0-9+.-]+$/;

export function specIssues(): Issues<SpecIssueKind> {
  return new Issues<SpecIssueKind>("invalid");
}

/** A file the spec names; the loader checks that it exists (and a tar's entry names). */
export interface Reference {
  loc: Loc;
  field: string;
  path: string;
  type: "file" | "dir" | "file-or-dir";
  /** A tar layer: its entry names are checked too (step 4). */
  tar?: true;
}

/** What a parse found: the spec (undefined when any issue), and what the loader checks next. */
export interface Parsed {
  spec: ImageSpec | undefined;
  issues: SpecIssue[];
  references: Reference[];
  hostBinaries: { loc: Loc; field: string; binary: string }[];
}

/** What a section parser gets: the readers, and where to note the files and host binaries it names. */
export interface Section {
  c: SpecReader;
  references: Reference[];
  hostBinaries: Parsed["hostBinaries"];
}

/** The located-YAML readers plus the spec's own kinds of value. */
export class SpecReader extends Reader<SpecIssueKind> {
  /** A rootfs path: absolute, no `..` and no empty components. */
  rootfsPath(n: YNode | undefined, field: string): string | undefined {
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
  mode(n: YNode | undefined, field: string): number | undefined {
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
export function hostPath(n: YNode, value: string): string {
  return isAbsolute(value) ? value : resolve(dirname(n.loc.file), value);
}
