/**
 * Hostile build inputs, through the real CLI: `abforge build SPEC --out DIR`
 * with tar layers that try to leave the rootfs (`..`, absolute names,
 * symlinks and hard links pointing out, device nodes), directory layers with
 * a symlink out, and specs with wrong types, unknown fields and missing
 * files. Each is refused with its own exit code and a message naming the
 * entry or field; nothing is left behind in the output directory (no
 * disk.img, bundle or build.json, no `.build-*` work directory), and outputs
 * of an earlier build there are left as they were.
 *
 * Layers are applied after the kernel and initramfs steps (src/build
 * pipeline), so the specs point `kernel.path` at a tiny fake kernel tree:
 * a `boot/vmlinuz-<v>` and a `lib/modules/<v>/modules.builtin` naming the
 * modules the initramfs needs as built in.
 */
import { mkdir, readdir, readFile, symlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { gzipSync } from "node:zlib";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { makeKey } from "../helpers/fixtures.ts";
import { tempDir } from "../helpers/tmp.ts";
import { recordFigure, runAbforge, runCases, TAR_END, tarEntry } from "./helpers.ts";

const KVER = "6.1.0-fault";

const dir = tempDir("abforge-hostile-build-");
let keyPath: string;

beforeAll(async () => {
  keyPath = (await makeKey(join(dir, "key"))).privateKeyPath;
  const k = join(dir, "kernel");
  await mkdir(join(k, "boot"), { recursive: true });
  await mkdir(join(k, "lib/modules", KVER), { recursive: true });
  await writeFile(join(k, "boot", `vmlinuz-${KVER}`), Buffer.alloc(4096, 0x4b));
  await writeFile(
    join(k, "lib/modules", KVER, "modules.builtin"),
    [
      "kernel/drivers/virtio/virtio_pci.ko",
      "kernel/drivers/block/virtio_blk.ko",
      "kernel/drivers/md/dm-verity.ko",
      "kernel/fs/squashfs/squashfs.ko",
      "kernel/fs/overlayfs/overlay.ko",
      "",
    ].join("\n"),
  );
  // a directory layer holding a symlink that climbs out of the rootfs
  await mkdir(join(dir, "dir-out/etc"), { recursive: true });
  await symlink("../../../../../etc/shadow", join(dir, "dir-out/etc/shadow-link"));
}, 60_000);

const results: { name: string; code: number; message: string }[] = [];
afterAll(() => {
  const lines = results.map((r) => `  ${String(r.code).padStart(3)}  ${r.name}: ${r.message}`);
  process.stdout.write(`\nhostile build inputs refused: ${results.length}\n${lines.join("\n")}\n`);
  recordFigure("hostile build inputs refused", results.length);
});

// ---------------------------------------------------------------- inputs

const file = (name: string, body = "x\n") => tarEntry(name, Buffer.from(body));
const dirEntry = (name: string) => tarEntry(name, Buffer.alloc(0), { type: "5", mode: 0o755 });
const tar = (...entries: Buffer[]) => Buffer.concat([dirEntry("etc/"), ...entries, TAR_END]);

interface Case {
  name: string;
  /** The spec's text; `LAYER` is replaced by the case's layer list. */
  spec?: string;
  /** A tar layer's bytes (written beside the spec as layer.tar). */
  tar?: Buffer;
  /** Extra layer YAML (a list item), instead of the tar layer. */
  layer?: string;
  code: number;
  /** The message must name the entry or field. */
  message: RegExp;
  /** Put outputs of an earlier build in --out first; they must survive. */
  earlier?: boolean;
}

const base = (layers: string) =>
  [
    "name: hostile",
    "version: 1.0.0",
    "compatible: hostile-x86_64",
    "kernel: { path: ./kernel }",
    "rootfs:",
    "  compression: gzip",
    "  layers:",
    layers,
    "disk: { espSize: 34MiB, slotSize: 64MiB, stateSize: 8MiB }",
    'update: { repo: "http://127.0.0.1/" }',
    "",
  ].join("\n");

const LAYER = "    - tar: ./layer.tar";

function cases(): Case[] {
  return [
    // Tar layers.
    {
      name: "tar entry ../escape",
      tar: tar(file("../escape")),
      code: 12,
      message: /rootfs\.layers\[0\].*"\.\.\/escape"/,
      earlier: true,
    },
    {
      name: "tar entry etc/../../escape",
      tar: tar(file("etc/../../escape")),
      code: 12,
      message: /"etc\/\.\.\/\.\.\/escape"/,
    },
    {
      name: "tar entry with an absolute name",
      tar: tar(file("/etc/cron.d/evil")),
      code: 12,
      message: /"\/etc\/cron\.d\/evil"/,
    },
    {
      name: "symlink climbing out of the rootfs",
      tar: tar(
        tarEntry("etc/passwd-link", Buffer.alloc(0), {
          type: "2",
          linkname: "../../../etc/passwd",
        }),
      ),
      code: 12,
      message: /"etc\/passwd-link"/,
    },
    {
      name: "symlink to .. then a file through it",
      tar: tar(tarEntry("up", Buffer.alloc(0), { type: "2", linkname: ".." }), file("up/escape")),
      code: 12,
      message: /"up"|"up\/escape"/,
    },
    {
      name: "hard link to a file outside the rootfs",
      tar: tar(tarEntry("etc/hl", Buffer.alloc(0), { type: "1", linkname: "../../etc/shadow" })),
      code: 12,
      message: /"etc\/hl"/,
    },
    {
      name: "hard link with an absolute target",
      tar: tar(tarEntry("etc/hl", Buffer.alloc(0), { type: "1", linkname: "/etc/shadow" })),
      code: 12,
      message: /"etc\/hl"/,
    },
    {
      name: "hard link to a missing file",
      tar: tar(tarEntry("etc/hl", Buffer.alloc(0), { type: "1", linkname: "etc/nothing" })),
      code: 12,
      message: /"etc\/hl"/,
    },
    {
      name: "character device node",
      tar: tar(tarEntry("etc/mem", Buffer.alloc(0), { type: "3", devmajor: 1, devminor: 1 })),
      code: 12,
      message: /"etc\/mem"/,
    },
    {
      name: "block device node",
      tar: tar(tarEntry("etc/sda", Buffer.alloc(0), { type: "4", devmajor: 8, devminor: 0 })),
      code: 12,
      message: /"etc\/sda"/,
    },
    {
      name: "a name with a newline",
      tar: tar(file("etc/a\nb")),
      code: 12,
      message: /rootfs\.layers\[0\]/,
    },
    {
      name: "gzip-compressed tar with ../escape",
      tar: gzipSync(tar(file("../escape"))),
      code: 12,
      message: /"\.\.\/escape"/,
    },
    {
      name: "xz-compressed tar",
      tar: Buffer.concat([Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]), Buffer.alloc(100)]),
      code: 13,
      message: /xz/,
    },
    {
      name: "a tar header with a bad checksum",
      tar: (() => {
        const t = tar(file("etc/x"));
        t[512 + 148] = 0x31;
        return t;
      })(),
      code: 13,
      message: /rootfs\.layers\[0\]/,
    },
    {
      name: "directory layer with a symlink climbing out",
      layer: "    - dir: ./dir-out",
      code: 12,
      message: /shadow-link/,
    },
    // Specs.
    {
      name: "version as a YAML number",
      spec: base(LAYER).replace("version: 1.0.0", "version: 1.0"),
      tar: tar(file("etc/x")),
      code: 10,
      message: /version/,
    },
    {
      name: "layers as a string",
      spec: base('    "tar"').replace("  layers:\n", "  layers:"),
      code: 10,
      message: /rootfs\.layers/,
    },
    {
      name: "a size that is not a size",
      spec: base(LAYER).replace("slotSize: 64MiB", "slotSize: big"),
      tar: tar(file("etc/x")),
      code: 10,
      message: /slotSize/,
    },
    {
      name: "tries as a string",
      spec: base(LAYER).replace(
        'repo: "http://127.0.0.1/"',
        'repo: "http://127.0.0.1/", tries: three',
      ),
      tar: tar(file("etc/x")),
      code: 10,
      message: /tries/,
    },
    {
      name: "an unknown top-level field",
      spec: `${base(LAYER)}rootpassword: hunter2\n`,
      tar: tar(file("etc/x")),
      code: 10,
      message: /rootpassword/,
    },
    {
      name: "an unknown layer kind",
      spec: base("    - tarball: ./layer.tar"),
      code: 10,
      message: /tarball/,
    },
    {
      name: "an unknown field in disk",
      spec: base(LAYER).replace("stateSize: 8MiB", "stateSize: 8MiB, swapSize: 1GiB"),
      tar: tar(file("etc/x")),
      code: 10,
      message: /swapSize/,
    },
    {
      name: "a missing tar layer",
      spec: base("    - tar: ./missing.tar"),
      code: 11,
      message: /missing\.tar/,
    },
    {
      name: "a missing kernel tree",
      spec: base(LAYER).replace("path: ./kernel", "path: ./no-kernel"),
      tar: tar(file("etc/x")),
      code: 11,
      message: /no-kernel/,
    },
    {
      name: "a missing file source",
      spec: base("    - files: [{ path: /etc/x, source: ./missing.conf }]"),
      code: 11,
      message: /missing\.conf/,
    },
    {
      name: "a missing base spec (extends)",
      spec: `extends: ./missing-base.yaml\n${base(LAYER)}`,
      tar: tar(file("etc/x")),
      code: 11,
      message: /missing-base\.yaml/,
    },
    {
      name: "a file layer with a relative path",
      spec: base('    - files: [{ path: "../etc/x", content: "x" }]'),
      code: 10,
      message: /path/,
    },
    {
      name: "YAML that does not parse",
      spec: "name: [unclosed\n",
      code: 10,
      message: /spec\.yaml/,
    },
  ];
}

