/**
 * Located YAML (README.md, "Located YAML"): the one validator of the image
 * spec (src/build/spec) and the agent config (agent-config.ts). Text becomes
 * a tree whose every node knows its file, line and column (so values merged
 * from several files still point at their own line); typed readers check a
 * node and record a located issue when it is wrong; every issue of a file is
 * reported at once, as `FILE:LINE:COL: FIELD: problem`.
 *
 * The `yaml` package is loaded with the first text parsed rather than at
 * start: an agent command without a config (`agent install --disk`) never
 * needs it (~10 MB and ~30 ms of start-up).
 */
import { createRequire } from "node:module";
import type * as Yaml from "yaml";

let yamlLib: typeof Yaml | undefined;
function yaml(): typeof Yaml {
  yamlLib ??= createRequire(import.meta.url)("yaml") as typeof Yaml;
  return yamlLib;
}

/** Where a value was written: file (as the caller named it), 1-based line and column; line 0: no place in the file. */
export interface Loc {
  file: string;
  line: number;
  col: number;
}
export interface MapNode {
  kind: "map";
  entries: Map<string, { key: Loc; value: YNode }>;
  loc: Loc;
}
export interface SeqNode {
  kind: "seq";
  items: YNode[];
  loc: Loc;
}
export interface ScalarNode {
  kind: "scalar";
  value: unknown;
  /** The scalar as written in the file (for octal modes, `1.0`). */
  raw: string;
  loc: Loc;
}
export type YNode = MapNode | SeqNode | ScalarNode;

export interface Issue<K extends string = string> extends Loc {
  /** The field's path: `update.tries`, `healthChecks[0].command`; `(yaml)` for syntax. */
  field: string;
  message: string;
  kind: K;
}

/** The problems found in one or more files, collected before anything is thrown. */
export class Issues<K extends string = "invalid"> {
  readonly list: Issue<K>[] = [];
  readonly #defaultKind: K;
  constructor(defaultKind: K = "invalid" as K) {
    this.#defaultKind = defaultKind;
  }
  add(loc: Loc, field: string, message: string, kind: K = this.#defaultKind): void {
    this.list.push({ file: loc.file, line: loc.line, col: loc.col, field, message, kind });
  }
}

/** Sort issues in place by file, then position; returns them. */
export function sortIssues<T extends Issue>(issues: T[]): T[] {
  return issues.sort((a, b) =>
    a.file !== b.file ? (a.file < b.file ? -1 : 1) : a.line - b.line || a.col - b.col,
  );
}

/** `FILE:LINE:COL: FIELD: problem` per issue, by file then position. */
export function formatIssues(issues: Issue[]): string[] {
  return sortIssues([...issues]).map(
    (i) => `${i.line > 0 ? `${i.file}:${i.line}:${i.col}` : i.file}: ${i.field}: ${i.message}`,
  );
}

/** The one-message report of a file's issues: `WHAT: N errors:` and one indented line each. */
export function issueReport(what: string, issues: Issue[]): string {
  const n = issues.length;
  return `${what}: ${n} ${n === 1 ? "error" : "errors"}:\n${formatIssues(issues)
    .map((l) => `  ${l}`)
    .join("\n")}`;
}

const MAX_DEPTH = 64;

/**
 * Parse YAML text into a located tree. Syntax errors (duplicate keys
 * included), non-string keys and nesting deeper than 64 are recorded as
 * `(yaml)` issues; undefined when the text is not YAML at all. An empty
 * document is an empty scalar.
 */
