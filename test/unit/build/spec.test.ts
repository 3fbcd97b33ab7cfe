/**
 * The image spec (src/build/README.md, "The spec"): a valid file, every kind
 * of invalid field, extends, and the error format (file:line:col field).
 */
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { BuildError } from "../../../src/build/errors.ts";
import {
  type ImageSpec,
  loadSpec,
  MIB,
  parseSpec,
  type SpecIssue,
} from "../../../src/build/spec/index.ts";
import { tempDir } from "../../helpers/tmp.ts";

const dir = tempDir("abforge-spec-");
writeFileSync(join(dir, "base.tar"), "");
writeFileSync(join(dir, "signing.pub"), "key\n");
writeFileSync(join(dir, "motd.txt"), "motd\n");
mkdirSync(join(dir, "overlay"));
mkdirSync(join(dir, "kernel-dir"));

const VALID = `name: demo
version: 1.0.0
compatible: demo-x86_64
kernel:
  package: linux-image-cloud-amd64
  cmdline: console=ttyS0
  modules: [virtio_blk, virtio_pci, dm-verity, squashfs]
rootfs:
  compression: xz
  layers:
    - tar: base.tar
      allowDevices: true
    - dir: overlay/
    - files:
        - { path: /etc/motd, content: "hello\\n", mode: "0644" }
        - { path: /etc/issue, source: motd.txt, mode: 0600, uid: 1000, gid: 100 }
    - host-binaries: [busybox, { binary: /bin/ls, to: /usr/local/bin/ls }]
disk: { espSize: 64MiB, slotSize: 512MiB, stateSize: 268435456 }
update:
  channel: stable
  repo: "http://updates.example/"
  tries: 3
  keys: [signing.pub]
  healthChecks: [{ name: ok, command: "true", timeoutMs: 5000 }]
  pollIntervalMs: 30000
`;

function write(name: string, text: string): string {
  const p = join(dir, name);
  writeFileSync(p, text);
  return p;
}

/** Replace one `key: value` line of VALID. */
function withLine(pattern: RegExp, replacement: string, text = VALID): string {
  if (!pattern.test(text)) throw new Error(`test bug: ${pattern} not in spec`);
  return text.replace(pattern, replacement);
}

