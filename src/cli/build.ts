/** `abforge build`: a YAML spec becomes a bootable A/B disk image and a signed update bundle. */
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { type Command, InvalidArgumentError, Option } from "commander";
import { BuildError } from "../build/errors.ts";
import { type DiskFormat, parseFormats } from "../build/formats.ts";
import { formatBytes } from "../disk/index.ts";
import { action, type JsonOption, output } from "./command.ts";

interface BuildCliOptions extends JsonOption {
  out: string;
  version?: string;
  key?: string;
  cache?: string;
  format: DiskFormat[];
}

const STOP_SIGNALS = ["SIGINT", "SIGTERM", "SIGHUP"] as const;

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
    .addOption(
      new Option(
        "--format <list>",
        "the disk's forms, comma-separated: raw (OUT/disk.img, sparse; always written), qcow2, vmdk (streamOptimized), vhd (fixed, Azure), gce (OUT/<name>-<version>.gce.tar.gz holding disk.raw)",
      )
        .default(["raw"], "raw")
        .argParser((value: string) => {
          try {
            return parseFormats(value);
          } catch (err) {
            throw new InvalidArgumentError((err as Error).message);
          }
        }),
    )
    .option("--json", "print the build report as JSON")
    .addHelpText(
      "after",
      `
The spec's fields, layer kinds and defaults are documented in src/build/README.md
("The spec"); images/demo.yaml is a complete example. A terminal shows
mksquashfs's progress; SIGINT or SIGTERM stops the build, removes its temporary
directory and leaves --out as it was (BUILD_INTERRUPTED).`,
    )
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
        // SIGINT/SIGTERM (and SIGHUP: the terminal went away) interrupt the build
        // cleanly (BUILD_INTERRUPTED); a second one ends the process at once (the
        // next build removes what is left).
        const interrupt = new AbortController();
        const onSignal = (sig: NodeJS.Signals) => {
          if (!interrupt.signal.aborted) return interrupt.abort(sig);
          stopListening();
          process.kill(process.pid, sig);
        };
        const stopListening = () => {
          for (const sig of STOP_SIGNALS) process.off(sig, onSignal);
        };
        for (const sig of STOP_SIGNALS) process.on(sig, onSignal);
        const progress = process.stderr.isTTY && !opts.json ? new ProgressLine() : undefined;
        const r = await build({
          specPath,
          outDir: opts.out,
          keyPath,
          formats: opts.format,
          signal: interrupt.signal,
          ...(opts.version !== undefined ? { version: opts.version } : {}),
          ...(opts.cache ? { cacheDir: opts.cache } : {}),
          ...(progress ? { onProgress: (p) => progress.show(p) } : {}),
        }).finally(() => {
          progress?.clear();
          stopListening();
        });
        output(opts, r.report, () =>
          [
            `built ${r.report.name} ${r.report.version} in ${(r.report.totalMs / 1000).toFixed(1)} s`,
            `  disk      ${r.disk} (${formatBytes(r.report.disk.size)}, sparse)`,
            ...r.report.outputs
              .filter((d) => d.format !== "raw")
              .map(
                (d) =>
                  `  ${d.format.padEnd(9)} ${join(opts.out, d.file)} (${formatBytes(d.bytes)})`,
              ),
            `  bundle    ${r.bundle} (${formatBytes(r.report.bundle.size)})`,
            `  slot      ${formatBytes(r.report.slotImage.size)} sha256 ${r.report.slotImage.sha256}`,
            `  roothash  ${r.report.verity.rootHash}`,
            `  report    ${r.buildJson}`,
          ].join("\n"),
        );
      }),
    );
}

/** One line on a terminal's stderr, redrawn in place: `squashfs  44% (28.1 MiB of 63.8 MiB)`. */
class ProgressLine {
  #shown = "";
  #pct = -1;

  show(p: { step: string; done: number; total: number }): void {
    const pct = p.total > 0 ? Math.floor((100 * p.done) / p.total) : 100;
    if (pct === this.#pct) return;
    this.#pct = pct;
    const text = `${p.step} ${String(pct).padStart(3)}% (${formatBytes(p.done)} of ${formatBytes(p.total)})`;
    process.stderr.write(`\r${text.padEnd(this.#shown.length)}`);
    this.#shown = text;
    // done: the log lines that follow start on a clean line
    if (p.done >= p.total) this.#erase();
  }

  clear(): void {
    this.#erase();
    this.#pct = -1;
  }

  #erase(): void {
    if (!this.#shown) return;
    process.stderr.write(`\r${" ".repeat(this.#shown.length)}\r`);
    this.#shown = "";
  }
}
