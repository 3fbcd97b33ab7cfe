/**
 * Reproducible builds: the same spec, inputs, signing key and
 * SOURCE_DATE_EPOCH give byte-identical outputs (src/build/README.md: the
 * initramfs, squashfs, slot image, ESP, state filesystem and disk are each
 * deterministic; the bundle's ed25519 signature is too). Two builds of
 * test/fixtures/specs/tiny.yaml through the real CLI, into two output
 * directories; disk.img, the bundle and the slot image must match.
 *
 * The kernel package is fetched on first use (apt-get download) into the
 * shared test cache; each build then takes ~20-25 s (gzip squashfs of the
 * Node 24 runtime and the agent, ~64 MiB slot image).
 */
import { createHash } from "node:crypto";
import { createReadStream, readdirSync, readFileSync } from "node:fs";
import { join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { CACHE_DIR } from "../../helpers/cache.ts";
import { abforge } from "../../helpers/cli.ts";
import { tempDir } from "../../helpers/tmp.ts";

const SPEC = fileURLToPath(new URL("../../fixtures/specs/tiny.yaml", import.meta.url));
const EPOCH = 1767225600; // 2026-01-01T00:00:00Z

interface Report {
  createdAt: string;
  slotImage: { size: number; sha256: string };
  verity: { rootHash: string };
  bundle: { file: string; size: number; sha256: string };
  disk: { file: string; size: number };
  totalMs: number;
}

/**
 * The abforge code that every image carries (bin/, src/, package.json).
 * When it changes between the two builds (an edit in a working tree while
 * the test runs), the pair is built again: both builds must see the same inputs.
 */
const ROOT = fileURLToPath(new URL("../../../", import.meta.url));
function agentCodeDigest(): string {
  const h = createHash("sha256");
  const walk = (p: string): void => {
    for (const e of readdirSync(p, { withFileTypes: true }).sort((a, b) =>
      a.name < b.name ? -1 : 1,
    )) {
      const q = join(p, e.name);
      if (e.isDirectory()) walk(q);
      else h.update(`${relative(ROOT, q)}\0`).update(readFileSync(q));
    }
  };
  h.update(readFileSync(join(ROOT, "package.json")));
  walk(join(ROOT, "bin"));
  walk(join(ROOT, "src"));
  return h.digest("hex");
}

async function sha256File(path: string): Promise<string> {
  const h = createHash("sha256");
  for await (const chunk of createReadStream(path, { highWaterMark: 1 << 20 })) h.update(chunk);
  return h.digest("hex");
}

describe("abforge build is reproducible", () => {
  const dir = tempDir("abforge-repro-");

  async function buildInto(out: string): Promise<{ report: Report; disk: string; bundle: string }> {
    const r = await abforge(
      [
        "build",
        SPEC,
        "--out",
        out,
        "--key",
        join(dir, "key", "signing.key"),
        "--cache",
        CACHE_DIR,
        "--json",
      ],
      { env: { SOURCE_DATE_EPOCH: String(EPOCH) } },
    );
    expect(r.code, r.stderr.slice(-2000)).toBe(0);
    const report = JSON.parse(r.stdout) as Report;
    expect(JSON.parse(readFileSync(join(out, "build.json"), "utf8"))).toEqual(report);
    return { report, disk: join(out, report.disk.file), bundle: join(out, report.bundle.file) };
  }

  it("gives a byte-identical slot image, bundle and disk.img from two builds", async () => {
    expect((await abforge(["keygen", "--out", join(dir, "key")])).code).toBe(0);
    let a: Awaited<ReturnType<typeof buildInto>> | undefined;
    let b: Awaited<ReturnType<typeof buildInto>> | undefined;
    for (let attempt = 1; attempt <= 3 && !b; attempt++) {
      const before = agentCodeDigest();
      a = await buildInto(join(dir, `a${attempt}`));
      const built = await buildInto(join(dir, `b${attempt}`));
      if (agentCodeDigest() === before) b = built;
    }
    if (!a || !b) throw new Error("the abforge sources kept changing while the test built");

    // The slot image (inside the bundle and in slot A), by its recorded digest.
    expect(b.report.slotImage).toEqual(a.report.slotImage);
    expect(b.report.verity.rootHash).toBe(a.report.verity.rootHash);
    expect(a.report.createdAt).toBe(new Date(EPOCH * 1000).toISOString().replace(".000Z", "Z"));

    // The bundle, byte for byte, and the report's digest of it.
    const bundleA = await sha256File(a.bundle);
    expect(await sha256File(b.bundle)).toBe(bundleA);
    expect(a.report.bundle.sha256).toBe(bundleA);
    expect(b.report.bundle).toEqual(a.report.bundle);

    // The whole disk image (GPT, ESP with GRUB and the boot state, slots, state ext4).
    expect(b.report.disk.size).toBe(a.report.disk.size);
    expect(await sha256File(b.disk)).toBe(await sha256File(a.disk));
  }, 600_000);
});
