/** `abforge build`: a YAML spec becomes a bootable A/B disk image and a signed update bundle. */
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import type { Command } from "commander";
import { BuildError } from "../build/errors.ts";
import { formatBytes } from "../disk/index.ts";
import { action, type JsonOption, output } from "./command.ts";

interface BuildCliOptions extends JsonOption {
  out: string;
  version?: string;
  key?: string;
  cache?: string;
}

export function register(program: Command): void {
  program
    .command("build")
    .description(
      "build SPEC into OUT/disk.img (GPT: ESP, slot A, slot B, state), OUT/<name>-<version>.bundle (signed) and OUT/build.json",
    )
    .argument("<spec>", "the image spec (YAML)")
    .requiredOption(
      "--out <dir>",
      "output directory (created if missing); outputs appear only when the build succeeds",
    )
    .option("--version <semver>", "override the spec's version")
    .option(
      "--key <file>",
      "ed25519 signing key (PKCS#8 PEM); default: signing.key beside the spec",
    )
    .option(
      "--cache <dir>",
      "where downloaded kernel packages are kept (default: $ABFORGE_CACHE or ~/.cache/abforge)",
    )
    .option("--json", "print the build report as JSON")
    .action(
      action(async (specPath: string, opts: BuildCliOptions) => {
        const keyPath = opts.key ?? join(dirname(specPath), "signing.key");
        if (!opts.key && !existsSync(keyPath)) {
          throw new BuildError(
            "SPEC_NOT_FOUND",
            `no signing key: pass --key FILE, or put signing.key beside ${specPath} (abforge keygen --out DIR makes one)`,
            { details: { keyPath } },
          );
        }
        // The build pipeline (and its YAML and tar code) loads only for a build.
        const { build } = await import("../build/index.ts");
        const r = await build({
          specPath,
          outDir: opts.out,
          keyPath,
          ...(opts.version ? { version: opts.version } : {}),
          ...(opts.cache ? { cacheDir: opts.cache } : {}),
        });
        output(opts, r.report, () =>
          [
            `built ${r.report.name} ${r.report.version} in ${(r.report.totalMs / 1000).toFixed(1)} s`,
            `  disk      ${r.disk} (${formatBytes(r.report.disk.size)}, sparse)`,
            `  bundle    ${r.bundle} (${formatBytes(r.report.bundle.size)})`,
            `  slot      ${formatBytes(r.report.slotImage.size)} sha256 ${r.report.slotImage.sha256}`,
            `  roothash  ${r.report.verity.rootHash}`,
            `  report    ${r.buildJson}`,
          ].join("\n"),
        );
      }),
    );
}
