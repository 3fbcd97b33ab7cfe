/**
 * Loading a spec (src/build/README.md, "The spec"): read it and its bases,
 * parse, then check that every file it names exists (and that a tar layer's
 * entries are safe) and that every host binary is found, reporting all of
 * it in one error.
 */
import { accessSync, constants } from "node:fs";
import { readFile, stat } from "node:fs/promises";
import { isAbsolute, resolve } from "node:path";
import { findTool } from "../../exec.ts";
import { parseYaml } from "../../image/index.ts";
import { BuildError } from "../errors.ts";
import { unsafeTarEntries } from "../tar-extract.ts";
import { basePath, extendsOf } from "./extends.ts";
import { specIssues } from "./fields.ts";
import { parseInternal, specError } from "./parse.ts";
import type { ImageSpec, ParseSpecOptions } from "./types.ts";

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
    const ext = extendsOf(parseYaml(cur.text, cur.file, specIssues()));
    if (typeof ext?.value !== "string" || ext.value === "") break;
    const baseFile = basePath(cur.file, ext.value);
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
  const issues = specIssues();
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
