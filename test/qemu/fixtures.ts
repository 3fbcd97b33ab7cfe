/**
 * The images the QEMU tests boot: demo 1.0.0 and 2.0.0 from images/demo.yaml
 * and 3.0.0 from images/demo-unhealthy.yaml (and their kexec variants), all signed by one test key and
 * built by the real `abforge build`. They are built once per run by the
 * global setup (build-images.ts) into FIXTURES; each test boots a sparse copy.
 */
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import { basename, join } from "node:path";
import { fileURLToPath } from "node:url";
import { tempDir } from "../helpers/tmp.ts";

export const ROOT = fileURLToPath(new URL("../../", import.meta.url));

/** A hash of everything that goes into an image, so a code change never boots stale fixtures. */
function sourcesHash(): string {
  const h = createHash("sha256");
  const walk = (rel: string): void => {
    const abs = join(ROOT, rel);
    if (statSync(abs).isDirectory()) {
      for (const e of readdirSync(abs).sort()) walk(join(rel, e));
    } else {
      h.update(rel).update("\0").update(readFileSync(abs)).update("\0");
    }
  };
  for (const p of ["src", "images", "bin", "package-lock.json", "test/qemu/specs"]) walk(p);
  return h.digest("hex").slice(0, 16);
}

export const FIXTURES =
  process.env.ABFORGE_QEMU_FIXTURES ?? join(ROOT, ".cache", "qemu-fixtures", sourcesHash());
export const KEY_DIR = join(FIXTURES, "keys");
export const SIGNING_KEY = join(KEY_DIR, "signing.key");
export const SIGNING_PUB = join(KEY_DIR, "signing.pub");

export interface BuiltImage {
  version: string;
  dir: string;
  disk: string;
  bundle: string;
  rootHash: string;
}

export interface FixtureSpec {
  spec: string;
  version: string;
  formats?: string;
  /**
   * Built in the background while the suites that do not need it boot
   * (build-images.ts); a suite that does waits for it (`waitForImage`) and
   * runs last (sequencer.ts).
   */
  later?: boolean;
}

export const IMAGES: Record<
  | "v1"
  | "v2"
  | "v3"
  | "hostV1"
  | "hostV2"
  | "hostV3"
  | "kexecV1"
  | "kexecV2"
  | "kexecV3"
  | "secureBootV1"
  | "secureBootV2"
  | "secureBootV3",
  FixtureSpec
> = {
  v1: { spec: "images/demo.yaml", version: "1.0.0" },
  v2: { spec: "images/demo.yaml", version: "2.0.0" },
  v3: { spec: "images/demo-unhealthy.yaml", version: "3.0.0" },
  // The container host (test/qemu/host.test.ts): 1.0.0 is booted as qcow2;
  // 2.0.0 adds a package with its own system user and changes /etc files;
  // 3.0.0 fails its health check.
  hostV1: { spec: "images/host.yaml", version: "1.0.0", formats: "raw,qcow2", later: true },
  hostV2: { spec: "test/qemu/specs/host-2.yaml", version: "2.0.0", later: true },
  hostV3: { spec: "images/host-unhealthy.yaml", version: "3.0.0", later: true },
  // Demo with `update.reboot.method: kexec` and one try (test/qemu/kexec.test.ts,
  // bench/kexec): 2.0.0 is entered by kexec, 3.0.0 fails its health check.
  kexecV1: { spec: "images/demo-kexec.yaml", version: "1.0.0" },
  kexecV2: { spec: "images/demo-kexec.yaml", version: "2.0.0" },
  kexecV3: { spec: "images/demo-kexec-unhealthy.yaml", version: "3.0.0" },
  // Demo with secureBoot, signed with Debian's OVMF test key (test/qemu/secure-boot.test.ts).
  secureBootV1: { spec: "test/qemu/specs/demo-secure-boot.yaml", version: "1.0.0" },
  // An update to 2.0.0 and a rollback from a failing 3.0.0 with enforcement on.
  secureBootV2: { spec: "test/qemu/specs/demo-secure-boot.yaml", version: "2.0.0" },
  secureBootV3: { spec: "test/qemu/specs/demo-secure-boot-unhealthy.yaml", version: "3.0.0" },
};

/** Debian's OVMF test key, packaged with the passphrase "snakeoil" (README.Debian of ovmf). */
export const SNAKEOIL_KEY_PACKAGED = "/usr/share/ovmf/PkKek-1-snakeoil.key";
export const SNAKEOIL_CERT = "/usr/share/ovmf/PkKek-1-snakeoil.pem";
/** Its unencrypted copy, where test/qemu/specs/demo-secure-boot.yaml reads it. */
export const SNAKEOIL_KEY = join(ROOT, ".cache", "secure-boot", "snakeoil.key");

export type ImageName = keyof typeof IMAGES;

export function image(name: ImageName): BuiltImage {
  const { version } = IMAGES[name];
  const dir = join(FIXTURES, name);
  const buildJson = join(dir, "build.json");
  if (!existsSync(buildJson)) throw new Error(`fixture ${name} was not built (global setup)`);
  const report = JSON.parse(readFileSync(buildJson, "utf8")) as {
    verity: { rootHash: string };
    bundle: { file: string };
  };
  return {
    version,
    dir,
    disk: join(dir, "disk.img"),
    bundle: join(dir, basename(report.bundle.file)),
    rootHash: report.verity.rootHash,
  };
}

/** Written beside a fixture the background build could not make: its error. */
export const FAILED_MARK = ".failed";

/**
 * Waits (bounded) for a fixture of the background build (`later`): its
 * build.json, or the error the build left. The build itself is bounded by
 * its own timeout, so this one only guards against a build that vanished.
 */
export async function waitForImage(name: ImageName, timeoutMs = 30 * 60_000): Promise<BuiltImage> {
  const dir = join(FIXTURES, name);
  const end = Date.now() + timeoutMs;
  for (;;) {
    if (existsSync(join(dir, "build.json"))) return image(name);
    if (existsSync(join(dir, FAILED_MARK)))
      throw new Error(`fixture ${name}: ${readFileSync(join(dir, FAILED_MARK), "utf8")}`);
    if (Date.now() > end) throw new Error(`fixture ${name} not built within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 2000));
  }
}

/** A private, sparse copy of an image's disk, so each test starts from the build's state. */
/** Removed when the test file ends, like every tempDir. */
export function freshDisk(name: ImageName, dir = tempDir("abforge-qemu-test-")): string {
  const target = join(dir, "disk.img");
  execFileSync("cp", ["--sparse=always", image(name).disk, target]);
  return target;
}
