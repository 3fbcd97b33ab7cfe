/** `abforge disk`: show and create GPT partition tables (src/disk). */
import type { Command } from "commander";
import {
  createDisk,
  formatTable,
  parsePartitionSpec,
  parseSize,
  readGpt,
  tableToJson,
} from "../disk/index.ts";
import { action, type JsonOption, output } from "./command.ts";

export function register(program: Command): void {
  const disk = program
    .command("disk")
    .description("GPT partition tables of disk images and block devices");

  disk
    .command("show")
    .description("list the partition table (warnings, e.g. a damaged primary, go to stderr)")
    .argument("<disk>", "disk image file or block device")
    .option("--json", "print JSON")
    .action(
      action(async (path: string, opts: JsonOption) => {
        const { table, warnings, source } = await readGpt(path);
        output(opts, { path, source, warnings, ...tableToJson(table) }, () =>
          formatTable(table, path),
        );
      }),
    );

  disk
    .command("create")
    .description(
      "write a new GPT: partitions in order from 1 MiB, each 1 MiB aligned (an existing file or device keeps its size)",
    )
    .argument("<disk>", "disk image file (created if missing) or block device")
    .requiredOption(
      "--part <name:type:size>",
      "a partition, e.g. esp:esp:64MiB or abforge-A:root-x86-64:512MiB (type: alias or GUID); repeat in order",
      (v: string, prev: string[] = []) => [...prev, v],
    )
    .option("--size <size>", "disk size, e.g. 2GiB (default: the existing size, or what fits)")
    .option("--seed <seed>", "derive the GUIDs from this seed (reproducible tables)")
    .option("--json", "print JSON")
    .action(
      action(
        async (
          path: string,
          opts: JsonOption & { part: string[]; size?: string; seed?: string },
        ) => {
          const table = await createDisk(path, {
            partitions: opts.part.map(parsePartitionSpec),
            diskSizeBytes: opts.size === undefined ? undefined : parseSize(opts.size),
            guidSeed: opts.seed,
          });
          output(opts, { path, ...tableToJson(table) }, () => formatTable(table, path));
        },
      ),
    );
}
