/**
 * Every bad input is one clear line and its own exit code, never a stack
 * trace or a silent default (issue 11, point 17), tried as a user would.
 */
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { gzipSync } from "node:zlib";
import tarStream from "tar-stream";
import { beforeAll, describe, expect, it } from "vitest";
import { EXIT_CODES, EXIT_USAGE } from "../../../src/cli/exit-codes.ts";
import { abforge } from "../../helpers/cli.ts";
import { tempDir } from "../../helpers/tmp.ts";

const DEMO = fileURLToPath(new URL("../../../images/demo.yaml", import.meta.url));
const dir = tempDir("abforge-input-");
let key: string;

beforeAll(async () => {
  expect((await abforge(["keygen", "--out", join(dir, "keys")])).code).toBe(0);
  key = join(dir, "keys", "signing.key");
});

/** One line on stderr naming the problem, no stack. */
function oneLine(stderr: string, message: RegExp): void {
  expect(stderr).toMatch(message);
  expect(stderr).not.toMatch(/\n\s+at /);
  expect(stderr).not.toMatch(/unexpected error/);
}

async function tarOf(entries: { name: string; type?: "file" | "link"; linkname?: string }[]) {
  const pack = tarStream.pack();
  const chunks: Buffer[] = [];
  pack.on("data", (c) => chunks.push(c as Buffer));
  const done = new Promise<void>((r) => pack.on("end", () => r()));
  for (const e of entries) {
    if (e.type === "link") pack.entry({ name: e.name, type: "link", linkname: e.linkname });
    else pack.entry({ name: e.name }, "x");
  }
  pack.finalize();
  await done;
  return Buffer.concat(chunks);
}

describe("out-of-range ports", () => {
  it("repo serve --port and qemu --repo-port are usage errors, not a RangeError from listen", async () => {
    for (const [args, what] of [
      [
        ["repo", "serve", "--repo", dir, "--port", "70000"],
        /--port must be a TCP port, 0-65535, got "70000"/,
      ],
      [["repo", "serve", "--repo", dir, "--port", "-1"], /--port must be a TCP port/],
      [["qemu", "x.img", "--repo-port", "0"], /--repo-port must be a TCP port, 1-65535, got "0"/],
      [["qemu", "x.img", "--repo-port", "65536"], /--repo-port must be a TCP port/],
    ] as const) {
      const r = await abforge(args);
      expect(r.code, args.join(" ")).toBe(EXIT_USAGE);
      oneLine(r.stderr, what);
    }
  });

  it("qemu --repo-address with a port out of range is refused before a VM starts", async () => {
    const r = await abforge([
      "qemu",
      "x.img",
      "--repo-port",
      "8080",
      "--repo-address",
      "10.0.2.100:99999",
    ]);
    expect(r.code).toBe(EXIT_CODES.QEMU_FAILED);
    oneLine(
      r.stderr,
      /--repo-address must be HOST:PORT with a port of 1-65535, got "10\.0\.2\.100:99999"/,
    );
  });
});

describe("build", () => {
  it("--out naming a file (or a path through one) is one clear line, not a stack", async () => {
    const file = join(dir, "a-file");
    writeFileSync(file, "mine\n");
    for (const out of [file, join(file, "out")]) {
      const r = await abforge(["build", DEMO, "--key", key, "--out", out]);
      expect(r.code, r.stderr).toBe(EXIT_CODES.BUILD_FAILED);
      oneLine(
        r.stderr,
        new RegExp(
          `output directory ${out}: a file is in the way \\((EEXIST|ENOTDIR)\\); --out must name a directory`,
        ),
      );
    }
    expect(readFileSync(file, "utf8")).toBe("mine\n");
  });

  it("an empty --version is refused, not replaced by the spec's", async () => {
    const out = join(dir, "out-version");
    const r = await abforge(["build", DEMO, "--key", key, "--out", out, "--version", ""]);
    expect(r.code).toBe(EXIT_CODES.SPEC_INVALID);
    oneLine(r.stderr, /version: --version "" is not a semver version like 1\.2\.3/);
  });

  it("a tar layer with a .. entry (plain or gzip, or a hard link to one) fails in validation, before the kernel step", async () => {
    const spec = readFileSync(DEMO, "utf8");
    const plain = join(dir, "evil.tar");
    writeFileSync(plain, await tarOf([{ name: "ok" }, { name: "a/../../evil" }]));
    const gz = join(dir, "evil.tar.gz");
    writeFileSync(
      gz,
      gzipSync(await tarOf([{ name: "l", type: "link", linkname: "../etc/shadow" }])),
    );
    const specPath = join(dir, "evil.yaml");
    writeFileSync(
      specPath,
      spec.replace("  layers:\n", "  layers:\n    - tar: evil.tar\n    - tar: evil.tar.gz\n"),
    );
    const r = await abforge(["build", specPath, "--key", key, "--out", join(dir, "out-tar")]);
    expect(r.code).toBe(EXIT_CODES.LAYER_UNSAFE);
    const line = (n: string) => spec.split("\n").indexOf("  layers:") + 2 + Number(n);
    oneLine(
      r.stderr,
      new RegExp(
        `evil\\.yaml:${line("0")}:\\d+: rootfs\\.layers\\[0\\]\\.tar: \\S+evil\\.tar: entry "a/\\.\\./\\.\\./evil": "a/\\.\\./\\.\\./evil" contains a \\.\\. component`,
      ),
    );
    oneLine(
      r.stderr,
      new RegExp(
        `evil\\.yaml:${line("1")}:\\d+: rootfs\\.layers\\[1\\]\\.tar: \\S+evil\\.tar\\.gz: entry "l": "\\.\\./etc/shadow" contains a \\.\\. component`,
      ),
    );
    // the spec step failed: the kernel and initramfs steps never started
    const steps = r.stderr
      .split("\n")
      .filter((l) => l.startsWith("{"))
      .map((l) => JSON.parse(l).step)
      .filter(Boolean);
    expect(steps).toEqual(["spec"]);
  });
});

describe("verity", () => {
  it("a hash offset that is not a multiple of 512 says so", async () => {
    const data = join(dir, "data.img");
    writeFileSync(data, Buffer.alloc(16 * 4096));
    mkdirSync(join(dir, "v"), { recursive: true });
    const f = await abforge([
      "verity",
      "format",
      data,
      join(dir, "v", "hash.img"),
      "--hash-offset",
      "100",
    ]);
    expect(f.code).toBe(EXIT_CODES.VERITY_BAD_PARAMS);
    oneLine(f.stderr, /hash offset 100 must be a non-negative multiple of 512 bytes/);
    const v = await abforge(["verity", "verify", data, data, "00", "--hash-offset", "4000"]);
    expect(v.code).toBe(EXIT_CODES.VERITY_BAD_PARAMS);
    oneLine(v.stderr, /hash offset 4000 is not a multiple of 512/);
  });
});