export function parseYaml<K extends string>(
  text: string,
  file: string,
  issues: Issues<K>,
): YNode | undefined {
  const { isAlias, isMap, isScalar, isSeq, LineCounter, parseDocument } = yaml();
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
  const convert = (node: unknown, depth: number): YNode => {
    const n = (isAlias(node) ? node.resolve(doc) : node) as Yaml.Node | null | undefined;
    const start = n?.range?.[0] ?? 0;
    const loc = locOf(start);
    if (depth > MAX_DEPTH) {
      issues.add(loc, "(yaml)", "nested too deeply");
      return { kind: "scalar", value: null, raw: "", loc };
    }
    if (isMap(n)) {
      const entries = new Map<string, { key: Loc; value: YNode }>();
      for (const pair of n.items) {
        const keyNode = pair.key as Yaml.Node | null;
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

/** YAML text of a plain value (the agent config the build writes). */
export function stringifyYaml(value: unknown): string {
  return yaml().stringify(value);
}

/** A node as messages name it: `a mapping`, `a list`, `empty`, `string "x"`, `number 12`. */
export function describe(n: YNode): string {
  if (n.kind === "map") return "a mapping";
  if (n.kind === "seq") return "a list";
  if (n.value === null) return "empty";
  return `${typeof n.value} ${JSON.stringify(n.value)}`;
}

/** The value of `key` in a mapping, if both exist. */
export function get(m: MapNode | undefined, key: string): YNode | undefined {
  return m?.entries.get(key)?.value;
}

/** `field.key`, or `key` at the top. */
export function child(field: string, key: string): string {
  return field ? `${field}.${key}` : key;
}

export const MIB = 1024 * 1024;
const UNITS: Record<string, number> = {
  B: 1,
  KiB: 1024,
  MiB: MIB,
  GiB: 1024 * MIB,
  TiB: 1024 * 1024 * MIB,
};

/**
 * Typed readers. Each takes the node (undefined: the field is absent, which
 * is no problem here; `map` states what is required) and the field's path,
 * and returns the value, or undefined after recording an issue.
 */
export class Reader<K extends string = "invalid"> {
  readonly issues: Issues<K>;
  constructor(issues: Issues<K>) {
    this.issues = issues;
  }

  /** A mapping whose keys are all `known`, with every `required` one; `parentLoc` locates a missing one. */
  map(
    n: YNode | undefined,
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
          child(field, k),
          `unknown field "${k}" (known: ${known.join(", ")})`,
        );
      }
    }
    for (const r of required) {
      if (!n.entries.has(r)) this.issues.add(n.loc, child(field, r), "is required");
    }
    return n;
  }

  /** A string, matching `re` when given (`what` names the rule in the message). */
  string(n: YNode | undefined, field: string, re?: RegExp, what?: string): string | undefined {
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

  /** One of `values`. */
  enum<T extends string>(n: YNode | undefined, field: string, values: readonly T[]): T | undefined {
    const s = this.string(n, field);
    if (s === undefined || !n) return undefined;
    if (!(values as readonly string[]).includes(s)) {
      const quoted = values.map((v) => JSON.stringify(v));
      const list =
        quoted.length > 1 ? `${quoted.slice(0, -1).join(", ")} or ${quoted.at(-1)}` : quoted[0];
      this.issues.add(n.loc, field, `${JSON.stringify(s)} is not ${list}`);
      return undefined;
    }
    return s as T;
  }

  /** A safe integer from min to max (no max: at least min). */
  integer(
    n: YNode | undefined,
    field: string,
    min: number,
    max: number = Number.MAX_SAFE_INTEGER,
  ): number | undefined {
    if (!n) return undefined;
    if (n.kind !== "scalar" || typeof n.value !== "number" || !Number.isSafeInteger(n.value)) {
      this.issues.add(n.loc, field, `must be an integer (got ${describe(n)})`);
      return undefined;
    }
    if (n.value < min || n.value > max) {
      this.issues.add(
        n.loc,
        field,
        max === Number.MAX_SAFE_INTEGER
          ? `must be at least ${min} (got ${n.value})`
          : `must be between ${min} and ${max} (got ${n.value})`,
      );
      return undefined;
    }
    return n.value;
  }

  boolean(n: YNode | undefined, field: string): boolean | undefined {
    if (!n) return undefined;
    if (n.kind !== "scalar" || typeof n.value !== "boolean") {
      this.issues.add(n.loc, field, `must be true or false (got ${describe(n)})`);
      return undefined;
    }
    return n.value;
  }

  list(n: YNode | undefined, field: string): YNode[] | undefined {
    if (!n) return undefined;
    if (n.kind !== "seq") {
      this.issues.add(n.loc, field, `must be a list (got ${describe(n)})`);
      return undefined;
    }
    return n.items;
  }

  /** A list of strings, each matching `re` when given; every bad item is recorded. */
  strings(n: YNode | undefined, field: string, re?: RegExp, what?: string): string[] | undefined {
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

  /** An http(s) URL, as `problem` judges it (the contract's `repoUrlProblem`). */
  url(
    n: YNode | undefined,
    field: string,
    problem: (s: string) => string | undefined,
  ): string | undefined {
    const s = this.string(n, field);
    if (s === undefined || !n) return undefined;
    const why = problem(s);
    if (why !== undefined) {
      this.issues.add(n.loc, field, `${JSON.stringify(s)}: ${why}`);
      return undefined;
    }
    return s;
  }

  /** A size with a unit (KiB, MiB, GiB, TiB: powers of 1024) or a plain byte count. */
  size(n: YNode | undefined, field: string): number | undefined {
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
}