async function issuesOf(
  p: Promise<unknown> | (() => unknown),
): Promise<{ err: BuildError; issues: SpecIssue[] }> {
  let err: unknown;
  try {
    await (typeof p === "function" ? p() : p);
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(BuildError);
  const e = err as BuildError;
  return { err: e, issues: e.details.issues as SpecIssue[] };
}

function lineOf(text: string, needle: string): number {
  const i = text.split("\n").findIndex((l) => l.includes(needle));
  if (i < 0) throw new Error(`test bug: ${needle} not found`);
  return i + 1;
}

describe("a valid spec", () => {
  it("loads into a typed ImageSpec with units and absolute paths", async () => {
    const file = write("valid.yaml", VALID);
    const spec: ImageSpec = await loadSpec(file);
    expect(spec.name).toBe("demo");
    expect(spec.version).toBe("1.0.0");
    expect(spec.compatible).toBe("demo-x86_64");
    expect(spec.kernel).toEqual({
      package: "linux-image-cloud-amd64",
      cmdline: "console=ttyS0",
      modules: ["virtio_blk", "virtio_pci", "dm-verity", "squashfs"],
      rootfsModules: false,
    });
    expect(spec.disk).toEqual({
      espSizeBytes: 64 * MIB,
      slotSizeBytes: 512 * MIB,
      stateSizeBytes: 256 * MIB,
    });
    expect(spec.update).toEqual({
      channel: "stable",
      repo: "http://updates.example/",
      tries: 3,
      goodSlotTries: 3,
      confirm: "started",
      keys: [join(dir, "signing.pub")],
      healthChecks: [{ name: "ok", command: "true", timeoutMs: 5000 }],
      pollIntervalMs: 30000,
      bundleFormat: 1,
      reboot: { strategy: "immediate", window: null, method: "reboot", etcd: null },
    });
    const [tar, d, files, hb] = spec.rootfs.layers;
    expect(tar).toMatchObject({ kind: "tar", path: join(dir, "base.tar"), allowDevices: true });
    expect(tar!.origin).toMatchObject({ file, line: 11, label: "tar base.tar" });
    expect(d).toMatchObject({ kind: "dir", path: join(dir, "overlay") });
    expect(files).toMatchObject({
      kind: "files",
      files: [
        { path: "/etc/motd", content: "hello\n", mode: 0o644, uid: 0, gid: 0 },
        // unquoted 0600 is read as written (octal), not as the YAML integer 600
        { path: "/etc/issue", source: join(dir, "motd.txt"), mode: 0o600, uid: 1000, gid: 100 },
      ],
    });
    expect(hb).toMatchObject({
      kind: "host-binaries",
      binaries: [{ binary: "busybox" }, { binary: "/bin/ls", to: "/usr/local/bin/ls" }],
    });
    expect(spec.specFiles).toEqual([file]);
  });

  it("fills defaults: xz, 3 tries, stable channel, no extra keys, no health checks", () => {
    const text = `name: a
version: 0.0.1
compatible: b
kernel: { path: /k }
rootfs: { layers: [{ dir: /x }] }
disk: { espSize: 64MiB, slotSize: 1GiB, stateSize: 1MiB }
update: { repo: "https://r/" }
`;
    const spec = parseSpec(text, "/specs/min.yaml");
    expect(spec.rootfs.compression).toBe("xz");
    expect(spec.kernel).toEqual({ path: "/k", cmdline: "", modules: [], rootfsModules: false });
    expect(spec.update).toMatchObject({
      channel: "stable",
      tries: 3,
      goodSlotTries: 3,
      confirm: "started",
      keys: [],
      healthChecks: [],
      bundleFormat: 1,
    });
    expect(
      parseSpec(
        text.replace('repo: "https://r/"', 'repo: "https://r/", bundleFormat: 2'),
        "/s.yaml",
      ).update.bundleFormat,
    ).toBe(2);
    // no mode: the build chooses it by the image's init (src/build/systemd.ts)
    expect(spec.update.mode).toBeUndefined();
    expect(spec.disk.slotSizeBytes).toBe(1024 * MIB);
  });

  it("update.mode: daemon or timer, with where it was written", () => {
    for (const mode of ["daemon", "timer"] as const) {
      const text = `name: a
version: 0.0.1
compatible: b
kernel: { path: /k }
rootfs: { layers: [{ dir: /x }] }
disk: { espSize: 64MiB, slotSize: 1GiB, stateSize: 1MiB }
update: { repo: "https://r/", mode: ${mode} }
`;
      expect(parseSpec(text, "/specs/m.yaml").update.mode).toEqual({
        value: mode,
        origin: { file: "/specs/m.yaml", line: 7, col: 37 },
      });
    }
  });

  it("takes the CLI's --version over the file's", () => {
    expect(parseSpec(VALID, join(dir, "v.yaml"), { version: "2.0.0-rc.1" }).version).toBe(
      "2.0.0-rc.1",
    );
  });

  it("loads the reference image images/demo.yaml", async () => {
    const spec = await loadSpec("images/demo.yaml");
    expect(spec.name).toBe("demo");
    expect(["gzip", "xz"]).toContain(spec.rootfs.compression);
    expect(spec.disk.slotSizeBytes % MIB).toBe(0);
  });

  it("parses the debootstrap layer", () => {
    const text = withLine(
      / {4}- tar: base.tar\n {6}allowDevices: true\n/,
      "    - debootstrap: { suite: bookworm, packages: [systemd, udev] }\n",
    );
    const spec = parseSpec(text, join(dir, "d.yaml"));
    expect(spec.rootfs.layers[0]).toMatchObject({
      kind: "debootstrap",
      suite: "bookworm",
      variant: "minbase",
      packages: ["systemd", "udev"],
    });
  });
});

describe("invalid specs: every error names file, line and field", () => {
  const cases: [string, RegExp, string, string, RegExp][] = [
    ["name with capitals", /^name: demo$/m, "name: Demo", "name", /not a valid name/],
    [
      "name of the wrong type",
      /^name: demo$/m,
      "name: [a]",
      "name",
      /must be a string \(got a list\)/,
    ],
    [
      "version that is a YAML number",
      /^version: 1.0.0$/m,
      "version: 1.0",
      "version",
      /semver version string.*quote it/,
    ],
    [
      "version that is not semver",
      /^version: 1.0.0$/m,
      "version: v1",
      "version",
      /"v1" is not a semver/,
    ],
    [
      "compression zstd",
      /compression: xz/,
      "compression: zstd",
      "rootfs.compression",
      /"zstd" is not supported: use gzip or xz.*GRUB 2.06/,
    ],
    ["compression lz4", /compression: xz/, "compression: lz4", "rootfs.compression", /GRUB 2.06/],
    [
      "size with SI units",
      /espSize: 64MiB/,
      "espSize: 64MB",
      "disk.espSize",
      /not a size.*KiB, MiB, GiB/,
    ],
    ["fractional size", /espSize: 64MiB/, "espSize: 1.5GiB", "disk.espSize", /not a size/],
    [
      "slot size not a multiple of 1 MiB",
      /slotSize: 512MiB/,
      "slotSize: 1000000",
      "disk.slotSize",
      /not a multiple of 1 MiB/,
    ],
    ["zero size", /slotSize: 512MiB/, "slotSize: 0", "disk.slotSize", /positive/],
    ["negative size", /slotSize: 512MiB/, "slotSize: -1MiB", "disk.slotSize", /not a size/],
    [
      "modules not a list",
      /modules: \[.*\]/,
      "modules: virtio_blk",
      "kernel.modules",
      /must be a list/,
    ],
    ["tries out of range", /tries: 3/, "tries: 12", "update.tries", /between 1 and 9/],
    ["tries as a string", /tries: 3/, 'tries: "3"', "update.tries", /must be an integer/],
    [
      "bundleFormat unknown",
      /tries: 3/,
      "tries: 3\n  bundleFormat: 3",
      "update.bundleFormat",
      /between 1 and 2/,
    ],
    [
      "goodSlotTries of two digits",
      /tries: 3/,
      "tries: 3\n  goodSlotTries: 10",
      "update.goodSlotTries",
      /between 1 and 9/,
    ],
    [
      "confirm not a policy",
      /tries: 3/,
      "tries: 3\n  confirm: booted",
      "update.confirm",
      /"booted" is not "started" or "healthy"/,
    ],
    [
      "mode neither daemon nor timer",
      /tries: 3/,
      "mode: cron\n  tries: 3",
      "update.mode",
      /"cron" is not "daemon" or "timer"/,
    ],
    ["repo not http", /repo: .*/, "repo: ftp://x/", "update.repo", /not an http/],
    [
      "repo port out of range (the agent would refuse its own config)",
      /repo: .*/,
      "repo: http://10.0.2.100:70000/",
      "update.repo",
      /"http:\/\/10\.0\.2\.100:70000\/": port 70000 is out of range \(1-65535\)/,
    ],
    ["repo not a URL", /repo: .*/, "repo: http://a b/", "update.repo", /not a URL/],
    [
      "allowDevices not boolean",
      /allowDevices: true/,
      "allowDevices: yes",
      "rootfs.layers[0].allowDevices",
      /true or false/,
    ],
    [
      "relative file path in rootfs",
      /path: \/etc\/motd/,
      "path: etc/motd",
      "rootfs.layers[2].files[0].path",
      /absolute path/,
    ],
    [
      "dotdot in rootfs path",
      /path: \/etc\/motd/,
      "path: /etc/../motd",
      "rootfs.layers[2].files[0].path",
      /without \. or \.\./,
    ],
    ["bad mode", /mode: "0644"/, 'mode: "0999"', "rootfs.layers[2].files[0].mode", /octal mode/],
    [
      "content and source",
      /content: "hello\\n"/,
      'content: "x", source: motd.txt',
      "rootfs.layers[2].files[0]",
      /exactly one of content and source/,
    ],
    [
      "kernel package and path",
      /package: linux-image-cloud-amd64/,
      "package: linux-image-cloud-amd64\n  path: kernel-dir",
      "kernel",
      /exactly one of package and path/,
    ],
    [
      "cmdline with abforge parameters",
      /cmdline: console=ttyS0/,
      "cmdline: console=ttyS0 abforge.slot=A",
      "kernel.cmdline",
      /set by the bootloader/,
    ],
    [
      "unknown top-level field",
      /^name: demo$/m,
      "name: demo\ncolour: blue",
      "colour",
      /unknown field "colour"/,
    ],
    [
      "unknown kernel field",
      /cmdline: console=ttyS0/,
      "cmdline: console=ttyS0\n  initrd: x",
      "kernel.initrd",
      /unknown field "initrd"/,
    ],
    [
      "unknown layer field",
      /allowDevices: true/,
      "allowDevice: true",
      "rootfs.layers[0].allowDevice",
      /unknown field "allowDevice"/,
    ],
    [
      "unknown layer kind",
      /- dir: overlay\//,
      "- copy: overlay/",
      "rootfs.layers[1]",
      /must have one of tar, dir, files.*\(unknown: copy\)/,
    ],
    [
      "two kinds in one layer",
      /- dir: overlay\//,
      "- { dir: overlay/, tar: base.tar }",
      "rootfs.layers[1]",
      /exactly one of/,
    ],
    [
      "unknown health check field",
      /timeoutMs: 5000/,
      "timeout: 5000",
      "update.healthChecks[0].timeout",
      /unknown field/,
    ],
    [
      "debootstrap after another layer",
      /- dir: overlay\//,
      "- debootstrap: { suite: bookworm }",
      "rootfs.layers[1]",
      /must be the first layer/,
    ],
    ["disk as a list", /^disk: .*$/m, "disk: [1, 2]", "disk", /must be a mapping/],
  ];
  for (const [what, pattern, replacement, field, message] of cases) {
    it(what, async () => {
      const text = withLine(pattern, replacement);
      const file = write("case.yaml", text);
      const firstLine = replacement.split("\n").at(-1)!.trim().split(":")[0]!.replace(/^- /, "");
      const { err, issues } = await issuesOf(() => parseSpec(text, file));
      expect(err.code).toBe("SPEC_INVALID");
      expect(issues).toHaveLength(1);
      const issue = issues[0]!;
      expect(issue.field).toBe(field);
      expect(issue.message).toMatch(message);
      expect(issue.file).toBe(file);
      // The issue points at the replaced text (its line or, for a mapping, the line it starts on).
      const expected = lineOf(text, replacement.split("\n")[0]!.trim());
      expect([expected, lineOf(text, firstLine)]).toContain(issue.line);
      expect(err.message).toContain(`${file}:${issue.line}:${issue.col}: ${field}: `);
      // loadSpec reports the same.
      const loaded = await issuesOf(loadSpec(file));
      expect(loaded.issues.map((i) => [i.field, i.line])).toContainEqual([field, issue.line]);
    });
  }

  it("collects every error before throwing", async () => {
    const text = VALID.replace("name: demo", "name: Demo")
      .replace("version: 1.0.0", "version: one")
      .replace("compression: xz", "compression: zstd")
      .replace("espSize: 64MiB", "espSize: 64MB")
      .replace("tries: 3", "tries: 0")
      .replace("channel: stable", "channel: stable\n  extra: 1");
    const { err, issues } = await issuesOf(() => parseSpec(text, "/x/s.yaml"));
    expect(issues.map((i) => i.field)).toEqual([
      "name",
      "version",
      "rootfs.compression",
      "disk.espSize",
      "update.extra",
      "update.tries",
    ]);
    expect(err.message).toMatch(/^spec \/x\/s.yaml: 6 errors:\n {2}\/x\/s.yaml:1:7: name: /);
  });

  it("reports missing referenced files (tar, dir, source, keys, kernel path) with their field and line", async () => {
    const text = VALID.replace("tar: base.tar", "tar: nope.tar")
      .replace("dir: overlay/", "dir: nope-dir/")
      .replace("source: motd.txt", "source: nope.txt")
      .replace("keys: [signing.pub]", "keys: [nope.pub]")
      .replace("package: linux-image-cloud-amd64", "path: nope-kernel");
    const file = write("missing.yaml", text);
    const { err, issues } = await issuesOf(loadSpec(file));
    expect(err.code).toBe("SPEC_NOT_FOUND");
    expect(issues.map((i) => [i.field, i.line])).toEqual([
      ["kernel.path", lineOf(text, "nope-kernel")],
      ["rootfs.layers[0].tar", lineOf(text, "nope.tar")],
      ["rootfs.layers[1].dir", lineOf(text, "nope-dir")],
      ["rootfs.layers[2].files[1].source", lineOf(text, "nope.txt")],
      ["update.keys[0]", lineOf(text, "nope.pub")],
    ]);
    expect(err.message).toContain(`rootfs.layers[0].tar: ${join(dir, "nope.tar")} not found`);
  });

  it("reads secureBoot's key and certificate as host paths, absent means none, and names a missing one", async () => {
    expect(parseSpec(VALID, join(dir, "s.yaml")).secureBoot).toBeNull();
    const text = `${VALID}secureBoot: { key: sb.key, cert: /abs/sb.pem }\n`;
    expect(parseSpec(text, join(dir, "s.yaml")).secureBoot).toEqual({
      keyPath: join(dir, "sb.key"),
      certPath: "/abs/sb.pem",
    });
    const { issues } = await issuesOf(() =>
      parseSpec(`${VALID}secureBoot: { key: sb.key, extra: 1 }\n`, "/x/s.yaml"),
    );
    expect(issues.map((i) => i.field).sort()).toEqual(["secureBoot.cert", "secureBoot.extra"]);
    const missing = await issuesOf(loadSpec(write("sb-missing.yaml", text)));
    expect(missing.err.code).toBe("SPEC_NOT_FOUND");
    expect(missing.issues.map((i) => i.field)).toEqual(["secureBoot.key", "secureBoot.cert"]);
    expect(missing.err.message).toContain(`secureBoot.key: ${join(dir, "sb.key")} not found`);
  });

  it("reports a missing file together with invalid fields as SPEC_INVALID", async () => {
    const file = write(
      "mixed.yaml",
      VALID.replace("tar: base.tar", "tar: nope.tar").replace("name: demo", "name: Demo"),
    );
    const { err, issues } = await issuesOf(loadSpec(file));
    expect(err.code).toBe("SPEC_INVALID");
    expect(issues.map((i) => i.field).sort()).toEqual(["name", "rootfs.layers[0].tar"]);
  });

  it("reports a host binary that is not on PATH", async () => {
    const file = write("hb.yaml", VALID.replace("[busybox,", "[no-such-program-abforge,"));
    const { issues } = await issuesOf(loadSpec(file));
    expect(issues).toMatchObject([
      { field: "rootfs.layers[3].host-binaries[0]", message: /not found on PATH/ },
    ]);
  });

  it("a missing spec file is SPEC_NOT_FOUND", async () => {
    const { err } = await issuesOf(loadSpec(join(dir, "absent.yaml")));
    expect(err.code).toBe("SPEC_NOT_FOUND");
    expect(err.message).toContain("absent.yaml not found");
  });

  it("a YAML syntax error or a duplicate key names its line", async () => {
    const syntax = await issuesOf(() =>
      parseSpec("name: demo\nkernel: [\nversion: 1\n", "/s.yaml"),
    );
    expect(syntax.issues[0]).toMatchObject({ field: "(yaml)", line: 3 });
    const dup = await issuesOf(() => parseSpec("name: a\nname: b\n", "/s.yaml"));
    expect(dup.issues[0]).toMatchObject({ field: "(yaml)", line: 2, message: /unique/ });
    const empty = await issuesOf(() => parseSpec("", "/s.yaml"));
    expect(empty.issues[0]?.message).toMatch(/must be a mapping/);
  });
});

describe("extends", () => {
  const sub = join(dir, "bases");
  mkdirSync(sub, { recursive: true });
  writeFileSync(join(sub, "base.tar"), "");
  writeFileSync(join(sub, "base.pub"), "k");
  const base = `name: base
version: 0.1.0
compatible: demo-x86_64
kernel:
  package: linux-image-cloud-amd64
  cmdline: console=ttyS0
rootfs:
  layers:
    - tar: base.tar
disk: { espSize: 64MiB, slotSize: 512MiB, stateSize: 256MiB }
update: { repo: "http://r/", keys: [base.pub], tries: 2 }
`;
  writeFileSync(join(sub, "base.yaml"), base);

  it("starts from the base, overrides fields, appends layers, resolves each file's paths against its own directory", async () => {
    const file = write(
      "child.yaml",
      `extends: bases/base.yaml
name: child
version: 1.2.3
kernel:
  path: kernel-dir
rootfs:
  compression: gzip
  layers:
    - dir: overlay/
disk: { slotSize: 1GiB }
`,
    );
    const spec = await loadSpec(file);
    expect(spec.name).toBe("child");
    expect(spec.version).toBe("1.2.3");
    expect(spec.compatible).toBe("demo-x86_64");
    // kernel.path replaces the base's package; the base's cmdline stays
    expect(spec.kernel).toEqual({
      path: join(dir, "kernel-dir"),
      cmdline: "console=ttyS0",
      modules: [],
      rootfsModules: false,
    });
    expect(spec.rootfs.compression).toBe("gzip");
    expect(spec.rootfs.layers.map((l) => ("path" in l ? l.path : l.kind))).toEqual([
      join(sub, "base.tar"),
      join(dir, "overlay"),
    ]);
    expect(spec.disk).toEqual({
      espSizeBytes: 64 * MIB,
      slotSizeBytes: 1024 * MIB,
      stateSizeBytes: 256 * MIB,
    });
    expect(spec.update.keys).toEqual([join(sub, "base.pub")]);
    expect(spec.update.tries).toBe(2);
    expect(spec.specFiles).toEqual([join(dir, "bases/base.yaml"), file]);
  });

  it("a child's debootstrap layer extends the base's: one Debian system, the packages of both", async () => {
    writeFileSync(
      join(sub, "deb-base.yaml"),
      base.replace(
        "    - tar: base.tar",
        "    - debootstrap: { suite: bookworm, packages: [openssh-server, podman] }\n    - tar: base.tar",
      ),
    );
    const file = write(
      "deb-child.yaml",
      `extends: bases/deb-base.yaml
name: child
rootfs:
  layers:
    - debootstrap: { suite: bookworm, packages: [tcpdump], mirror: "http://m/debian" }
    - dir: overlay/
`,
    );
    const spec = await loadSpec(file);
    expect(spec.rootfs.layers.map((l) => l.kind)).toEqual(["debootstrap", "tar", "dir"]);
    expect(spec.rootfs.layers[0]).toMatchObject({
      kind: "debootstrap",
      suite: "bookworm",
      variant: "minbase",
      packages: ["openssh-server", "podman", "tcpdump"],
      mirror: "http://m/debian",
    });
  });

  it("names the base's file and line for an error in the base", async () => {
    writeFileSync(join(sub, "bad-base.yaml"), base.replace("tries: 2", "tries: 20"));
    const file = write("child2.yaml", "extends: bases/bad-base.yaml\nname: child\n");
    const { issues } = await issuesOf(loadSpec(file));
    expect(issues).toMatchObject([
      { file: join(dir, "bases/bad-base.yaml"), line: 11, field: "update.tries" },
    ]);
  });

  it("refuses a cycle, naming the chain", async () => {
    write("cyc-a.yaml", "extends: cyc-b.yaml\nname: a\n");
    write("cyc-b.yaml", "extends: ./cyc-a.yaml\nname: b\n");
    const { err, issues } = await issuesOf(loadSpec(join(dir, "cyc-a.yaml")));
    expect(err.code).toBe("SPEC_INVALID");
    expect(issues).toMatchObject([
      { field: "extends", line: 1, message: /cycle: .*cyc-a.yaml -> .*cyc-b.yaml -> .*cyc-a.yaml/ },
    ]);
    const self = await issuesOf(loadSpec(write("cyc-self.yaml", "extends: cyc-self.yaml\n")));
    expect(self.issues[0]?.message).toMatch(/cycle/);
  });

  it("a missing base is SPEC_NOT_FOUND at the extends line", async () => {
    const { err, issues } = await issuesOf(
      loadSpec(write("orphan.yaml", "name: x\nextends: nowhere.yaml\n")),
    );
    expect(err.code).toBe("SPEC_NOT_FOUND");
    expect(issues).toMatchObject([
      { field: "extends", line: 2, message: /nowhere.yaml not found/ },
    ]);
  });

  it("parseSpec takes the bases' texts instead of reading them", () => {
    const spec = parseSpec("extends: b.yaml\nname: pure\n", "/specs/a.yaml", {
      bases: new Map([["/specs/b.yaml", base]]),
    });
    expect(spec.name).toBe("pure");
    expect(spec.rootfs.layers[0]).toMatchObject({ path: "/specs/base.tar" });
  });
});

describe("properties", () => {
  it("sizes in MiB round-trip to bytes", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 1 << 20 }),
        fc.constantFrom("MiB", "GiB"),
        (n, unit) => {
          const text = VALID.replace("slotSize: 512MiB", `slotSize: ${n}${unit}`);
          const spec = parseSpec(text, join(dir, "p.yaml"));
          expect(spec.disk.slotSizeBytes).toBe(n * (unit === "MiB" ? MIB : 1024 * MIB));
        },
      ),
      { numRuns: 50 },
    );
  });

  it("any text either parses or throws one BuildError listing issues with lines", () => {
    const lines = fc.constantFrom(
      "name: demo",
      "name: [",
      "version: 1.0.0",
      "kernel: { path: /k }",
      "  cmdline: x",
      "rootfs:",
      "  layers:",
      "    - tar: /t",
      "    - files: [{ path: /a, content: b }]",
      "disk: { espSize: 64MiB, slotSize: 1MiB, stateSize: 1MiB }",
      "update: { repo: http://r/ }",
      "compatible: c",
      "- x",
      "extends: other.yaml",
      "&a x: *a",
      "? [1]\n: 2",
    );
    fc.assert(
      fc.property(fc.array(fc.oneof(lines, fc.string()), { maxLength: 12 }), (ls) => {
        try {
          parseSpec(ls.join("\n"), "/f/s.yaml");
        } catch (err) {
          expect(err).toBeInstanceOf(BuildError);
          const issues = (err as BuildError).details.issues as SpecIssue[];
          expect(issues.length).toBeGreaterThan(0);
          for (const i of issues) expect(i.line).toBeGreaterThanOrEqual(1);
        }
      }),
      { numRuns: 300 },
    );
  });
});
