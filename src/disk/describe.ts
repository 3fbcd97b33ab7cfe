/**
 * A table as data for `--json` and as text for people, and the parsing of
 * the command line's partition specs (`name:type:size`).
 */
import type { GptAttributesJson } from "./attributes.ts";
import { GptError } from "./errors.ts";
import type { PlannedPartition } from "./plan.ts";
import type { GptTable } from "./table.ts";
import { partitionTypeInfo, resolvePartitionType } from "./types.ts";

export interface PartitionJson {
  index: number;
  typeGuid: string;
  /** The short name (`esp`, `root-x86-64`) for a type we know, else null. */
  type: string | null;
  typeDescription: string | null;
  uniqueGuid: string;
  firstLba: number;
  lastLba: number;
  sectors: number;
  offsetBytes: number;
  sizeBytes: number;
  name: string;
  attributes: GptAttributesJson;
}

export interface TableJson {
  diskGuid: string;
  sectorSize: number;
  diskSectors: number;
  sizeBytes: number;
  firstUsableLba: number;
  lastUsableLba: number;
  entryCount: number;
  partitions: PartitionJson[];
}

/** The table with numbers instead of bigints (LBAs of any real disk are far below 2^53). */
export function tableToJson(t: GptTable): TableJson {
  const ss = t.sectorSize;
  return {
    diskGuid: t.diskGuid,
    sectorSize: ss,
    diskSectors: Number(t.diskSectors),
    sizeBytes: Number(t.diskSectors) * ss,
    firstUsableLba: Number(t.firstUsableLba),
    lastUsableLba: Number(t.lastUsableLba),
    entryCount: t.entryCount,
    partitions: [...t.partitions]
      .sort((a, b) => a.index - b.index)
      .map((p) => {
        const info = partitionTypeInfo(p.typeGuid);
        const sectors = Number(p.lastLba - p.firstLba + 1n);
        return {
          index: p.index,
          typeGuid: p.typeGuid,
          type: info?.alias ?? null,
          typeDescription: info?.description ?? null,
          uniqueGuid: p.uniqueGuid,
          firstLba: Number(p.firstLba),
          lastLba: Number(p.lastLba),
          sectors,
          offsetBytes: Number(p.firstLba) * ss,
          sizeBytes: sectors * ss,
          name: p.name,
          attributes: p.attributes.toJSON(),
        };
      }),
  };
}

const UNITS = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];

/** `64 MiB`, `1.5 GiB`, `512 B`. */
export function formatBytes(n: number): string {
  let v = n;
  let u = 0;
  while (v >= 1024 && u < UNITS.length - 1) {
    v /= 1024;
    u++;
  }
  const s = Number.isInteger(v) ? String(v) : v.toFixed(1);
  return `${s} ${UNITS[u]}`;
}

function columns(rows: string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  return rows
    .map((r) =>
      r
        .map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!)))
        .join("  ")
        .trimEnd(),
    )
    .join("\n");
}

/** The table as text: a disk summary, then one line per partition. */
export function formatTable(t: GptTable, label: string): string {
  const j = tableToJson(t);
  const head = [
    `Disk ${label}: ${j.diskSectors} sectors of ${j.sectorSize} bytes (${formatBytes(j.sizeBytes)})`,
    `Disk GUID: ${j.diskGuid}`,
    `Usable LBA ${j.firstUsableLba}-${j.lastUsableLba}, ${j.entryCount} entries, ${j.partitions.length} used`,
  ];
  if (!j.partitions.length) return head.join("\n");
  const rows = [
    ["#", "Type", "Unique GUID", "First LBA", "Last LBA", "Size", "Name", "Attributes"],
    ...t.partitions
      .slice()
      .sort((a, b) => a.index - b.index)
      .map((p, i) => {
        const pj = j.partitions[i]!;
        return [
          String(p.index),
          pj.type ?? p.typeGuid,
          p.uniqueGuid,
          String(p.firstLba),
          String(p.lastLba),
          formatBytes(pj.sizeBytes),
          JSON.stringify(p.name),
          p.attributes.raw ? `${p.attributes.toString()} (${p.attributes.toHex()})` : "-",
        ];
      }),
  ];
  return `${head.join("\n")}\n\n${columns(rows)}`;
}

const SIZE_UNITS: Record<string, number> = {
  "": 1,
  b: 1,
  k: 1024,
  kib: 1024,
  m: 1024 ** 2,
  mib: 1024 ** 2,
  g: 1024 ** 3,
  gib: 1024 ** 3,
  t: 1024 ** 4,
  tib: 1024 ** 4,
};

/** `512MiB`, `64M`, `1G`, `4096` (bytes). Binary units. */
export function parseSize(s: string): number {
  const m = /^(\d+)\s*([a-z]*)$/i.exec(s.trim());
  const unit = m ? SIZE_UNITS[m[2]!.toLowerCase()] : undefined;
  const n = m && unit !== undefined ? Number(m[1]) * unit : Number.NaN;
  if (!Number.isSafeInteger(n) || n <= 0) {
    throw new GptError(
      "GPT_BAD_INPUT",
      `size "${s}" is not a positive size like 4096, 64MiB or 1GiB`,
      {
        details: { size: s },
      },
    );
  }
  return n;
}

/**
 * `name:type:size` (`abforge-A:root-x86-64:512MiB`); the type is an alias
 * (`esp`, `root-x86-64`, `linux`, ...), a constant name or a GUID. The name
 * may hold colons: the last two fields are the type and the size.
 */
export function parsePartitionSpec(spec: string): PlannedPartition {
  const parts = spec.split(":");
  if (parts.length < 3) {
    throw new GptError(
      "GPT_BAD_INPUT",
      `partition "${spec}" is not name:type:size (e.g. esp:esp:64MiB)`,
      {
        details: { spec },
      },
    );
  }
  const size = parts.pop()!;
  const type = parts.pop()!;
  const name = parts.join(":");
  const typeGuid = resolvePartitionType(type);
  if (!typeGuid) {
    throw new GptError(
      "GPT_BAD_INPUT",
      `partition "${spec}": type "${type}" is not a GUID nor a known type (esp, root-x86-64, linux, ...)`,
      { details: { spec, type } },
    );
  }
  return { name, typeGuid, sizeBytes: parseSize(size) };
}
