/**
 * The state partition: ext4 labelled `abforge-state`, byte-identical from run
 * to run (README.md, "State partition").
 */
import {
  cp,
  lstat,
  lutimes,
  mkdir,
  mkdtemp,
  readdir,
  rename,
  rm,
  truncate,
  writeFile,
} from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { guidFromSeed } from "../disk/index.ts";
import { run } from "../exec.ts";
import { STATE_FS_LABEL } from "../image/index.ts";
import { logger } from "../log.ts";
import { BuildError } from "./errors.ts";
import { sourceDateEpoch } from "./initramfs.ts";

export interface StateFsOptions {
  outPath: string;
  sizeBytes: number;
  /** Seed of the filesystem UUID and directory hash seed (e.g. the image name). */
  uuidSeed: string;
  /** Initial content of /var (the image's own /var), copied into `var/`. */
  varSourceDir?: string;
  /** Timestamp of the filesystem and its files (default: SOURCE_DATE_EPOCH, else 1). */
  mtime?: number;
}

/**
 * Build the state filesystem with its layout already in place: `var/` (the
 * content of /var) and `etc-overlay/{upper,work}` (the /etc overlay).
 */
export async function buildStateFs(o: StateFsOptions): Promise<{ path: string; uuid: string }> {
  const started = Date.now();
  if (!Number.isSafeInteger(o.sizeBytes) || o.sizeBytes < 4 * 1024 * 1024 || o.sizeBytes % 4096) {
    throw new BuildError(
      "PARTITION_TOO_SMALL",
      `state partition size ${o.sizeBytes}: expected a multiple of 4096 bytes, 4 MiB at least`,
      { details: { sizeBytes: o.sizeBytes } },
    );
  }
  const uuid = guidFromSeed(`abforge-state-fs:${o.uuidSeed}`).toLowerCase();
  // E2FSPROGS_FAKE_TIME 0 means "not set" to e2fsprogs: the default is 1.
  const mtime = o.mtime ?? (sourceDateEpoch() || 1);
  const work = await mkdtemp(join(tmpdir(), "abforge-state-"));
  const tmp = `${o.outPath}.tmp-${process.pid}`;
  try {
    const src = join(work, "root");
    await mkdir(join(src, "etc-overlay", "upper"), { recursive: true });
    await mkdir(join(src, "etc-overlay", "work"), { recursive: true });
    if (o.varSourceDir) {
      await cp(o.varSourceDir, join(src, "var"), { recursive: true, verbatimSymlinks: true });
    } else {
      await mkdir(join(src, "var"));
    }
    await setTimes(src, mtime);
    await mkdir(dirname(o.outPath), { recursive: true });
    await writeFile(tmp, "");
    await truncate(tmp, o.sizeBytes);
    const env = {
      ...process.env,
      E2FSPROGS_FAKE_TIME: String(mtime),
      SOURCE_DATE_EPOCH: String(mtime),
    };
    await run(
      "mkfs.ext4",
      [
        "-q",
        "-F",
        "-b",
        "4096",
        "-L",
        STATE_FS_LABEL,
        "-U",
        uuid,
        "-E",
        `hash_seed=${uuid},root_owner=0:0`,
        "-d",
        src,
        tmp,
      ],
      { env },
    );
    await fixChangeTimes(tmp, src, mtime, env);
    await rename(tmp, o.outPath);
  } finally {
    await rm(work, { recursive: true, force: true });
    await rm(tmp, { force: true });
  }
  logger()
    .child({ module: "build", step: "state" })
    .info(
      { path: o.outPath, bytes: o.sizeBytes, uuid, ms: Date.now() - started },
      "state filesystem built",
    );
  return { path: o.outPath, uuid };
}

/** mkfs.ext4 -d copies each file's times: set them all to one value first. */
async function setTimes(path: string, seconds: number): Promise<void> {
  const st = await lstat(path);
  if (st.isDirectory()) {
    for (const name of await readdir(path)) await setTimes(join(path, name), seconds);
  }
  await lutimes(path, seconds, seconds);
}

/**
 * mkfs.ext4 -d also copies each file's ctime, which no one can set on the
 * source; E2FSPROGS_FAKE_TIME does not cover it. Rewrite it with debugfs.
 */
async function fixChangeTimes(
  image: string,
  src: string,
  seconds: number,
  env: NodeJS.ProcessEnv,
): Promise<void> {
  const lines: string[] = [];
  async function walk(rel: string): Promise<void> {
    for (const name of (await readdir(join(src, rel))).sort()) {
      const path = `${rel}/${name}`;
      if (/["\\\n]/.test(path)) {
        throw new BuildError(
          "BUILD_FAILED",
          `state partition: file name ${JSON.stringify(path)} has a quote, backslash or newline`,
          { details: { path } },
        );
      }
      lines.push(`sif "${path}" ctime @${seconds}`);
      if ((await lstat(join(src, path))).isDirectory()) await walk(path);
    }
  }
  await walk("");
  const cmds = `${image}.debugfs`;
  await writeFile(cmds, `${lines.join("\n")}\n`);
  try {
    const r = await run("debugfs", ["-w", "-f", cmds, image], { env });
    const problem = r.stderr.split("\n").find((l) => l.trim() && !l.startsWith("debugfs "));
    if (problem) {
      throw new BuildError("BUILD_FAILED", `state partition: debugfs: ${problem}`, {
        details: { stderr: r.stderr },
      });
    }
  } finally {
    await rm(cmds, { force: true });
  }
}
