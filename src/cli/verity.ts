/**
 * `abforge verity format|verify`: argument handling only; the work is in src/verity.
 */
import { type Command, InvalidArgumentError, Option } from "commander";
import {
  DIGEST_SIZES,
  formatVerity,
  type HashAlgorithm,
  parseSaltHex,
  type VerityFormatOptions,
  type VerityParams,
  verifyVerity,
} from "../verity/index.ts";
import { action, intOption, type JsonOption, output } from "./command.ts";

interface VerityCliOptions extends JsonOption {
  salt?: string;
  uuid?: string;
  hash?: HashAlgorithm;
  dataBlockSize?: number;
  hashBlockSize?: number;
  dataBlocks?: number;
  hashOffset?: number;
  superblock: boolean;
}

function saltOption(value: string): string {
  try {
    parseSaltHex(value);
  } catch (err) {
    throw new InvalidArgumentError((err as Error).message);
  }
  return value;
}

function addCommonOptions(cmd: Command): Command {
  return cmd
    .option(
      "--salt <hex>",
      'salt in hex, "-" for none (format default: 32 random bytes)',
      saltOption,
    )
    .option("--uuid <uuid>", "UUID stored in the superblock (format default: random)")
    .addOption(
      new Option("--hash <algorithm>", "hash algorithm (format default: sha256)").choices(
        Object.keys(DIGEST_SIZES),
      ),
    )
    .option(
      "--data-block-size <bytes>",
      "data block size, 512-4096 (default 4096)",
      intOption("--data-block-size"),
    )
    .option(
      "--hash-block-size <bytes>",
      "hash block size, 512-4096 (default 4096)",
      intOption("--hash-block-size"),
    )
    .option(
      "--data-blocks <n>",
      "data blocks to hash (default: the whole data file, or up to --hash-offset when DATA is HASH)",
      intOption("--data-blocks"),
    )
    .option(
      "--hash-offset <bytes>",
      "byte offset of the superblock (or tree) in HASH, a multiple of 512",
      intOption("--hash-offset"),
    )
    .option(
      "--no-superblock",
      "write / expect no superblock (verify then takes every parameter from the options)",
    )
    .option("--json", "print every parameter as JSON");
}

function toOptions(data: string, hash: string, o: VerityCliOptions): VerityFormatOptions {
  return {
    dataPath: data,
    hashPath: hash,
    hashOffset: o.hashOffset,
    hashAlgorithm: o.hash,
    dataBlockSize: o.dataBlockSize,
    hashBlockSize: o.hashBlockSize,
    dataBlocks: o.dataBlocks,
    salt: o.salt === undefined ? undefined : parseSaltHex(o.salt),
    uuid: o.uuid,
    superblock: o.superblock,
  };
}

function describe(p: VerityParams): string {
  return [
    `root hash:       ${p.rootHash}`,
    `hash algorithm:  ${p.hashAlgorithm}`,
    `data blocks:     ${p.dataBlocks} x ${p.dataBlockSize} bytes`,
    `hash block size: ${p.hashBlockSize}`,
    `salt:            ${p.salt || "-"}`,
    `superblock:      ${p.superblock ? `yes, UUID ${p.uuid}` : "no"}`,
    `hash offset:     ${p.hashOffset} (tree starts at hash block ${p.hashStartBlock}, hash area ${p.hashAreaSize} bytes)`,
  ].join("\n");
}

export function register(program: Command): void {
  const verity = program
    .command("verity")
    .description("dm-verity hash trees, byte-compatible with veritysetup");

  addCommonOptions(
    verity
      .command("format")
      .description("write the hash tree (and superblock) of DATA into HASH and print the root hash")
      .argument("<data>", "data file or device")
      .argument("<hash>", "hash file or device (may be DATA, with --hash-offset)"),
  ).action(
    action(async (data: string, hash: string, o: VerityCliOptions) => {
      const p = await formatVerity(toOptions(data, hash, o));
      output(o, p, () => p.rootHash);
    }),
  );

  addCommonOptions(
    verity
      .command("verify")
      .description("check every block of DATA against HASH and ROOTHASH; name the first bad block")
      .argument("<data>", "data file or device")
      .argument("<hash>", "hash file or device")
      .argument("<roothash>", "root hash in hex"),
  ).action(
    action(async (data: string, hash: string, rootHash: string, o: VerityCliOptions) => {
      const p = await verifyVerity({ ...toOptions(data, hash, o), rootHash });
      output(
        o,
        { verified: true, ...p },
        () => `verified ${p.dataBlocks} data blocks\n${describe(p)}`,
      );
    }),
  );
}