// ---------------------------------------------------------------- running one

const OUTPUTS = /^(disk\.img|.*\.bundle|build\.json)$/;

async function refuse(c: Case, i: number): Promise<void> {
  const caseDir = join(dir, `case-${i}`);
  await mkdir(caseDir, { recursive: true });
  await symlink(join(dir, "kernel"), join(caseDir, "kernel"));
  await symlink(join(dir, "dir-out"), join(caseDir, "dir-out"));
  if (c.tar) await writeFile(join(caseDir, "layer.tar"), c.tar);
  const spec = c.spec ?? base(c.layer ?? LAYER);
  const specPath = join(caseDir, "spec.yaml");
  await writeFile(specPath, spec);
  const out = join(caseDir, "out");
  if (c.earlier) {
    await mkdir(out, { recursive: true });
    await writeFile(join(out, "disk.img"), "an earlier build's disk\n");
    await writeFile(join(out, "build.json"), "{}\n");
  }
  const r = await runAbforge(["build", specPath, "--out", out, "--key", keyPath]);
  const line = r.proc.errorLine() ?? "";
  expect({ code: r.code, line }).toMatchObject({ code: c.code });
  expect(line, line).toMatch(c.message);
  expect(r.stderr).not.toMatch(/unexpected error|\n\s+at /);
  let left: string[] = [];
  try {
    left = await readdir(out);
  } catch {}
  if (c.earlier) {
    expect(left.sort()).toEqual(["build.json", "disk.img"]);
    expect(await readFile(join(out, "disk.img"), "utf8")).toBe("an earlier build's disk\n");
  } else expect(left.filter((n) => OUTPUTS.test(n))).toEqual([]);
  expect(left.filter((n) => n.startsWith("."))).toEqual([]);
  results.push({
    name: c.name,
    code: r.code,
    message: line
      .replace(/^abforge: /, "")
      .replaceAll(dir, "…")
      .replace(/\n\s*/g, " "),
  });
}

describe("abforge build refuses hostile inputs and leaves nothing behind", () => {
  it("refuses each with its own exit code and a message naming the entry or field", async () => {
    const all = cases();
    const failures = await runCases(all, refuse);
    expect(failures).toEqual([]);
  });
});
