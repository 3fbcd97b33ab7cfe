/** `abforge disk`: show and create GPT partition tables (src/disk). */
import type { Command } from "commander";
import { findHostBootDisk } from "../bootloader/index.ts";
import {
  createDisk,
  formatBytes,
  formatTable,
  type GrowStateResult,
  growState,
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

  disk
    .command("grow-state")
    .description(
      "grow the state partition (the last one, named state) to the end of a disk larger than the image: the GPT, then on a block device the kernel's partition size and the ext4 in it (online when mounted); nothing to do when the disk did not grow",
    )
    .argument(
      "[device]",
      "block device or image file (default: this host's boot disk, found by its boot token); on an image file only the GPT grows, the filesystem at the host's first boot",
    )
    .option("--json", "print JSON")
    .action(
      action(async (device: string | undefined, opts: JsonOption) => {
        const path = device ?? (await findHostBootDisk());
        const r = await growState(path);
        output(opts, r, () => growStateText(r));
      }),
    );
}

/** One line: the partition's and the filesystem's sizes before and after, or "nothing to do". */
export function growStateText(r: GrowStateResult): string {
  const p = r.partition;
  const part =
    r.table === "grown"
      ? `${formatBytes(p.bytesBefore)} -> ${formatBytes(p.bytesAfter)}`
      : formatBytes(p.bytesAfter);
  const fs = r.filesystem;
  const fsText =
    fs.action === "none"
      ? "no ext4 filesystem in it"
      : fs.action === "grown"
        ? `filesystem ${formatBytes(fs.bytesBefore ?? 0)} -> ${formatBytes(fs.bytesAfter ?? 0)}`
        : fs.action === "next-boot"
          ? `filesystem ${formatBytes(fs.bytesBefore ?? 0)}, grows at the host's next boot`
          : `filesystem ${formatBytes(fs.bytesAfter ?? 0)}`;
  const what = `state partition ${p.index} of ${r.disk}: ${part}${r.kernel === "updated" ? " (kernel told)" : ""}; ${fsText}`;
  return r.nothingToDo ? `nothing to do: ${what}` : what;
}
