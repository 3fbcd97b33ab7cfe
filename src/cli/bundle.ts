/** `abforge keygen` and `abforge bundle`: signing keys and update bundles (src/bundle). */
import type { Command } from "commander";
import {
  checkBundleFile,
  formatInspect,
  formatVerify,
  generateKeyPair,
  inspectBundleFile,
  inspectJson,
  loadPublicKey,
  verifyJson,
} from "../bundle/index.ts";
import { action, type JsonOption, output } from "./command.ts";

export function register(program: Command): void {
  program
    .command("keygen")
    .description(
      "make an ed25519 signing key pair: DIR/signing.key (PKCS#8 PEM, mode 0600) and DIR/signing.pub (SPKI PEM); never overwrites",
    )
    .requiredOption("--out <dir>", "directory for the key files (created if missing)")
    .option("--json", "print JSON")
    .action(
      action(async (opts: JsonOption & { out: string }) => {
        const r = await generateKeyPair(opts.out);
        output(
          opts,
          r,
          () => `key ${r.keyId}\n  private ${r.privateKeyPath}\n  public  ${r.publicKeyPath}`,
        );
      }),
    );

  const bundle = program
    .command("bundle")
    .description("update bundles: a tar of manifest.json, manifest.sig and the slot image");

  bundle
    .command("inspect")
    .description("show a bundle's manifest and entries with their byte offsets (does not verify)")
    .argument("<file>", "bundle file")
    .option("--json", "print JSON")
    .action(
      action(async (path: string, opts: JsonOption) => {
        const head = await inspectBundleFile(path);
        output(opts, inspectJson(path, head), () => formatInspect(path, head));
      }),
    );

  bundle
    .command("verify")
    .description(
      "check a bundle: layout, signature by a trusted key, sizes, chunk hashes, sha256 and dm-verity root hash",
    )
    .argument("<file>", "bundle file")
    .requiredOption(
      "--pubkey <file>",
      "a trusted public key (SPKI PEM); repeat to trust several (key rotation)",
      (v: string, prev: string[] = []) => [...prev, v],
    )
    .option("--json", "print JSON")
    .action(
      action(async (path: string, opts: JsonOption & { pubkey: string[] }) => {
        const keys = await Promise.all(opts.pubkey.map(loadPublicKey));
        const r = await checkBundleFile(path, keys);
        output(opts, verifyJson(path, r), () => formatVerify(path, r));
      }),
    );
}
