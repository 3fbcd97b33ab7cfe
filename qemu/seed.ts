/**
 * A cloud-init NoCloud seed drive: a small FAT image labelled `CIDATA` holding
 * `user-data` and `meta-data`, byte-identical from run to run. Procedure and
 * bounds: qemu/README.md, "Seed drive (cloud-init)".
 */
import { createHash } from "node:crypto";
import { existsSync, statSync } from "node:fs";
import { mkdtemp, readFile, rename, rm, truncate, utimes, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { run } from "../src/exec.ts";
import { QemuError } from "./errors.ts";

/** Largest user-data accepted: NoCloud sets none, and clouds accept far less (EC2: 16 KiB). */
export const USER_DATA_MAX_BYTES = 1024 * 1024;
/** Largest meta-data accepted (a few lines of YAML in practice). */
export const META_DATA_MAX_BYTES = 64 * 1024;
/** The seed image's size: fits both files at their bounds in FAT12 with room to spare. */
export const SEED_SIZE_BYTES = 2 * 1024 * 1024;
/** The volume label cloud-init's NoCloud datasource looks for. */
export const SEED_LABEL = "CIDATA";
/** FAT timestamps start in 1980: earlier SOURCE_DATE_EPOCH values are raised to this. */
const FAT_EPOCH = 315532800;

/**
 * First lines cloud-init recognises (its user-data handlers), besides gzip
 * data, which it unpacks first. `#!` and multipart MIME match as prefixes,
 * the others as the whole first line.
 */
export const USER_DATA_HEADERS = [
  "#cloud-config",
  "#cloud-config-archive",
  "#cloud-config-jsonp",
  "#cloud-boothook",
  "#include",
  "#include-once",
  "#part-handler",
  "#!",
  "Content-Type: multipart/",
] as const;

/**
 * Check user-data bytes: size bound and a header cloud-init acts on (a file
 * without one is ignored by cloud-init, silently). `name` goes in the message.
 */
export function checkUserData(name: string, data: Uint8Array): void {
  if (data.length > USER_DATA_MAX_BYTES) {
    throw new QemuError(
      "QEMU_BAD_SEED",
      `user-data ${name} has ${data.length} bytes, more than the ${USER_DATA_MAX_BYTES} (1 MiB) accepted`,
      { details: { path: name, bytes: data.length, maxBytes: USER_DATA_MAX_BYTES } },
    );
  }
  if (data[0] === 0x1f && data[1] === 0x8b) return;
  const firstLine = Buffer.from(data.subarray(0, 256)).toString("utf8").split(/\r?\n/, 1)[0] ?? "";
  const line = firstLine.trimEnd();
  const known =
    line.startsWith("#!") ||
    /^content-type:\s*multipart\//i.test(line) ||
    USER_DATA_HEADERS.some((h) => line === h);
  if (!known) {
    throw new QemuError(
      "QEMU_BAD_SEED",
      `user-data ${name} starts with "${line.slice(0, 40)}", not a header cloud-init acts on (${USER_DATA_HEADERS.join(", ")}; or gzip data)`,
      { details: { path: name, firstLine: line.slice(0, 80) } },
    );
  }
}

/** The instance-id written when no meta-data is given: `iid-` and 16 hex digits of the user-data's sha256. */
export function instanceIdFor(userData: Uint8Array): string {
  return `iid-${createHash("sha256").update(userData).digest("hex").slice(0, 16)}`;
}

/** The meta-data written when none is given. */
export function defaultMetaData(userData: Uint8Array): string {
  return `instance-id: ${instanceIdFor(userData)}\n`;
}

export interface SeedOptions {
  /** Where the image goes (written beside it first, then renamed). */
  outPath: string;
  /** Path of the user-data file. */
  userData: string;
  /** Path of the meta-data file; default: `instance-id: iid-<sha256 of user-data>`. */
  metaData?: string;
  /** Timestamp of the files, seconds (default: SOURCE_DATE_EPOCH, else 1980-01-01). */
  mtime?: number;
}

export interface Seed {
  path: string;
  /** FAT volume serial, 8 hex digits: the first of sha256(user-data ‖ meta-data). */
  volumeId: string;
  /** The derived instance-id, when no meta-data was given. */
  instanceId?: string;
}

function readChecked(kind: string, path: string, maxBytes: number): Promise<Buffer> {
  if (!existsSync(path) || !statSync(path).isFile()) {
    throw new QemuError("QEMU_BAD_SEED", `${kind} ${path} does not exist or is not a file`, {
      details: { path },
    });
  }
  const bytes = statSync(path).size;
  if (bytes > maxBytes) {
    throw new QemuError(
      "QEMU_BAD_SEED",
      `${kind} ${path} has ${bytes} bytes, more than the ${maxBytes} accepted`,
      { details: { path, bytes, maxBytes } },
    );
  }
  return readFile(path);
}

function epoch(): number {
  const v = process.env.SOURCE_DATE_EPOCH;
  return v && /^\d+$/.test(v) ? Number(v) : FAT_EPOCH;
}

/**
 * Make the seed image: mkfs.vfat (FAT12, `--invariant`, label CIDATA, volume
 * serial from the contents), then `mcopy -m` of both files with the fixed
 * timestamp. Validates the inputs first (QEMU_BAD_SEED naming the file).
 */
export async function makeSeed(o: SeedOptions): Promise<Seed> {
  const userData = await readChecked("user-data", o.userData, USER_DATA_MAX_BYTES);
  checkUserData(o.userData, userData);
  const metaData =
    o.metaData === undefined
      ? Buffer.from(defaultMetaData(userData))
      : await readChecked("meta-data", o.metaData, META_DATA_MAX_BYTES);
  const volumeId = createHash("sha256")
    .update(userData)
    .update(metaData)
    .digest("hex")
    .slice(0, 8)
    .toUpperCase();
  const mtime = Math.max(FAT_EPOCH, o.mtime ?? epoch());
  const work = await mkdtemp(`${o.outPath}.work-`);
  const tmp = join(work, "seed.img");
  try {
    await writeFile(tmp, "");
    await truncate(tmp, SEED_SIZE_BYTES);
    await run("mkfs.vfat", ["--invariant", "-i", volumeId, "-n", SEED_LABEL, tmp]);
    const files = [join(work, "user-data"), join(work, "meta-data")];
    await writeFile(files[0]!, userData);
    await writeFile(files[1]!, metaData);
    for (const f of files) await utimes(f, mtime, mtime);
    // Long names (user-data has 9 characters) get their 8.3 alias from mtools,
    // the same each time; TZ fixes the local time FAT stores.
    const env = { ...process.env, SOURCE_DATE_EPOCH: String(mtime), TZ: "UTC" };
    await run("mcopy", ["-m", "-i", tmp, ...files, "::"], { env });
    await rename(tmp, o.outPath);
  } finally {
    await rm(work, { recursive: true, force: true });
  }
  return {
    path: o.outPath,
    volumeId,
    ...(o.metaData === undefined ? { instanceId: instanceIdFor(userData) } : {}),
  };
}
