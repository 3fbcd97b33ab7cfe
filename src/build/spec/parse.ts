/**
 * Parsing a spec (src/build/README.md, "The spec"): resolve `extends`, then
 * validate every section, collecting every problem before one error is
 * thrown (`SPEC_INVALID`; `SPEC_NOT_FOUND` when every problem is a missing
 * file, `LAYER_UNSAFE` when every problem is an unsafe tar entry), each
 * naming the file, line, column and field. Pure: the texts of extended bases
 * are passed in.
 */
import semver from "semver";
import {
  COMPATIBLE_NAME,
  COMPATIBLE_NAME_RULE,
  get,
  issueReport,
  sortIssues,
} from "../../image/index.ts";
import { BuildError } from "../errors.ts";
import { resolveExtends } from "./extends.ts";
import {
  NAME_RE,
  NAME_RULE,
  type Parsed,
  type Reference,
  type Section,
  SpecReader,
  specIssues,
} from "./fields.ts";
import { parseDisk, parseKernel } from "./kernel-disk.ts";
import { parseRootfs } from "./layers.ts";
import { parseSecureBoot } from "./secure-boot.ts";
import type { ImageSpec, ParseSpecOptions, SpecIssue } from "./types.ts";
import { parseUpdate } from "./update.ts";

/** Steps 1-3: the spec, or every issue found; and what the loader checks next. */
export function parseInternal(text: string, file: string, options: ParseSpecOptions): Parsed {
  const issues = specIssues();
  const references: Reference[] = [];
  const hostBinaries: Parsed["hostBinaries"] = [];
  const fail = (): Parsed => ({ spec: undefined, issues: issues.list, references, hostBinaries });

  const chain = resolveExtends(text, file, options, issues);
  if (!chain) return fail();
  const { merged: top, at } = chain;

  // 3. Validate every field.
  const c = new SpecReader(issues);
  const root = c.map(
    top,
    "",
    [
      "extends",
      "name",
      "version",
      "compatible",
      "kernel",
      "rootfs",
      "disk",
      "update",
      "secureBoot",
    ],
    ["name", "version", "compatible", "kernel", "rootfs", "disk", "update"],
    at,
  );
  const name = c.string(get(root, "name"), "name", NAME_RE, NAME_RULE);
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
  const s: Section = { c, references, hostBinaries };
  const kernel = parseKernel(s, root, at);
  const rootfs = parseRootfs(s, root, at);
  const disk = parseDisk(s, root, at);
  const update = parseUpdate(s, root, at);
  const secureBoot = parseSecureBoot(s, root, at);

  if (issues.list.length > 0) return fail();
  if (
    !name ||
    !version ||
    !compatible ||
    !kernel ||
    !rootfs ||
    !disk ||
    !update ||
    secureBoot === undefined
  )
    return fail();
  const spec: ImageSpec = {
    file,
    specFiles: chain.files,
    name,
    version,
    compatible,
    kernel,
    rootfs,
    disk,
    update,
    secureBoot,
  };
  return { spec, issues: [], references, hostBinaries };
}

/** The one error for a spec's issues; its code says what kind they all are. */
export function specError(file: string, issues: SpecIssue[], cause?: unknown): BuildError {
  const only = (kind: SpecIssue["kind"]) => issues.every((i) => i.kind === kind);
  const code = only("not-found")
    ? "SPEC_NOT_FOUND"
    : only("unsafe")
      ? "LAYER_UNSAFE"
      : "SPEC_INVALID";
  sortIssues(issues);
  return new BuildError(code, issueReport(`spec ${file}`, issues), {
    cause,
    details: { file, issues },
  });
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
